"""The tables `cleanbench bench` prints: from a `BenchResult` the stages, breakdown per step and cell
estimate; from a `SpeedupResult` (`--speedups`) the candidate speed-ups of a pretraining step."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from cleanbench.bench_measure import NOISY_SPREAD, STAGE_GROUPS, BenchResult
from cleanbench.peak import MATMUL_SIDE

if TYPE_CHECKING:
    from cleanbench.bench_speedups import SpeedupResult


def _fmt(value: float | None, pattern: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def _compared(row: dict[str, Any]) -> str:
    if row["overhead"] is not None:
        return f"{row['overhead']:+.1%} vs bare"
    if row["speed_ratio"] is not None:
        return f"{row['speed_ratio']:.2f}x " + ("reference" if row["group"] == "reference trigger" else "bare")
    return ""


def format_result(result: BenchResult) -> str:
    """The tables `cleanbench bench` prints: stages, breakdown per step, cell estimate."""
    import pandas as pd

    cuda = result.environment["device"].startswith("cuda")
    lines = []
    env = result.environment
    lines.append(f"{env['device']} ({env['device_name']}), torch {env['torch']}, {env['threads']} threads, "
                 f"{result.config.model} at {env['image_size']} px, batch {result.config.batch_size}, "
                 f"{result.config.repeats} repetitions of {result.config.steps} steps, load average "
                 f"{env['load_average_start'][0]:.2f} -> {env['load_average_end'][0]:.2f}")
    table = []
    for row in result.rows():
        if row["group"].startswith("part:"):
            continue
        training = row["group"] in ("training", "model") and row["key"].startswith(("train:", "bare:train"))
        entry = {
            "group": row["group"], "stage": row["name"], "items/call": row["items"],
            "ms/call": _fmt(1000 * row["median_seconds"], "{:.1f}"), "spread": _fmt(row["spread"], "{:.0%}"),
            "images/s": _fmt(row["images_per_second"], "{:.0f}"),
            "compared": _compared(row),
            "target": "" if row["met"] is None else ("met" if row["met"] else "MISSED"),
            "GFLOP/step": _fmt(row["flops"] / row["steps"] / 1e9 if training and row["flops"] else None, "{:.2f}"),
        }
        entry["GFLOP/s"] = _fmt(row["achieved_tflops"] * 1e3 if row["achieved_tflops"] else None, "{:.0f}")
        data_sheet = cuda and not str(env.get("peak_source", "")).startswith("measured")
        entry["MFU" if data_sheet else "of peak"] = _fmt(row["mfu"], "{:.1%}")
        table.append(entry)
    lines.append(pd.DataFrame(table).to_string(index=False))
    if result.peak_tflops is None:
        lines.append("peak: unknown for this device; pass --peak-tflops")
    elif "matmul_peak_tflops" in env:
        lines.append(f"peak {1e3 * result.peak_tflops:.0f} GFLOP/s ({env.get('peak_source')}); "
                     f"measured float32 matmul {1e3 * env['matmul_peak_tflops']:.0f} GFLOP/s")
    noisy = [m.name for m in result.measures.values() if m.group in STAGE_GROUPS and m.spread > NOISY_SPREAD]
    if noisy:
        lines.append(f"noisy: {len(noisy)} stage rows spread over {NOISY_SPREAD:.0%} (the device was busy); "
                     "comparisons pair repetitions, but rerun on a quiet device for reliable figures")
    lines.append("")
    lines.append("where a step's time goes (ms per step; parts timed on their own, `other` is what is left):")
    breakdown = pd.DataFrame(result.breakdown).fillna(float("nan"))
    lines.append(breakdown.to_string(float_format=lambda v: f"{v:.1f}", na_rep=""))
    lines.append("")
    lines.append("one default cell (`cleanbench run` defaults with this model and batch), estimated seconds:")
    lines.append("  " + ", ".join(f"{k} {v:.1f}" for k, v in result.estimate.items()))
    return "\n".join(lines)


def _difference(value: float | None) -> str:
    return "" if value is None else "0" if value == 0 else f"{value:.1e}"


def format_speedups(result: SpeedupResult) -> str:
    """The table `cleanbench bench --speedups` prints: each variant's speed, share of peak and numbers."""
    import pandas as pd

    env, config = result.environment, result.config
    policy = f" (OMP_WAIT_POLICY={env['omp_wait_policy']})" if env.get("omp_wait_policy") else ""
    lines = [f"{env['device']} ({env['device_name']}), torch {env['torch']}, {env['threads']} threads{policy}, "
             f"{config.model} at {env['image_size']} px, batch {config.batch_size}, "
             f"{result.flops_per_step / 1e9:.2f} GFLOP/step, {config.repeats} repetitions of {config.steps} steps, "
             f"load average {env['load_average_start'][0]:.2f} -> {env['load_average_end'][0]:.2f}"]
    table, unavailable, noisy = [], [], []
    for row in result.figures():
        if row["unavailable"]:
            unavailable.append(f"  {row['variant']}: {row['unavailable']}")
            table.append({"variant": row["variant"], "ms/step": "unavailable"})
            continue
        if row["spread"] > NOISY_SPREAD:
            noisy.append(row["variant"])
        table.append({
            "variant": row["variant"], "ms/step": f"{row['ms_per_step']:.1f}", "spread": f"{row['spread']:.0%}",
            "GFLOP/s": f"{row['achieved_gflops']:.1f}", "of peak": f"{row['of_peak']:.0%} {row['peak']}",
            "vs float32": f"{row['vs_float32']:.2f}x", "compile s": _fmt(row["compile_seconds"], "{:.1f}"),
            "loss diff": _difference(row["max_loss_difference"]),
            "param diff": _difference(row["max_parameter_difference"]),
        })
    lines.append(pd.DataFrame(table).fillna("").to_string(index=False))
    peaks = result.peak_tflops
    lines.append(f"peak: measured {MATMUL_SIDE}x{MATMUL_SIDE} matmul, float32 {1e3 * peaks['float32']:.0f} "
                 f"GFLOP/s, bfloat16 {1e3 * peaks['bfloat16']:.0f} GFLOP/s ({env['threads']} threads)")
    lines.append(f"loss diff, param diff: largest absolute difference from float32's losses and final parameters, "
                 f"{result.check_steps} steps from the same weights and seed")
    if unavailable:
        lines.append("unavailable on this device or build:")
        lines.extend(unavailable)
    if noisy:
        lines.append(f"noisy: {', '.join(noisy)} spread over {NOISY_SPREAD:.0%} (the device was busy); "
                     "'vs float32' pairs repetitions, but rerun on a quiet device for reliable figures")
    return "\n".join(lines)
