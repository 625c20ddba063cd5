"""``LanceDataModule``: Lightning hooks only; the work is done by the modules it wires.

``setup`` opens the table once, pins its version, builds the splits, and, for the stage
at hand, a :class:`~.dataset.LanceBatchDataset` plus a :class:`~.sampler.LanceBatchSampler`
sharded by the rank and world size that the Trainer reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

import lancedb
import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from .convert import NullPolicy, describe_column
from .dataset import BatchGroup, LanceBatchDataset, resolve_transform
from .memory import DEFAULT_MEMORY_BUDGET, load_in_memory
from .options import STAGES, DataOptions, SettingError, SettingTypeError, as_mapping, as_path, as_str, shown
from .reads import scan_row_ids
from .sampler import LanceBatchSampler, SequentialLanceBatchSampler
from .sharding import DEFAULT_BLOCK_SIZE, DEFAULT_WINDOW_BLOCKS, window_rows
from .source import LanceSourceError, TableSource, check_columns, is_local_uri, is_memory_uri
from .splits import WHOLE_TABLE, SplitRows, SplitSpecError, build_splits, parse_split_spec, whole_table_row_ids
from .state import DataState, TrainPosition
from .workers import init_worker

DEFAULT_SPLITS: Mapping[str, float] = MappingProxyType({"train": 0.8, "val": 0.1, "test": 0.1})
_DEFAULT_STAGE_SPLITS = {
    "train": ("train",),
    "val": ("val", "validation", "valid"),
    "test": ("test",),
    "predict": ("predict",),
}
_LIGHTNING_STAGES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
SEQUENTIAL_READ_ROWS = 16_384
"""Rows an unshuffled stage reads per range scan (several batches at once): a scan of 16,384
rows runs at ~1.5M rows/s here, of 1,024 rows at ~0.25M (a fixed cost per call)."""
NO_DATA_STATE = (
    "the checkpoint holds no lance-lightning data state (written before it existed, or by another "
    "datamodule): the interrupted epoch starts afresh from its first row"
)
STABLE_ONLY = ("random", "sequential")  # split kinds that reassign rows when the table grows


class LanceDataModule(pl.LightningDataModule):
    """Train, validate, test and predict straight from a LanceDB table.

    Args:
        uri: the database: a local directory or any URI lancedb connects to (``s3://...``).
            May be None when ``table`` is an open lancedb ``Table``.
        table: the table name, or an open lancedb ``Table``.
        columns: the columns to read (all when None).
        splits: how the filtered table is divided; see :mod:`lance_lightning.splits`.
        filter: an SQL predicate applied before splitting.
        batch_size: rows per batch on each rank.
        seed: the only source of randomness: splits and every epoch's shuffle.
        num_workers: DataLoader worker processes per rank.
        shuffle: training order: ``"uniform"`` (every row order equally likely; each batch is
            one take of scattered rows), ``"block"`` (shuffled blocks of ``block_size``
            consecutive rows, each rank's blocks read in range scans and mixed ``window_blocks``
            at a time: several times faster) or ``"none"`` (table order, range scans).
            Evaluation stages always read in table order. See the README for what each costs.
        drop_last: training only; see :mod:`lance_lightning.sharding` for the exact rule.
        eval_batch_size: batch size for val/test/predict (``batch_size`` when None).
        stage_splits: which split each stage reads, e.g. ``{"val": "holdout"}``. Defaults:
            train→"train", val→"val" (or "validation"/"valid"), test→"test",
            predict→"predict" or, if there is none, the whole filtered table in table order.
            A stage whose default split does not exist gets no dataloader, except that
            ``setup("fit")`` without a train split is an error (it would train 0 steps).
        transform: a callable (or dotted path to one) applied to each batch dict in the worker.
        nulls: ``"raise"`` (default) or ``"mask"``; see :mod:`lance_lightning.convert`.
        version: the table version to read; the latest at ``setup`` when None.
        storage_options: passed to ``lancedb.connect`` (credentials: never logged).
        connect_kwargs: further ``lancedb.connect`` arguments.
        multiprocessing_context: worker start method: ``"forkserver"`` (default) or ``"spawn"``;
            ``"fork"`` is refused with the reason (lancedb does not survive it).
        persistent_workers: keep workers alive across epochs (start-up paid once).
        pin_memory, prefetch_factor: passed to the ``DataLoader``.
        block_size, window_blocks: the ``"block"`` shuffle's parameters (rows a block, blocks
            a window); see :class:`lance_lightning.orders.BlockOrder`.
        resume: ``"exact"`` (default): a checkpoint's data state must match this configuration
            (split spec, filter, seed, table) and training continues with the next unread row;
            ``"fresh"``: ignore the checkpoint's data state and start its epoch afresh.
        table_updates: ``"pin"`` (default): the whole run reads the version pinned at the first
            ``setup`` (or stored in the checkpoint it resumes). ``"next_epoch"``: at each epoch
            boundary, move to the table's latest version, so appended rows join from the next
            epoch on (never mid-epoch). Needs ``Trainer(reload_dataloaders_every_n_epochs=1)`` and
            a split whose assignment survives appends (hash, column, sql, tables, or None).
        in_memory: read each stage's selected columns once into shared memory (all workers of a
            rank map the same pages) and make every batch a gather: faster than any read from the
            table, for splits that fit ``memory_budget_bytes`` (tensor columns only). Too large
            or non-tensor columns get an error naming the split, the size and the setting.
        cache: a local directory: each stage's split (selected columns, pinned version) is copied
            there once per node at ``setup`` and read from there (see :mod:`lance_lightning.cache`).
            For tables in object storage. None (default): read the table directly.
        cache_max_bytes: refuse to grow the ``cache`` directory beyond this many bytes.
    """

    def __init__(
        self,
        uri: str | None = None,
        table: Any = None,
        *,
        columns: Sequence[str] | None = None,
        splits: Mapping[str, Any] | None = DEFAULT_SPLITS,
        filter: str | None = None,
        batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
        shuffle: Literal["uniform", "block", "none"] = "uniform",
        drop_last: bool = False,
        eval_batch_size: int | None = None,
        stage_splits: Mapping[str, str] | None = None,
        transform: Callable[[dict[str, Any]], Any] | str | None = None,
        nulls: Literal["raise", "mask"] = "raise",
        version: int | None = None,
        storage_options: Mapping[str, str] | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
        multiprocessing_context: Literal["forkserver", "spawn"] | None = None,
        persistent_workers: bool = True,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        window_blocks: int = DEFAULT_WINDOW_BLOCKS,
        resume: Literal["exact", "fresh"] = "exact",
        table_updates: Literal["pin", "next_epoch"] = "pin",
        in_memory: bool = False,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
        cache: str | None = None,
        cache_max_bytes: int | None = None,
    ) -> None:
        super().__init__()
        # Every setting that needs no table, checked once (lance_lightning/options.py): a wrong
        # type or value is refused here, naming the setting and what is valid.
        options = self.options = DataOptions(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            num_workers=num_workers,
            shuffle=shuffle,
            drop_last=drop_last,
            nulls=nulls,
            version=version,
            multiprocessing_context=multiprocessing_context,
            persistent_workers=persistent_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor,
            block_size=block_size,
            window_blocks=window_blocks,
            resume=resume,
            table_updates=table_updates,
            in_memory=in_memory,
            memory_budget_bytes=memory_budget_bytes,
            cache=cache,
            cache_max_bytes=cache_max_bytes,
            columns=columns,
            filter=filter,
            stage_splits=stage_splits,
        )
        self._open_table = None
        if table is None:
            raise SettingError("`table` is required: a table name in the database at `uri`, or an open lancedb Table")
        if isinstance(table, str):
            table = as_str("`table`", table, what="a table name", optional=False)
            if uri is None:
                raise SettingError(f"`uri` is required to open table {table!r}: the database directory or URI")
            uri = as_path("`uri`", uri, what="the database: a directory or a URI", optional=False)
            storage_options = as_mapping(
                "storage_options", storage_options, what="option name to value (str)", values=str, secret=True
            )
            connect_kwargs = as_mapping(
                "connect_kwargs", connect_kwargs, what="lancedb.connect argument name (str) to value", secret=True
            )
            self.source = TableSource(uri, table, options.version, storage_options, connect_kwargs)
        elif isinstance(table, lancedb.table.Table):
            self.source = TableSource.from_table(table)
            if options.version is not None:
                self.source = self.source.pinned(options.version)
            self._open_table = table
        else:
            raise SettingTypeError(
                f"`table` must be a table name (a non-empty str) or an open lancedb Table, got {shown(table)}"
            )
        self.split_spec = parse_split_spec(splits)
        self.columns = list(options.columns) if options.columns is not None else None
        self.filter = options.filter
        self.batch_size = options.batch_size
        self.eval_batch_size = options.eval_batch_size or options.batch_size
        self.seed = options.seed
        self.num_workers = options.num_workers
        self.shuffle = options.shuffle
        self.drop_last = options.drop_last
        self.stage_splits = dict(options.stage_splits)
        self.transform = resolve_transform(transform)
        self.nulls: NullPolicy = options.nulls  # type: ignore[assignment]
        self.multiprocessing_context = options.multiprocessing_context
        self.persistent_workers = options.persistent_workers
        self.pin_memory = options.pin_memory
        self.prefetch_factor = options.prefetch_factor
        self.block_size = options.block_size
        self.window_blocks = options.window_blocks
        self.resume = options.resume
        if (
            options.table_updates == "next_epoch"
            and self.split_spec is not None
            and self.split_spec.kind in STABLE_ONLY
        ):
            raise ValueError(
                f"table_updates='next_epoch' with {self.split_spec.kind} splits would reassign existing rows to "
                "other splits whenever rows are added (leaking validation rows into training). Use a split whose "
                "assignment survives appends: kind 'hash', 'column', 'sql' or 'tables'."
            )
        self.table_updates = options.table_updates
        self.in_memory = options.in_memory
        self.memory_budget_bytes = options.memory_budget_bytes
        # -- local cache (lance_lightning/cache.py) --
        self.cache = options.cache
        self.cache_max_bytes = options.cache_max_bytes
        self._pinned_epoch = 0
        self._resume_state: DataState | None = None
        self._state_loaded = False
        self._align_pending = self._afresh = False
        # the train data position: saved in checkpoints, read by the train sampler
        self.position = TrainPosition(epoch_label=self._lightning_epoch)
        # Prefixed: Lightning merges these with the model's hyperparameters and refuses a key
        # (such as "batch_size" or "seed") that both define with different values.
        self.save_hyperparameters(
            {
                "data_uri": _absolute_if_local(self.source.uri),
                "data_table": self.source.name,
                "data_columns": self.columns,
                "data_splits": _plain(splits),
                "data_filter": options.filter,
                "data_batch_size": options.batch_size,
                "data_seed": options.seed,
                "data_shuffle": options.shuffle,
                "data_drop_last": options.drop_last,
                "data_num_workers": options.num_workers,
            }
        )
        self.splits: dict[str, SplitRows] | None = None
        self._whole_table: SplitRows | None = None
        self.datasets: dict[str, LanceBatchDataset] = {}
        self.samplers: dict[str, LanceBatchSampler] = {}
        self.rank, self.world_size = 0, 1
        self._scan_ids: dict[tuple[Any, ...], Any] = {}  # per setup: each table's row addresses in scan order

    # -- setup ---------------------------------------------------------------------------

    @property
    def table_version(self) -> int | None:
        """The table version this run reads (pinned at the first ``setup``)."""
        return self.source.version

    def _table(self) -> Any:
        if self._open_table is None:
            self._open_table = self.source.open()
        return self._open_table

    def _pin_version(self, reason: str = "") -> Any:
        """The open table at the pinned version (the latest, pinned now, when none is); the source
        records the version's commit time, which tells a recreated table from the original."""
        try:
            table = self._table()
        except LanceSourceError as err:
            if not reason:
                raise
            raise LanceSourceError(
                f"{err}. {reason.capitalize()} was written reading version {self.source.version} of table "
                f"{self.source.name!r}, whose files are gone (removed by cleanup_old_versions / "
                "optimize(cleanup_older_than=...), or the table was dropped and recreated). Pass resume='fresh' to "
                "train on the table as it is now from the start of the checkpoint's epoch, and keep old versions "
                "longer than a run lasts."
            ) from err
        if self.source.version is None:
            self.source = self.source.pinned(table.version)
        elif table.version != self.source.version:
            table.checkout(self.source.version)
        if self.source.version_time is None:
            self.source = self.source.stamped(table)
        return table

    def _lightning_epoch(self) -> int | None:
        """The epoch Lightning is running (``trainer.current_epoch``), None without a trainer."""
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else trainer.current_epoch

    def _topology(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def setup(self, stage: str | None = None) -> None:
        """Pin the table version, build the splits, and the dataset and sampler per stage."""
        stages = _LIGHTNING_STAGES.get(stage, STAGES) if stage else STAGES
        if stage is not None and stage not in _LIGHTNING_STAGES:
            raise ValueError(f"unknown stage {stage!r}; Lightning stages are {', '.join(_LIGHTNING_STAGES)}")
        self.rank, self.world_size = self._topology()
        trainer = getattr(self, "trainer", None)
        reload_every = getattr(trainer, "reload_dataloaders_every_n_epochs", 1)
        if self.table_updates == "next_epoch" and trainer is not None and reload_every != 1:
            raise ValueError(
                "table_updates='next_epoch' needs Trainer(reload_dataloaders_every_n_epochs=1), so that Lightning asks "
                f"for new dataloaders at each epoch (it is {trainer.reload_dataloaders_every_n_epochs})"
            )
        table = self._pin_version()
        schema = table.schema
        self.columns = check_columns(self.source.name, schema, self.columns)
        for name in self.columns:
            describe_column(schema.field(name))
        if self.splits is None:
            self.splits = build_splits(self.source, table, self.split_spec, filter=self.filter, seed=self.seed)
            self._check_stage_splits()
            self._record_hyperparameters()
        if "train" in stages:
            self._check_train_split(stage)
        try:
            for split_stage in stages:
                self._build_stage(split_stage)
        finally:
            self._scan_ids.clear()
            release_freed_memory()

    def split_for_stage(self, stage: str) -> str | None:
        """The split name that ``stage`` reads, or None if it has none (no dataloader)."""
        assert self.splits is not None, "call setup() first"
        if stage in self.stage_splits:
            return self.stage_splits[stage]
        for candidate in _DEFAULT_STAGE_SPLITS[stage]:
            if candidate in self.splits:
                return candidate
        if stage == "predict":
            return WHOLE_TABLE
        if set(self.splits) == {WHOLE_TABLE} and stage == "train":
            return WHOLE_TABLE
        return None

    def _check_stage_splits(self) -> None:
        assert self.splits is not None
        for stage, name in self.stage_splits.items():
            if name not in self.splits and not (stage == "predict" and name == WHOLE_TABLE):
                raise SplitSpecError(
                    f"stage {stage!r} is set to read split {name!r}, but table {self.source.name!r} has "
                    f"splits {sorted(self.splits)}"
                )
        for stage in STAGES:
            name = self.split_for_stage(stage)
            if name is not None and name != WHOLE_TABLE and len(self.splits[name]) == 0:
                raise SplitSpecError(
                    f"split {name!r} (read by stage {stage!r}) of table {self.source.name!r} is empty"
                    f"{' after filter ' + repr(self.filter) if self.filter else ''}; split sizes: "
                    f"{ {n: len(s) for n, s in self.splits.items()} }"
                )

    def _check_train_split(self, stage: str | None) -> None:
        """Refuse what would make ``fit`` train 0 steps with only Lightning's generic warning:
        no train split, or ``drop_last`` with fewer rows than one global step."""
        assert self.splits is not None
        name = self.split_for_stage("train")
        if name is None:
            if stage != "fit":
                return  # setup() for evaluation or prediction: no train dataloader, as documented
            others = {n for names in _DEFAULT_STAGE_SPLITS.values() for n in names} | set(self.stage_splits.values())
            example = next((n for n in sorted(self.splits) if n not in others), sorted(self.splits)[0])
            raise SplitSpecError(
                f"the fit stage reads split 'train', which is not among the splits {sorted(self.splits)} of table "
                f"{self.source.name!r}: it would train 0 steps. The train stage reads a split named 'train' (val: "
                f"{', '.join(map(repr, _DEFAULT_STAGE_SPLITS['val']))}); name a split 'train', or map one with "
                f"stage_splits={{'train': {example!r}}}"
            )
        rows, step = len(self._split_rows(name)), self.batch_size * self.world_size
        if self.drop_last and rows < step:
            raise SplitSpecError(
                f"the train split {name!r} has {rows} rows, fewer than batch_size {self.batch_size} × "
                f"{self.world_size} rank(s) = {step}: drop_last=True would drop every row and train 0 steps. "
                "Use drop_last=False, a smaller batch_size or a larger train split"
            )

    def _split_rows(self, name: str) -> SplitRows:
        assert self.splits is not None
        if name in self.splits:
            return self.splits[name]
        # predict with no "predict" split: the whole filtered table, not one of the splits
        if self._whole_table is None:
            rows = whole_table_row_ids(self._table(), self.filter)
            if len(rows) == 0:
                raise SplitSpecError(
                    f"stage 'predict' reads the whole of table {self.source.name!r}, which is empty"
                    f"{' after filter ' + repr(self.filter) if self.filter else ''}"
                )
            self._whole_table = SplitRows(WHOLE_TABLE, self.source, rows)
        return self._whole_table

    def _build_stage(self, stage: str) -> None:
        name = self.split_for_stage(stage)
        if name is None:
            return
        split = self._split_rows(name)  # never empty: _check_stage_splits and _split_rows refuse that
        if stage in self.samplers and self.samplers[stage].num_replicas == self.world_size:
            return
        same_table = split.source == self.source
        self.datasets[stage] = LanceBatchDataset(
            split.source,
            self.columns,
            num_rows=len(split),
            transform=self.transform,
            nulls=self.nulls,
            table=self._open_table if same_table else None,
        )
        if self.cache is not None:  # -- local cache: read the split from a local copy --
            from .cache import cached_dataset

            self.datasets[stage] = cached_dataset(
                self.datasets[stage],
                split.row_ids,
                directory=self.cache,
                max_bytes=self.cache_max_bytes,
                filter=self.filter,
                split_name=name,
                table=self._open_table if same_table else None,
            )
        self._map_offsets(self.datasets[stage], split)
        if self.in_memory:  # -- in-memory mode: one read of the split, then gathers --
            self.datasets[stage] = load_in_memory(
                self.datasets[stage], num_rows=len(split), split=name, budget_bytes=self.memory_budget_bytes
            )
        training = stage == "train"
        if not training and len(split) < self.world_size:
            raise SplitSpecError(
                f"split {name!r} (read by stage {stage!r}) has {len(split)} row(s), fewer than the "
                f"{self.world_size} ranks: a rank with no batch would skip the loop while the others wait "
                "for it. Use a larger split or fewer devices for this stage."
            )
        overfitting = getattr(getattr(self, "trainer", None), "overfit_batches", 0) or 0
        ordered = not training or self.shuffle == "none" or overfitting > 0
        sampler_class = SequentialLanceBatchSampler if ordered else LanceBatchSampler
        batch_size = self.batch_size if training else self.eval_batch_size
        self.samplers[stage] = sampler_class(
            len(split),
            batch_size=batch_size,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle="none" if ordered else self.shuffle,
            seed=self.seed,
            drop_last=self.drop_last if training else False,
            even=training,
            block_size=self.block_size,
            window_blocks=self.window_blocks,
            group_batches=self._group_batches("none" if ordered else self.shuffle, batch_size),
            position=self.position if training else None,
        )
        if training:
            self._apply_resume()

    def _map_offsets(self, dataset: Any, split: SplitRows) -> None:
        """Give a table reader the table offsets of the split's rows (cache entries need none:
        there a row's offset is its position). One scan of ``_rowid`` per table and setup."""
        if type(dataset) is LanceBatchDataset:
            key = (split.source.uri, split.source.name, split.source.version)
            if key not in self._scan_ids:
                self._scan_ids[key] = scan_row_ids(dataset.table())
            dataset.rows = dataset.offsets_of(split.row_ids, self._scan_ids[key])

    def _group_batches(self, order: str, batch_size: int) -> int:
        """Consecutive batches a worker reads together: a block window, or ~16k sequential rows;
        in memory, with workers, ~16k rows a hand-over (one shared-memory block, not one a batch)."""
        if self.in_memory:
            return 1 if not self.num_workers else max(1, SEQUENTIAL_READ_ROWS // batch_size)
        if order == "uniform":
            return 1  # scattered rows: one take a batch, nothing to gain from grouping
        if order == "block":
            return window_rows(self.block_size, self.window_blocks, batch_size) // batch_size
        return max(1, SEQUENTIAL_READ_ROWS // batch_size)

    def _record_hyperparameters(self) -> None:
        assert self.splits is not None
        extra = {
            "table_version": self.source.version,
            "split_rows": {name: len(rows) for name, rows in self.splits.items()},
        }
        self.hparams.update(extra)
        self._hparams_initial.update(extra)

    # -- checkpoints -----------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        """What decides which row is in which split: a checkpoint must match it to resume."""
        return {
            "table": self.source.name,
            "splits": _plain(self.split_spec.__dict__) if self.split_spec else None,
            "filter": self.filter,
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, Any]:
        """Saved by Lightning in every checkpoint: the data's identity and the next unread row.

        A finished epoch (every batch Lightning will run of it consumed, ``limit_train_batches``
        included) is saved as the next epoch at row 0, since the loader for the resumed run is
        made before Lightning says which epoch it runs (see :mod:`.state`).
        """
        if self.splits is None:
            return {}
        train = None
        sampler = self.samplers.get("train")
        if sampler is not None:
            done = self._batches_consumed(sampler)
            consumed = sampler.rows_consumed_after(done)
            trainer = getattr(self, "trainer", None)
            per_epoch = (_lightning_epoch_batches(trainer, len(sampler)) if trainer is not None else 0) or len(sampler)
            finished = consumed >= sampler.num_rows or done >= per_epoch
            epoch, start = (sampler.epoch + 1, 0) if finished else (sampler.epoch, consumed)
            train = {
                "epoch": epoch,
                "start_row": start,
                "split_rows": sampler.num_rows,
                "order_world_size": sampler.order_world_size if start else None,
                "order_batch_size": sampler.order_batch_size if start else None,
                "batch_size": sampler.batch_size,
                "batches_done": done if start else 0,
            }
        return DataState(
            identity=self._identity(),
            table_version=self.source.version,
            table_version_time=self.source.version_time,
            world_size=self.world_size,
            train=train,
        ).to_dict()

    def _batches_consumed(self, sampler: LanceBatchSampler) -> int:
        """Batches of the current epoch the model has consumed (prefetched ones do not count)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return sampler.batches_before_start
        return min(trainer.fit_loop.epoch_loop.batch_progress.current.processed, len(sampler))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the data position from a checkpoint (called by Lightning after ``setup``)."""
        self._state_loaded = True
        if not state_dict or "format" not in state_dict:
            rank_zero_warn(NO_DATA_STATE)
            self._resume_afresh()
            return
        if self.resume == "fresh":
            rank_zero_warn("resume='fresh': ignoring the checkpoint's data state; its epoch starts afresh")
            self._resume_afresh()
            return
        state = DataState.from_dict(state_dict)
        mine = self._identity()
        differs = [
            f"{key}: checkpoint {state.identity.get(key)!r} != now {mine[key]!r}"
            for key in mine
            if state.identity.get(key) != mine[key]
        ]
        if differs:
            raise ValueError(
                "the checkpoint's data state does not match this LanceDataModule (" + "; ".join(differs) + "). "
                "Resuming would read different rows. Restore the original settings, or pass resume='fresh' "
                "to start the data afresh."
            )
        version = state.table_version
        if version is not None and version != self.source.version:
            follow = " until this epoch ends" if self.table_updates == "next_epoch" else ""
            rank_zero_warn(
                f"table {self.source.name!r} has moved on since the checkpoint (version {version} then, "
                f"{self.source.version} now): this run keeps reading version {version}{follow}, so the splits and "
                "the interrupted epoch stay exactly the same"
            )
            self._repin(version, reason="the checkpoint")
        self._check_same_table(state)
        self._pinned_epoch = state.train["epoch"] if state.train else 0
        self._resume_state = state
        self._apply_resume()

    def _check_same_table(self, state: DataState) -> None:
        """Refuse a checkpoint of a table that was dropped and recreated under the same name."""
        then, now = state.table_version_time, self.source.version_time
        if then is None or now is None or then == now:
            return
        raise ValueError(
            f"table {self.source.name!r} at {self.source.uri!r} is not the table the checkpoint was written from: "
            f"its version {self.source.version} was committed at {now}, the checkpoint's at {then} (the table was "
            "dropped and recreated, or replaced by a copy: version numbers restart at 1). Resuming would read "
            "other rows as the rest of the interrupted epoch. Pass resume='fresh' to train on this table from the "
            "start of the checkpoint's epoch."
        )

    def _repin(self, version: int, *, reason: str = "") -> None:
        """Read ``version`` of the table from now on: rebuild the splits and every built stage."""
        self.source = self.source.pinned(version)
        self._open_table = None
        stages = list(self.samplers)
        self.splits, self._whole_table, self.samplers, self.datasets = None, None, {}, {}
        table = self._pin_version(reason=reason)
        self.splits = build_splits(self.source, table, self.split_spec, filter=self.filter, seed=self.seed)
        self._check_stage_splits()
        self._record_hyperparameters()
        try:
            for stage in stages:
                self._build_stage(stage)
        finally:
            self._scan_ids.clear()

    def _apply_resume(self) -> None:
        """Position the train sampler where the checkpoint's data state says reading stands."""
        state, sampler = self._resume_state, self.samplers.get("train")
        if state is None or sampler is None or state.train is None:
            return
        train = state.train
        if train["split_rows"] != sampler.num_rows:
            raise ValueError(
                f"the checkpoint's train split of table {self.source.name!r} has {train['split_rows']} rows, this "
                f"one {sampler.num_rows} (same table version, splits, filter and seed): the split was built "
                "differently. Pass resume='fresh' to start the data afresh."
            )
        sampler.resume_at(
            epoch=train["epoch"],
            consumed_rows=train["start_row"],
            order_world_size=train["order_world_size"],
            order_batch_size=train["order_batch_size"],
        )
        self._align_pending = True

    def _resume_afresh(self) -> None:
        """No usable data state: the epoch Lightning resumes is read again from its first row."""
        self._resume_state = None
        self._align_pending = True
        self._afresh = True

    def _align_lightning(self) -> None:
        """Once, when the resumed run asks for its train loader: make Lightning's batch index agree
        with the data position, so that an epoch ends (and validates) where a whole epoch does.

        With the checkpoint's batch size and world size the two agree by construction. With
        others, Lightning would count the rest of the epoch in the old batches: its index is moved
        to where the new batch count ends the epoch (a finished epoch: its last batch). Without a
        data state the epoch is read afresh and the index starts at 0. The data position wins.
        """
        trainer = getattr(self, "trainer", None)
        sampler = self.samplers.get("train")
        if not self._align_pending or trainer is None or sampler is None:
            return
        self._align_pending = False
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if self._afresh:
            self._afresh = False
            sampler.resume_at(epoch=trainer.fit_loop.epoch_progress.current.completed, consumed_rows=0)
            target = 0
        else:
            train = self._resume_state.train if self._resume_state is not None else None
            then = self._resume_state.world_size if self._resume_state is not None else self.world_size
            if train is None or (train["batch_size"] == sampler.batch_size and then == self.world_size):
                return
            finished = train["start_row"] == 0
            target = _lightning_epoch_batches(trainer, len(sampler)) if finished else sampler.batches_before_start
            rest = len(sampler) - sampler.batches_before_start
            rank_zero_warn(
                f"resuming split {self.split_for_stage('train')!r} with batch_size={sampler.batch_size} on "
                f"{self.world_size} rank(s) (the checkpoint: batch_size={train['batch_size']} on {then}): "
                + (
                    f"epoch {train['epoch']} starts afresh in the new batches."
                    if finished
                    else f"the {sampler.num_rows - train['start_row']} unread rows of epoch {train['epoch']} make "
                    f"{rest} batches, and the epoch's batch index continues at {sampler.batches_before_start} so "
                    "that it ends (and validates) where a whole epoch does. Rows are exact; batch boundaries "
                    "differ from an uninterrupted run's."
                )
            )
        shift = target - progress.processed
        if shift:
            # all four alike: Lightning's restart arithmetic (completed += 1 after a checkpoint
            # written in on_train_batch_end, then ready = processed = completed) is unchanged
            for attr in ("ready", "started", "processed", "completed"):
                setattr(progress, attr, getattr(progress, attr) + shift)

    # -- dataloaders ---------------------------------------------------------------------

    def _loader(self, stage: str) -> DataLoader | list:
        if stage not in self.samplers:
            if self.splits is None:
                raise RuntimeError(f"{stage}_dataloader() called before setup(); call setup() first")
            return []
        dataset = self.datasets[stage]
        workers = self.num_workers
        source = getattr(dataset, "source", None)  # in-memory datasets reopen nothing
        if workers and source is not None and is_memory_uri(source.uri):
            raise LanceSourceError(
                f"table {source.name!r} is in an in-memory database ({source.uri}): "
                f"num_workers={workers} worker processes cannot reopen it. Use num_workers=0, in_memory=True, "
                "or store the table in a directory (lancedb.connect('/path')) or object store."
            )
        kwargs: dict[str, Any] = {}
        if workers:
            method = self.multiprocessing_context or "forkserver"
            context = multiprocessing.get_context(method)
            if method == "forkserver":
                # The fork server imports these once; each worker forks from it instead of
                # importing torch and Lightning again (the user's script re-imports them).
                # lancedb is left out: it must not be imported before a fork.
                context.set_forkserver_preload(["torch", "lightning.pytorch"])
            kwargs["multiprocessing_context"] = context
            # each worker ends when this process does (lance_lightning/workers.py): a SIGKILLed
            # trainer otherwise leaves the fork server and its workers alive
            kwargs["worker_init_fn"] = functools.partial(init_worker, os.getpid())
            kwargs["persistent_workers"] = self.persistent_workers
            if self.prefetch_factor is not None:
                kwargs["prefetch_factor"] = self.prefetch_factor
        if self.transform is None:
            # Batches are already tensors: skip DataLoader's default_convert walk over every item
            # (a transform may return NumPy arrays, which default_convert still turns into tensors).
            kwargs["collate_fn"] = batch_as_is
        return LanceDataLoader(
            dataset,
            sampler=self.samplers[stage],
            batch_size=None,
            num_workers=workers,
            pin_memory=self.pin_memory,
            **kwargs,
        )

    def _follow_table_updates(self) -> None:
        """At a new epoch, with ``table_updates="next_epoch"``: move every stage to the latest version."""
        trainer = getattr(self, "trainer", None)
        if self.table_updates != "next_epoch" or trainer is None or trainer.current_epoch <= self._pinned_epoch:
            return
        latest = self.source.pinned(None).open().version if self.rank == 0 else None
        if self.world_size > 1:
            latest = trainer.strategy.broadcast(latest, src=0)  # every rank must read the same version
        self._pinned_epoch = trainer.current_epoch
        self._resume_state = None  # the resumed epoch is over: a new one starts from its first row
        if latest != self.source.version:
            self._repin(latest)

    def train_dataloader(self) -> DataLoader | list:
        self._follow_table_updates()
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.ckpt_path and not self._state_loaded and "train" in self.samplers:
            # Lightning skips load_state_dict when the checkpoint has no entry for this datamodule.
            self._state_loaded = True
            rank_zero_warn(NO_DATA_STATE)
            self._resume_afresh()
        self._align_lightning()
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._loader("predict")

    # -- description ---------------------------------------------------------------------

    def index_nbytes(self) -> dict[str, int]:
        """Bytes of row index this process holds, by holder: each split's rows, each stage's
        offset map (also what every DataLoader worker of that stage holds), each sampler's order.

        None grows with the number of workers; none is 8 bytes a row (see the README, "Memory").
        """
        out = {f"split {name}": split.rows.nbytes for name, split in (self.splits or {}).items()}
        if self._whole_table is not None:
            out["split (whole table)"] = self._whole_table.rows.nbytes
        for stage, dataset in self.datasets.items():
            rows = getattr(dataset, "rows", None)
            out[f"offsets {stage}"] = int(getattr(rows, "nbytes", 0))
        for stage, sampler in self.samplers.items():
            out[f"order {stage}"] = sampler.epoch_order().nbytes
        return out

    def column_tensors(self) -> dict[str, str]:
        """What each selected column becomes, e.g. ``{"emb": "Tensor[float32, (rows, 128)]"}``."""
        schema = self._table().schema
        return {
            name: describe_column(schema.field(name)) for name in check_columns(self.source.name, schema, self.columns)
        }


class LanceDataLoader(DataLoader):
    """A plain ``DataLoader`` that Lightning recognises as resumable.

    Its position is the datamodule's (:mod:`.state`), stored once per checkpoint by
    :meth:`LanceDataModule.state_dict`; the loader's own ``state_dict`` is empty and its
    ``load_state_dict`` does nothing (they exist so that Lightning treats the loader as resumable).
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None

    def __iter__(self) -> Any:
        """Batches one by one: a :class:`~.dataset.BatchGroup` read together is handed out whole."""
        items = super().__iter__()
        if self.num_workers:
            items = _naming_dead_workers(items)
        if getattr(self.sampler, "group_batches", 1) == 1:
            return items
        return (batch for item in items for batch in (item if isinstance(item, BatchGroup) else (item,)))


def _naming_dead_workers(items: Any) -> Any:
    """``items``, where a worker killed while handing over a batch (its shared-memory connection
    reset) is reported as such instead of as a bare ``ConnectionResetError`` / ``EOFError``."""
    try:
        yield from items
    except (ConnectionError, EOFError) as err:
        raise RuntimeError(
            f"a DataLoader worker died while handing over a batch ({type(err).__name__}: {err}): it was "
            "killed (the OOM killer, a SIGKILL) or crashed. Check the worker's memory use and the system log; "
            "resume from the last checkpoint to continue exactly."
        ) from err


def _lightning_epoch_batches(trainer: Any, length: int) -> int:
    """Batches Lightning runs of a train epoch of ``length`` batches under ``limit_train_batches``
    (its ``_parse_num_batches``: an int caps, a float is a share)."""
    limit = trainer.limit_train_batches
    return min(length, limit) if isinstance(limit, int) else int(length * limit)


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


def batch_as_is(batch: Any) -> Any:
    """The DataLoader's collate_fn when batches are already tensors: hand them on unchanged."""
    return batch


def _absolute_if_local(uri: str) -> str:
    """Local paths as absolute paths (what the logs should say); other URIs as given."""
    return os.path.abspath(uri) if is_local_uri(uri) and not uri.startswith("file://") else uri


def _plain(value: Any) -> Any:
    """Mappings and sequences (Hydra's DictConfig/ListConfig included) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value
