"""Models from pretrained tags, checkpoint files and local open_clip folders; what loads safely."""

import argparse
import time
import types

import open_clip
import pytest
import torch
from torch import nn

from cleanbench.errors import UsageError
from cleanbench.models import (
    TINY_MODEL,
    ColumnTokenizer,
    build_model,
    cached_weights,
    check_model,
    input_size,
    prefers_channels_last,
)
from cleanbench.text import CompactTokenizer


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An offline machine whose Hugging Face cache is empty."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model().model.state_dict()


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_missing_pretrained_tag_offline_is_one_clear_error_within_a_second(empty_hub):
    start = time.perf_counter()
    with pytest.raises(UsageError) as error:
        check_model("RN50-quickgelu", "openai")
    assert time.perf_counter() - start < 1.0
    message = str(error.value)
    assert "RN50-quickgelu / openai" in message and "HF_HUB_OFFLINE" in message
    assert "timm--resnet50_clip.openai" in message and "--pretrained PATH" in message
    assert cached_weights("RN50-quickgelu", "openai") is None


def test_cached_pretrained_tag_is_found_offline(empty_hub):
    snapshot = empty_hub / "models--timm--resnet50_clip.openai" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    (empty_hub / "models--timm--resnet50_clip.openai" / "refs").mkdir()
    (empty_hub / "models--timm--resnet50_clip.openai" / "refs" / "main").write_text("abc")
    assert cached_weights("RN50-quickgelu", "openai").endswith("open_clip_model.safetensors")
    check_model("RN50-quickgelu", "openai")


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(UsageError, match="its pretrained tags are openai, yfcc15m, cc12m"):
        check_model("RN50-quickgelu", "laion9b")


def test_checkpoint_file_round_trips_bit_for_bit(tmp_path):
    state = _tiny_state(1)
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    _assert_same(build_model(TINY_MODEL, str(path)).model.state_dict(), state)
    _assert_same(open_clip.create_model(TINY_MODEL, pretrained=str(path)).state_dict(), state)


def test_reference_style_checkpoint_loads(tmp_path):
    """The reference saves {epoch, name, state_dict, optimizer} with DataParallel's `module.` prefix."""
    state = _tiny_state(2)
    path = tmp_path / "epoch_64.pt"
    torch.save({"epoch": 64, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4}]}}, path)
    _assert_same(build_model(TINY_MODEL, str(path)).model.state_dict(), state)


def test_full_pickle_needs_trust(tmp_path):
    state = _tiny_state(3)
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1e-5)}, path)
    with pytest.raises(UsageError, match="not a plain weights file.*trust_checkpoint: true"):
        build_model(TINY_MODEL, str(path))
    _assert_same(build_model(TINY_MODEL, str(path), trust_checkpoint=True).model.state_dict(), state)


def _torchscript_like_openai(state: dict[str, torch.Tensor]) -> torch.jit.ScriptModule:
    """A TorchScript module whose state dict is `state` plus OpenAI's extra entries (as in RN50.pt)."""
    root = nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone())
    for key, value in (("input_resolution", 32), ("context_length", 24), ("vocab_size", 54)):
        root.register_buffer(key, torch.tensor(value))
    return torch.jit.script(root)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_torchscript_archive_needs_trust(tmp_path):
    state = _tiny_state(4)
    path = tmp_path / "RN50.pt"
    torch.jit.save(_torchscript_like_openai(state), path)
    with pytest.raises(UsageError, match="TorchScript archive.*trust_checkpoint: true"):
        check_model(TINY_MODEL, str(path), trust_checkpoint=False)
    with pytest.raises(UsageError, match="trust_checkpoint"):
        build_model(TINY_MODEL, str(path))
    _assert_same(build_model(TINY_MODEL, str(path), trust_checkpoint=True).model.state_dict(), state)


def test_local_open_clip_folder(tmp_path):
    import json

    state = _tiny_state(5)
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": open_clip.get_model_config(TINY_MODEL), "cleanbench": {"base_model": TINY_MODEL}}))
    bundle = build_model(f"local-dir:{folder}")
    _assert_same(bundle.model.state_dict(), state)
    assert isinstance(bundle.tokenizer, ColumnTokenizer) and isinstance(bundle.tokenizer.base, CompactTokenizer)
    assert input_size(f"local-dir:{folder}") == 32
    with pytest.raises(UsageError, match="holds its own weights"):
        check_model(f"local-dir:{folder}", "openai")
    with pytest.raises(UsageError, match="open_clip_config.json"):
        check_model(f"local-dir:{tmp_path}")


def test_input_size_is_read_without_building():
    assert input_size("RN50-quickgelu") == 224 and input_size("ViT-B-16") == 224 and input_size(TINY_MODEL) == 32


def test_channels_last_for_convolutional_towers_on_cuda_only():
    resnet = types.SimpleNamespace(visual=nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)))
    vit = types.SimpleNamespace(visual=nn.Sequential(nn.Conv2d(3, 8, 16), nn.Linear(8, 8)))
    assert prefers_channels_last(resnet, torch.device("cuda"))
    assert not prefers_channels_last(resnet, torch.device("cpu"))
    assert not prefers_channels_last(vit, torch.device("cuda"))


def test_channels_last_input_gives_the_same_features():
    torch.manual_seed(0)
    bundle = build_model()
    bundle.model.eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    plain = bundle.model.encode_image(bundle.model_input(images))
    bundle.channels_last = True
    bundle.model = bundle.model.to(memory_format=torch.channels_last)
    converted = bundle.model_input(images)
    assert converted.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(bundle.model.encode_image(converted), plain, rtol=1e-4, atol=1e-5)
