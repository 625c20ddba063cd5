"""New columns added fragment by fragment with pylance: only the new data is written.

Each fragment of the pinned version gets one new data file holding the new columns for all its
physical rows, in row-offset order (rows not predicted, deleted ones included, are null). The
files are written with ``lance.file.LanceFileWriter`` at paths chosen (and recorded in the
staging directory) *before* they are opened, then one ``LanceOperation.Merge`` commit, based on
the pinned version, adds them to the fragments. So:

* row addresses and the fragments do not change, and every index of the table is kept;
* the commit is metadata only (a few ms); the data files cost what writing the outputs costs
  once. With one rank they are written during the predict loop, by a background thread fed
  batch by batch (:class:`BackgroundColumnWriter`), so the second core hides most of it;
  with more ranks the batches of a fragment come from every rank (they are dealt out
  round-robin), so the ranks stage them and, after the loop, each rank writes the files of its
  share of the fragments (:func:`fragment_shares`, :func:`write_share`) from every rank's
  staged rows, all ranks at once; rank 0 then commits them all;
* the commit conflicts with any commit since the pinned version (lance's conflict check):
  the writer then refuses, and the table is left as it is;
* a run killed before the commit leaves the table unchanged; the data files it wrote are
  listed in its staging directory, and the next run deletes those that no version refers to.

Used when ``import lance`` works (``pip install pylance``, or ``lancedb[pylance]``), the
columns are new, the table has no stable row ids (its ``_rowid`` is the row address) and its
field ids are the ones a schema conversion gives; otherwise the writer falls back to the
rewrite of :mod:`.rewrite` and says why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..source import TableSource
from .feed import Feed
from .stage import PredictionWriteError, TableMovedError

_LISTS = "data-files"
"""What the names of a run's lists of data files start with (:func:`files_list`, :data:`FILES_LIST`)."""
FILES_LIST = f"{_LISTS}.txt"
"""The one list of data files a run kept before the lists were per rank: still read by the cleanup."""
NULL_CHUNK_ROWS = 65_536
_LOW = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


def files_list(directory: Path, rank: int) -> Path:
    """Where rank ``rank`` lists the data files it opens in the table, one a line, each before it is
    opened (so a killed run's files are found). One list a rank: appends from several processes to
    one file can interleave on a shared file system such as NFS."""
    return directory / f"{_LISTS}-{rank:05d}.txt"


def read_list(listed: Path) -> list[str]:
    """The data files one list names (none when it does not exist)."""
    return [p for p in listed.read_text().splitlines() if p] if listed.exists() else []


def listed_files(directory: Path) -> list[str]:
    """Every data file the ranks of a run listed in ``directory``."""
    return [path for listed in sorted(directory.glob(f"{_LISTS}*.txt")) for path in read_list(listed)]


def lance_module() -> Any:
    """pylance's ``lance`` module, or None when it is not installed."""
    try:
        import lance
        import lance.file  # noqa: F401
    except ImportError:
        return None
    return lance


class FragmentPlan:
    """The pinned version's fragments and the schema with the new columns (field ids assigned)."""

    def __init__(self, lance: Any, table: Any, source: TableSource, fields: list[pa.Field]) -> None:
        from lance.schema import LanceSchema

        self.lance, self.source, self.fields = lance, source, fields
        self.uri = table.uri
        self.storage_options = dict(source.storage_options) if source.storage_options else None
        self.dataset = lance.dataset(self.uri, version=source.version, storage_options=self.storage_options)
        arrow = self.dataset.schema
        self.schema = LanceSchema.from_pyarrow(pa.schema([*arrow, *fields], metadata=arrow.metadata))
        self.field_ids = [self.schema.field(f.name).id() for f in fields]
        self.file_version = self.dataset.data_storage_version
        self.major, self.minor = (int(v) for v in self.file_version.split("."))
        self.physical_rows = {f.fragment_id: f.metadata.physical_rows for f in self.dataset.get_fragments()}

    @classmethod
    def make(cls, table: Any, source: TableSource, fields: list[pa.Field]) -> tuple[FragmentPlan | None, str]:
        """``(plan, "")``, or ``(None, why not)`` when the columns cannot be added fragment by fragment."""
        lance = lance_module()
        if lance is None:
            return None, "pylance is not installed (pip install pylance)"
        existing = [f.name for f in fields if f.name in table.schema.names]
        if existing:
            return None, f"column(s) {existing} are replaced (overwrite=True), not added"
        uri = getattr(table, "uri", None)
        if not isinstance(uri, str):
            return None, f"this lancedb table ({type(table).__name__}) has no dataset uri"
        from lance.schema import LanceSchema

        plan = cls(lance, table, source, fields)
        if plan.dataset.has_stable_row_ids:
            return None, "the table has stable row ids (its _rowid is not the row address)"
        if str(LanceSchema.from_pyarrow(plan.dataset.schema)) != str(plan.dataset.lance_schema):
            return None, "the table's field ids are not the sequential ones (columns were dropped or altered)"
        return plan, ""

    def data_path(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/data/{name}"


class FragmentColumnWriter:
    """Writes the new columns of each fragment to its own data file, from batches in address order.

    ``write(addresses, batch)`` takes sorted row addresses and their outputs; batches come in
    increasing address order (one rank, or the ranks' staged batches merged). Gaps are nulls.
    """

    def __init__(self, plan: FragmentPlan, files_list: Path) -> None:
        self.plan, self.files_list = plan, files_list
        self.schema = pa.schema(plan.fields)
        self.files: dict[int, Any] = {}  # fragment id -> DataFile
        self.paths: list[str] = []
        self.rows = 0
        self._fragment: int | None = None
        self._writer: Any = None
        self._name = ""
        self._cursor = 0

    def write(self, addresses: np.ndarray, batch: pa.RecordBatch) -> None:
        addresses = np.asarray(addresses, dtype=np.uint64)
        fragments = (addresses >> _SHIFT).astype(np.int64)
        offsets = (addresses & _LOW).astype(np.int64)
        cuts = np.flatnonzero(np.diff(fragments)) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(addresses)]):
            self._open(int(fragments[lo]))
            self._put(offsets[lo:hi], batch.slice(lo, hi - lo))

    def _open(self, fragment: int) -> None:
        if fragment == self._fragment:
            return
        if fragment not in self.plan.physical_rows:
            raise PredictionWriteError(
                f"row addresses of fragment {fragment}, which version {self.plan.source.version} lacks"
            )
        if self._fragment is not None:
            if fragment < self._fragment:
                raise PredictionWriteError("predicted rows came out of table order: the writer needs them in order")
            self._close()
        if fragment in self.files:
            raise PredictionWriteError(f"fragment {fragment} was written twice")
        self._name = f"{uuid.uuid4().hex}.lance"
        path = self.plan.data_path(self._name)
        with open(self.files_list, "a") as fh:  # listed before it exists: a killed run's files are found
            fh.write(path + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.paths.append(path)
        from lance.file import LanceFileWriter

        self._writer = LanceFileWriter(
            path, self.schema, version=self.plan.file_version, storage_options=self.plan.storage_options
        )
        self._fragment, self._cursor = fragment, 0

    def _nulls(self, count: int) -> None:
        for start in range(0, count, NULL_CHUNK_ROWS):
            n = min(NULL_CHUNK_ROWS, count - start)
            self._writer.write_batch(
                pa.RecordBatch.from_arrays([pa.nulls(n, f.type) for f in self.schema], schema=self.schema)
            )

    def _put(self, offsets: np.ndarray, batch: pa.RecordBatch) -> None:
        first, last = int(offsets[0]), int(offsets[-1])
        if first < self._cursor or last >= self.plan.physical_rows[self._fragment]:
            raise PredictionWriteError(
                f"row offset {first} of fragment {self._fragment} was predicted twice or out of order"
            )
        if last - first + 1 == len(offsets):  # a run of rows (the usual case): written as it is
            self._nulls(first - self._cursor)
            self._writer.write_batch(batch)
        else:  # a filter left gaps: nulls in between
            index = np.full(last + 1 - self._cursor, -1, dtype=np.int64)
            index[offsets - self._cursor] = np.arange(len(offsets))
            if np.count_nonzero(index >= 0) != len(offsets):
                raise PredictionWriteError(f"a row of fragment {self._fragment} was predicted twice in one batch")
            self._writer.write_batch(batch.take(pa.array(index, mask=index < 0)))
        self._cursor = last + 1
        self.rows += len(offsets)

    def _close(self) -> None:
        from lance.fragment import DataFile

        self._nulls(self.plan.physical_rows[self._fragment] - self._cursor)
        self._writer.close()
        self._writer = None
        path = self.plan.data_path(self._name)
        size = os.path.getsize(path) if os.path.exists(path) else None
        columns = list(range(len(self.plan.field_ids)))
        self.files[self._fragment] = DataFile(
            self._name, self.plan.field_ids, columns, self.plan.major, self.plan.minor, size
        )
        self._fragment = None

    def finish(self) -> dict[int, Any]:
        if self._fragment is not None:
            self._close()
        return self.files

    def abort(self, *, remove: bool = True) -> None:
        """Close this writer's files and delete them (``remove``: no commit was tried, so nothing
        refers to them; after a failed commit the caller removes only those no version names)."""
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # noqa: BLE001 - best effort: the file is removed below
            pass
        self._writer = None
        if remove:
            remove_files(self.paths, self.plan.storage_options)


class BackgroundColumnWriter:
    """A :class:`FragmentColumnWriter` on a thread (a :class:`~.feed.Feed`): the predict loop hands it
    batches and goes on. The thread also works out each batch's row addresses (``rows()``) and
    closes the last file. Writing the batches queued meanwhile as one was tried: no faster (+23%
    and +26% at 1M rows, 5 ms steps), and a copy more."""

    def __init__(self, writer: FragmentColumnWriter, what: str) -> None:
        self.writer = writer
        self._feed = Feed(self._consume, name="lance-prediction-writer", what=what)

    def _consume(self, items: Iterator[tuple[Callable[[], np.ndarray], pa.RecordBatch]]) -> dict[int, Any]:
        for rows, batch in items:
            self.writer.write(rows(), batch)
        return self.writer.finish()

    def write(self, rows: Callable[[], np.ndarray], batch: pa.RecordBatch) -> None:
        """Queue one batch: ``rows()`` gives its row addresses (called on the writing thread)."""
        self._feed.put((rows, batch))

    def finish(self) -> dict[int, Any]:
        """Wait for every data file; returns them by fragment."""
        return self._feed.finish()

    def abort(self, *, remove: bool = True) -> None:
        """Stop the thread, close the files and (``remove``) delete them."""
        self._feed.abort()
        self.writer.abort(remove=remove)


def fragment_shares(physical_rows: Mapping[int, int], world_size: int) -> list[list[int]]:
    """The fragments each rank writes after the loop: runs of consecutive fragment ids, one per
    rank, about ``1/world_size`` of the physical rows each (a fragment goes to the rank whose
    share holds its middle row). Every fragment goes to exactly one rank; a rank may get none."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ids = sorted(physical_rows)
    rows = np.array([physical_rows[i] for i in ids], dtype=np.int64)
    total = int(rows.sum())
    shares: list[list[int]] = [[] for _ in range(world_size)]
    starts = np.cumsum(rows) - rows
    for fragment, start, count in zip(ids, starts.tolist(), rows.tolist()):
        rank = min(world_size - 1, (2 * start + count) * world_size // (2 * total)) if total else 0
        shares[rank].append(fragment)
    return shares


def write_share(
    plan: FragmentPlan, staged: Any, fragments: Sequence[int], files_list: Path
) -> tuple[dict[int, Any], int]:
    """Write the data files of ``fragments`` (consecutive ids) from every rank's staged rows
    (a :class:`~.stage._Staged`); returns ``(files by fragment, rows written)``. On an
    error the files written so far are removed."""
    if not fragments:
        return {}, 0
    low = int(min(fragments)) << 32
    high = (int(max(fragments)) + 1) << 32
    writer = FragmentColumnWriter(plan, files_list)
    try:
        for batch in staged.in_range(low, high):
            writer.write(
                batch.column(0).to_numpy(), pa.RecordBatch.from_arrays(batch.columns[1:], schema=writer.schema)
            )
        return writer.finish(), writer.rows
    except BaseException:
        writer.abort()
        raise


def data_file_json(data_file: Any) -> dict[str, Any]:
    """A ``lance.fragment.DataFile`` as JSON (it goes from the rank that wrote it to rank 0)."""
    return {
        "path": data_file.path,
        "fields": list(data_file.fields),
        "column_indices": list(data_file.column_indices),
        "file_major_version": data_file.file_major_version,
        "file_minor_version": data_file.file_minor_version,
        "file_size_bytes": data_file.file_size_bytes,
    }


def data_file_from_json(record: dict[str, Any]) -> Any:
    from lance.fragment import DataFile

    return DataFile(**record)


def commit_merge(plan: FragmentPlan, files: dict[int, Any], rows: int) -> dict[str, Any]:
    """One ``Merge`` commit on the pinned version: the new data files join their fragments."""
    lance = plan.lance
    from lance.fragment import FragmentMetadata

    fragments = []
    for fragment in plan.dataset.get_fragments():
        meta = fragment.metadata
        extra = [files[meta.id]] if meta.id in files else []  # no file: the fragment reads as nulls
        fragments.append(
            FragmentMetadata(meta.id, [*meta.files, *extra], meta.physical_rows, meta.deletion_file, meta.row_id_meta)
        )
    name = plan.source.name
    try:
        new = lance.LanceDataset.commit(
            plan.uri,
            lance.LanceOperation.Merge(fragments, plan.schema),
            read_version=plan.source.version,
            storage_options=plan.storage_options,
        )
    except Exception as err:
        if "conflict" in type(err).__name__.lower() or "conflict" in str(err).lower():
            raise TableMovedError(
                f"table {name!r} got another commit while the predictions were written, so nothing was written "
                f"(lance: {str(err).splitlines()[0][:200]}). Run predict again."
            ) from err
        raise
    return {
        "table": name,
        "version": int(new.version),
        "columns": [f.name for f in plan.fields],
        "rows": rows,
        "of": int(plan.dataset.count_rows()),
    }


def remove_files(paths: Iterable[str], storage_options: dict | None = None) -> None:
    for path in paths:
        if "://" in path and not path.startswith("file://"):
            try:
                import pyarrow.fs as pafs

                fs, inner = pafs.FileSystem.from_uri(path)
                fs.delete_file(inner)
            except Exception:  # noqa: BLE001 - best effort: lance's cleanup removes unreferenced files
                pass
        else:
            Path(path.removeprefix("file://")).unlink(missing_ok=True)


def referenced_files(lance: Any, uri: str, storage_options: dict | None = None) -> set[str]:
    """The names of the data files that any version of the dataset at ``uri`` refers to (a file
    only an older version names is still read by a checkout of that version)."""
    latest = lance.dataset(uri, storage_options=storage_options)
    used: set[str] = set()
    for version in latest.versions():
        dataset = lance.dataset(uri, version=version["version"], storage_options=storage_options)
        used |= {f.path for fragment in dataset.get_fragments() for f in fragment.metadata.files}
    return used


def remove_unreferenced(directory: Path, table: Any, storage_options: dict | None = None) -> int:
    """Delete the data files an ended run listed in ``directory`` that no version of ``table``
    refers to; returns how many. Only for a run that no live process holds (:mod:`.lock`)."""
    paths = listed_files(directory)
    lance = lance_module()
    if not paths or lance is None:
        return 0
    used = referenced_files(lance, table.uri, storage_options)
    stale = [p for p in paths if p.rsplit("/", 1)[-1] not in used]
    remove_files(stale, storage_options)
    return len(stale)
