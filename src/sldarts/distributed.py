"""torchrun / DDP glue: who am I, which device, and rank-0-only I/O."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sldarts.errors import SldartsError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SldartsError(f"device={device} but no CUDA GPU is visible; use device=cpu")
        dev = torch.device("cuda", local if world > 1 or device == "cuda" else torch.device(device).index)
        torch.cuda.set_device(dev)
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise SldartsError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        store = _attempt_store(rank, world)
        if store is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    return Dist(rank, world, local), dev


def _attempt_store(rank: int, world: int) -> dist.Store | None:
    """Under torchrun, a store whose keys are private to this restart attempt. After ``--max-restarts``
    brings the workers back, the agent's store still holds the dead workers' addresses, and gloo's new
    process group connects to them and hangs (seen with torch 2.13); a prefix per attempt avoids it."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or "MASTER_ADDR" not in os.environ:
        return None
    from datetime import timedelta

    host = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and rank == 0  # else the agent hosts it
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=host,
                          timeout=timedelta(minutes=30))
    return dist.PrefixStore(f"sldarts/attempt{attempt}/", store)


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """Batch norm whose training statistics are those of the global batch, summed over all ranks (gloo or
    nccl, CPU or GPU), computed by the same formula in one process: a K-process search then takes the steps
    of the one-process search with the same global batch, up to the order of floating-point sums.
    Evaluation (``eval()``) keeps each rank's own statistics and makes no collective call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not self.training:
            if self.running_mean is not None:
                return super().forward(x)
        c = x.shape[1]
        flat = x.transpose(0, 1).reshape(c, -1).double()
        stats = torch.cat([flat.sum(1), (flat * flat).sum(1), flat.new_full((1,), flat.shape[1])])
        if self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            from torch.distributed.nn.functional import all_reduce

            stats = all_reduce(stats)
        n = stats[2 * c]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.training and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.to(x.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_((var * n / (n - 1).clamp_min(1)).to(x.dtype), alpha=m)
        shape = (1, c, 1, 1)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def use_global_batch_norm(model: torch.nn.Module) -> int:
    """Turn every ``nn.BatchNorm2d`` of MODEL into a GlobalBatchNorm2d in place; returns how many."""
    n = 0
    for m in model.modules():
        if type(m) is torch.nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
            n += 1
    return n


def all_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sum tensors over ranks (no-op on one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flat = torch.stack([v.double() for v in values])
        dist.all_reduce(flat)
        return list(flat.unbind())
    return list(values)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BN statistics), so evaluation and checkpoints agree."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for b in module.buffers():
            dist.broadcast(b, 0)
