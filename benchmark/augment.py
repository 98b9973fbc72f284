"""Augmented views for CleanCLIP's in-modal losses (docs/reference.md §3.2).

Image views are recomputed every step; text views once per caption (static across epochs), as in
the reference.

- `autoaugment`: torchvision's AutoAugment (ImageNet policy, the reference's choice) on each uint8
  image, applied independently per image.
- `crop-jitter`: a batched SimCLR-style view for small images: random resized crop (scale 0.6-1,
  aspect 0.8-1.25), horizontal flip, brightness/contrast/saturation jitter in [0.6, 1.4] and
  20 % greyscale, as in the embedded-default trial.

The text view is one EDA operation (Wei & Zou 2019) per caption, chosen uniformly among the ones
available: synonym replacement and random insertion use WordNet through nltk when it is installed
(nltk's own corpus, or Debian's `wordnet-base` database read through nltk's reader: `pip install
"cleanbench[wordnet]"` and `apt-get install --no-install-recommends wordnet-base`); without WordNet,
insertion repeats a word of the caption and synonym replacement is skipped. The run card's defense
notes say which operations ran (`text_view_operations`) and where WordNet came from.
"""

from __future__ import annotations

import functools
import io
import os
import random
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torchvision.transforms import v2

ImageView = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def autoaugment_view() -> ImageView:
    """Per-image torchvision AutoAugment (ImageNet policy) on uint8 tensors."""
    transform = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)

    def view(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # torchvision samples from torch's global generator; reseed it from ours for determinism.
        state = torch.random.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        try:
            return torch.stack([transform(image) for image in images])
        finally:
            torch.random.set_rng_state(state)

    return view


def crop_jitter_view() -> ImageView:
    """A batched crop/flip/colour-jitter/greyscale view, one random draw per image."""

    def view(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count, _, height, width = images.shape
        x = images.float() / 255
        # Per image: scale, aspect, centre x, centre y, flip, three jitter factors, greyscale, drawn on the
        # CPU in this order and moved in one copy (one copy per draw synchronised CUDA seven times a view).
        drawn = torch.cat([torch.rand(count, n, generator=generator) for n in (1, 1, 1, 1, 1, 3, 1)], dim=1)
        drawn = drawn.to(x.device)
        scale = 0.6 + 0.4 * drawn[:, 0]
        aspect = torch.exp((drawn[:, 1] - 0.5) * 2 * 0.2231)  # log-uniform in [0.8, 1.25]
        half_w = (scale * aspect).sqrt().clamp(max=1.0)
        half_h = (scale / aspect).sqrt().clamp(max=1.0)
        centre_x = (1 - half_w) * (2 * drawn[:, 2] - 1)
        centre_y = (1 - half_h) * (2 * drawn[:, 3] - 1)
        flip = torch.where(drawn[:, 4] < 0.5, -1.0, 1.0)
        theta = torch.zeros(count, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = half_w * flip, centre_x
        theta[:, 1, 1], theta[:, 1, 2] = half_h, centre_y
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        factors = 0.6 + 0.8 * drawn[:, 5:8]
        x = x * factors[:, 0, None, None, None]
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        mean = grey.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * factors[:, 1, None, None, None] + mean
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - grey) * factors[:, 2, None, None, None] + grey
        to_grey = (drawn[:, 8] < 0.2)[:, None, None, None]
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = torch.where(to_grey, grey.expand_as(x), x)
        return x.clamp(0, 1).mul(255).round().to(torch.uint8)

    return view


IMAGE_VIEWS: dict[str, Callable[[], ImageView]] = {"autoaugment": autoaugment_view, "crop-jitter": crop_jitter_view}


def image_view(name: str) -> ImageView:
    """The image view called `name`."""
    if name not in IMAGE_VIEWS:
        raise ValueError(f"unknown image view {name!r}; choose one of {', '.join(IMAGE_VIEWS)}")
    return IMAGE_VIEWS[name]()


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


def clean_caption(caption: str) -> str:
    """The reference's EDA cleaning: lower case, letters and spaces only, single spaces."""
    text = caption.lower().replace("'", "")
    text = re.sub(r"[-\t\n]", " ", text)
    text = re.sub(r"[^a-z ]", " ", text)
    return re.sub(" +", " ", text).strip()


STOP_WORDS = frozenset(
    "a about above after again against all am an and any are as at be because been before being below "
    "between both but by can could did do does doing down during each few for from further had has have "
    "having he her here hers herself him himself his how i if in into is it its itself just me more most "
    "my myself no nor not now of off on once only or other our ours ourselves out over own same she should "
    "so some such than that the their theirs them themselves then there these they this those through to "
    "too under until up very was we were what when where which while who whom why will with would you "
    "your yours yourself yourselves".split()
)
"""Function words that synonym replacement leaves alone (EDA replaces only non-stop-words)."""


class EDA:
    """One EDA operation per caption (docs/reference.md §3.2), alpha = 0.1 for every operation.

    With WordNet: synonym replacement, random insertion (of a synonym of a random word), random
    swap and random deletion, one chosen uniformly. Without WordNet: insertion, swap and deletion,
    where insertion repeats a random word of the caption (there is no synonym to insert).
    """

    def __init__(self, alpha: float = 0.1, seed: int = 0, use_wordnet: bool = True) -> None:
        self.alpha = alpha
        self.rng = random.Random(seed)
        loaded = load_wordnet() if use_wordnet else None
        self.wordnet, self.wordnet_source = loaded if loaded is not None else (None, None)
        self._synonyms: dict[str, list[str]] = {}

    @property
    def operations(self) -> list[str]:
        """Names of the operations this instance can apply (depends on WordNet)."""
        ops = ["insertion", "swap", "deletion"]
        return (["synonym"] + ops) if self.wordnet is not None else ops

    def synonyms(self, word: str) -> list[str]:
        """WordNet synonyms of `word` (lemma names cleaned to letters and spaces), sorted; [] without WordNet."""
        if self.wordnet is None:
            return []
        if word not in self._synonyms:
            names = set()
            for synset in self.wordnet.synsets(word):
                for lemma in synset.lemmas():
                    name = re.sub(r"[^a-z ]", "", lemma.name().replace("_", " ").replace("-", " ").lower())
                    name = re.sub(" +", " ", name).strip()
                    if name:
                        names.add(name)
            names.discard(word)
            self._synonyms[word] = sorted(names)
        return self._synonyms[word]

    def _replace(self, words: list[str], n: int) -> list[str]:
        candidates = sorted({w for w in words if w not in STOP_WORDS})
        self.rng.shuffle(candidates)
        replaced = 0
        for word in candidates:
            options = self.synonyms(word)
            if options:
                choice = self.rng.choice(options)
                words = [choice if w == word else w for w in words]
                replaced += 1
                if replaced >= n:
                    break
        return " ".join(words).split()

    def _insert(self, words: list[str], n: int) -> list[str]:
        words = list(words)
        for _ in range(n):
            if self.wordnet is None:
                new = self.rng.choice(words)
            else:
                new = None
                for _ in range(10):  # as EDA: give up after 10 words without synonyms
                    options = self.synonyms(self.rng.choice(words))
                    if options:
                        new = self.rng.choice(options)
                        break
                if new is None:
                    break
            words.insert(self.rng.randrange(len(words) + 1), new)
        return " ".join(words).split()

    def _swap(self, words: list[str], n: int) -> list[str]:
        words = list(words)
        for _ in range(n):
            if len(words) > 1:
                i, j = self.rng.sample(range(len(words)), 2)
                words[i], words[j] = words[j], words[i]
        return words

    def _delete(self, words: list[str]) -> list[str]:
        if len(words) == 1:
            return words
        kept = [w for w in words if self.rng.random() > self.alpha]
        return kept or [self.rng.choice(words)]

    def __call__(self, caption: str) -> str:
        """The caption, cleaned, with one randomly chosen operation applied (a caption without letters is returned as is)."""
        words = clean_caption(caption).split()
        if not words:
            return caption
        n = max(1, int(self.alpha * len(words)))
        op = self.rng.choice(self.operations)
        if op == "synonym":
            words = self._replace(words, n)
        elif op == "insertion":
            words = self._insert(words, n)
        elif op == "swap":
            words = self._swap(words, n)
        else:
            words = self._delete(words)
        return " ".join(words)

    def views(self, captions: Sequence[str]) -> list[str]:
        """One augmented view per caption."""
        return [self(c) for c in captions]
