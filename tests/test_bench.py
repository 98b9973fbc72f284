"""`cleanbench bench`: every row, valid JSON, consistent derived figures, FLOP counts by hand.

Timings are never asserted: only that they are positive and that the figures derived from them
(rates, overheads, ratios, MFU, the cell estimate) follow from the recorded repetitions.
"""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from torch import nn

from cleanbench.bench_measure import (
    BenchConfig, BenchResult, Measure, count_flops, device_peak_tflops, peak_for_name,
)
from cleanbench.bench_report import format_result
from cleanbench.cli import main
from cleanbench.errors import UsageError
from cleanbench.registry import ATTACKS
from cleanbench.trigger_bench import reference_triggers

BATCH = 8


def _strict(constant: str) -> None:
    raise ValueError(f"non-standard JSON constant {constant}")


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory) -> tuple[dict, str]:
    """One tiny bench through the command line: its JSON and what it printed."""
    import contextlib
    import io

    path = tmp_path_factory.mktemp("bench") / "bench.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", "--device", "cpu", "--batch-size", str(BATCH), "--steps", "1", "--repeats", "2",
                     "--eval-images", "24", "--reference-triggers", "--json", str(path)])
    assert code == 0
    return json.loads(path.read_text(), parse_constant=_strict), out.getvalue()


def test_every_row_is_printed_and_in_the_json(bench_json):
    data, printed = bench_json
    keys = {row["key"] for row in data["rows"]}
    expected = {
        "bare:forward", f"bare:train:{BATCH}", f"bare:train:{2 * BATCH}", "train:pretrain", "train:cleanclip",
        "train:finetune", "eval:bare", "eval:evaluate", "setup:poison", "setup:tokenise", "setup:cleanclip",
    }
    expected |= {f"trigger:{name}" for name in ATTACKS.names()}
    expected |= {f"{kind}:{name}" for kind in ("reference", "batched") for name in ATTACKS.names()
                 if name in reference_triggers()}  # the attacks with a per-image form in the reference
    assert expected <= keys
    for name in ("poisoned pretraining step", "CleanCLIP step (originals + views)", "finetuning step",
                 "zero-shot evaluation", "bare image-encoder forward", "bare CLIP forward+backward",
                 "trigger wanet", "reference per-image badnet", "where a step's time goes", "one default cell"):
        assert name in printed
    assert "MFU" not in printed and "of peak" in printed and "GFLOP/s" in printed  # CPU: the measured matmul peak
    assert data["environment"]["peak_source"].startswith("measured") and data["peak_tflops"] > 0
    assert set(data["breakdown_ms_per_step"]) == {"pretrain", "cleanclip", "finetune", "evaluation"}
    assert "image views" in data["breakdown_ms_per_step"]["cleanclip"]
    assert "image views" not in data["breakdown_ms_per_step"]["pretrain"]
    assert data["config"]["batch_size"] == BATCH and data["environment"]["device"] == "cpu"


def test_derived_figures_follow_from_the_repetitions(bench_json):
    data, _ = bench_json
    rows = {row["key"]: row for row in data["rows"]}
    for row in rows.values():
        assert len(row["seconds"]) == 2 and all(s > 0 for s in row["seconds"])
        assert row["median_seconds"] == pytest.approx(statistics.median(row["seconds"]))
        assert row["images_per_second"] == pytest.approx(row["items"] / row["median_seconds"])
        assert row["spread"] == pytest.approx((max(row["seconds"]) - min(row["seconds"])) / row["median_seconds"])
        if row["flops"]:  # CPU: against the measured matmul peak
            assert row["mfu"] == pytest.approx(row["achieved_tflops"] / data["peak_tflops"])
        if row["baseline"] is None:
            assert row["overhead"] is None and row["speed_ratio"] is None
            continue
        base = rows[row["baseline"]]
        assert base["items"] == row["items"]  # compared on the same encoded items
        slowdown = statistics.median(s / b for s, b in zip(row["seconds"], base["seconds"]))
        if row["group"] == "training":
            assert row["overhead"] == pytest.approx(slowdown - 1)
            assert row["met"] == (row["overhead"] <= 0.10)
        else:
            assert row["speed_ratio"] == pytest.approx(1 / slowdown)
    assert rows["eval:evaluate"]["met"] == (rows["eval:evaluate"]["speed_ratio"] >= 0.9)
    assert {rows[k]["baseline"] for k in ("train:pretrain", "train:finetune")} == {f"bare:train:{BATCH}"}
    assert rows["train:cleanclip"]["baseline"] == f"bare:train:{2 * BATCH}"
    for key in ("train:pretrain", "train:cleanclip", "train:finetune", "eval:evaluate"):
        bare = rows[rows[key]["baseline"]]["flops"]
        assert bare > 0 and rows[key]["flops"] >= bare  # the stage runs the bare model's products, and its loss's
        assert rows[key]["achieved_tflops"] == pytest.approx(rows[key]["flops"] / rows[key]["median_seconds"] / 1e12)


def test_breakdown_and_estimate_add_up(bench_json):
    data, _ = bench_json
    rows = {row["key"]: row for row in data["rows"]}
    for stage, parts in data["breakdown_ms_per_step"].items():
        assert parts["other"] == pytest.approx(parts["stage"] - sum(v for k, v in parts.items() if k not in ("stage", "other")))
    pretrain = rows["train:pretrain"]
    assert data["breakdown_ms_per_step"]["pretrain"]["stage"] == pytest.approx(1000 * pretrain["median_seconds"] / pretrain["steps"])
    estimate = data["cell_estimate_seconds"]
    assert estimate["total"] == pytest.approx(sum(v for k, v in estimate.items() if k != "total"))
    assert all(v >= 0 for v in estimate.values())
    # the default cell is the default setting's: 4 epochs of 40,000 pairs in batches of BATCH; CleanCLIP
    # 10 epochs of 1,200 pairs in batches of 64, each costing 64 / BATCH of a timed step
    assert estimate["pretraining"] == pytest.approx(4 * (40_000 // BATCH) * pretrain["median_seconds"] / pretrain["steps"])
    cleanclip = rows["train:cleanclip"]
    assert estimate["defense (cleanclip)"] == pytest.approx(
        10 * (1_200 // 64) * (64 / BATCH) * cleanclip["median_seconds"] / cleanclip["steps"])


def test_flop_count_matches_a_hand_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Flatten(), nn.Linear(4 * 6 * 6, 5, bias=False))
    x = torch.randn(2, 3, 8, 8)
    conv = 2 * (2 * 6 * 6) * 4 * (3 * 3 * 3)  # 2 FLOPs per multiply-add: outputs x out channels x kernel volume
    linear = 2 * 2 * (4 * 6 * 6) * 5
    assert count_flops(lambda: model(x)) == conv + linear
    # backward: the linear layer's input and weight gradients (one product each, as big as the forward), the
    # convolution's weight gradient only (its input needs no gradient)
    assert count_flops(lambda: model(x).sum().backward()) == conv + linear + 2 * linear + conv
    attention_free = nn.Linear(16, 16, bias=True)
    assert count_flops(lambda: attention_free(torch.randn(3, 16))) == 2 * 3 * 16 * 16


def test_mfu_and_its_column_on_cuda_only():
    measure = Measure("training", "step", items=4, steps=2, seconds=[2.0, 4.0, 3.0], flops=6 * 10**12)
    bare = Measure("model", "bare", items=4, steps=2, seconds=[1.0, 2.0, 4.0], flops=5 * 10**12)
    environment = {"device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3", "torch": "x", "threads": 1,
                   "image_size": 32, "load_average_start": [0.0], "load_average_end": [0.0]}
    result = BenchResult(BenchConfig(), environment, {"train:x": measure, "bare:x": bare}, {}, {"total": 1.0}, 989.0)
    measure.baseline = "bare:x"
    row = next(r for r in result.rows() if r["key"] == "train:x")
    assert row["achieved_tflops"] == pytest.approx(2.0)  # 6e12 FLOPs in 3 s
    assert row["mfu"] == pytest.approx(2.0 / 989.0)
    assert row["overhead"] == pytest.approx(statistics.median([2.0, 2.0, 0.75]) - 1)
    assert row["met"] is False
    printed = format_result(result)
    assert "MFU" in printed and "0.2%" in printed and "GFLOP/step" in printed
    assert "noisy: 2 stage rows" in printed  # spreads of 67 % and 150 %
    measure.seconds, bare.seconds = [3.0, 3.0, 3.1], [1.0, 1.0, 1.0]
    assert "noisy" not in format_result(result)
    assert device_peak_tflops(torch.device("cpu"), 100.0) is None


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0), ("NVIDIA H100 NVL", None),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A10", 125.0), ("NVIDIA A10G", None), ("NVIDIA L4", 121.0),
    ("NVIDIA L40S", 362.0), ("Tesla T4", 65.0), ("Tesla V100-PCIE-16GB", 112.0), ("NVIDIA GeForce GTX 1080", None),
])
def test_peak_table(name, peak):
    assert peak_for_name(name) == peak


def test_bad_options_are_one_line_errors(capsys):
    assert main(["bench", "--batch-size", "1"]) == 2
    assert "--batch-size must be at least 2" in capsys.readouterr().err
    with pytest.raises(UsageError):
        BenchConfig(peak_tflops=0)
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda", "--model", "RN50"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert main(["bench", "--model", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_the_matmul_peak_is_measured_in_tflops():
    from cleanbench.peak import matmul_peak_tflops

    assert 0 < matmul_peak_tflops(torch.device("cpu"), side=128, repeats=2) < 1e3
