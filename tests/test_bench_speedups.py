"""`cleanbench bench --speedups`: every variant row, an unavailable variant reported, the figures and
the numbers check derived from what was measured.

Timings are never asserted. `torch.compile` is replaced by the identity here (compiling takes close to
a minute on a small CPU); the command itself compiles.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import statistics

import pytest
import torch

from cleanbench.bench_measure import BenchConfig
from cleanbench.bench_speedups import VARIANTS
from cleanbench.bench_step import ChildStep, Variant
from cleanbench.cli import main

BATCH = 4


def _no_fused_adamw(original: type) -> type:
    class AdamW(original):
        def __init__(self, *args, fused: bool | None = None, **kwargs) -> None:
            if fused:
                raise RuntimeError("fused AdamW is not built for this device\nsecond line")
            super().__init__(*args, **kwargs)

    return AdamW


@pytest.fixture(scope="module")
def speedups(tmp_path_factory) -> tuple[dict, str, list]:
    """One tiny `bench --speedups` through the command line, with fused AdamW made unavailable: its
    JSON, what it printed, and the child processes left after it."""
    path = tmp_path_factory.mktemp("speedups") / "speedups.json"
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(torch, "compile", lambda fn: fn)
        patch.setattr(torch.optim, "AdamW", _no_fused_adamw(torch.optim.AdamW))
        code = main(["bench", "--speedups", "--device", "cpu", "--batch-size", str(BATCH), "--image-size", "16",
                     "--repeats", "2", "--steps", "1", "--json", str(path)])
    assert code == 0
    return json.loads(path.read_text()), out.getvalue(), multiprocessing.active_children()


def test_every_variant_is_printed_and_in_the_json(speedups):
    data, printed, _ = speedups
    assert [row["variant"] for row in data["variants"]] == [v.name for v in VARIANTS]
    names = {"float32", "AdamW foreach", "AdamW fused", "channels-last images", "bfloat16 autocast", "torch.compile",
             "1 thread", "2 threads"}
    assert names == {row["variant"] for row in data["variants"]}
    for name in names:
        assert name in printed
    assert "GFLOP/s" in printed and "of peak" in printed and "vs float32" in printed and "load average" in printed
    assert data["config"]["speedups"] is True and data["config"]["batch_size"] == BATCH


def test_an_unavailable_variant_is_reported_not_raised(speedups):
    data, printed, _ = speedups
    fused = next(row for row in data["variants"] if row["variant"] == "AdamW fused")
    assert fused["unavailable"] == "RuntimeError: fused AdamW is not built for this device"
    assert fused["seconds"] is None and fused["max_loss_difference"] is None
    assert "AdamW fused: RuntimeError: fused AdamW is not built for this device" in printed
    assert [row["variant"] for row in data["variants"] if row["unavailable"]] == ["AdamW fused"]


def test_figures_follow_from_the_repetitions(speedups):
    data, _, _ = speedups
    rows = {row["variant"]: row for row in data["variants"] if not row["unavailable"]}
    base = rows["float32"]["seconds"]
    assert data["flops_per_step"] > 0
    for name, row in rows.items():
        assert len(row["seconds"]) == 2 and all(s > 0 for s in row["seconds"])
        per_step = statistics.median(row["seconds"]) / row["steps"]
        assert row["ms_per_step"] == pytest.approx(1000 * per_step)
        assert row["achieved_gflops"] == pytest.approx(data["flops_per_step"] / per_step / 1e9)
        peak = "bfloat16" if name == "bfloat16 autocast" else "float32"
        assert row["peak"] == peak
        assert row["of_peak"] == pytest.approx(row["achieved_gflops"] / (1000 * data["peak_tflops"][peak]))
        assert row["vs_float32"] == pytest.approx(statistics.median(b / s for b, s in zip(base, row["seconds"])))
        assert (row["compile_seconds"] is not None) == (name == "torch.compile")
    assert rows["float32"]["vs_float32"] == 1.0
    assert data["peak_tflops"]["float32"] > 0 and data["peak_tflops"]["bfloat16"] > 0


def test_the_numbers_check_is_measured(speedups):
    data, printed, _ = speedups
    rows = {row["variant"]: row for row in data["variants"] if not row["unavailable"]}
    # float32 against its own reference run: the step repeats exactly from the same weights and seed
    assert rows["float32"]["max_loss_difference"] == 0 and rows["float32"]["max_parameter_difference"] == 0
    # bfloat16 products round differently: the losses and the trained weights move
    assert rows["bfloat16 autocast"]["max_loss_difference"] > 0
    assert rows["bfloat16 autocast"]["max_parameter_difference"] > 0
    assert rows["torch.compile"]["max_loss_difference"] == 0  # the identity "compiler" of this test
    assert data["check_steps"] == 2 and "2 steps from the same weights and seed" in printed
    # the thread counts ran in their own processes: from the same build, so 1 thread differs only by
    # the order of float sums, and the process's own count repeats float32 exactly
    own = f"{torch.get_num_threads()} thread" + ("s" if torch.get_num_threads() > 1 else "")
    assert rows[own]["max_loss_difference"] == 0 and rows[own]["max_parameter_difference"] == 0


def test_the_child_processes_are_stopped(speedups):
    assert speedups[2] == []


def test_a_child_that_fails_reports_its_error():
    child = ChildStep(Variant("0 threads", threads=0), BenchConfig(batch_size=2, image_size=8, steps=1))
    try:
        child.start()
        with pytest.raises(RuntimeError, match="threads"):
            child.ready()
    finally:
        child.close()
    assert not child.process.is_alive()


def test_speedups_refuse_the_stage_options(capsys):
    assert main(["bench", "--speedups", "--reference-triggers"]) == 2
    assert "drop --reference-triggers and --peak-tflops" in capsys.readouterr().err
    assert main(["bench", "--speedups", "--peak-tflops", "10"]) == 2
