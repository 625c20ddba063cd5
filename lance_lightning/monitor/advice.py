"""What :class:`~lance_lightning.monitor.LoaderMonitor` says in words: how a datamodule's stage reads its
batches (:func:`read_path`) and what it can change to wait less (:func:`advice`). Pure text from the
datamodule's settings and the dataset's :class:`~lance_lightning.timing.LoaderTiming`; no clocks, no Lightning.
"""

from __future__ import annotations

import os
from typing import Any

from ..timing import LoaderTiming

__all__ = ["advice", "read_path"]


def _is_lance(dm: Any) -> bool:
    return dm is not None and hasattr(dm, "samplers") and hasattr(dm, "datasets") and hasattr(dm, "options")


def _is_staged(dm: Any, stage: str) -> bool:
    """Whether ``stage``'s dataset gathers from a stage: it holds a :class:`~..stage.StagedRows`
    (the value type below both the readers and this module, so the monitor never imports them)."""
    from ..stage.reader import StagedRows

    dataset = (getattr(dm, "datasets", None) or {}).get(stage)
    readers = getattr(dataset, "readers", None) or [dataset]  # a mixture's (or one source's) readers
    return all(isinstance(getattr(reader, "staged", None), StagedRows) for reader in readers)


def _transform_name(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module != "__main__" else name


def read_path(dm: Any, stage: str = "train") -> str:
    """How ``stage`` of a :class:`~lance_lightning.LanceDataModule` reads its batches, in words."""
    if not _is_lance(dm):
        return "a dataloader not made by LanceDataModule (read path unknown)"
    sampler = dm.samplers.get(stage)
    if sampler is None:
        per_source = [key for key in dm.samplers if key.startswith(f"{stage}/")]  # eval_by_source: "val/<source>"
        if per_source:
            return f"one loader per mix source ({len(per_source)}); {per_source[0]}: {read_path(dm, per_source[0])}"
        return f"no {stage} loader set up"
    order, batch = sampler.shuffle_mode, sampler.batch_size
    where = "the table"
    staged = _is_staged(dm, stage)
    if staged:
        prefault = " (pre-faulted: in_memory=True)" if dm.options.in_memory else ""
        how = f"shuffle={order!r} from the split's node-local stage{prefault}: each batch is a gather by position"
    elif order == "uniform":
        how = f"shuffle='uniform' from {where}: each batch is one take of scattered rows (take-bound)"
    elif order == "block":
        how = (
            f"shuffle='block' from {where}: range scans of block_size={dm.options.block_size} rows, "
            f"{dm.options.window_blocks} blocks mixed a window"
        )
    else:
        how = (
            f"table order ({'shuffle=' + repr(order) if stage == 'train' else 'evaluation'}) from {where}: "
            f"range scans of up to {sampler.group_batches * batch:,} rows"
        )
    parts = [how, f"num_workers={dm.options.num_workers}", f"batch_size={batch}"]
    if getattr(dm, "transform", None) is not None:
        parts.append(f"transform={_transform_name(dm.transform)}")
    return ", ".join(parts)


def _timing(dm: Any, stage: str) -> dict[str, float] | None:
    dataset = (getattr(dm, "datasets", None) or {}).get(stage) if dm is not None else None
    timing = getattr(dataset, "timing", None)
    return timing.totals() if isinstance(timing, LoaderTiming) else None


def advice(dm: Any, stage: str = "train", transform_share: float | None = None, world_size: int = 1) -> list[str]:
    """What this datamodule can change to wait less, most likely first (measured where possible).

    ``transform_share``: the share of the time to make a batch spent in the transform, as logged
    (the largest among ranks); None: this process's own measurement.
    """
    if not _is_lance(dm):
        return [
            "this loader is not LanceDataModule's: give its DataLoader more num_workers, a larger batch_size, "
            "or a cheaper per-item transform"
        ]
    sampler = dm.samplers.get(stage)
    order = getattr(sampler, "shuffle_mode", dm.options.shuffle)
    batch = getattr(sampler, "batch_size", dm.options.batch_size)
    out: list[str] = []
    transform = _transform_advice(dm, stage, transform_share, world_size)
    if transform is not None:
        out.append(transform)
    out.append(_workers_advice(dm.options.num_workers, dm.options.read_ahead))
    out.append(_read_advice(dm, order))
    out.append(f"batch_size={batch}: each read has a fixed cost; a larger batch_size spreads it over more rows")
    return out


def _transform_advice(dm: Any, stage: str, transform_share: float | None, world_size: int) -> str | None:
    """The transform's measured share of batch making and whether it dominates; None: nothing to say."""
    totals = _timing(dm, stage)
    transform = getattr(dm, "transform", None)
    measured_here = bool(totals and totals["load_s"] > 0 and totals["items"])
    share = transform_share
    if share is None and measured_here:
        share = totals["transform_s"] / totals["load_s"]
    if transform is None or share is None:
        return None
    measured = f"transform={_transform_name(transform)} takes {share:.0%} of the time to make a batch"
    if world_size > 1:
        measured += " (the largest share among the ranks)"
    elif measured_here:
        per_item = 1e3 / totals["items"]
        measured += (
            f" ({totals['transform_s'] * per_item:.1f} ms of {totals['load_s'] * per_item:.1f} ms; the read "
            f"{totals['read_s'] * per_item:.1f} ms)"
        )
    if share >= 0.5:
        return (
            f"{measured}: make it cheaper, move it into the model's step (batched, on the accelerator), "
            "or spread it over more DataLoader workers (num_workers)"
        )
    return f"{measured}: the read dominates, not the transform"


def _workers_advice(workers: int, read_ahead: int = 0) -> str:
    cpus = os.cpu_count() or 1
    if workers == 0:
        where = (
            f"on one thread of the training process, read_ahead={read_ahead} batches ahead of the step"
            if read_ahead
            else "in the training process, between steps"
        )
        return (
            f"num_workers=0: every batch is read {where}; with num_workers=2 or more "
            f"(this machine has {cpus} CPUs) workers read ahead in processes of their own while the model steps"
        )
    return (
        f"num_workers={workers}: more workers read more batches ahead (this machine has {cpus} CPUs; each worker "
        "holds prefetch_factor batches)"
    )


def _read_advice(dm: Any, order: str) -> str:
    """What the read path (staged, uniform takes, or ranges) allows."""
    if _is_staged(dm, "train"):
        return (
            "the train split is staged: batches are gathers from a memory-mapped local copy (millions of rows/s a "
            "process), so the read itself is rarely the limit; look at the transform, pin_memory and the batch size"
        )
    if order == "uniform":
        return (
            "shuffle='uniform' reads each batch as one take of scattered rows from the table (take-bound, ~50-130k "
            "rows/s a process): it is not staged (see the setup warning: the split is over cache_max_bytes, or "
            "staging='off'); stage it (raise cache_max_bytes, or point cache= at a directory with room) to gather "
            "batches from memory (millions of rows/s), or use shuffle='block' (ranges of block_size rows)"
        )
    what = f"block_size={dm.options.block_size} rows" if order == "block" else "table order"
    return (
        f"shuffle={order!r} reads ranges ({what}): staging='always' stages the split and makes each batch a "
        "gather from memory (millions of rows/s)"
    )


def _ranks(world_size: int) -> str:
    return f"the slowest of {world_size} ranks; " if world_size > 1 else ""
