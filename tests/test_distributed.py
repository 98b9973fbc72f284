"""Data-parallel training of one run: 2 CPU processes with gloo give a single process's results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from cleanbench import distributed
from cleanbench.data.embedded import load_embedded
from cleanbench.models import build_model
from cleanbench.losses import clip_objective
from cleanbench.runner import run_cell
from cleanbench.seeding import seed_everything


def test_shard_sizes_and_option_removal():
    assert distributed.shard_sizes(10, 3) == [4, 3, 3]
    assert distributed.shard_sizes(64, 2) == [32, 32]
    assert distributed.without_option(["run", "--nproc", "2", "--quiet"], "--nproc") == ["run", "--quiet"]
    assert distributed.without_option(["run", "--nproc=2"], "--nproc") == ["run"]
    assert not distributed.is_active() and distributed.world_size() == 1 and distributed.is_main()


def _gradients(rows: int) -> dict[str, torch.Tensor]:
    """Gradients of the CLIP loss on `rows` pairs; under DDP through `distributed.sharded`."""
    torch.set_num_threads(1)
    data = load_embedded(0, rows, 8, 8)
    seed_everything(1)
    bundle = build_model()
    bundle.model.train()
    batch = {"images": data.pretrain.images[:], "tokens": bundle.tokenizer(data.pretrain.captions)}
    with distributed.sharded(bundle.model, torch.device("cpu")) as view:
        loss = clip_objective(bundle)(view, batch)["loss"]
        if isinstance(view, distributed.ShardedModel):
            loss = view.with_every_parameter(loss)
        loss.backward()
    return {name: p.grad.clone() for name, p in bundle.model.named_parameters()} | {
        name: b.clone() for name, b in bundle.model.named_buffers() if "running" in name}


def _classifier_gradients(rows: int) -> dict[str, torch.Tensor]:
    """Gradients of a classifier trained by calling it (as supervised finetuning does)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    inputs, labels = torch.randn(rows, 4), torch.arange(rows) % 3
    with distributed.sharded(model, torch.device("cpu")) as view:
        torch.nn.functional.cross_entropy(view(inputs), labels).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()} | {
        name: b.clone() for name, b in model.named_buffers() if "running" in name}


def _rank(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        grads = (_gradients(63), _classifier_gradients(63))  # an odd batch: ranks hold 32 and 31 rows
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


def test_gradients_and_batchnorm_statistics_equal_a_single_process(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2)
    for single, ddp in zip((_gradients(63), _classifier_gradients(63)), torch.load(out)):
        assert single.keys() == ddp.keys()
        for name in single:
            difference = (single[name] - ddp[name]).abs().max()
            assert difference <= 1e-3 * single[name].abs().max() + 1e-6, name  # (a bias before BatchNorm has ~0)


def test_run_with_two_processes_matches_one(tiny, tmp_path):
    config = tiny(device="cpu", use_cache=False)
    config.pretrain.epochs = 2
    one, _ = run_cell(config, progress=False, log=lambda m: None)

    file = tmp_path / "tiny.yaml"
    values = config.to_dict()
    values["results_dir"] = str(tmp_path / "two")
    file.write_text(yaml.safe_dump(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "cleanbench", "run", "--config", str(file), "--nproc", "2", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run card:") == 1  # rank 0 alone reports and writes
    paths = list((tmp_path / "two" / "runs").glob("*.json"))
    assert len(paths) == 1
    two = json.loads(paths[0].read_text())
    assert two["device"]["processes"] == 2 and two["cell_key"] == one["cell_key"]
    assert two["pretrain"]["steps"] == one["pretrain"]["steps"]
    assert two["pretrain"]["epoch_losses"] == pytest.approx(one["pretrain"]["epoch_losses"], rel=1e-3)
    assert two["defense"]["training"][0]["epoch_losses"] == pytest.approx(
        one["defense"]["training"][0]["epoch_losses"], rel=1e-2)
    for stage in ("poisoned", "defended"):
        for metric in ("ca_top1", "asr", "ra"):
            assert two["metrics"][stage][metric]["value"] == pytest.approx(one["metrics"][stage][metric]["value"], abs=0.03)
