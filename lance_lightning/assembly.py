"""Stage assembly: settings + a split of an open table → the (reader, sampler) pair a stage reads.

Which split each Lightning stage reads, the checks that refuse a stage that would train or
evaluate nothing, and the construction of a stage's reader (from the table, a local cache entry,
or memory) and sampler. The datamodule's hooks call these with explicit values (rank, world
size, the train position); nothing here reads a trainer or the environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .dataset import LanceBatchDataset, StagedBatchDataset, offset_map
from .options import STAGES, DataOptions
from .orders import SEQUENTIAL_READ_ROWS, MixturePlan, get_order
from .reads import scan_row_ids
from .sampler import LanceBatchSampler, SequentialLanceBatchSampler
from .source import TableSource
from .splits import WHOLE_TABLE, SplitRows, SplitSpecError
from .state import TrainPosition

LIGHTNING_STAGES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
"""The split stages each ``Trainer`` entry point sets up."""
DEFAULT_STAGE_SPLITS = {
    "train": ("train",),
    "val": ("val", "validation", "valid"),
    "test": ("test",),
    "predict": ("predict",),
}


def split_for_stage(
    stage: str, split_names: set[str] | Mapping[str, Any], stage_splits: Mapping[str, str]
) -> str | None:
    """The split ``stage`` reads, or None when it has none (no dataloader). Pure."""
    if stage in stage_splits:
        return stage_splits[stage]
    for candidate in DEFAULT_STAGE_SPLITS[stage]:
        if candidate in split_names:
            return candidate
    if stage == "predict":
        return WHOLE_TABLE
    if set(split_names) == {WHOLE_TABLE} and stage == "train":
        return WHOLE_TABLE
    return None


def check_stage_splits(table_name: str, splits: Mapping[str, SplitRows], options: DataOptions) -> None:
    """Refuse a ``stage_splits`` entry naming no split, and a stage whose split is empty."""
    for stage, name in options.stage_splits.items():
        if name not in splits and not (stage == "predict" and name == WHOLE_TABLE):
            raise SplitSpecError(
                f"stage {stage!r} is set to read split {name!r}, but table {table_name!r} has splits {sorted(splits)}"
            )
    for stage in STAGES:
        name = split_for_stage(stage, splits, options.stage_splits)
        if name is not None and name != WHOLE_TABLE and len(splits[name]) == 0:
            raise SplitSpecError(
                f"split {name!r} (read by stage {stage!r}) of table {table_name!r} is empty"
                f"{' after filter ' + repr(options.filter) if options.filter else ''}; split sizes: "
                f"{ {n: len(s) for n, s in splits.items()} }"
            )


def check_train_split(
    table_name: str, splits: Mapping[str, SplitRows], options: DataOptions, *, train_rows: int | None, world_size: int
) -> None:
    """Refuse what would make ``fit`` train 0 steps with only Lightning's generic warning: no
    train split (``train_rows`` None), or ``drop_last`` with fewer rows than one global step."""
    if train_rows is None:
        others = {n for names in DEFAULT_STAGE_SPLITS.values() for n in names} | set(options.stage_splits.values())
        example = next((n for n in sorted(splits) if n not in others), sorted(splits)[0])
        raise SplitSpecError(
            f"the fit stage reads split 'train', which is not among the splits {sorted(splits)} of table "
            f"{table_name!r}: it would train 0 steps. The train stage reads a split named 'train' (val: "
            f"{', '.join(map(repr, DEFAULT_STAGE_SPLITS['val']))}); name a split 'train', or map one with "
            f"stage_splits={{'train': {example!r}}}"
        )
    step = options.batch_size * world_size
    if options.drop_last and train_rows < step:
        name = split_for_stage("train", splits, options.stage_splits)
        raise SplitSpecError(
            f"the train split {name!r} has {train_rows} rows, fewer than batch_size {options.batch_size} × "
            f"{world_size} rank(s) = {step}: drop_last=True would drop every row and train 0 steps. "
            "Use drop_last=False, a smaller batch_size or a larger train split"
        )


def check_weighted_epoch(sampler: LanceBatchSampler, options: DataOptions, *, split_name: str, world_size: int) -> None:
    """Refuse a weighted epoch that ``drop_last`` would leave empty: fewer draws than one global step."""
    step = options.batch_size * world_size
    if sampler.weights is not None and options.drop_last and sampler.num_rows < step:
        raise SplitSpecError(
            f"the weighted epoch of split {split_name!r} draws {sampler.num_rows} rows (samples_per_epoch="
            f"{options.samples_per_epoch}; {int(np.count_nonzero(sampler.weights))} rows of weight > 0), fewer than "
            f"batch_size {options.batch_size} × {world_size} rank(s) = {step}: drop_last=True would train 0 steps. "
            "Use drop_last=False, a smaller batch_size or more samples_per_epoch"
        )


def check_mixture_epoch(sampler: LanceBatchSampler, options: DataOptions, *, world_size: int) -> None:
    """Compute a mixture's epoch now (its counts: a source without a batch under
    ``mix_batching='source'`` is refused at setup) and refuse one that ``drop_last`` would leave empty."""
    if sampler.mixture is None:
        return
    rows, step = sampler.num_rows, options.batch_size * world_size
    if options.drop_last and rows < step:
        raise SplitSpecError(
            f"the mixture's epoch holds {rows} rows (samples_per_epoch={options.samples_per_epoch}), fewer "
            f"than batch_size {options.batch_size} × {world_size} rank(s) = {step}: drop_last=True would train 0 "
            "steps. Use drop_last=False, a smaller batch_size or more samples_per_epoch"
        )


def check_eval_split(stage: str, name: str, num_rows: int, world_size: int) -> None:
    """Refuse an evaluation split with fewer rows than ranks: a rank with no batch would hang the rest."""
    if stage != "train" and num_rows < world_size:
        raise SplitSpecError(
            f"split {name!r} (read by stage {stage!r}) has {num_rows} row(s), fewer than the {world_size} ranks: "
            "a rank with no batch would skip the loop while the others wait for it. Use a larger split or fewer "
            "devices for this stage."
        )


class MemoryBudgetError(ValueError):
    """``in_memory=True`` and a split's stage is larger than ``memory_budget_bytes``."""


class ScanIds:
    """Each table's row addresses in scan order, scanned once per setup however many splits map to it."""

    def __init__(self) -> None:
        self._ids: dict[tuple[Any, ...], np.ndarray] = {}

    def of(self, source: TableSource, table: Any) -> np.ndarray:
        key = (source.uri, source.name, source.version)
        if key not in self._ids:
            self._ids[key] = scan_row_ids(table)
        return self._ids[key]


def staging_required(options: DataOptions) -> bool:
    """Whether a split that cannot be staged is an error (asked for) rather than read from the table."""
    return options.staging == "always" or options.cache is not None or options.in_memory


def wants_stage(options: DataOptions, stage: str) -> bool:
    """Whether ``stage``'s split is read from a node-local stage (see ``staging``): always when
    asked (:func:`staging_required`); by default, a train split read in a scattered order
    (``uniform``), which is take-bound from the table, and with workers the val split too, read
    again every epoch: a staged split's workers fork in milliseconds, where a table reader's wait
    for a fork server to import the training script (:func:`.loader.worker_start_method`)."""
    if options.staging == "off":
        return False
    if staging_required(options):
        return True
    if stage == "train":
        return not get_order(options.shuffle).contiguous
    return stage == "val" and options.num_workers > 0


def reads_table_with_workers(options: DataOptions, stages: Sequence[str]) -> bool:
    """Whether one of ``stages`` will, by its settings, read the table in worker processes (which
    then start from the fork server). A stage that wants staging but does not fit falls back to
    the table too; that is known only once it is built."""
    if not options.num_workers:
        return False
    if options.multiprocessing_context is not None:
        return options.multiprocessing_context == "forkserver"
    return any(not wants_stage(options, stage) for stage in stages)


def stage_reader(
    options: DataOptions,
    split: SplitRows,
    *,
    columns: list[str],
    split_name: str,
    transform: Any,
    table: Any,
    progress: bool,
) -> StagedBatchDataset:
    """The split's stage (filled now unless this node has it), as a reader. Raises
    :class:`~.stage.StageBudgetError` when it does not fit the staging budget, and
    :class:`MemoryBudgetError` when ``in_memory`` is set and it is over ``memory_budget_bytes``."""
    from .stage import StagedRows, default_budget_bytes, default_stage_root, ensure_stage, estimate_stage_bytes

    opened = table if table is not None else split.source.open()
    if options.in_memory:
        needed = estimate_stage_bytes(opened, columns, len(split))
        if needed > options.memory_budget_bytes:
            raise MemoryBudgetError(
                f"split {split_name!r} needs about {needed / 2**20:,.0f} MiB in memory ({len(split):,} rows of "
                f"columns {columns}), over memory_budget_bytes={options.memory_budget_bytes:,} "
                f"({options.memory_budget_bytes / 2**20:,.0f} MiB). Raise memory_budget_bytes, select fewer columns, "
                "or turn in_memory off (the stage is then read from the page cache as it is used)."
            )
    root = options.cache if options.cache is not None else default_stage_root()
    budget = options.cache_max_bytes if options.cache_max_bytes is not None else default_budget_bytes(root)
    path = ensure_stage(
        split.source,
        opened,
        split.row_ids,
        columns,
        root=root,
        budget_bytes=budget,
        split_name=split_name,
        filter=options.filter,
        progress=progress,
        budget_setting="cache_max_bytes",
    )
    rows = StagedRows(path, prefault=options.in_memory)
    return StagedBatchDataset(rows, transform=transform, nulls=options.nulls)


def table_reader(
    options: DataOptions,
    split: SplitRows,
    *,
    columns: list[str],
    transform: Any,
    table: Any,
    scan_ids: ScanIds,
) -> LanceBatchDataset:
    """A reader of the split straight from the table: range scans and takes by table offset."""
    source = split.source
    opened = table if table is not None else source.open()
    offsets = offset_map(split.row_ids, scan_ids.of(source, opened), table_name=source.name, version=source.version)
    return LanceBatchDataset(
        source, columns, num_rows=len(split), rows=offsets, transform=transform, nulls=options.nulls, table=table
    )


def build_reader(
    options: DataOptions,
    split: SplitRows,
    *,
    stage: str,
    columns: list[str],
    split_name: str,
    transform: Any,
    table: Any,
    scan_ids: ScanIds,
    warn: Callable[[str], None],
    progress: bool = True,
) -> Any:
    """The dataset that reads ``split`` for ``stage``: its stage where staging applies and it fits,
    else the table (``warn`` says why, once). ``table`` is the open table when the split is of the
    datamodule's own table (else None: it is opened here)."""
    if wants_stage(options, stage):
        from .stage import StageBudgetError

        try:
            return stage_reader(
                options,
                split,
                columns=columns,
                split_name=split_name,
                transform=transform,
                table=table,
                progress=progress,
            )
        except StageBudgetError as err:
            if staging_required(options):
                raise
            if stage == "train":
                cost = (
                    f"Read from the table, shuffle={options.shuffle!r} costs one take a row (~50-130k rows/s a "
                    "process, against millions from a stage)."
                )
                other = "; or use shuffle='block' (range scans)"
            else:
                cost = (
                    f"Its {options.num_workers} workers start from a fork server, which imports the training script "
                    "first (seconds), instead of forking from this process."
                )
                other = ""
            warn(
                f"split {split_name!r} of table {split.source.name!r} is read from the table, not staged: {err} "
                f"{cost} To stage it, raise cache_max_bytes or point cache= at a directory with room{other}. "
                "staging='off' silences this."
            )
    return table_reader(options, split, columns=columns, transform=transform, table=table, scan_ids=scan_ids)


def build_mixture_reader(
    options: DataOptions,
    sources: Sequence[SplitRows],
    *,
    columns: list[str],
    split_name: str,
    transform: Any,
    own_source: Any,
    table: Any,
    scan_ids: ScanIds,
    warn: Callable[[str], None],
) -> tuple[Any, MixturePlan]:
    """The train stage's reader of a mixture (each source read by its own reader: its stage where
    staging applies and it fits, else its table) and the plan its order draws by."""
    from .mix.reader import SOURCE_KEY, MixtureBatchDataset

    if SOURCE_KEY in columns:
        raise SplitSpecError(
            f"a mixture adds each row's source to its batch as {SOURCE_KEY!r}, which is also a column read from table "
            f"{own_source.name!r}: leave that column out of columns (or rename it in the table)"
        )
    assert options.mix is not None
    readers = [
        build_reader(
            options,
            rows,
            stage="train",
            columns=columns,
            split_name=f"{split_name}[mix {spec.name}]",
            transform=None,
            table=table if rows.source == own_source else None,
            scan_ids=scan_ids,
            warn=warn,
        )
        for spec, rows in zip(options.mix, sources)
    ]
    plan = MixturePlan(
        sizes=tuple(len(rows) for rows in sources),
        proportions=tuple(spec.proportion for spec in options.mix),
        samples=options.samples_per_epoch,
        batching=options.mix_batching,
        names=tuple(spec.name for spec in options.mix),
    )
    return MixtureBatchDataset(readers, [spec.name for spec in options.mix], transform=transform), plan


READ_GROUP_BYTES = 64 * 2**20
"""The most rows that are read together for several batches take (a worker's hand-over, one range
scan), unless one batch is larger: a block window of 32k rows of 520 B fits; rows of an image each
come fewer at a time, so that a group never costs gigabytes of memory."""


MIX_READ_ROWS = 8192
"""Rows a mixture read from its sources' stages with no workers gathers at once (8 batches of
1,024). Each read gathers one run a source a batch and checks each source's stage files before and
after (:func:`~.stage.reader.take_flat_runs`), a cost a read that one split's batch pays once for
one stage: 8 batches a read took 3.20M rows a CPU-second against 2.60M a batch at a time (one
split: 3.78M; 1M rows of 520 B, issue 31). The loader hands the batches out one by one."""


def group_batches(
    options: DataOptions, order: str, batch_size: int, *, staged: bool = False, row_bytes: int = 0
) -> int:
    """Consecutive batches read together, and handed over together by a worker (the batches and
    their order stay the same: only how many are read at once changes).

    ``read_group_rows`` where set. With a ``transform``, one batch: the transform (a decode) is
    the cost, not the read, and a group would be transformed whole before its first batch is
    handed over (a first batch seconds late, batches in bursts, a group of decoded images held in
    memory). Otherwise what the order says (a block window, ~16k sequential rows, one scattered
    batch); from a stage, with workers, ~16k rows a hand-over (one shared-memory block, not one a
    batch), and without workers, a mixture's :data:`MIX_READ_ROWS`. Either way no more than
    :data:`READ_GROUP_BYTES` of rows of ``row_bytes``."""
    if options.read_group_rows is not None:
        return max(1, options.read_group_rows // batch_size)
    if options.transform is not None or (options.neighbors is not None and options.num_workers and not staged):
        # a batch with neighbours is k + 1 times the rows: read from the table, a batch at a time; from
        # a stage, a group is gathered straight into a slot and handed over as views (groups of 16
        # batches: the hand-over's cost in the training process is paid once a group, not a batch)
        return 1
    if staged and options.num_workers:
        group = max(1, SEQUENTIAL_READ_ROWS // batch_size)
    elif staged:
        group = max(1, MIX_READ_ROWS // batch_size) if order == "mixture" else 1
    else:
        group = get_order(order).group_batches(
            batch_size, block_size=options.block_size, window_blocks=options.window_blocks
        )
    if row_bytes > 0:
        group = min(group, max(1, READ_GROUP_BYTES // (row_bytes * batch_size)))
    return group


def build_sampler(
    options: DataOptions,
    stage: str,
    num_rows: int,
    *,
    rank: int,
    world_size: int,
    position: TrainPosition | None,
    overfitting: bool = False,
    staged: bool = False,
    row_bytes: Callable[[], int] | None = None,
    weights: Callable[[], np.ndarray] | None = None,
    mixture: MixturePlan | None = None,
    balanced: bool = False,
) -> LanceBatchSampler:
    """The sampler of ``stage``: the train stage in the shuffle order (table order when the order is
    ``none`` or the trainer overfits batches) following ``position``; the others in table order.
    ``row_bytes()``: the reader's bytes a row, which bounds how many batches are read at once; asked
    only where several would be (a table reader learns it with a read). ``weights()``: the train
    split's weights (:mod:`.weights`), asked only where the order draws by them. ``mixture``: the
    train stage's sources (``num_rows``: their rows together), drawn by the mixture order.
    ``balanced``: an evaluation stage with the same batch count on every rank (one mix source's
    loader: :func:`.sharding.plan_epoch`)."""
    training = stage == "train"
    ordered = not training or not get_order(options.shuffle).shuffles or overfitting
    order = "none" if ordered else ("mixture" if mixture is not None else options.shuffle)
    batch_size = options.batch_rows(stage)
    group = group_batches(options, order, batch_size, staged=staged)
    if group > 1 and row_bytes is not None:
        group = group_batches(options, order, batch_size, staged=staged, row_bytes=row_bytes())
    sampler_class = SequentialLanceBatchSampler if ordered else LanceBatchSampler
    weighted = {}
    if get_order(order).weighted:
        assert weights is not None, "a weighted order needs the split's weights"
        weighted = {
            "weights": weights(),
            "samples_per_epoch": options.samples_per_epoch,
            "replacement": options.weight_replacement,
        }
    if get_order(order).mixes:
        weighted = {"mixture": mixture}
    return sampler_class(
        num_rows,
        batch_size=batch_size,
        num_replicas=world_size,
        rank=rank,
        shuffle=order,
        seed=options.seed,
        drop_last=options.drop_last if training else False,
        even=training,
        block_size=options.block_size,
        window_blocks=options.window_blocks,
        group_batches=group,
        position=position if training else None,
        **({"balanced": True} if balanced and not training else {}),
        **weighted,
    )


def release_freed_memory() -> None:
    """Hand memory freed during setup back to the OS.

    Building splits frees hundreds of MB (lancedb's permutation builder, one-off 8-byte arrays)
    that Arrow's mimalloc pool and glibc's malloc otherwise keep for the rest of the run: at 10M
    rows the training process stayed at 1.08 GB after setup; releasing both brings it to ~0.55 GB.
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
