"""The CleanCLIP loss against a hand-computed small case."""

import math

import torch

from cleanbench.losses import cleanclip_loss, clip_loss, inmodal_loss


def _ce_diag(logits):
    """Mean over rows of -log softmax(row)[i] computed by hand."""
    total = 0.0
    for i, row in enumerate(logits.tolist()):
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
    return total / len(logits)


def _unit(x):
    return torch.nn.functional.normalize(torch.tensor(x, dtype=torch.float64), dim=-1)


I = _unit([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
T = _unit([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
I_AUG = _unit([[0.8, 0.2], [0.7, 0.7], [0.2, 1.0]])
T_AUG = _unit([[1.0, 0.3], [0.4, 0.6], [0.0, 1.0]])
SCALE = torch.tensor(10.0, dtype=torch.float64)


def test_clip_loss_is_symmetric_infonce():
    expected = 0.5 * (_ce_diag(10 * I @ T.T) + _ce_diag(10 * T @ I.T))
    assert math.isclose(float(clip_loss(I, T, SCALE)), expected, rel_tol=1e-9)


def test_inmodal_loss_is_one_directional():
    expected = _ce_diag(10 * I @ I_AUG.T)
    assert math.isclose(float(inmodal_loss(I, I_AUG, SCALE)), expected, rel_tol=1e-9)
    symmetric = 0.5 * (expected + _ce_diag(10 * I_AUG @ I.T))
    assert not math.isclose(float(inmodal_loss(I, I_AUG, SCALE)), symmetric, rel_tol=1e-6)


def test_cleanclip_loss_weights_and_parts():
    clip = 0.5 * (_ce_diag(10 * I @ T.T) + _ce_diag(10 * T @ I.T))
    ss = 0.5 * (_ce_diag(10 * I @ I_AUG.T) + _ce_diag(10 * T @ T_AUG.T))
    parts = cleanclip_loss(I, T, I_AUG, T_AUG, SCALE, clip_weight=1.0, inmodal_weight=2.0)
    assert math.isclose(float(parts["clip"]), clip, rel_tol=1e-9)
    assert math.isclose(float(parts["inmodal"]), ss, rel_tol=1e-9)
    assert math.isclose(float(parts["loss"]), clip + 2 * ss, rel_tol=1e-9)
    only_clip = cleanclip_loss(I, T, I_AUG, T_AUG, SCALE, clip_weight=1.0, inmodal_weight=0.0)
    assert "inmodal" not in only_clip and math.isclose(float(only_clip["loss"]), clip, rel_tol=1e-9)
