"""What a run will read, as plain dicts: shard plan per rank, split sizes, label balance.

Used by ``lance-lightning-inspect`` (printed before any training) and by
:class:`~lance_lightning.app.callbacks.ShardPlanLogger` (logged as a hyperparameter). Everything
works on a datamodule after ``setup()``; the world size is an explicit argument, so the plan
for 8 GPUs can be computed on a laptop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..reads import scan_with_row_ids
from ..sharding import plan_epoch, rank_batch_bounds

MAX_LABELS_SHOWN = 20


def shard_plan(dm: Any, world_size: int) -> dict[str, dict[str, Any]]:
    """Per stage set up in ``dm``: how its split is cut into batches on each of ``world_size`` ranks.

    ``rows`` is an epoch's rows: the split's ``split_rows``, or the draws of a weighted shuffle.
    ``batches_per_rank`` and ``rows_per_rank`` are lists indexed by rank; ``padded_rows`` are
    read twice (training, drop_last=False), ``dropped_rows`` not at all (drop_last=True).
    """
    out: dict[str, dict[str, Any]] = {}
    for stage, sampler in dm.samplers.items():
        rows, sources = sampler.num_rows, None
        mixture = getattr(sampler, "mixture", None)
        if mixture is not None:  # its epoch, dealt for this world size
            counts = mixture.counts(batch_size=sampler.batch_size, world_size=world_size)
            rows = int(counts.sum())
            sources = [
                {"name": name, "rows": size, "per_epoch": int(count), "share": count / rows}
                for name, size, count in zip(mixture.names or range(len(counts)), mixture.sizes, counts.tolist())
            ]
        plan = plan_epoch(
            rows,
            world_size=world_size,
            batch_size=sampler.batch_size,
            drop_last=sampler.drop_last,
            even=sampler.even,
            balanced=getattr(sampler, "balanced", False),
        )
        bounds = [rank_batch_bounds(plan, rank=rank) for rank in range(world_size)]
        base, _, source = stage.partition("/")  # "val/web": source web's validation loader (eval_by_source)
        out[stage] = {
            "split": dm.split_for_stage(base),
            "rows": rows,
            "split_rows": sampler.split_rows,
            "world_size": world_size,
            "batch_size": sampler.batch_size,
            "shuffle": sampler.shuffle_mode,
            "drop_last": sampler.drop_last,
            "batches_per_rank": [len(b) for b in bounds],
            "rows_per_rank": [sum(stop - start for start, stop in b) for b in bounds],
            "padded_rows": plan.padded_rows,
            "dropped_rows": plan.dropped_rows,
        }
        if sources is not None:
            out[stage]["sources"] = sources
        if source:
            out[stage]["reads"] = _eval_source_rows(dm, base, source)
    return out


def _eval_source_rows(dm: Any, stage: str, source: str) -> str:
    """Where one source's ``stage`` loader reads (``eval_by_source``), in words."""
    spec = next(s for s in dm.options.mix if s.name == source)
    rows = next(r for r in dm.eval_sources[stage] if r.name == source)
    named_table, named_split = getattr(spec, f"{stage}_table"), getattr(spec, f"{stage}_split")
    if named_table is not None:
        where = f"table {named_table!r} (version {rows.source.version})"
    else:
        where = f"split {named_split or dm.split_for_stage(stage)!r}"
    return f"mix source {source!r}: {where}" + (f" where {spec.filter}" if spec.filter else "")


def split_sizes(dm: Any) -> dict[str, int]:
    """Row count of each split that ``dm.setup()`` built."""
    return {name: len(rows) for name, rows in (dm.splits or {}).items()}


def label_balance(dm: Any, column: str) -> dict[str, dict[str, int]]:
    """Per split, the count of each value of ``column``: in value order, or the most frequent first
    when there are more than ``MAX_LABELS_SHOWN`` values."""
    labels_by_source: dict[Any, tuple[np.ndarray, pa.Array]] = {}
    out: dict[str, dict[str, int]] = {}
    for name, split in (dm.splits or {}).items():
        if split.source not in labels_by_source:
            labels_by_source[split.source] = _scan_column(split.source.open(), column)
        row_ids, values = labels_by_source[split.source]
        positions = np.searchsorted(row_ids, split.row_ids)
        counts = pc.value_counts(values.take(pa.array(positions))).to_pylist()
        if len(counts) <= MAX_LABELS_SHOWN:
            counts.sort(key=lambda c: (c["values"] is None, c["values"]))
        else:
            counts.sort(key=lambda c: -c["counts"])
        out[name] = {str(c["values"]): int(c["counts"]) for c in counts}
    return out


def _scan_column(table: Any, column: str) -> tuple[np.ndarray, pa.Array]:
    """(row addresses sorted, values in the same order) of one column of the whole table."""
    if column not in table.schema.names:
        raise KeyError(f"label column {column!r} is not in table {table.name!r}; its columns: {table.schema.names}")
    scanned = scan_with_row_ids(table, [column])
    row_ids = scanned["_rowid"].to_numpy()
    order = np.argsort(row_ids, kind="stable")
    return row_ids[order], scanned[column].combine_chunks().take(pa.array(order))


def resolve_world_size(trainer_cfg: Mapping[str, Any]) -> int:
    """``devices x num_nodes`` of a Trainer config, without building a Trainer (no GPU needed)."""
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    devices = trainer_cfg.get("devices", "auto")
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()]) * nodes
    if isinstance(devices, int) and devices > 0:
        return devices * nodes
    if not isinstance(devices, (int, str)):  # a list of device indices
        return len(list(devices)) * nodes
    # "auto" or -1: every device of the accelerator.
    if accelerator == "cpu":
        return (1 if devices == "auto" else os.cpu_count() or 1) * nodes
    import torch

    gpus = torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0
    return max(gpus, 1) * nodes


def format_report(
    *,
    source: Mapping[str, Any],
    schema: pa.Schema,
    tensors: Mapping[str, str],
    sizes: Mapping[str, int],
    plan: Mapping[str, Mapping[str, Any]],
    balance: Mapping[str, Mapping[str, int]] | None,
    label_column: str | None,
) -> str:
    """The human-readable report that ``lance-lightning-inspect`` prints."""
    lines = [f"table {source['table']!r} at {source['uri']}, version {source['version']}", "", "schema:"]
    width = max(len(f.name) for f in schema)
    for f in schema:
        becomes = f"-> {tensors[f.name]}" if f.name in tensors else "(not read)"
        lines.append(f"  {f.name:<{width}}  {f.type}  {becomes}")
    lines += ["", "splits:"]
    total = sum(sizes.values()) or 1
    for name, n in sizes.items():
        lines.append(f"  {name:<10} {n:>10,} rows ({100 * n / total:.1f}%)")
        if balance and name in balance:
            lines.append(f"    {label_column}: {_balance_line(balance[name], n)}")
    if plan:
        world = next(iter(plan.values()))["world_size"]
        lines += ["", f"per rank, world size {world}:"]
    for stage, p in plan.items():
        extra = []
        if p["padded_rows"]:
            extra.append(f"{p['padded_rows']} row(s) read twice to even out ranks")
        if p["dropped_rows"]:
            extra.append(f"{p['dropped_rows']} row(s) dropped (drop_last)")
        rows = f"{p['rows']:,} rows"
        if p.get("split_rows", p["rows"]) != p["rows"] or p["shuffle"] == "weighted":
            rows = f"{p['rows']:,} samples an epoch (of {p['split_rows']:,} rows)"
        reads = p["reads"] if "reads" in p else f"split {p['split']!r}"
        lines.append(
            f"  {stage:<8} {reads}: {rows}, batch {p['batch_size']}, "
            f"shuffle {p['shuffle']}" + (f"; {'; '.join(extra)}" if extra else "; no padding, nothing dropped")
        )
        for source in p.get("sources", ()):
            passes = source["per_epoch"] / source["rows"]
            lines.append(
                f"    source {source['name']!r}: {source['per_epoch']:,} rows an epoch ({100 * source['share']:.1f}%) "
                f"of its {source['rows']:,} ({passes:.2f} pass{'es' if passes != 1 else ''} an epoch)"
            )
        lines += _rank_lines(p["batches_per_rank"], p["rows_per_rank"])
    return "\n".join(lines)


def _rank_lines(batches: list[int], rows: list[int]) -> list[str]:
    """One line per run of consecutive ranks with the same load ("ranks 0-6: ...")."""
    lines, start = [], 0
    for rank in range(1, len(batches) + 1):
        if rank == len(batches) or (batches[rank], rows[rank]) != (batches[start], rows[start]):
            who = f"rank {start}" if rank - 1 == start else f"ranks {start}-{rank - 1}"
            lines.append(f"    {who}: {batches[start]} batches, {rows[start]:,} rows")
            start = rank
    return lines


def _balance_line(counts: Mapping[str, int], n: int) -> str:
    shown = list(counts.items())[:MAX_LABELS_SHOWN]
    text = ", ".join(f"{k}: {v} ({100 * v / max(n, 1):.0f}%)" for k, v in shown)
    if len(counts) > MAX_LABELS_SHOWN:
        text += f", ... {len(counts) - MAX_LABELS_SHOWN} more values"
    return text
