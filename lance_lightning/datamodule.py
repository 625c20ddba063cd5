"""``LanceDataModule``: the Lightning hooks; the work is done by the modules they call.

``setup`` opens the table once (:mod:`.source`), pins its version, builds the splits
(:mod:`.splits`), and for each stage at hand a reader and a sampler (:mod:`.assembly`) sharded
by the rank and world size the Trainer reports; ``state_dict`` / ``load_state_dict`` hand the
data position to its one owner (:class:`.state.TrainState`); ``*_dataloader`` wrap the pair in
a loader (:mod:`.loader`). The settings are one frozen, validated :class:`.options.DataOptions`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from . import assembly
from .batch_keys import check_batch_keys
from .convert import check_key_collisions, describe_column
from .dataset import StagedBatchDataset, resolve_transform
from .loader import make_loader, start_forkserver, worker_start_method
from .notice import notice_if_slow
from .options import DEFAULT_MEMORY_BUDGET, DEFAULT_SPLITS, STAGES, DataOptions
from .sampler import LanceBatchSampler
from .seeding import resolve_seed
from .sharding import DEFAULT_BLOCK_SIZE, DEFAULT_WINDOW_BLOCKS, ShuffleMode
from .source import (
    LanceSourceError,
    TableChangedError,
    check_columns,
    is_local_uri,
    open_other_table,
    table_pin,
    table_source,
    version_time,
)
from .splits import (
    WHOLE_TABLE,
    SplitRows,
    SplitSpecError,
    build_splits,
    kinds_stable_under_appends,
    parse_split_spec,
    whole_table_row_ids,
)
from .splits.tables import table_split
from .stage import hold_again
from .state import TrainState
from .weights import split_weights


class LanceDataModule(pl.LightningDataModule):
    """Train, validate, test and predict straight from a LanceDB table.

    Args:
        uri: the database: a local directory or any URI lancedb connects to (``s3://...``).
            May be None when ``table`` is an open lancedb ``Table``; an open ``Table`` given here,
            as the one positional argument (``LanceDataModule(table)``), is taken as ``table``.
        table: the table name, or an open lancedb ``Table``.
        columns: the columns to read (all when None).
        splits: how the filtered table is divided; see :mod:`lance_lightning.splits`.
        filter: an SQL predicate applied before splitting.
        batch_size: rows per batch on each rank.
        seed: the only source of randomness: splits and every epoch's shuffle. None (default):
            the seed ``lightning.seed_everything`` set in this process (``PL_GLOBAL_SEED``), so a
            seed sweep changes the data order too; without it, 0 (:data:`.seeding.DEFAULT_SEED`).
            Resolved at the first ``setup`` (under DDP: rank 0's, on every rank), logged as the
            ``data_seed`` hyperparameter and kept in checkpoints (a resume must use the same).
        num_workers: DataLoader worker processes per rank.
        shuffle: training order: ``"uniform"`` (every row order equally likely; each batch is
            one take of scattered rows), ``"block"`` (shuffled blocks of ``block_size``
            consecutive rows, each rank's blocks read in range scans and mixed ``window_blocks``
            at a time: several times faster) or ``"none"`` (table order, range scans).
            Evaluation stages always read in table order. What each costs: docs/concepts/shuffle.md.
        drop_last: training only; see :mod:`lance_lightning.sharding` for the exact rule.
        eval_batch_size: batch size for val/test/predict (``batch_size`` when None).
        stage_splits: which split each stage reads, e.g. ``{"val": "holdout"}``. Defaults:
            train→"train", val→"val" (or "validation"/"valid"), test→"test",
            predict→"predict" or, if there is none, the whole filtered table in table order.
            A stage whose default split does not exist gets no dataloader, except that
            ``setup("fit")`` without a train split is an error (it would train 0 steps).
        transform: a callable (or dotted path to one) applied to each batch dict in the worker.
        batch_keys: hand out each batch as the tuple ``(batch[k] for k in batch_keys)``, so that
            ``x, y = batch`` works (e.g. ``("image", "label")``); None (default): the dict. Applied
            last, in the training process (after ``transform``), in every read path; checked at
            ``setup`` against a batch's keys. See :mod:`lance_lightning.batch_keys`.
        nulls: ``"raise"`` (default) or ``"mask"``; see :mod:`lance_lightning.convert`.
        version: the table version to read; the latest at ``setup`` when None.
        storage_options: passed to ``lancedb.connect`` (credentials: never logged).
        connect_kwargs: further ``lancedb.connect`` arguments.
        multiprocessing_context: worker start method: ``"forkserver"`` or ``"spawn"``. By default
            (None) a staged split's workers fork (they never call lancedb; start in milliseconds)
            and a table reader's start from the fork server. ``"fork"`` itself is refused with the
            reason (lancedb does not survive it in workers that read the table).
        persistent_workers: keep workers alive across epochs (start-up paid once).
        pin_memory, prefetch_factor: passed to the ``DataLoader``.
        read_ahead: with ``num_workers=0``, batches read ahead on a background thread while the
            step runs (2 by default; 0: each batch is read when the step asks for it). Lance's
            reads, NumPy's gathers and file reads release the GIL, so an accelerator's step hides
            them. Workers prefetch on their own (``prefetch_factor``): ignored with workers.
        read_group_rows: rows a worker reads, and hands over, at once (whole batches; the batches
            and their order stay the same). None (default): one batch at a time when a
            ``transform`` is set (each batch reaches the step as soon as it is made: a decode is
            the cost there, not the read); otherwise what the read path does best (~16k rows of a
            stage per shared-memory hand-over, a block window, one scattered batch), at most
            64 MiB of rows.
        block_size, window_blocks: the ``"block"`` shuffle's parameters (rows a block, blocks
            a window); see :class:`lance_lightning.orders.BlockOrder`.
        resume: ``"exact"`` (default): a checkpoint's data state must match the settings it records
            (those that decide the rows or their order: table, splits, filter, seed, shuffle...; see
            :mod:`.options`) and training continues with the next unread row;
            ``"fresh"``: ignore the checkpoint's data state and start its epoch afresh.
        table_updates: ``"pin"`` (default): the whole run reads the version pinned at the first
            ``setup`` (or stored in the checkpoint it resumes). ``"next_epoch"``: at each epoch
            boundary, move to the table's latest version, so appended rows join from the next
            epoch on (never mid-epoch). Needs ``Trainer(reload_dataloaders_every_n_epochs=1)`` and
            a split whose assignment survives appends (hash, column, sql, tables, or None).
        staging: where batches are read from (:mod:`lance_lightning.stage`). ``"auto"`` (default):
            a split read in the ``uniform`` order (and every split when ``cache`` or ``in_memory``
            is set) is copied once per node into a verified, memory-mapped local stage and every
            batch is a gather from it (memory speed instead of one table take a row); a split that
            does not fit the staging budget is read from the table, with a warning saying why.
            ``"always"``: stage every split, and refuse one that does not fit. ``"off"``: read the
            table. ``block`` and ``none`` read the table in range scans unless asked otherwise.
        in_memory: read every page of each stage once at setup (pre-fault), so the first epoch runs
            at memory speed too; refused, naming the split and the setting, when a stage is over
            ``memory_budget_bytes``. Implies staging.
        cache: where stages live (default: ``$XDG_CACHE_HOME/lance-lightning/stages``): a
            node-local directory; setting it stages every split (remote tables read once).
        cache_max_bytes: the staging budget: stages beyond it are evicted least-recently-used
            (never one a running job reads). Default: half the free space where stages live.
        weight_column: a numeric column; each train epoch draws rows with probability proportional
            to it (``shuffle`` becomes ``"weighted"``, :class:`lance_lightning.orders.WeightedOrder`).
            Read once at setup from the pinned version; a null, NaN, infinite or negative weight, or
            all weights 0, is refused naming the column, the count of bad rows and one of them.
            Weight 0: never drawn.
        balance_column: class balance: a row weighs ``1 / count`` of its value of this column in
            the train split (times ``weight_column``'s where both are set).
        samples_per_epoch: rows a weighted epoch draws (None: every row of weight > 0), or a
            mixture's epoch holds (None: one pass over its first source); what ``len()`` of the
            train loader counts.
        weight_replacement: draw ``samples_per_epoch`` rows with replacement (a row may come several
            times an epoch); False (default): a weighted permutation, every row at most once.
        mix: train on several sources at set proportions: a mapping of source name to
            ``{"proportion": p, "split": ..., "table": ..., "uri": ..., "filter": ...}`` (or a
            list of those with a ``name``). A source is rows of this table's train split (or of
            another ``split``), or of another ``table`` (in this database or at ``uri``), cut by
            ``filter``. Each epoch holds each source's exact count; each batch carries a
            ``source`` tensor (the source's index). See docs/guides/mixtures.md.
        mix_batching: where the sources go: ``"mixed"`` (default: random positions),
            ``"stratified"`` (every global step holds each source's share within one row) or
            ``"source"`` (every batch holds one source).
        eval_by_source: with ``mix``, validation and test read one loader per source (a list, in
            ``mix``'s order; Lightning passes ``dataloader_idx``, the source's index, to
            ``validation_step``), each batch with its ``source``: a source of the train split
            (cut by its ``filter``) is validated on the val split's rows its filter keeps; a
            source of another table or split names its rows with ``val_table`` / ``val_split``
            (``test_table`` / ``test_split``). :meth:`source_name` turns ``dataloader_idx`` into
            the source's name, for metric names. False (default): one loader per split.
        neighbors: every train batch also carries each row's ``k`` nearest rows of the split by a
            vector column, as ``batch["neighbors"]`` (``ids``, ``mask`` and their columns, ``[B, k, ...]``),
            e.g. ``{"column": "emb", "k": 4, "exclude_same": "label"}``: mined once per node from the
            pinned version (exactly, or with the column's vector index), stored beside the stage and
            gathered at memory speed. See docs/guides/neighbors.md and :mod:`lance_lightning.neighbors`.
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
        seed: int | None = None,
        num_workers: int = 0,
        shuffle: ShuffleMode = "uniform",
        drop_last: bool = False,
        eval_batch_size: int | None = None,
        stage_splits: Mapping[str, str] | None = None,
        transform: Callable[[dict[str, Any]], Any] | str | None = None,
        batch_keys: Sequence[str] | None = None,
        nulls: Literal["raise", "mask"] = "raise",
        version: int | None = None,
        storage_options: Mapping[str, str] | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
        multiprocessing_context: Literal["forkserver", "spawn"] | None = None,
        persistent_workers: bool = True,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        read_ahead: int = 2,
        read_group_rows: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        window_blocks: int = DEFAULT_WINDOW_BLOCKS,
        resume: Literal["exact", "fresh"] = "exact",
        table_updates: Literal["pin", "next_epoch"] = "pin",
        in_memory: bool = False,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
        cache: str | None = None,
        cache_max_bytes: int | None = None,
        staging: Literal["auto", "always", "off"] = "auto",
        weight_column: str | None = None,
        balance_column: str | None = None,
        samples_per_epoch: int | None = None,
        weight_replacement: bool = False,
        neighbors: Mapping[str, Any] | None = None,
        mix: Mapping[str, Mapping[str, Any]] | None = None,
        mix_batching: Literal["mixed", "stratified", "source"] = "mixed",
        eval_by_source: bool = False,
    ) -> None:
        super().__init__()
        if table is None and _is_lancedb_table(uri):  # LanceDataModule(table): the open table
            uri, table = None, uri
        settings = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        # Every setting checked once (lance_lightning/options.py): a wrong type or value is refused
        # here, naming the setting and what is valid.
        options = self.options = DataOptions(**settings)
        self.source, self._open_table = table_source(options)
        self.split_spec = parse_split_spec(splits)
        spec = self.split_spec
        _warn_unused_share(spec)
        if options.table_updates == "next_epoch" and spec is not None and not spec.survives_appends:
            raise ValueError(
                f"table_updates='next_epoch' with {spec.kind} splits would reassign existing rows to other splits "
                "whenever rows are added (leaking validation rows into training). Use a split whose assignment "
                f"survives appends: kind {' or '.join(map(repr, kinds_stable_under_appends()))}."
            )
        self.transform = resolve_transform(transform)
        self.columns = list(options.columns) if options.columns is not None else None  # all columns: at setup
        self.train_state = TrainState(epoch_label=self._lightning_epoch)
        self._pinned_epoch = 0
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
                "data_seed": options.seed,  # None until setup resolves it (seed_everything or the default)
                "data_seed_from": "seed" if options.seed is not None else None,
                "data_batch_keys": list(options.batch_keys) if options.batch_keys else None,
                "data_shuffle": options.shuffle,
                "data_drop_last": options.drop_last,
                "data_num_workers": options.num_workers,
            }
        )
        self.splits: dict[str, SplitRows] | None = None
        self._whole_table: SplitRows | None = None
        self.datasets: dict[str, Any] = {}
        self._pins: dict[str, dict[str, Any]] = {}
        """Versions to read other tables at (keys as :meth:`_other_tables` makes them): a checkpoint's."""
        self.mix_sources: list[SplitRows] | None = None
        """The train stage's ``mix`` sources as resolved at setup (rows of pinned tables), in ``mix``'s order."""
        self.eval_sources: dict[str, list[SplitRows]] = {}
        """With ``eval_by_source``: by stage (``val``, ``test``), each source's rows it reads, in ``mix``'s order."""
        self.samplers: dict[str, LanceBatchSampler] = {}
        self.rank, self.world_size = 0, 1
        self._announced: set[str] = set()
        self.neighbor_lists: Any = None  # the directory of the train split's neighbour lists in use
        self._neighbor_mining: dict[str, Any] | None = None  # where those were mined from
        self._following = False  # moving to the latest version at an epoch boundary (table_updates="next_epoch")

    @property
    def position(self) -> Any:
        """The train data position (:class:`.state.TrainPosition`) the train sampler follows."""
        return self.train_state.position

    @property
    def table_version(self) -> int | None:
        """The table version this run reads (pinned at the first ``setup``)."""
        return self.source.version

    # -- setup ---------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Pin the table version, build the splits, and the reader and sampler per stage."""
        if stage is not None and stage not in assembly.LIGHTNING_STAGES:
            raise ValueError(f"unknown stage {stage!r}; Lightning stages are {', '.join(assembly.LIGHTNING_STAGES)}")
        stages = assembly.LIGHTNING_STAGES[stage] if stage else STAGES
        self.rank, self.world_size = self._topology()
        trainer = self._trainer()
        reload_every = getattr(trainer, "reload_dataloaders_every_n_epochs", 1)
        if self.options.table_updates == "next_epoch" and reload_every != 1:
            raise ValueError(
                "table_updates='next_epoch' needs Trainer(reload_dataloaders_every_n_epochs=1), so that Lightning "
                f"asks for new dataloaders at each epoch (it is {reload_every})"
            )
        if assembly.reads_table_with_workers(self.options, stages):
            start_forkserver()  # its imports run while this process builds splits and stages
        self._resolve_seed()
        table = self._pin_version()
        self.columns = check_columns(self.source.name, table.schema, self.columns)
        for name in self.columns:
            describe_column(table.schema.field(name))
        check_key_collisions(
            self.source.name, [table.schema.field(name) for name in self.columns], nulls=self.options.nulls
        )
        if self.splits is None:
            self._build_splits(table)
        if "train" in stages and (stage == "fit" or self.split_for_stage("train") is not None):
            name = self.split_for_stage("train")
            rows = None if name is None else len(self.split_rows(name))
            assembly.check_train_split(
                self.source.name, self.splits, self.options, train_rows=rows, world_size=self.world_size
            )
        self._build_stages(stages)
        if self.options.num_workers and any(
            worker_start_method(reader, self.options) == "forkserver" for reader in self.datasets.values()
        ):
            start_forkserver()  # a reader of the table: its workers fork from the server (lancedb survives that)

    def _resolve_seed(self) -> None:
        """``seed=None``: take ``seed_everything``'s seed (or the default) once, the same on every rank."""
        if self.options.seed is not None:
            return
        seed, origin = resolve_seed(None)
        if self.world_size > 1:
            seed, origin = self._broadcast((seed, origin))  # one data order: every rank reads rank 0's
        self.options = dataclasses.replace(self.options, seed=seed)
        extra = {"data_seed": seed, "data_seed_from": origin}
        self.hparams.update(extra)
        self._hparams_initial.update(extra)

    def _broadcast(self, value: Any) -> Any:
        """``value`` as rank 0 has it, on every rank."""
        trainer = self._trainer()
        if trainer is not None:
            return trainer.strategy.broadcast(value, src=0)
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def check_table(self) -> list[str]:
        """Open the table now and check the columns: the errors ``setup`` would raise about the URI,
        the table name or a column, raised where this is called (the main job calls it right after
        building the datamodule, before any Trainer starts). Returns the columns that will be read.
        Building a datamodule itself does no I/O (it may be built before its table exists)."""
        table = self._table()
        try:
            return check_columns(self.source.name, table.schema, self.columns)
        finally:
            if self.options.table is None:
                self._open_table = None  # opened again (and pinned) at setup: nothing held meanwhile

    def _build_splits(self, table: Any) -> None:
        where = f" where {self.options.filter}" if self.options.filter else ""
        kind = self.split_spec.kind if self.split_spec is not None else "whole-table"
        with notice_if_slow(
            f"lance-lightning: building the {kind} splits of table {self.source.name!r} (version "
            f"{self.source.version}){where}: reading every row's address once, which takes a while on a large "
            "table; the splits are kept for the whole run"
        ):
            self.splits = build_splits(
                self.source, table, self.split_spec, filter=self.options.filter, seed=self.options.seed
            )
        for key, pin in self._pins.items():  # a tables split at the version a checkpoint read
            name = key.partition(":")[2]
            if key.startswith("split:") and name in self.splits:
                self.splits[name] = table_split(name, self.source, pin["table"], self.options.filter, pin)
        self._whole_table = None
        assembly.check_stage_splits(self.source.name, self.splits, self.options)
        extra = {"table_version": self.source.version, "split_rows": {n: len(r) for n, r in self.splits.items()}}
        self.hparams.update(extra)
        self._hparams_initial.update(extra)

    def _build_stages(self, stages: Sequence[str]) -> None:
        scan_ids = assembly.ScanIds()
        try:
            for stage in stages:
                self._build_stage(stage, scan_ids)
        finally:
            assembly.release_freed_memory()

    def _build_stage(self, stage: str, scan_ids: assembly.ScanIds) -> None:
        if stage in EVAL_STAGES and self.options.eval_by_source:
            self._build_source_stages(stage, scan_ids)
            return
        name = self.split_for_stage(stage)
        built = stage in self.samplers and self.samplers[stage].num_replicas == self.world_size
        readers = getattr(self.datasets.get(stage), "readers", [self.datasets.get(stage)])  # a mixture's: each source's
        if name is None or (built and all(hold_again(r) for r in readers)):  # a stage evicted since: staged again
            return
        split = self.split_rows(name)  # never empty: check_stage_splits and split_rows refuse that
        assembly.check_eval_split(stage, name, len(split), self.world_size)
        mixture = None
        neighbors = stage == "train" and self.options.neighbors is not None
        if stage == "train" and self.options.mix is not None:
            self.datasets[stage], mixture = self._mixture_reader(name, scan_ids)
        else:
            self.datasets[stage] = assembly.build_reader(
                self.options,
                split,
                stage=stage,
                warn=rank_zero_warn,
                columns=self.columns,
                split_name=name,
                transform=None if neighbors else self.transform,  # the neighbours are added before it runs
                table=self._open_table if split.source == self.source else None,
                scan_ids=scan_ids,
            )
            if neighbors:
                self.datasets[stage] = self._with_neighbors(stage, split, name, scan_ids)
        trainer = self._trainer()
        reader = self.datasets[stage]
        self.samplers[stage] = assembly.build_sampler(
            self.options,
            stage,
            len(reader),
            rank=self.rank,
            world_size=self.world_size,
            position=self.position,
            overfitting=bool(getattr(trainer, "overfit_batches", 0)),
            staged=reader.reads_stage,
            row_bytes=reader.row_bytes,
            weights=lambda: self._split_weights(split),
            mixture=mixture,
        )
        if stage == "train":
            assembly.check_weighted_epoch(
                self.samplers[stage], self.options, split_name=name, world_size=self.world_size
            )
            assembly.check_mixture_epoch(self.samplers[stage], self.options, world_size=self.world_size)
            self.train_state.apply(self.samplers[stage], table_name=self.source.name)
        if self.options.batch_keys is not None:
            self._check_batch_keys(stage, name, reader, len(split))

    def _build_source_stages(self, stage: str, scan_ids: assembly.ScanIds) -> None:
        """``eval_by_source``: a reader and a sampler per ``mix`` source for ``stage`` (``val`` or
        ``test``), keyed ``<stage>/<source>`` in :attr:`datasets` and :attr:`samplers`."""
        from .mix.reader import SOURCE_KEY, MixtureBatchDataset
        from .mix.resolve import resolve_eval_sources

        assert self.options.mix is not None and self.splits is not None
        keys = [source_stage_key(stage, spec.name) for spec in self.options.mix]
        built = all(k in self.samplers and self.samplers[k].num_replicas == self.world_size for k in keys)
        if built and all(hold_again(r) for k in keys for r in self.datasets[k].readers):
            return
        rows_by_source = resolve_eval_sources(
            self.options.mix,
            stage,
            source=self.source,
            table=self._table(),
            splits=self.splits,
            train_split=self._train_split_name(),
            stage_split=self.split_for_stage(stage),
            columns=self.columns,
            filter=self.options.filter,
            versions={k.partition(":")[2]: pin for k, pin in self._pins.items() if k.startswith(f"mix-{stage}:")},
        )
        if rows_by_source is None:  # no split for this stage and no source names its rows: no loader
            self.eval_sources.pop(stage, None)
            return
        if SOURCE_KEY in self.columns:
            raise SplitSpecError(
                f"eval_by_source adds each row's source to its batch as {SOURCE_KEY!r}, which is also a column read "
                f"from table {self.source.name!r}: leave that column out of columns (or rename it in the table)"
            )
        self.eval_sources[stage] = rows_by_source
        for index, (spec, rows, key) in enumerate(zip(self.options.mix, rows_by_source, keys)):
            if len(rows) < self.world_size:
                raise SplitSpecError(
                    f"eval_by_source: mix source {spec.name!r} has {len(rows)} {stage} row(s), fewer than the "
                    f"{self.world_size} ranks: a rank with no batch would skip the loop while the others wait for it. "
                    f"Give the source more {stage} rows ({stage}_split / {stage}_table) or use fewer devices"
                )
            inner = assembly.build_reader(
                self.options,
                rows,
                stage=stage,
                warn=rank_zero_warn,
                columns=self.columns,
                split_name=f"{stage}[mix {spec.name}]",
                transform=None,
                table=self._open_table if rows.source == self.source else None,
                scan_ids=scan_ids,
            )
            reader = MixtureBatchDataset([inner], [spec.name], transform=self.transform, indices=[index])
            self.datasets[key] = reader
            self.samplers[key] = assembly.build_sampler(
                self.options,
                stage,
                len(reader),
                rank=self.rank,
                world_size=self.world_size,
                position=None,
                staged=reader.reads_stage,
                row_bytes=reader.row_bytes,
                balanced=True,
            )
            if self.options.batch_keys is not None:
                self._check_batch_keys(stage, f"{stage} rows of mix source {spec.name}", reader, len(rows))

    def source_name(self, dataloader_idx: int) -> str:
        """The name of the ``mix`` source that evaluation loader ``dataloader_idx`` reads (with
        ``eval_by_source``; also the source of ``batch["source"]`` index ``dataloader_idx``), e.g. to
        log ``self.log(f"val/{name}/loss", loss, add_dataloader_idx=False)``."""
        mix = self.options.mix
        if mix is None:
            raise ValueError("source_name: this datamodule has no mix (no sources); set mix (and eval_by_source)")
        if isinstance(dataloader_idx, bool) or not 0 <= int(dataloader_idx) < len(mix):
            raise IndexError(
                f"source_name: dataloader_idx {dataloader_idx!r} names no mix source; the sources, by index: "
                f"{ {i: spec.name for i, spec in enumerate(mix)} }"
            )
        return mix[int(dataloader_idx)].name

    def _built_stages(self) -> list[str]:
        """The stages built (a per-source evaluation stage once, by its stage name)."""
        return list(dict.fromkeys(key.partition("/")[0] for key in self.samplers))

    def _other_tables(self) -> dict[str, dict[str, Any]]:
        """Every other table this run reads (a ``tables`` split's, a ``mix`` source's, a source's
        ``val_table`` / ``test_table``), keyed ``split:<name>`` / ``mix:<name>`` / ``mix-val:<name>``
        / ``mix-test:<name>``, with the version it reads (:func:`.source.table_pin`)."""
        own = (self.source.uri, self.source.name)
        out = {
            f"split:{name}": table_pin(rows.source)
            for name, rows in (self.splits or {}).items()
            if (rows.source.uri, rows.source.name) != own
        }
        for rows in self.mix_sources or []:
            if (rows.source.uri, rows.source.name) != own:
                out[f"mix:{rows.name}"] = table_pin(rows.source)
        for stage, sources in self.eval_sources.items():
            for spec, rows in zip(self.options.mix or (), sources):
                if getattr(spec, f"{stage}_table") is not None:
                    out[f"mix-{stage}:{rows.name}"] = table_pin(rows.source)
        return out

    def _pin_other_tables(self, recorded: dict[str, dict[str, Any]] | None) -> None:
        """Read the other tables at the versions a checkpoint read (as the own table is), so the
        interrupted epoch stays exactly the same: rebuild what reads one that has moved on since."""
        now = self._other_tables()
        moved = {key: pin for key, pin in (recorded or {}).items() if key in now and now[key] != pin}
        if not moved:
            return
        rank_zero_warn(
            "table(s) read besides "
            f"{self.source.name!r} have moved on since the checkpoint: this run reads "
            + ", ".join(f"{pin['table']!r} version {pin['version']} ({key})" for key, pin in moved.items())
            + " as the checkpoint did, so the interrupted epoch stays exactly the same"
        )
        self._pins = dict(recorded or {})
        self._rebuild()

    def _other_tables_moved(self, trainer: Any) -> bool:
        """Whether another table this run reads has a newer version (rank 0's answer, on every rank)."""
        pinned = self._other_tables()
        moved = False
        if pinned and self.rank == 0:  # by version and commit time: a recreated table restarts at version 1
            moved = any(
                table_pin(open_other_table(self.source, self._other_uri(key), pin["table"])[1]) != pin
                for key, pin in pinned.items()
            )
        if pinned and self.world_size > 1:
            moved = trainer.strategy.broadcast(moved, src=0)
        return moved

    def _other_uri(self, key: str) -> str:
        kind, _, name = key.partition(":")
        if kind == "split":
            return self.splits[name].source.uri
        found = (self.mix_sources or []) if kind == "mix" else self.eval_sources.get(kind.partition("-")[2], [])
        return next(r for r in found if r.name == name).source.uri

    def _rebuild(self) -> None:
        """Build the splits and every built stage again (other tables re-read at :attr:`_pins`)."""
        stages = self._built_stages()
        self.teardown()  # the old readers' stage leases and mappings
        self.splits, self.samplers, self.datasets, self.mix_sources = None, {}, {}, None
        self.eval_sources = {}
        self._build_splits(self._table())
        self._build_stages(stages)

    def _mixture_reader(self, train_split: str, scan_ids: assembly.ScanIds) -> tuple[Any, Any]:
        """The train stage's reader of the ``mix`` sources (resolved now, at the pinned versions) and its plan."""
        from .mix.resolve import resolve_sources

        assert self.options.mix is not None and self.splits is not None
        sources = resolve_sources(
            self.options.mix,
            source=self.source,
            table=self._table(),
            splits=self.splits,
            train_split=train_split,
            columns=self.columns,
            filter=self.options.filter,
            versions={key[4:]: pin for key, pin in self._pins.items() if key.startswith("mix:")},
        )
        self.mix_sources = sources
        return assembly.build_mixture_reader(
            self.options,
            sources,
            columns=self.columns,
            split_name=train_split,
            transform=self.transform,
            own_source=self.source,
            table=self._open_table,
            scan_ids=scan_ids,
            warn=rank_zero_warn,
        )

    def _with_neighbors(self, stage: str, split: SplitRows, name: str, scan_ids: assembly.ScanIds) -> Any:
        """The stage's reader wrapped to add each row's neighbours (:mod:`.neighbors`), mined once
        per node from the version this epoch reads (or the lists in use, where a refresh is not due)."""
        from .neighbors.build import neighbor_reader

        own = split.source == self.source

        def build(columns: list[str]) -> Any:
            return assembly.build_reader(
                self.options,
                split,
                stage=stage,
                warn=rank_zero_warn,
                columns=columns,
                split_name=name,
                transform=None,
                table=self._open_table if own else None,
                scan_ids=scan_ids,
            )

        mined_from = self._neighbor_source(split)
        kept = self._neighbor_mining
        # kept lists keep what exclude_same / where made of the rows where they were mined (read once)
        exclusions = kept.get("exclusions") if mined_from is not None and kept is not None else None
        reader = neighbor_reader(
            self.options,
            split,
            inner=self.datasets[stage],
            columns=self.columns,
            split_name=name,
            transform=self.transform,
            table=self._open_table if own else None,
            build_reader=build,
            mined_from=mined_from,
        )
        self.neighbor_lists = reader.lists.path
        self._neighbor_mining = {
            "source": mined_from or split.source,
            "rows": _rows_digest(split.row_ids),
            "epoch": self._pinned_epoch,
            "exclusions": exclusions,
        }
        return reader

    def _neighbor_source(self, split: SplitRows) -> Any:
        """Where this epoch's lists are mined from: the version it reads (None), unless
        ``refresh_every_n_epochs`` is set and not due this epoch and the split's rows are those the
        lists in use were mined for: then the source those were mined from (the lists are reused)."""
        every = self.options.neighbors.refresh_every_n_epochs
        kept = self._neighbor_mining
        if every is None or kept is None or self._pinned_epoch % every == 0:
            return None
        if kept["rows"] != _rows_digest(split.row_ids):
            return None
        source = kept["source"]
        if self._following:  # at an epoch boundary, not a resume: lists that cannot be kept are mined again
            try:
                source.open()
            except (LanceSourceError, TableChangedError) as err:
                rank_zero_warn(
                    f"the neighbour lists of split {split.name!r} in use were mined from version {source.version} of "
                    f"table {source.name!r}, which cannot be opened any more ({err}); mining them again from version "
                    f"{self.source.version}, the one this epoch reads"
                )
                return None
        same = (source.version, source.version_time) == (split.source.version, split.source.version_time)
        if not same and not self._exclusions_kept(split, source):
            return None
        return source

    def _exclusions_kept(self, split: SplitRows, source: Any) -> bool:
        """Whether ``exclude_same`` and ``where`` make the same of the split's rows at the version this
        epoch reads as at ``source``'s, where the lists in use were mined: a label or filtered column
        written in place would otherwise leave lists that hold a row's positives (or rows the filter
        now leaves out) until the next refresh. When not, they are mined again, with a warning."""
        from .neighbors.mine import exclusions_digest

        spec = self.options.neighbors
        kept = self._neighbor_mining
        if not spec.exclude_same and not spec.where:
            return True
        if kept.get("exclusions") is None:
            kept["exclusions"] = exclusions_digest(spec, source.open(), split.row_ids, source.name)
        now = exclusions_digest(spec, split.source.open(), split.row_ids, split.source.name)
        if now == kept["exclusions"]:
            return True
        settings = ", ".join(
            f"{key}={value!r}" for key, value in (("exclude_same", spec.exclude_same), ("where", spec.where)) if value
        )
        rank_zero_warn(
            f"the neighbour lists of split {split.name!r} in use were mined from version {source.version} of table "
            f"{source.name!r}; at version {split.source.version}, the one this epoch reads, {settings} exclude other "
            "rows, so the kept lists would break them: mining them again from that version"
        )
        return False

    def _neighbor_state(self) -> dict[str, Any] | None:
        """What a checkpoint records of the lists in use: the version they were mined from."""
        kept = self._neighbor_mining
        if kept is None:
            return None
        source = kept["source"]
        return {
            "version": source.version,
            "version_time": source.version_time,
            "rows": kept["rows"],
            "lists": os.path.basename(str(self.neighbor_lists)),
        }

    def _resume_neighbors(self, recorded: dict[str, Any] | None) -> bool:
        """Take the checkpoint's lists (mined from the version it records) as the ones in use;
        True when they are not the ones this setup mined (the train reader must be rebuilt)."""
        if recorded is None or self.options.neighbors is None:
            return False
        source = dataclasses.replace(self.source.pinned(recorded["version"]), version_time=recorded["version_time"])
        self._neighbor_mining = {"source": source, "rows": recorded["rows"], "epoch": None}
        return os.path.basename(str(self.neighbor_lists)) != recorded["lists"]

    def _split_weights(self, split: SplitRows) -> np.ndarray:
        """The train split's weights (``weight_column`` / ``balance_column``), read from the pinned version."""
        own = split.source == self.source
        table = self._table() if own else split.source.open()
        with notice_if_slow(
            f"lance-lightning: reading the weights of split {split.name!r} of table {split.source.name!r}"
        ):
            return split_weights(
                table,
                split.row_ids,
                table_name=split.source.name,
                version=split.source.version,
                weight_column=self.options.weight_column,
                balance_column=self.options.balance_column,
            )

    def _check_batch_keys(self, stage: str, split_name: str, reader: Any, rows: int) -> None:
        """Read a batch of 2 rows (through the transform) and refuse ``batch_keys`` it lacks."""
        batch = reader[np.arange(min(2, rows))]
        transform = f", after transform {_name_of(self.transform)}" if self.transform is not None else ""
        check_batch_keys(batch, self.options.batch_keys, where=f"stage {stage!r} (split {split_name!r}{transform})")

    def teardown(self, stage: str | None = None) -> None:
        """Let go of the stages this process reads (their leases): once no running job holds a
        stage, a later job may evict it to make room. The readers reopen them if used again."""
        for reader in self.datasets.values():
            reader.close()

    def split_for_stage(self, stage: str) -> str | None:
        """The split name that ``stage`` reads, or None if it has none (no dataloader)."""
        assert self.splits is not None, "call setup() first"
        return assembly.split_for_stage(stage, self.splits, self.options.stage_splits)

    def split_rows(self, name: str) -> SplitRows:
        """The rows of split ``name`` (``"all"``: the whole filtered table, what predict reads
        when there is no ``predict`` split)."""
        assert self.splits is not None, "call setup() first"
        if name in self.splits:
            return self.splits[name]
        if self._whole_table is None:
            rows = whole_table_row_ids(self._table(), self.options.filter)
            if len(rows) == 0:
                raise SplitSpecError(
                    f"stage 'predict' reads the whole of table {self.source.name!r}, which is empty"
                    f"{' after filter ' + repr(self.options.filter) if self.options.filter else ''}"
                )
            self._whole_table = SplitRows(WHOLE_TABLE, self.source, rows)
        return self._whole_table

    # -- the table -----------------------------------------------------------------------

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

    def _repin(self, version: int, *, reason: str = "") -> None:
        """Read ``version`` of the table from now on: rebuild the splits and every built stage."""
        self.source = self.source.pinned(version)
        self._open_table = None
        stages = self._built_stages()
        self.teardown()  # the old readers' stage leases and mappings
        self.splits, self.samplers, self.datasets, self.mix_sources = None, {}, {}, None
        self.eval_sources = {}
        self._build_splits(self._pin_version(reason=reason))
        self._build_stages(stages)

    def _trainer(self) -> Any:
        return getattr(self, "trainer", None)

    def _lightning_epoch(self) -> int | None:
        """The epoch Lightning is running (``trainer.current_epoch``), None without a trainer."""
        trainer = self._trainer()
        return None if trainer is None else trainer.current_epoch

    def _topology(self) -> tuple[int, int]:
        trainer = self._trainer()
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    # -- checkpoints -----------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        """The settings a resume must not change (:meth:`.DataOptions.identity`), as this run resolved them."""
        splits = self.split_spec.identity() if self.split_spec else None
        train = self._train_split_name()
        sampler = self.samplers.get("train")
        # the order the train sampler really reads: "none" where the Trainer overfits batches, whatever `shuffle` says
        # (a mixture's order is recorded by its own settings, mix and mix_batching)
        mode = (
            None if sampler is None else (self.options.shuffle if sampler.order_class.mixes else sampler.shuffle_mode)
        )
        order = {} if mode is None else {"shuffle": mode}
        return self.options.identity(
            table=self.source.name, splits=splits, version=self.source.version, stage_splits=train, **order
        )

    def state_dict(self) -> dict[str, Any]:
        """Saved by Lightning in every checkpoint: the data's identity and the next unread row."""
        if self.splits is None:
            return {}
        state = self.train_state.state_dict(
            identity=self._identity(),
            source=self.source,
            world_size=self.world_size,
            sampler=self.samplers.get("train"),
            trainer=self._trainer(),
            extra={**({"tables": others} if (others := self._other_tables()) else {}), TABLE_EPOCH: self._pinned_epoch},
        )
        mined = self._neighbor_state()
        return state if mined is None else {**state, NEIGHBOR_STATE: mined}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the data position from a checkpoint (called by Lightning after ``setup``)."""
        state_dict = dict(state_dict)
        mined = state_dict.pop(NEIGHBOR_STATE, None)
        state = self.train_state.load_state_dict(
            state_dict,
            identity=self._identity(),
            fresh=self.options.resume == "fresh",
            follows=self.options.follows_checkpoint(),
        )
        if state is None:
            return
        rewrap = self._resume_neighbors(mined)
        self._pinned_epoch = state.train["epoch"] if state.train else 0  # before a rebuild: which lists it reads
        if self._starts_a_later_epoch(state):
            # an epoch-end checkpoint: the epoch it stands at has not started, and an uninterrupted run would
            # have moved to the latest version at its start; the version read is the previous epoch's
            self._pinned_epoch -= 1
        if state.table_version is not None and state.table_version != self.source.version:
            follow = " until this epoch ends" if self.options.table_updates == "next_epoch" else ""
            if self._starts_a_later_epoch(state):
                follow = f" until epoch {state.train['epoch']} starts (it reads the latest version, as it would have)"
            rank_zero_warn(
                f"table {self.source.name!r} has moved on since the checkpoint (version {state.table_version} then, "
                f"{self.source.version} now): this run keeps reading version {state.table_version}{follow}, so the "
                "splits and the interrupted epoch stay exactly the same"
            )
            self._repin(state.table_version, reason="the checkpoint")
        elif rewrap and "train" in self.datasets:  # the lists the checkpoint's epoch read, not this setup's
            reader = self.datasets["train"]
            self.datasets["train"] = reader.inner
            self.datasets["train"] = self._with_neighbors(
                "train", self.split_rows(self._train_split_name()), self._train_split_name(), assembly.ScanIds()
            )
        state.check_same_table(self.source)
        self._pin_other_tables(state.extra.get("tables"))
        self.train_state.resume_from(state, self.samplers.get("train"), table_name=self.source.name)

    def _starts_a_later_epoch(self, state: Any) -> bool:
        """With ``table_updates="next_epoch"``: whether the checkpoint stands at the first row of an
        epoch later than the one whose start pinned the version it read (a checkpoint written at an
        epoch's end). That epoch then starts on the latest version, as it would have without the
        interruption; the version read is kept only for an epoch the checkpoint interrupted."""
        train, pinned_for = state.train, state.extra.get(TABLE_EPOCH)
        return (
            self.options.table_updates == "next_epoch"
            and train is not None
            and train["start_row"] == 0
            and pinned_for is not None
            and pinned_for < train["epoch"]
        )

    # -- dataloaders ---------------------------------------------------------------------

    def _loader(self, stage: str) -> DataLoader | list:
        if stage in self.eval_sources:  # eval_by_source: one loader per source, in mix order
            keys = [source_stage_key(stage, rows.name) for rows in self.eval_sources[stage]]
            for key in keys:
                self._announce_worker_start(key, self.datasets[key])
            return [
                make_loader(self.datasets[key], self.samplers[key], self.options, transform=self.transform)
                for key in keys
            ]
        if stage not in self.samplers:
            if self.splits is None:
                raise RuntimeError(f"{stage}_dataloader() called before setup(); call setup() first")
            return []
        reader = self.datasets[stage]
        self._announce_worker_start(stage, reader)
        return make_loader(reader, self.samplers[stage], self.options, transform=self.transform)

    def _announce_worker_start(self, stage: str, reader: Any) -> None:
        """One line (rank 0, once a stage) when this stage's first batch waits seconds for workers
        that start from the fork server and open the table themselves, so nobody waits in silence."""
        workers = self.options.num_workers
        if not workers or stage in self._announced or worker_start_method(reader, self.options) == "fork":
            return
        self._announced.add(stage)
        method = worker_start_method(reader, self.options)
        if isinstance(reader, StagedBatchDataset):
            what, opens = "read the stage", ""
        else:
            why = "staging='off'" if self.options.staging == "off" else "the split is not staged"
            what, opens = f"read table {self.source.name!r} themselves ({why})", ", then opens the table"
        rank_zero_info(
            f"lance-lightning: {stage} starts {workers} DataLoader worker(s) with {method!r} that {what}: its "
            f"first batch comes after they start (several seconds: each imports torch and your script{opens})"
        )

    def _follow_table_updates(self) -> None:
        """At a new epoch, with ``table_updates="next_epoch"``: move every stage to the latest version."""
        trainer = self._trainer()
        if self.options.table_updates != "next_epoch" or trainer is None or trainer.current_epoch <= self._pinned_epoch:
            return
        latest = None
        if self.rank == 0:  # the version and its commit time: a table dropped and recreated restarts at version 1
            table = self.source.pinned(None).open()
            latest = (table.version, version_time(table))
        if self.world_size > 1:
            latest = trainer.strategy.broadcast(latest, src=0)  # every rank must read the same version
        moved = self._other_tables_moved(trainer)
        self._pinned_epoch = trainer.current_epoch
        self.train_state.epoch_over()
        self._pins = {}
        self._following = True
        try:
            if latest != (self.source.version, self.source.version_time):
                self._repin(latest[0])
            elif moved:
                self._rebuild()
            elif self._neighbor_refresh_due():
                train = self._train_split_name()
                self.datasets["train"] = self.datasets["train"].unwrap()  # the old lists let go of
                self.datasets["train"] = self._with_neighbors(
                    "train", self.split_rows(train), train, assembly.ScanIds()
                )
        finally:
            self._following = False

    def _neighbor_refresh_due(self) -> bool:
        """Whether this epoch is a refresh (``refresh_every_n_epochs``) while the lists in use were mined
        from an older version than the one it reads: kept since, as the table moved without moving the
        split's rows (a column rewritten in place), and the table has not moved again since."""
        kept, spec = self._neighbor_mining, self.options.neighbors
        if kept is None or spec is None or spec.refresh_every_n_epochs is None or "train" not in self.datasets:
            return False
        if self._pinned_epoch % spec.refresh_every_n_epochs:
            return False
        return (kept["source"].version, kept["source"].version_time) != (self.source.version, self.source.version_time)

    def train_dataloader(self) -> DataLoader | list:
        self._follow_table_updates()
        trainer = self._trainer()
        if trainer is not None and trainer.ckpt_path and not self.train_state.loaded and "train" in self.samplers:
            # Lightning skips load_state_dict when the checkpoint has no entry for this datamodule:
            # the same as an entry without a data state
            self.load_state_dict({})
        self.train_state.align_lightning(
            trainer, self.samplers.get("train"), split_name=self._train_split_name(), world_size=self.world_size
        )
        return self._loader("train")

    def _train_split_name(self) -> str | None:
        return self.split_for_stage("train") if self.splits is not None else None

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

        None grows with the number of workers; none is 8 bytes a row (docs/concepts/shuffle.md).
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


EVAL_STAGES = ("val", "test")
"""The stages that read one loader per ``mix`` source with ``eval_by_source``."""


def source_stage_key(stage: str, source: str) -> str:
    """The key of one source's evaluation reader and sampler (``"val/web"``) in ``datasets`` / ``samplers``."""
    return f"{stage}/{source}"


TABLE_EPOCH = "table_epoch"
"""The checkpoint entry (in the data state's ``extra``) that records the epoch whose start pinned the
table version the run read: with ``table_updates="next_epoch"`` a resume at the first row of a later
epoch moves to the latest version, as the uninterrupted run did at that epoch's start."""

NEIGHBOR_STATE = "neighbor_lists"
"""The checkpoint entry that records which neighbour lists the run read (:meth:`LanceDataModule._neighbor_state`)."""


def _rows_digest(row_ids: np.ndarray) -> str:
    """A split's rows, in a few bytes: whether lists mined for them still apply."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(row_ids, dtype=np.uint64).tobytes()).hexdigest()[:32]


def _is_lancedb_table(value: Any) -> bool:
    if value is None or isinstance(value, (str, os.PathLike)):
        return False
    import lancedb

    return isinstance(value, lancedb.table.Table)


def _warn_unused_share(spec: Any) -> None:
    """A warning (not an error: sub-sampling a table is a use) when split fractions sum below 1."""
    fractions = getattr(spec, "fractions", None)
    if not fractions:
        return
    total = sum(fractions)
    if total < 1 - 1e-9:
        listing = ", ".join(f"{n}={f:g}" for n, f in zip(spec.names, fractions))
        rank_zero_warn(
            f"the splits ({listing}) add up to {total:g}: {1 - total:.3g} of the filtered table "
            f"({(1 - total) * 100:.3g}% of its rows) is in no split and never read. Make the fractions add up "
            "to 1 to use every row, or keep this to train on a sample of the table."
        )


def _name_of(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


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
