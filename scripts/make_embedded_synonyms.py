"""Regenerate the packaged synonym table (`benchmark/data/embedded_synonyms.json`) from WordNet.

The table holds, for every word that a caption of the embedded dataset can contain (after EDA's
cleaning), its WordNet synonyms exactly as the `wordnet` synonym source gives them, so that the
default `embedded` source makes the same text views without WordNet installed. Needs nltk and the
WordNet 3.0 database (`pip install -e ".[wordnet]"`, `apt-get install wordnet-base`):

    python scripts/make_embedded_synonyms.py            # rewrite the table
    python scripts/make_embedded_synonyms.py --check    # exit 1 if the committed table differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cleanbench.augment import clean_caption
from cleanbench.data.embedded import vocabulary_words
from cleanbench.synonyms import EMBEDDED_TABLE, load_wordnet, wordnet_synonyms

TABLE = Path(__file__).resolve().parents[1] / "benchmark" / "data" / EMBEDDED_TABLE


def build_table() -> str:
    """The table's JSON text from the installed WordNet."""
    loaded = load_wordnet()
    if loaded is None:
        sys.exit("error: nltk with a WordNet database is needed: pip install -e '.[wordnet]' and "
                 "apt-get install --no-install-recommends wordnet-base")
    reader, _ = loaded
    words = sorted(set(clean_caption(" ".join(vocabulary_words())).split()))
    table = {"source": f"WordNet {reader.get_version()}", "synonyms": {w: wordnet_synonyms(reader, w) for w in words}}
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed table instead of writing it")
    args = parser.parse_args()
    text = build_table()
    if args.check:
        same = TABLE.is_file() and TABLE.read_text() == text
        print(f"{TABLE.name}: {'up to date' if same else 'differs from WordNet'}")
        return 0 if same else 1
    TABLE.write_text(text)
    print(f"wrote {TABLE} ({len(json.loads(text)['synonyms'])} words)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
