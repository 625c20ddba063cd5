"""Where the rows come from: connect, open, pin a version, check columns and filters.

A :class:`TableSource` is a small picklable value (URI, table name, pinned version, storage
options) that every process (DDP rank, DataLoader worker) turns back into an open table
itself, so nothing of lancedb's runtime is ever carried across a fork or a pickle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import lancedb
import pyarrow as pa


class LanceSourceError(ValueError):
    """The database, table, column or filter named in the configuration is not usable."""


def is_local_uri(uri: str) -> bool:
    """True for plain paths and ``file://`` URIs (lancedb would create those silently)."""
    scheme = urlparse(str(uri)).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def is_memory_uri(uri: str) -> bool:
    return str(uri).startswith("memory://")


@dataclass(frozen=True)
class TableSource:
    """A reopenable reference to one version of one table.

    ``storage_options`` (credentials included) travel to worker processes but never appear
    in ``repr`` or in :meth:`describe`, which is what gets logged.
    """

    uri: str
    name: str
    version: int | None = None
    storage_options: Mapping[str, str] | None = field(default=None, repr=False)
    connect_kwargs: Mapping[str, Any] | None = field(default=None, repr=False)

    def open(self) -> lancedb.table.Table:
        """Open the table (at :attr:`version` when pinned), with errors naming what is missing."""
        return open_table(
            self.uri,
            self.name,
            version=self.version,
            storage_options=self.storage_options,
            connect_kwargs=self.connect_kwargs,
        )

    def pinned(self, version: int | None) -> TableSource:
        return TableSource(self.uri, self.name, version, self.storage_options, self.connect_kwargs)

    def describe(self) -> dict[str, Any]:
        """A secret-free summary for logs and hyperparameters."""
        return {"uri": self.uri, "table": self.name, "version": self.version}

    @classmethod
    def from_table(cls, table: lancedb.table.Table) -> TableSource:
        """The source of an already open lancedb table (as in LanceDB's quickstart)."""
        conn = getattr(table, "_conn", None)
        uri = getattr(conn, "uri", None)
        if uri is None:
            raise LanceSourceError(
                f"cannot tell where table {table.name!r} lives ({type(table).__name__}); "
                "pass `uri` and the table name instead of the table object"
            )
        return cls(
            uri=str(uri),
            name=table.name,
            version=table.version,
            storage_options=getattr(conn, "storage_options", None) or None,
        )


def connect(uri: str, *, storage_options: Mapping[str, str] | None = None, **kwargs: Any):
    """``lancedb.connect`` that refuses a local path that does not exist instead of creating it."""
    uri = str(uri)
    if is_local_uri(uri):
        path = urlparse(uri).path if uri.startswith("file://") else uri
        if not os.path.isdir(path):
            raise LanceSourceError(
                f"no LanceDB database at {uri!r}: the directory does not exist. "
                "Pass the directory that holds your `<table>.lance` folders "
                "(or run `lance-lightning-demo` to build the demo table)."
            )
    return lancedb.connect(uri, storage_options=dict(storage_options) if storage_options else None, **kwargs)


def list_table_names(db: Any) -> list[str]:
    """All table names in ``db``, following pagination."""
    names: list[str] = []
    token = None
    while True:
        response = db.list_tables(page_token=token) if token else db.list_tables()
        names.extend(response.tables)
        token = getattr(response, "page_token", None)
        if not token:
            return sorted(names)


def open_table(
    uri: str,
    name: str,
    *,
    version: int | None = None,
    storage_options: Mapping[str, str] | None = None,
    connect_kwargs: Mapping[str, Any] | None = None,
) -> lancedb.table.Table:
    """Open ``name`` in the database at ``uri``; a missing table lists the ones there."""
    db = connect(uri, storage_options=storage_options, **dict(connect_kwargs or {}))
    try:
        table = db.open_table(name)
    except (ValueError, FileNotFoundError) as err:
        if "not found" not in str(err).lower() and "does not exist" not in str(err).lower():
            raise
        names = list_table_names(db)
        listing = ", ".join(repr(n) for n in names) if names else "none"
        raise LanceSourceError(
            f"no table {name!r} in the LanceDB database at {uri!r}; tables there: {listing}"
        ) from err
    if version is not None and table.version != version:
        try:
            table.checkout(version)
        except Exception as err:
            versions = [v["version"] for v in table.list_versions()]
            raise LanceSourceError(
                f"table {name!r} at {uri!r} has no version {version}; versions there: {versions}"
            ) from err
    return table


def check_columns(table_name: str, schema: pa.Schema, columns: list[str] | None) -> list[str]:
    """The columns to read: all of them when ``columns`` is None; unknown names are refused."""
    if columns is None:
        return list(schema.names)
    if isinstance(columns, str):
        columns = [columns]
    columns = list(columns)
    if not columns:
        raise LanceSourceError(f"`columns` for table {table_name!r} is empty; name at least one column")
    unknown = [c for c in columns if c not in schema.names]
    if unknown:
        listing = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise LanceSourceError(f"table {table_name!r} has no column(s) {unknown}; its schema is: {listing}")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise LanceSourceError(f"`columns` names {duplicated} more than once for table {table_name!r}")
    return columns


def check_filter(table: lancedb.table.Table, filter: str | None) -> int:
    """Row count that ``filter`` keeps; a filter that does not parse is quoted in the error."""
    if filter is None:
        return table.count_rows()
    if not isinstance(filter, str) or not filter.strip():
        raise LanceSourceError(f"`filter` must be a non-empty SQL predicate string, got {filter!r}")
    try:
        return table.count_rows(filter)
    except Exception as err:  # lancedb raises ValueError / RuntimeError with a parser message
        raise LanceSourceError(
            f"filter {filter!r} is not a valid SQL predicate on table {table.name!r}: {err}"
        ) from err
