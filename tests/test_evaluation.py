"""Zero-shot evaluation: ASR excludes target-class images; RA counts true-class hits; intervals."""

import pytest
import torch

from cleanbench.attacks.badnet import BadNet, BadNetOptions
from cleanbench.data.base import ClassificationSet
from cleanbench.evaluation import evaluate
from cleanbench.metrics import proportion


class _Model(torch.nn.Module):
    """A fake CLIP: images carry their predicted class in pixel (0, 0, 0); texts in their first token."""

    def encode_text(self, tokens, normalize=False):
        return torch.nn.functional.one_hot(tokens[:, 0], 3).float()

    def encode_image(self, images, normalize=False):
        return torch.nn.functional.one_hot(images[:, 0, 0, 0].round().long().clamp(0, 2), 3).float()


class _Bundle:
    model = _Model()

    @staticmethod
    def tokenizer(texts):
        return torch.tensor([[int(t.split()[-1])] for t in texts])

    @staticmethod
    def model_input(images):
        return images.float()


class _PaintTarget(BadNet):
    """A trigger that makes the fake model predict class 2 on every triggered image."""

    def apply(self, images, params):
        out = images.clone()
        out[:, 0, 0, 0] = 2 / 255
        return out


def test_asr_excludes_target_class_and_ra_counts_true_class():
    # labels: 0, 0, 1, 1, 2 (target 2); predictions on clean images: 0, 1, 1, 1, 2
    labels = torch.tensor([0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2])
    images = torch.zeros(5, 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = predicted.to(torch.uint8)
    test = ClassificationSet(images, labels, ("0", "1", "2"), ("class {}",))
    attack = _PaintTarget(BadNetOptions(), 4, 0)
    result = evaluate(_Bundle(), test, attack, target_index=2, seed=0, device="cpu")
    assert result["ca_top1"]["successes"] == 4 and result["ca_top1"]["total"] == 5
    assert result["asr"]["total"] == 4  # the target-class image is excluded
    assert result["asr"]["successes"] == 4
    assert result["ra"]["successes"] == 0


def test_wilson_interval_hand_computed():
    p = proportion(8, 10)
    # Wilson 95 %: centre (8 + 1.96^2/2) / (10 + 1.96^2), half-width 1.96 sqrt(pq/n + z^2/4n^2) / (1 + z^2/n)
    assert p.value == 0.8
    assert p.low == pytest.approx(0.4902, abs=1e-3) and p.high == pytest.approx(0.9433, abs=1e-3)
    zero = proportion(0, 20)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.1611, abs=1e-3)
    with pytest.raises(ValueError):
        proportion(11, 10)
