"""The tiny default model is a stock open_clip CLIP that open_clip builds, saves and reloads."""

import io

import open_clip
import pytest
import torch

from cleanbench.data.embedded import vocabulary_words
from cleanbench.errors import UsageError
from cleanbench.models import TINY_MODEL, build_model
from cleanbench.text import CompactTokenizer, UNKNOWN_ID


def test_tiny_model_is_open_clip_clip_and_round_trips():
    bundle = build_model()
    assert isinstance(bundle.model, open_clip.CLIP)
    assert bundle.image_size == 32
    buffer = io.BytesIO()
    torch.save(bundle.model.state_dict(), buffer)
    buffer.seek(0)
    again = open_clip.create_model(TINY_MODEL)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.rand(2, 3, 32, 32)
    bundle.model.eval(), again.eval()
    assert torch.equal(bundle.model.encode_image(x), again.encode_image(x))


def test_config_vocab_matches_tokenizer():
    tokenizer = CompactTokenizer(vocabulary_words())
    assert build_model().model.vocab_size == tokenizer.vocab_size


def test_compact_tokenizer_keeps_end_of_text_the_argmax_and_maps_unknown_words():
    tokenizer = CompactTokenizer(vocabulary_words(), context_length=24)
    tokens = tokenizer(["a red star.", "a zebra star."])
    end = tokens.argmax(dim=-1)
    assert tokens[0, end[0]] == tokenizer.vocab_size - 1
    assert tokens[1, end[1]] == tokenizer.vocab_size - 1
    assert (tokens[1] == UNKNOWN_ID).sum() == 1
    assert int(tokens[0].max()) < tokenizer.vocab_size


def test_overlong_caption_keeps_end_of_text():
    tokenizer = CompactTokenizer(vocabulary_words(), context_length=8)
    tokens = tokenizer(["a red star on a noisy background at the top left and a blue ring."])
    assert tokens[0, -1] == tokenizer.vocab_size - 1


def test_unknown_model_suggests_close_name():
    with pytest.raises(UsageError, match="did you mean"):
        build_model("cleanbench-tinny")


def test_normalisation_constants_are_made_once_per_device_and_dtype():
    bundle = build_model()
    images = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (bundle.mean, bundle.std))
    assert torch.equal(bundle.normalize(images), (images - mean) / std)
    first = bundle._statistics[(images.device, torch.float32)]
    assert bundle.normalize(images.double()).dtype == torch.float64
    bundle.normalize(images)
    assert bundle._statistics[(images.device, torch.float32)] is first and len(bundle._statistics) == 2
