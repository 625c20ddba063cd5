"""``LancePredictionWriter``: ``predict_step`` outputs become new columns of the table read.

Three steps, one owner each:

1. **Rows.** Each rank maps its ``batch_idx``-th predict batch back to the rows it was read
   from with the same pure arithmetic its sampler used (:func:`~.sharding.rank_batch_bounds`
   on the datamodule's predict sampler: table order, every row once, no padding), then
   positions in the split to row addresses (``_rowid`` of the pinned version). Lightning's
   own ``batch_indices`` are not used: our loader hands out whole batches, which Lightning
   cannot see into, and it keeps every index of the epoch in memory.
2. **Writing as it goes** (nothing is held in memory beyond a few batches). With pylance
   installed and new columns (:mod:`.fragments`): one rank writes each fragment's new
   data file itself, in a background thread, during the loop; under DDP each rank stages its
   batches in an Arrow IPC file (:mod:`.stage`); after a barrier each rank writes the
   data files of its share of the fragments from every rank's staged batches, all at once.
   Without pylance every rank stages.
3. **One commit.** After a barrier in ``on_predict_end``, rank 0 commits: a lance ``Merge``
   of the new data files on the pinned version (row addresses and indexes kept, conflicts
   refused), or, as a fallback, a rewrite of the table (:mod:`.rewrite`: addresses
   change, indexes refused unless ``drop_indexes=True``). Either way the columns appear at one
   new version. Rows the run did not predict (a ``filter``, a ``predict`` split,
   ``limit_predict_batches``) get nulls. The outcome is broadcast, so every rank returns or
   raises alike, and the staging directory is removed.

``LancePredictionWriter(table="preds")`` writes a new table instead: key columns
(``source_rowid``, the row's ``_rowid`` in the version read, plus ``id`` when the table has one) and
the outputs, for the predicted rows only. With pylance every rank writes its rows into the new
table's data files during the loop and rank 0 commits them all at once (:mod:`.table`);
without it the ranks stage them and rank 0 calls ``create_table`` after the loop.

Every rank holds a lock on the run's staging files from its start to its end (:mod:`.lock`): a
second run writing the same target meanwhile is refused (``StagingBusyError``), and nothing of a
live run is ever taken for an interrupted run's. A run killed before the commit leaves the table
as it was; its locks die with it, and the next run writing the same target removes its staging
files and the data files it had written into the table (listed in the staging directory before
they were opened), keeping any that a version refers to. The threads that write data files during
the loop (:mod:`.feed`) hand every error to the loop: the run ends with a ``PredictionWriteError``
naming the table and the columns, and nothing waits on a thread that has stopped.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..sharding import rank_batch_bounds, take_padded
from ..source import TableSource, connect, is_local_uri, list_table_names
from .fragments import (
    BackgroundColumnWriter,
    FragmentColumnWriter,
    FragmentPlan,
    commit_merge,
    data_file_from_json,
    data_file_json,
    files_list,
    fragment_shares,
    lance_module,
    remove_unreferenced,
    write_share,
)
from .lock import FileLock, lock_rank, lock_run
from .rewrite import (
    _check_indexes,
    _check_new_columns,
    _table_moved,
    _Target,
    commit_columns,
    commit_table,
    new_table_schema,
)
from .stage import (
    KEY_ROWID,
    ROWID,
    STAGING_DIRNAME,
    PredictionWriteError,
    TableMovedError,
    _RankStage,
    _remove_staging,
    _Staged,
    check_same_outputs,
    prediction_arrays,
    rank_record,
)
from .table import CREATING, NewTableWriter, clean_interrupted, commit_new_table, dataset_uri, has_versions

__all__ = [
    "KEY_ROWID",
    "STAGING_DIRNAME",
    "LancePredictionWriter",
    "PredictionWriteError",
    "TableMovedError",
    "prediction_arrays",
]


# -- the callback -------------------------------------------------------------------------------


@dataclass
class _Run:
    """One ``trainer.predict`` call's state on this rank."""

    target: _Target
    rows: Any  # the predict split's row addresses (a RowSet), position -> _rowid
    order: Any  # the sampler's epoch order (table order)
    num_rows: int
    bounds: np.ndarray  # (batches, 2): this rank's [start, stop) in the order, per batch_idx
    directory: Path
    stage: _RankStage
    written: np.ndarray  # one flag a batch: written once
    world_size: int = 1
    checked: bool = False
    streamer: BackgroundColumnWriter | None = None  # one rank, pylance: data files written during the loop
    share_plan: FragmentPlan | None = None  # more ranks, new columns: the plan of the shares written after the loop
    new_table_uri: str | None = None  # a new table, pylance: the dataset every rank writes into
    table_writer: NewTableWriter | None = None  # ... during the loop, from the first batch on
    lock: FileLock | None = None  # this rank's lock on its staging files (lock.py), held to the end
    what: str = ""  # the target in words, for errors: "column(s) 'score' of table 'rows'"

    def batch_rows(self, start: int, stop: int) -> BatchRows:
        return BatchRows(self.rows, self.order, start, stop, self.num_rows)

    @property
    def shared(self) -> bool:
        """More ranks adding columns with pylance: after the loop each rank writes its share of the
        new data files (``LancePredictionWriter._write_share``)."""
        return self.world_size > 1 and self.target.table is None and lance_module() is not None


@dataclass(frozen=True)
class BatchRows:
    """The row addresses of one batch, worked out when called: on the writer's thread, so the
    predict loop's thread only copies the outputs and hands them over (~0.1-0.5 ms a batch)."""

    rows: Any
    order: Any
    start: int
    stop: int
    num_rows: int

    def __call__(self) -> np.ndarray:
        return self.rows.select(take_padded(self.order, self.start, self.stop, self.num_rows))


class LancePredictionWriter(BasePredictionWriter):
    """Writes ``predict_step``'s outputs into the table the datamodule read, one row beside its row.

    Use with :class:`~lance_lightning.LanceDataModule`: ``trainer.predict(model, datamodule=dm,
    return_predictions=False)``. The predict stage reads the ``predict`` split, or the whole
    filtered table, in table order; every row's output lands beside that row, exactly once,
    whatever the number of ranks. See the module docstring for how, and for what a commit costs.

    Args:
        column: the column of a tensor output; with a dict output ``{name: tensor}``, a prefix
            (columns ``<column>_<name>``) or None (columns ``<name>``).
        table: None: add the columns to the table read. A name: write a new table in the same
            database instead, with ``key`` columns and the outputs of the predicted rows.
        key: the key columns of a new ``table``: source column names, and ``"_rowid"`` for the
            row's ``_rowid`` in the version read (its address, or its stable id on a table with
            stable row ids; written as ``source_rowid``). Default:
            ``_rowid``, plus ``id`` when the table has one.
        overwrite: replace existing columns of those names (rows not predicted get nulls), or an
            existing ``table``. Without it an existing one is refused, naming it.
        drop_indexes: allow the commit to drop the table's indexes (it rewrites the table;
            rebuild them afterwards). Without it a table with indexes is refused before predicting.
        staging_dir: a directory every rank can reach, for the staging files. Default:
            ``<database>/.lance-lightning-staging`` for a local table; required for a table in
            object storage under more than one rank.
    """

    def __init__(
        self,
        column: str | None = None,
        *,
        table: str | None = None,
        key: str | Sequence[str] | None = None,
        overwrite: bool = False,
        drop_indexes: bool = False,
        staging_dir: str | None = None,
    ) -> None:
        super().__init__("batch")
        for what, value in (("column", column), ("table", table), ("staging_dir", staging_dir)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"LancePredictionWriter {what} must be a non-empty str or None, got {value!r}")
        if key is not None and table is None:
            raise ValueError("LancePredictionWriter key= names the key columns of a new table: it needs table=")
        if isinstance(key, str):
            key = [key]
        if key is not None and (not key or not all(isinstance(k, str) and k for k in key)):
            raise ValueError(f"LancePredictionWriter key must name one or more columns, got {key!r}")
        self.column, self.table = column, table
        self.key = list(key) if key is not None else None
        self.overwrite, self.drop_indexes = bool(overwrite), bool(drop_indexes)
        self.staging_dir = staging_dir
        self.result: dict[str, Any] | None = None
        self._run: _Run | None = None

    # -- start ------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Our loader hands out whole batches (batch_size=None): Lightning cannot tell their
        # indices and says so once; the writer finds each batch's rows itself.
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.result = None
        dm = trainer.datamodule
        sampler = getattr(dm, "samplers", {}).get("predict") if dm is not None else None
        if sampler is None or not hasattr(dm, "split_for_stage"):
            raise PredictionWriteError(
                "LancePredictionWriter writes into the table a LanceDataModule reads: pass one, "
                "trainer.predict(model, datamodule=LanceDataModule(...))"
            )
        if sampler.even or sampler.shuffle_mode != "none" or sampler.start_row:
            raise PredictionWriteError("the predict sampler must read every row once in table order (even=False)")
        if (sampler.rank, sampler.num_replicas) != (trainer.global_rank, trainer.world_size):
            raise PredictionWriteError(
                f"the predict sampler is sharded for rank {sampler.rank} of {sampler.num_replicas}, the Trainer runs "
                f"rank {trainer.global_rank} of {trainer.world_size}"
            )
        split = dm.split_rows(dm.split_for_stage("predict"))  # the rows the predict loader reads
        target = self._target(split.source)
        if trainer.predict_loop.return_predictions:
            rank_zero_warn(
                "LancePredictionWriter: trainer.predict(..., return_predictions=True) also keeps every prediction in "
                "memory; pass return_predictions=False"
            )
        directory = self._staging_directory(target, trainer.world_size)
        what = self._what(target)
        lance = lance_module()
        # a new table with pylance: every rank streams its rows into this dataset (writer.table)
        new_table_uri = None
        if target.table is not None and lance is not None:
            new_table_uri = dataset_uri(target.source.open().uri, target.table)
        lock: FileLock | None = None
        refusal: str | None = None
        failure: BaseException | None = None
        if trainer.is_global_zero:
            try:
                lock = self._begin(target, directory, what, new_table_uri)
            except Exception as err:  # every rank raises it, below
                failure = err if isinstance(err, PredictionWriteError) else _start_failed(err, what, directory)
                refusal = f"{type(failure).__name__}: {failure}"
        refusal = trainer.strategy.broadcast(refusal, src=0)  # also the start barrier
        if refusal is not None:
            if failure is not None:
                raise failure
            raise PredictionWriteError(f"rank 0 could not start writing {what}: {refusal}")
        visible = directory.is_dir()  # made by rank 0: every rank writes into it, and rank 0 reads it all
        if not trainer.strategy.reduce_boolean_decision(visible, all=True):
            if trainer.is_global_zero:
                _end_staging(directory, lock)
            raise PredictionWriteError(
                f"the writer's staging directory {directory} (made by rank 0) is not there on every rank (rank "
                f"{trainer.global_rank}: {'there' if visible else 'missing'}): every rank writes into it and rank 0 "
                "reads all of it. Pass the writer a staging_dir on a file system every node reaches"
            )
        if not trainer.is_global_zero:  # rank 0's lock keeps every other run out of the directory meanwhile
            lock = lock_rank(directory, trainer.global_rank)
        bounds = np.asarray(rank_batch_bounds(sampler.plan(), rank=sampler.rank), dtype=np.int64).reshape(-1, 2)
        if len(bounds) and bounds[-1, 1] > sampler.num_rows:
            if trainer.is_global_zero:
                _end_staging(directory, lock)
            elif lock is not None:
                lock.release()
            raise PredictionWriteError("the predict epoch pads rows; the writer needs every row once")
        self._run = _Run(
            target=target,
            rows=split.rows,
            order=sampler.epoch_order(),
            num_rows=sampler.num_rows,
            bounds=bounds,
            directory=directory,
            stage=_RankStage(directory, trainer.global_rank),
            written=np.zeros(len(bounds), dtype=bool),
            world_size=trainer.world_size,
            new_table_uri=new_table_uri,
            lock=lock,
            what=what,
        )

    def _begin(self, target: _Target, directory: Path, what: str, new_table_uri: str | None) -> FileLock:
        """Rank 0: lock the run's staging directory (refused while another live run holds it), remove
        what an ended run left there, and make it anew. Returns the lock, held until the run ends."""
        lock, leftover = lock_run(directory, what)
        try:
            if leftover:
                size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
                rank_zero_info(f"removing staging files of an interrupted run ({size:,} bytes): {directory}")
                lance = lance_module()
                storage_options = target.source.storage_options
                if target.table is None:
                    removed = remove_unreferenced(directory, target.source.open(), storage_options)
                elif lance is not None:
                    removed = clean_interrupted(lance, directory, storage_options)
                else:
                    removed = 0
                if removed:
                    rank_zero_info(f"removed {removed} data file(s) an interrupted run had written")
                shutil.rmtree(directory)
            directory.mkdir(parents=True)
            if new_table_uri is not None:
                new = not has_versions(lance_module(), new_table_uri, target.source.storage_options)
                (directory / CREATING).write_text(json.dumps({"uri": new_table_uri, "new": new}))
        except BaseException:
            lock.release()
            raise
        return lock

    def _what(self, target: _Target) -> str:
        """The run's target in words, for its errors."""
        name = target.source.name
        if target.table is not None:
            return f"table {target.table!r} (predictions of table {name!r})"
        if self.column is None:
            return f"the dict output's columns of table {name!r}"
        return f"column(s) {self.column!r} of table {name!r}"

    def _target(self, source: TableSource) -> _Target:
        if source.version is None:
            raise PredictionWriteError(f"table {source.name!r} was read without a pinned version")
        latest = source.pinned(None).open()
        moved = _table_moved(source, latest)
        if self.table is None:
            if moved:
                raise TableMovedError(
                    f"table {source.name!r} has moved on since the version this run reads ({moved}): the columns "
                    "would be written onto an old version and undo the changes since. Read the latest version "
                    "(LanceDataModule(version=None)) or write to a table of its own (table=...)"
                )
            if lance_module() is None:  # the commit rewrites the table (with pylance: checked at the first batch)
                _check_indexes(latest, drop_indexes=self.drop_indexes)
            return _Target(source, None)  # the column names are checked at the first batch (a dict names them)
        if self.table == source.name:
            raise PredictionWriteError(f"table={self.table!r} is the table read; use column= to add columns to it")
        db = connect(source.uri, storage_options=source.storage_options, **dict(source.connect_kwargs or {}))
        if self.table in list_table_names(db) and not self.overwrite and _opens(db, self.table):
            raise PredictionWriteError(
                f"table {self.table!r} already exists in {source.uri!r}: nothing was written. Pick another name, or "
                "pass overwrite=True to replace it"
            )
        schema = source.open().schema
        keys = self.key if self.key is not None else [ROWID, *(["id"] if "id" in schema.names else [])]
        keys = [KEY_ROWID if k in (ROWID, KEY_ROWID) else k for k in keys]
        unknown = [k for k in keys if k != KEY_ROWID and k not in schema.names]
        if unknown:
            raise PredictionWriteError(
                f"key column(s) {unknown} are not in table {source.name!r}; its columns: {schema.names}, or '_rowid'"
            )
        return _Target(source, self.table, list(dict.fromkeys(keys)))

    def _staging_directory(self, target: _Target, world_size: int) -> Path:
        source = target.source
        if self.staging_dir is not None:
            base = Path(self.staging_dir)
        elif is_local_uri(source.uri):
            base = Path(source.uri.removeprefix("file://")) / STAGING_DIRNAME
        elif world_size == 1:
            base = Path(tempfile.gettempdir()) / "lance-lightning-staging"
        else:
            raise PredictionWriteError(
                f"table {source.name!r} is not in a local directory ({source.uri}): give the writer a staging_dir "
                "that every rank can reach (a shared file system)"
            )
        # named by what the run writes: two runs writing the same target share the name, and its lock
        what = f"new-table-{target.table}" if target.table else f"{source.name}.columns-{self.column or 'dict'}"
        return (base / re.sub(r"[^A-Za-z0-9_.-]", "_", what)).absolute()

    # -- each batch ---------------------------------------------------------------------------

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        run = self._run
        if run is None:
            raise PredictionWriteError("write_on_batch_end before on_predict_start")
        if dataloader_idx:
            raise PredictionWriteError("LancePredictionWriter writes one predict dataloader (the datamodule's)")
        if batch_idx >= len(run.bounds) or run.written[batch_idx]:
            raise PredictionWriteError(f"predict batch {batch_idx} is not a new batch of this rank's epoch")
        start, stop = (int(v) for v in run.bounds[batch_idx])
        columns = prediction_arrays(prediction, self.column)
        for name, (values, _) in columns.items():
            if len(values) != stop - start:
                raise PredictionWriteError(
                    f"output {name!r} of batch {batch_idx} has {len(values)} rows; the batch has {stop - start}: "
                    "predict_step must return one value per row"
                )
        if not run.checked:
            run.checked = True
            if run.target.table is None:
                table = run.target.source.open()
                _check_new_columns(run.target.source.name, table.schema, list(columns), overwrite=self.overwrite)
                fields = [pa.field(name, values.type, metadata=meta) for name, (values, meta) in columns.items()]
                plan, why = FragmentPlan.make(table, run.target.source, fields)
                if plan is None:
                    rank_zero_info(f"LancePredictionWriter: the commit rewrites the table: {why}")
                    _check_indexes(table, drop_indexes=self.drop_indexes)
                elif run.world_size == 1:
                    run.streamer = BackgroundColumnWriter(
                        FragmentColumnWriter(plan, files_list(run.directory, 0)), run.what
                    )
            else:
                clash = sorted(set(columns) & set(run.target.keys))
                if clash:
                    raise PredictionWriteError(f"output column(s) {clash} are also key columns of table {self.table!r}")
                if run.new_table_uri is not None:  # every rank writes its rows now; rank 0 commits them at the end
                    source = run.target.source
                    fields = [pa.field(name, values.type, metadata=meta) for name, (values, meta) in columns.items()]
                    schema = new_table_schema(source, source.open().schema, run.target.keys, fields)
                    run.table_writer = NewTableWriter(
                        lance_module(),
                        source,
                        run.new_table_uri,
                        schema,
                        run.target.keys,
                        run.directory,
                        trainer.global_rank,
                        run.what,
                    )
        rows = run.batch_rows(start, stop)
        if run.streamer is not None:
            schema = run.streamer.writer.schema  # the first batch's: the batch is put together by position
            check_same_outputs(schema, schema.names, columns)
            arrays = [values for values, _ in columns.values()]
            run.streamer.write(rows, pa.RecordBatch.from_arrays(arrays, schema=schema))
        elif run.table_writer is not None:
            check_same_outputs(run.table_writer.schema, run.table_writer.outputs, columns)
            run.table_writer.write(rows, {name: values for name, (values, _) in columns.items()})
        else:
            try:
                run.stage.write(rows(), columns)
            except PredictionWriteError:
                raise
            except Exception as err:  # a full disk, a lost mount: say what was being written
                raise _named(err, run) from err
        run.written[batch_idx] = True

    # -- end: one commit ------------------------------------------------------------------------

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = self._run
        if run is None:
            return
        self._run = None
        streamed = None
        local: BaseException | None = None
        try:
            if run.streamer is not None:
                streamed = run.streamer.finish()
            if run.table_writer is not None:
                run.table_writer.finish()
            run.stage.finish(int(run.written.sum()))
        except Exception as err:  # every rank learns of it at the next collective: none waits for this one
            local = err
            self._abort(run)
        except BaseException:
            self._stop(run)
            raise
        staged = trainer.strategy.reduce_boolean_decision(local is None, all=True)  # the "staged" barrier
        if not staged:
            if trainer.is_global_zero:
                self._discard(run)
            self._release(run, trainer.is_global_zero)
            if local is not None:
                raise _named(local, run)
            raise PredictionWriteError(f"writing {run.what} failed on another rank: nothing was committed")
        if run.shared:
            self._write_share(run, trainer.global_rank)  # every rank at once; never raises: rank 0 reads the outcome
            trainer.strategy.barrier("lance_prediction_writer_shares")
        outcome: dict[str, Any]
        failure: BaseException | None = None
        if trainer.is_global_zero:
            try:
                outcome = {"ok": self._commit(run, trainer.world_size, streamed)}
            except Exception as err:  # every rank raises it, below
                failure = _named(err, run)
                outcome = {"error": str(failure)}
                self._discard(run)
        else:
            outcome = {}
        try:
            outcome = trainer.strategy.broadcast(outcome, src=0)
        finally:
            self._release(run, trainer.is_global_zero)
        if failure is not None:
            raise failure
        if "error" in outcome:
            raise PredictionWriteError(f"rank 0 could not write the predictions: {outcome['error']}")
        self.result = outcome["ok"]
        written = self.result
        rank_zero_info(
            f"LancePredictionWriter: {written['rows']:,} rows of {', '.join(written['columns'])} written to table "
            f"{written['table']!r}, version {written['version']}"
        )

    @staticmethod
    def _discard(run: _Run) -> None:
        """Rank 0, once no rank writes any more and nothing was committed: remove every data file the
        run wrote (each was listed before it was opened; files a version refers to are kept)."""
        try:
            if run.streamer is not None:
                run.streamer.abort(remove=False)  # its files go below, unless a version refers to them
            source = run.target.source
            if run.table_writer is not None:
                clean_interrupted(run.table_writer.lance, run.directory, run.table_writer.storage_options)
            elif run.target.table is None:
                remove_unreferenced(run.directory, source.open(), source.storage_options)
        except Exception as err:  # noqa: BLE001 - the next run writing this target removes them
            rank_zero_warn(f"LancePredictionWriter: could not remove the data files of this failed run: {err}")

    @staticmethod
    def _release(run: _Run, rank_zero: bool) -> None:
        """The run has ended on this rank: rank 0 removes the staging directory and its lock; the
        other ranks let go of theirs."""
        if rank_zero:
            _end_staging(run.directory, run.lock)
        elif run.lock is not None:
            run.lock.release()

    def _commit(self, run: _Run, world_size: int, streamed: dict[int, Any] | None) -> dict[str, Any]:
        target = run.target
        if streamed is not None:  # the data files are written: one Merge commit
            writer = run.streamer.writer
            if not writer.rows:
                raise PredictionWriteError("no rows were predicted: nothing to write")
            _refuse_moved(target.source, "while predicting")
            result = commit_merge(writer.plan, streamed, writer.rows)
            return self._report(result)
        if run.table_writer is not None:  # every rank's data files are written: one Overwrite commit
            writer = run.table_writer
            result = commit_new_table(
                writer.lance,
                writer.uri,
                writer.schema,
                run.directory,
                world_size,
                name=target.table,
                overwrite=self.overwrite,
                storage_options=writer.storage_options,
            )
            result["columns"] = writer.outputs
            return result
        staged = _Staged(run.directory, world_size)
        if staged.schema is None:
            raise PredictionWriteError("no rows were predicted: nothing to write")
        if target.table is None:
            shares = _collect_shares(run.directory, world_size) if run.shared else None
            if shares is not None:  # every rank wrote the data files of its share: one Merge commit
                files, rows, by_rank = shares
                if run.share_plan is None:
                    raise PredictionWriteError("rank 0 made no plan for the data files the other ranks wrote")
                if rows != staged.num_rows:
                    raise PredictionWriteError(f"{staged.num_rows - rows} predicted rows were not written")
                _refuse_moved(target.source, "while predicting")
                return self._report(commit_merge(run.share_plan, files, rows) | {"files_by_rank": by_rank})
            result = commit_columns(target.source, staged, overwrite=self.overwrite, drop_indexes=self.drop_indexes)
            return self._report(result)
        return commit_table(target.source, staged, target.table, target.keys, overwrite=self.overwrite)

    @staticmethod
    def _report(result: dict[str, Any]) -> dict[str, Any]:
        unpredicted = result["of"] - result["rows"]
        if unpredicted:
            rank_zero_info(f"{unpredicted:,} rows of table {result['table']!r} were not predicted: nulls")
        return result

    @staticmethod
    def _write_share(run: _Run, rank: int) -> None:
        """Write this rank's share of the new columns' data files (:func:`fragment_shares`) from
        every rank's staged rows, then leave the outcome (files, or an error) for rank 0."""
        outcome: dict[str, Any]
        try:
            staged = _Staged(run.directory, run.world_size)
            if staged.schema is None:
                outcome = {"skip": "no rows were predicted"}
            else:
                source = run.target.source
                plan, why = FragmentPlan.make(source.open(), source, staged.output_fields)
                if plan is None:
                    outcome = {"skip": why}  # rank 0 rewrites the table instead
                else:
                    run.share_plan = plan
                    fragments = fragment_shares(plan.physical_rows, run.world_size)[rank]
                    files, rows = write_share(plan, staged, fragments, files_list(run.directory, rank))
                    outcome = {"rows": rows, "files": {str(k): data_file_json(v) for k, v in files.items()}}
        except Exception as err:  # noqa: BLE001 - rank 0 raises it on every rank
            outcome = {"error": f"{type(err).__name__}: {err}"}
        _share_file(run.directory, rank).write_text(json.dumps(outcome))

    def _abort(self, run: _Run) -> None:
        if run.streamer is not None:
            run.streamer.abort()
        if run.table_writer is not None:
            run.table_writer.abort()
        run.stage.abort()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        run, self._run = self._run, None
        if run is not None:
            self._stop(run)

    def _stop(self, run: _Run) -> None:
        """The run stops on this rank before its commit: its own files go, and its lock."""
        self._abort(run)
        if run.world_size == 1:  # no other rank writes there: what it began goes now, not at the next run
            self._discard(run)
            self._release(run, True)
        elif run.lock is not None:  # the other ranks may still write: the next run cleans up once they are gone
            run.lock.release()

    def state_dict(self) -> dict[str, Any]:
        return {}


def _share_file(directory: Path, rank: int) -> Path:
    return directory / f"share-{rank:05d}.json"


def _collect_shares(directory: Path, world_size: int) -> tuple[dict[int, Any], int, list[int]] | None:
    """Every rank's data files by fragment, the rows they hold, and how many files each rank
    wrote; None when no rank could add the columns fragment by fragment (the same reason on every
    rank: the table is rewritten). Raises the first rank's error."""
    outcomes = [
        json.loads(rank_record(directory, rank, _share_file(directory, rank), "record of its data files"))
        for rank in range(world_size)
    ]
    for rank, outcome in enumerate(outcomes):
        if "error" in outcome:
            raise PredictionWriteError(f"rank {rank} could not write its data files: {outcome['error']}")
    skipped = [rank for rank, outcome in enumerate(outcomes) if "skip" in outcome]
    if len(skipped) == world_size:
        return None
    if skipped:
        raise PredictionWriteError(f"rank {skipped[0]} did not write its data files: {outcomes[skipped[0]]['skip']}")
    files: dict[int, Any] = {}
    rows = 0
    by_rank = [len(outcome["files"]) for outcome in outcomes]
    for outcome in outcomes:
        for fragment, record in outcome["files"].items():
            if int(fragment) in files:
                raise PredictionWriteError(f"fragment {fragment} was written by two ranks")
            files[int(fragment)] = data_file_from_json(record)
        rows += outcome["rows"]
    return files, rows, by_rank


def _end_staging(directory: Path, lock: FileLock | None) -> None:
    """Remove a run's staging directory, then its lock (while held), then the base if empty."""
    _remove_staging(directory)
    if lock is not None:
        lock.release(remove=True)
    with contextlib.suppress(OSError):
        directory.parent.rmdir()


def _start_failed(err: BaseException, what: str, directory: Path) -> PredictionWriteError:
    """An error preparing the staging files (a read-only or full disk), naming the target."""
    failed = PredictionWriteError(
        f"could not prepare the staging files for writing {what} in {directory}: {type(err).__name__}: {err}. "
        "Nothing was written"
    )
    failed.__cause__ = err
    return failed


def _named(err: BaseException, run: _Run) -> BaseException:
    """``err`` as a :class:`PredictionWriteError` (of its own class, when it is one) that names what
    the run writes: the table and the columns."""
    if isinstance(err, PredictionWriteError):
        if run.what in str(err):
            return err
        named = type(err)(f"writing {run.what} was refused: {err}")
    else:
        named = PredictionWriteError(
            f"writing {run.what} failed: {type(err).__name__}: {err}. The predictions were not committed"
        )
    named.__cause__ = err
    return named


def _opens(db: Any, name: str) -> bool:
    """Whether table ``name`` can be opened: a directory with no version yet (what a run killed
    while writing a new table leaves; the next run removes it) is not a table."""
    try:
        db.open_table(name)
    except Exception:  # noqa: BLE001 - lancedb raises ValueError / RuntimeError / OSError alike here
        return False
    return True


def _refuse_moved(source: TableSource, when: str) -> None:
    moved = _table_moved(source, source.pinned(None).open())
    if moved:
        raise TableMovedError(
            f"table {source.name!r} changed {when} ({moved}). Writing the predictions would undo those "
            "changes, so nothing was written: run predict again on the table as it is now."
        )
