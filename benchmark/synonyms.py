"""Where the text views' synonyms come from: a choice in the config, never what happens to be installed.

- `embedded` (the default): a table that ships inside the package, made once from WordNet 3.0 for
  every word the embedded dataset's captions can contain (`scripts/make_embedded_synonyms.py`
  regenerates it). It gives the same synonyms as WordNet on embedded captions, with nothing to
  install; a word outside the table has no synonyms.
- `wordnet`: WordNet through nltk, for real captions: `pip install "cleanbench[wordnet]"` and the
  database (`apt-get install --no-install-recommends wordnet-base`, or `nltk.download("wordnet")`).
  Asking for it without WordNet installed is an error, never a silent fallback.
- `none`: no synonyms (EDA's insertion repeats a word of the caption instead).
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

SYNONYM_SOURCES: tuple[str, ...] = ("embedded", "wordnet", "none")

EMBEDDED_TABLE = "embedded_synonyms.json"
"""The packaged table's file name, in the `cleanbench.data` package."""

WORDNET_DIRS: tuple[str, ...] = ("/usr/share/wordnet",)
"""Where WordNet's database files are looked for when nltk has no corpus of its own: Debian's and
Ubuntu's `wordnet-base` package installs them here (`$WNSEARCHDIR` is tried first)."""

# The 45 lexicographer files of WordNet 3.0 in file-number order (lexnames(5WN)); Debian's
# wordnet-base ships the database without the `lexnames` file that nltk's reader opens first.
_LEXICOGRAPHER_FILES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


@dataclass(frozen=True)
class SynonymSource:
    """A named synonym lookup; `origin` says where its synonyms were read from (None for `none`)."""

    name: str
    origin: str | None
    lookup: Callable[[str], list[str]] | None

    @property
    def has_synonyms(self) -> bool:
        """Whether this source can give synonyms at all (EDA's synonym operations need it)."""
        return self.lookup is not None

    def synonyms(self, word: str) -> list[str]:
        """Synonyms of `word`, sorted, without the word itself; [] when there are none."""
        return self.lookup(word) if self.lookup is not None else []


def check_source_name(name: str) -> None:
    """ValueError naming the choices for an unknown source, and the fix when `wordnet` is missing."""
    if name not in SYNONYM_SOURCES:
        raise ValueError(f"unknown synonym source {name!r}; choose one of {', '.join(SYNONYM_SOURCES)}")
    if name == "wordnet" and load_wordnet() is None:
        raise ValueError(
            "synonyms=wordnet needs nltk and the WordNet database: pip install 'cleanbench[wordnet]' and "
            "apt-get install --no-install-recommends wordnet-base (or nltk.download('wordnet')); "
            "or use synonyms=embedded (ships with cleanbench)"
        )


def synonym_source(name: str) -> SynonymSource:
    """The synonym source called `name` (one of `SYNONYM_SOURCES`)."""
    check_source_name(name)
    if name == "none":
        return SynonymSource("none", None, None)
    if name == "embedded":
        table = embedded_table()
        return SynonymSource("embedded", f"cleanbench:{EMBEDDED_TABLE} ({table['source']})",
                             lambda word: list(table["synonyms"].get(word, [])))
    reader, origin = load_wordnet()
    return SynonymSource("wordnet", origin, functools.lru_cache(maxsize=None)(lambda word: wordnet_synonyms(reader, word)))


@functools.lru_cache(maxsize=1)
def embedded_table() -> dict[str, Any]:
    """The packaged table: {"source": ..., "synonyms": {word: [synonyms]}}."""
    text = resources.files("cleanbench.data").joinpath(EMBEDDED_TABLE).read_text()
    return json.loads(text)


def wordnet_synonyms(reader: Any, word: str) -> list[str]:
    """WordNet synonyms of `word`: lemma names of its synsets cleaned to letters and spaces, sorted, without `word`."""
    names = set()
    for synset in reader.synsets(word):
        for lemma in synset.lemmas():
            name = re.sub(r"[^a-z ]", "", lemma.name().replace("_", " ").replace("-", " ").lower())
            name = re.sub(" +", " ", name).strip()
            if name:
                names.add(name)
    names.discard(word)
    return sorted(names)


def _database_reader(root: Path) -> Any:
    """nltk's WordNet reader on a plain WordNet database folder (e.g. Debian's /usr/share/wordnet)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if str(root) not in map(str, nltk.data.path):
        nltk.data.path.append(str(root))  # nltk only opens files under its data path

    class DatabaseReader(WordNetCorpusReader):
        """Supplies `lexnames` when the folder lacks it; the database is WordNet 3.0 itself, so no
        mapping to nltk's own `wordnet` corpus is needed."""

        def open(self, file: str):  # noqa: A003 (nltk's name)
            if file == "lexnames" and not (root / "lexnames").is_file():
                return io.StringIO("".join(
                    f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXICOGRAPHER_FILES)
                ))
            return super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not used here
        return DatabaseReader(str(root), None)


@functools.lru_cache(maxsize=1)
def load_wordnet() -> tuple[Any, str] | None:
    """(nltk's WordNet reader, where it was read from), or None when nltk or WordNet is missing.

    nltk's own corpus (`nltk.download("wordnet")`) is tried first, then the WordNet database files in
    `$WNSEARCHDIR` or `WORDNET_DIRS` (`apt-get install wordnet-base`). Nothing is downloaded.
    """
    try:
        import nltk  # noqa: F401
    except ImportError:
        return None
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("dog")
        return wordnet, "nltk_data"
    except Exception:  # LookupError when the corpus is not downloaded
        pass
    folders = [os.environ["WNSEARCHDIR"]] if os.environ.get("WNSEARCHDIR") else []
    for folder in [*folders, *WORDNET_DIRS]:
        root = Path(folder)
        if (root / "data.noun").is_file() and (root / "index.noun").is_file():
            try:
                reader = _database_reader(root)
                reader.synsets("dog")
                return reader, str(root)
            except Exception:  # an unreadable or partial database: try the next place
                continue
    return None
