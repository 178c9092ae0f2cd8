"""Evaluation under ``torchrun``: shard a test set across processes and gather the per-sample results.

Every process builds the same ordered list of test samples, evaluates the samples ``rank, rank + W,
rank + 2W, ...`` (``W`` = world size), and the per-sample records are gathered and put back in list order.
Means are then computed from exactly the same per-sample numbers, in the same order, as in a single
process, so a sharded run reports the same results. The shards are checked to be disjoint and to cover
the list before anything is evaluated.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) nothing is initialised and the
context describes a single process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from dro_sfm.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and local rank of this process; ``owns_group`` if it initialised the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes outputs (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> list[int]:
        """Indices into a list of ``n`` samples that this process evaluates."""
        return shard_indices(n, self.rank, self.world_size)

    def all_gather(self, obj: T) -> list[T]:
        """``obj`` of every process [world_size], in rank order (picklable objects)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Round-robin shard [ceil((n - rank) / W)] of ``range(n)`` for process ``rank`` of ``world_size``.

    Round robin rather than contiguous blocks balances the load when neighbouring samples cost alike
    (same drive, same scene).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"invalid process rank {rank} for world size {world_size}")
    if n < 0:
        raise ConfigError(f"cannot shard a negative number of samples ({n})")
    return list(range(rank, n, world_size))


def check_disjoint_shards(shards: Sequence[Sequence[int]], n: int) -> None:
    """Raise ConfigError unless the shards [world_size][k] are disjoint and together cover ``range(n)``."""
    seen: dict[int, int] = {}
    for rank, shard in enumerate(shards):
        for index in shard:
            if index in seen:
                raise ConfigError(
                    f"sample {index} is assigned to processes {seen[index]} and {rank}; every process must "
                    "build the same sample list (same data, split and options on every rank)"
                )
            seen[index] = rank
    missing = sorted(set(range(n)) - set(seen))
    extra = sorted(set(seen) - set(range(n)))
    if missing or extra:
        raise ConfigError(
            f"the shards do not cover the {n} samples exactly (missing {missing[:5]}, out of range {extra[:5]})"
        )


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the ``torchrun`` process group when launched by it (gloo on CPU, nccl on CUDA), else one process.

    ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` come from torchrun; ``MASTER_ADDR``/``MASTER_PORT`` too.
    """
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ConfigError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers ({err}); launch with torchrun") from err
    if world_size <= 1:
        return DistContext()
    import torch.distributed as dist

    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise ConfigError(
                f"the initialised process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
                f"RANK={rank} WORLD_SIZE={world_size}"
            )
        return DistContext(rank, world_size, local_rank, owns_group=False)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    logger.info("process %d of %d joined the %s process group", rank, world_size, backend)
    return DistContext(rank, world_size, local_rank, owns_group=True)


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group if ``init_distributed`` created it."""
    if ctx.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def device_for_process(device: str, ctx: DistContext) -> str:
    """The torch device of this process: ``cuda`` becomes ``cuda:<local rank>`` under torchrun."""
    if device == "cuda" and ctx.distributed:
        return f"cuda:{ctx.local_rank}"
    return device


def gather_records(ctx: DistContext, n: int, indices: Sequence[int], records: Sequence[T]) -> list[T]:
    """All processes' records in list order [sum of shard sizes]; ``records[i]`` belongs to ``indices[i]``.

    The shards are checked again here (disjoint, covering ``range(n)``) so that a process that evaluated
    the wrong samples cannot silently change the result.
    """
    if len(indices) != len(records):
        raise ConfigError(f"{len(records)} records for {len(indices)} sample indices")
    gathered = ctx.all_gather((list(indices), list(records)))
    check_disjoint_shards([shard for shard, _ in gathered], n)
    pairs = [(i, r) for shard, recs in gathered for i, r in zip(shard, recs, strict=True)]
    pairs.sort(key=lambda p: p[0])
    return [r for _, r in pairs]
