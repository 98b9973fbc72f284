"""Tokenizers: open_clip's BPE tokenizer, optionally remapped to a small closed vocabulary.

The tiny default model's text tower has a 54-entry embedding table instead of 49,408: token ids
from open_clip's tokenizer are mapped, order preserved, onto the ids that the embedded dataset's
words use. Order preservation keeps the end-of-text token the largest id, so open_clip's
argmax pooling still finds it. Words outside the vocabulary (e.g. WordNet synonyms inserted by
text augmentation) map to a single unknown id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer

PAD_ID = 0
UNKNOWN_ID = 1


class CompactTokenizer:
    """open_clip's BPE tokenizer with ids remapped onto the vocabulary of `words`."""

    def __init__(self, words: Iterable[str], context_length: int = 24) -> None:
        self.base = SimpleTokenizer(context_length=context_length)
        self.context_length = context_length
        kept = {self.base.sot_token_id, self.base.eot_token_id}
        for word in words:
            kept.update(self.base.encode(word))
        self.base_ids = sorted(kept)
        table = torch.full((len(self.base.encoder),), UNKNOWN_ID, dtype=torch.long)
        table[0] = PAD_ID
        table[torch.tensor(self.base_ids)] = torch.arange(2, len(self.base_ids) + 2)
        self.table = table

    @property
    def vocab_size(self) -> int:
        """Embedding-table size the text tower needs: padding, unknown, and the kept ids."""
        return len(self.base_ids) + 2

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids of shape (N, context_length); over-long texts are cut but keep end-of-text."""
        return self.table[self.base(texts)]
