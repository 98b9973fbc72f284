"""Multi-process training of one run with DistributedDataParallel (`torchrun -m cleanbench run ...`).

Every rank holds the whole dataset and walks the same seeded batch order, so every rank sees the
same global batch. The objective is handed a `ShardedModel`: its `encode_image` / `encode_text`
(and a call of the model) embed only this rank's rows of the batch and all-gather the embeddings of
every rank, so each loss
(CLIP, in-modal, a plugin's) is computed on the whole global batch, as the reference does
(docs/reference.md §3.1). Gathering at the encoders, not inside each loss, means no loss needs to know about
ranks, and augmented views drawn inside an objective are the same as in a single-process run.

Gradients are exact, not just proportional: the gather's backward sums the gradient of every
rank's (identical) loss, and DDP's mean over ranks divides that sum back. BatchNorm statistics are
all-reduced over the global batch during training (torch's SyncBatchNorm needs a GPU; this works on
CPU with gloo too). The result equals a single-process run's up to floating-point noise.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Function
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from cleanbench.errors import RunError


def is_active() -> bool:
    """Whether this process is one rank of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_active() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    """The number of ranks (1 when not distributed)."""
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """Whether this process writes files and prints: rank 0, or the only process."""
    return rank() == 0


def launched() -> bool:
    """Whether torchrun started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[torch.device]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); yields this rank's device.

    Outside torchrun this yields `device` unchanged. The group is torn down on exit if this call made it.
    """
    if not launched() or dist.is_initialized():
        yield _local_device(device)
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield _local_device(device)
    finally:
        dist.destroy_process_group()


def _local_device(device: torch.device) -> torch.device:
    if launched() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def agree(flag: bool) -> bool:
    """Rank 0's value of `flag` on every rank (e.g. whether a cached artifact is used)."""
    if not is_active():
        return flag
    value = [flag]
    dist.broadcast_object_list(value, src=0)
    return bool(value[0])


def shard_sizes(count: int, ranks: int) -> list[int]:
    """Rows per rank when `count` rows are split as evenly as possible (earlier ranks take the extra)."""
    return [count // ranks + (1 if r < count % ranks else 0) for r in range(ranks)]


class _GatherRows(Function):
    """All-gather rows of different counts; backward sums every rank's gradient of the local rows."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes = sizes
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: dist.get_rank()])
        return grad[start : start + ctx.sizes[dist.get_rank()]], None


class _AllReduceSum(Function):
    """Sum over ranks, differentiable: each rank's output depends on every rank's input."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        dist.all_reduce(value)
        return value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def gather_rows(local: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """This rank's rows and every other rank's, concatenated in rank order, with gradients."""
    return _GatherRows.apply(local, list(sizes))


class _SyncedBatchNormMixin:
    """BatchNorm whose training statistics are those of the global batch (all ranks' rows)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_active()):
            return super().forward(x)  # type: ignore[misc]
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        values = x.to(torch.promote_types(x.dtype, torch.float32))
        count = _AllReduceSum.apply(values.new_tensor([values.numel() / values.shape[1]]))
        mean = _AllReduceSum.apply(values.sum(dims)) / count
        var = _AllReduceSum.apply((values - mean.view(shape)).square().sum(dims)) / count
        out = (values - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(count))
        return out.to(x.dtype)

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            unbiased = var * count / max(count - 1, 1)
            self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
            self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))


class _SyncedBatchNorm1d(_SyncedBatchNormMixin, nn.BatchNorm1d):
    pass


class _SyncedBatchNorm2d(_SyncedBatchNormMixin, nn.BatchNorm2d):
    pass


class _SyncedBatchNorm3d(_SyncedBatchNormMixin, nn.BatchNorm3d):
    pass


_SYNCED = {nn.BatchNorm1d: _SyncedBatchNorm1d, nn.BatchNorm2d: _SyncedBatchNorm2d, nn.BatchNorm3d: _SyncedBatchNorm3d}


@contextlib.contextmanager
def _synced_batch_norms(model: nn.Module) -> Iterator[None]:
    """Switch the model's BatchNorm layers to global-batch statistics, in place; switch back on exit.

    Only the class changes, so parameters, buffers, state-dict keys and the optimiser are untouched.
    """
    switched = [(module, type(module)) for module in model.modules() if type(module) in _SYNCED]
    for module, cls in switched:
        module.__class__ = _SYNCED[cls]
    try:
        yield
    finally:
        for module, cls in switched:
            module.__class__ = cls


class _Methods(nn.Module):
    """The module DDP wraps: its forward calls any batch method of the model (`forward`,
    `encode_image`, `encode_text`), so DDP's gradient hooks see every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, method: str, inputs: torch.Tensor, options: dict[str, Any]) -> Any:
        call = self.model if method == "forward" else getattr(self.model, method)
        return call(inputs, **options)


class ShardedModel:
    """What an objective sees under DDP: batch methods that return the whole global batch's output.

    `encode_image`, `encode_text` and calling the model (`model(inputs)`, e.g. a classifier) run
    this rank's share of the rows through DDP and gather the rest, so they must return one tensor
    with a row per input row; every other attribute (e.g. `logit_scale`) is the underlying model's.
    """

    def __init__(self, model: nn.Module, ddp: DistributedDataParallel) -> None:
        self._model = model
        self._ddp = ddp
        self._trainable = [p for p in model.parameters() if p.requires_grad]

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._sharded("encode_image", images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._sharded("encode_text", tokens, normalize=normalize)

    def __call__(self, inputs: torch.Tensor, **options: Any) -> torch.Tensor:
        return self._sharded("forward", inputs, **options)

    def _sharded(self, method: str, inputs: torch.Tensor, **options: Any) -> torch.Tensor:
        sizes = shard_sizes(len(inputs), world_size())
        if min(sizes) == 0:
            raise RunError(f"a batch of {len(inputs)} rows cannot be split over {world_size()} processes; "
                           "use a batch size of at least --nproc")
        start = sum(sizes[: rank()])
        local = self._ddp(method, inputs[start : start + sizes[rank()]], options)
        if not isinstance(local, torch.Tensor) or len(local) != sizes[rank()]:
            raise RunError(f"with several processes, the model's {method} must return one tensor with a row "
                           f"per input row, not {type(local).__name__}")
        return gather_rows(local, sizes)

    def with_every_parameter(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss` plus zero times one entry of every trainable parameter, so DDP always gets a gradient
        for each (an objective may leave a tower unused)."""
        return loss + 0.0 * sum(p.reshape(-1)[0].float() for p in self._trainable)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@contextlib.contextmanager
def sharded(model: nn.Module, device: torch.device) -> Iterator[nn.Module | ShardedModel]:
    """The model an objective should use: `model` itself, or a `ShardedModel` when running under DDP."""
    if not is_active():
        yield model
        return
    with _synced_batch_norms(model):
        ddp = DistributedDataParallel(_Methods(model), device_ids=[device.index] if device.type == "cuda" else None)
        yield ShardedModel(model, ddp)


def without_option(args: Sequence[str], option: str) -> list[str]:
    """`args` without `option VALUE` / `option=VALUE` (to pass the rest on to torchrun)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def relaunch(nproc: int, args: Sequence[str]) -> None:
    """Run `cleanbench ARGS` again under torchrun with `nproc` processes on this machine.

    On CPU each process gets an equal share of the cores (OMP_NUM_THREADS) unless that is set.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "cleanbench", *args]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    code = subprocess.run(command, env=env, check=False).returncode
    if code:
        raise RunError(f"torchrun with {nproc} processes exited with status {code} (see the output above)")
