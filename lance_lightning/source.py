"""Where the rows come from: connect, open, pin a version, check columns and filters.

A :class:`TableSource` is a small picklable value (URI, table name, pinned version, storage
options) that every process (DDP rank, DataLoader worker) turns back into an open table
itself, so nothing of lancedb's runtime is ever carried across a fork or a pickle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow as pa

from .filters import early_end, enclose, refusal

if TYPE_CHECKING:  # imported where used: a DataLoader worker reading a stage never loads lancedb
    import lancedb


class LanceSourceError(ValueError):
    """The database, table, column or filter named in the configuration is not usable."""


class MissingTableError(LanceSourceError):
    """The table, or the version of it asked for, is not in the database."""


class TableChangedError(RuntimeError):
    """The pinned table version a run reads is gone or is not the one it pinned (rows deleted from
    under it, its files cleaned up, the table dropped, or dropped and recreated under the same name)."""


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
    # Not hashed (a dict is not hashable; sources are dict keys in report.py), still compared.
    storage_options: Mapping[str, str] | None = field(default=None, repr=False, hash=False)
    connect_kwargs: Mapping[str, Any] | None = field(default=None, repr=False, hash=False)
    version_time: str | None = None
    """When :attr:`version` was committed (ISO time): with the version, what identifies the data.
    A table dropped and recreated under the same name restarts at version 1; its commit times differ."""

    def open(self) -> lancedb.table.Table:
        """Open the table (at :attr:`version` when pinned), with errors naming what is missing.

        A stamped source (:attr:`version_time` known: this run has read the version) opens only
        that same version: a table dropped and recreated under the same name has a version of that
        number too, with other rows. Every process that reopens the pinned version (DataLoader
        workers, each epoch when they are not persistent; the main process) goes through here, so
        none reads the recreation: it raises :class:`TableChangedError` instead, as it does when
        the table or the version is gone."""
        try:
            table = open_table(
                self.uri,
                self.name,
                version=self.version,
                storage_options=self.storage_options,
                connect_kwargs=self.connect_kwargs,
            )
        except MissingTableError as err:
            if self.version_time is None:
                raise
            raise TableChangedError(
                f"table {self.name!r} at {self.uri!r}: version {self.version}, which this run pinned, cannot be "
                f"opened any more ({err}). The table was dropped, or the version cleaned up "
                "(optimize(cleanup_older_than=...) / cleanup_old_versions), while the run read it. Keep old versions "
                "longer than a run lasts, or restart the run on the table as it is now."
            ) from err
        self.check_identity(table)
        return table

    def check_identity(self, table: lancedb.table.Table) -> None:
        """Raise :class:`TableChangedError` when ``table`` (opened at :attr:`version`) is not the
        version this source was stamped with: same number, another commit time."""
        if self.version is None or self.version_time is None:
            return
        now = version_time(table)
        if now == self.version_time:
            return
        raise TableChangedError(
            f"table {self.name!r} at {self.uri!r} changed under this run: its version {self.version} was committed at "
            f"{now}, the version {self.version} this run pinned at {self.version_time}. The table was dropped and "
            "recreated under the same name (or replaced by a copy): version numbers restart at 1, so its version "
            f"{self.version} holds other rows. Reading on would mix them into the run; restart the run on the table "
            "as it is now (or resume with resume='fresh')."
        )

    def pinned(self, version: int | None) -> TableSource:
        return TableSource(self.uri, self.name, version, self.storage_options, self.connect_kwargs)

    def stamped(self, table: lancedb.table.Table) -> TableSource:
        """This source with the commit time of its pinned version, read from ``table`` (opened at it)."""
        return dataclasses.replace(self, version_time=version_time(table))

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


def open_other_table(
    source: TableSource, uri: str, name: str, pin: Mapping[str, Any] | None = None
) -> tuple[lancedb.table.Table, TableSource]:
    """Another table a run reads besides ``source``'s (with its connection settings): opened at
    ``pin``'s ``version`` (a checkpoint's; only the commit of that ``time``: a recreated table's
    same-numbered version raises :class:`TableChangedError`), else at its latest; and its stamped source."""
    if pin is not None:
        other_source = TableSource(
            uri, name, pin["version"], source.storage_options, source.connect_kwargs, pin["time"]
        )
        return other_source.open(), other_source
    table = open_table(uri, name, storage_options=source.storage_options, connect_kwargs=source.connect_kwargs)
    return table, TableSource(uri, name, table.version, source.storage_options, source.connect_kwargs).stamped(table)


def table_pin(source: TableSource) -> dict[str, Any]:
    """What a checkpoint records of another table a run reads: its name, version and commit time."""
    return {"table": source.name, "version": source.version, "time": source.version_time}


def table_source(options: Any) -> tuple[TableSource, Any]:
    """The :class:`TableSource` that ``options`` (a :class:`~.options.DataOptions`) name, and the
    open table when ``options.table`` is one (else None: the table is opened at setup)."""
    from .options import SettingError, SettingTypeError, as_path, as_str, shown

    table = options.table
    if table is None:
        raise SettingError("`table` is required: a table name in the database at `uri`, or an open lancedb Table")
    if isinstance(table, str):
        name = as_str("`table`", table, what="a table name", optional=False)
        if options.uri is None:
            raise SettingError(f"`uri` is required to open table {name!r}: the database directory or URI")
        uri = as_path("`uri`", options.uri, what="the database: a directory or a URI", optional=False)
        source = TableSource(uri, name, options.version, options.storage_options, options.connect_kwargs)
        return source, None
    import lancedb

    if isinstance(table, lancedb.table.Table):
        source = TableSource.from_table(table)
        return (source if options.version is None else source.pinned(options.version)), table
    raise SettingTypeError(
        f"`table` must be a table name (a non-empty str) or an open lancedb Table, got {shown(table)}"
    )


def connect(uri: str, *, storage_options: Mapping[str, str] | None = None, **kwargs: Any):
    """``lancedb.connect`` that refuses a local path that does not exist instead of creating it."""
    uri = str(uri)
    if is_local_uri(uri):
        path = urlparse(uri).path if uri.startswith("file://") else uri
        if os.path.exists(path) and not os.path.isdir(path):
            raise LanceSourceError(
                f"{uri!r} is a file, not a LanceDB database directory: pass the directory that holds your "
                "`<table>.lance` folders"
            )
        if not os.path.isdir(path):
            raise LanceSourceError(
                f"no LanceDB database at {uri!r}: the directory does not exist. "
                "Pass the directory that holds your `<table>.lance` folders "
                "(or run `lance-lightning-demo` to build the demo table)."
            )
    if "read_consistency_interval" in kwargs:
        kwargs["read_consistency_interval"] = _consistency_interval(kwargs["read_consistency_interval"])
    import lancedb

    return lancedb.connect(uri, storage_options=dict(storage_options) if storage_options else None, **kwargs)


def _consistency_interval(value: Any) -> timedelta | None:
    """``read_consistency_interval`` as lancedb takes it: None or a timedelta >= 0; a number is
    seconds (as configs give it). A negative one panics in lancedb's runtime; NaN and infinities
    do not convert."""
    if value is None or (isinstance(value, timedelta) and value >= timedelta(0)):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= 0:  # NaN is not >= 0
        with contextlib.suppress(OverflowError, ValueError):  # inf, or beyond timedelta's 999,999,999 days
            return timedelta(seconds=float(value))
    raise LanceSourceError(
        f"connect_kwargs read_consistency_interval must be seconds >= 0 (a finite number or a timedelta) or None, "
        f"got {value!r}"
    )


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
    try:
        db = connect(uri, storage_options=storage_options, **dict(connect_kwargs or {}))
        table = db.open_table(name)
    except LanceSourceError:
        raise
    except Exception as err:
        remote = remote_error(err, uri, storage_options, what=f"open table {name!r}")
        if remote is not None:
            raise remote from None  # the original may quote credentials; the message keeps what matters
        if "not found" not in str(err).lower() and "does not exist" not in str(err).lower():
            raise
        names = list_table_names(db)
        listing = ", ".join(repr(n) for n in names) if names else "none"
        raise MissingTableError(
            f"no table {name!r} in the LanceDB database at {uri!r}; tables there: {listing}"
        ) from err
    if version is not None and table.version != version:
        try:
            table.checkout(version)
        except Exception as err:
            versions = [v["version"] for v in table.list_versions()]
            raise MissingTableError(
                f"table {name!r} at {uri!r} has no version {version}; versions there: {versions}"
            ) from err
    return table


def version_time(table: lancedb.table.Table) -> str | None:
    """When the version ``table`` is checked out at was committed (ISO time), or None if not listed."""
    version = table.version
    for entry in table.list_versions():
        if entry["version"] == version:
            stamp = entry["timestamp"]
            return stamp.isoformat() if hasattr(stamp, "isoformat") else str(stamp)
    return None


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
    """Row count that ``filter`` keeps; a filter that does not parse is quoted in the error.

    lancedb would read only the first complete expression of ``"a = 1 b = 2"`` and drop the
    rest silently: a filter that is not one whole expression is refused, naming where lancedb
    stops (see :mod:`lance_lightning.filters`).
    """
    if filter is None:
        return table.count_rows()
    if not isinstance(filter, str) or not filter.strip():
        raise LanceSourceError(f"`filter` must be a non-empty SQL predicate string, got {filter!r}")
    subject = f"filter {filter!r}"
    if early_end(filter) is not None:  # a ';', or a ',' / ')' that ends the expression: no need to ask lancedb
        raise LanceSourceError(refusal(table, filter, subject))
    try:
        return table.count_rows(enclose(filter))
    except Exception as err:  # lancedb raises ValueError / RuntimeError with a parser message
        raise LanceSourceError(refusal(table, filter, subject, err) or str(err)) from err


# -- object storage errors ------------------------------------------------------------------

# Option and environment names whose values are secrets (matched case-insensitively, by substring).
_SECRET_MARKERS = ("secret", "token", "password", "access_key", "account_key", "sas", "credential", "api_key")
_CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
)
_ENDPOINT_KEYS = ("aws_endpoint", "endpoint", "aws_endpoint_url", "endpoint_url", "azure_endpoint", "google_endpoint")
_REFUSED = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "AuthorizationHeaderMalformed",
    "InvalidClientTokenId",
    "AuthenticationFailed",
    "status: 403",
    "status: 401",
)
_UNREACHABLE = (
    "ConnectionRefused",
    "tcp connect error",
    "dns error",
    "failed to lookup address",
    "Connect,",
    "kind: Connect",
    "timed out",
    "error sending request",
    "operation timed out",
)


def is_secret_key(key: str) -> bool:
    key = key.lower()
    return any(marker in key for marker in _SECRET_MARKERS)


def secret_values(storage_options: Mapping[str, Any] | None) -> list[str]:
    """Every credential value this process might send: from ``storage_options`` and the environment."""
    values = [str(v) for k, v in (storage_options or {}).items() if is_secret_key(str(k)) and v]
    values += [os.environ[k] for k in _CREDENTIAL_ENV if os.environ.get(k)]
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def scrub(text: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """``text`` with every known credential value replaced by ``***``."""
    for value in secret_values(storage_options):
        text = text.replace(value, "***")
    return text


def storage_endpoint(storage_options: Mapping[str, Any] | None) -> str | None:
    """The endpoint named in ``storage_options`` (or the environment), if any: not a secret."""
    options = {str(k).lower(): v for k, v in (storage_options or {}).items()}
    for key in _ENDPOINT_KEYS:
        if options.get(key):
            return str(options[key])
    return os.environ.get("AWS_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or None


def _credential_origin(storage_options: Mapping[str, Any] | None) -> str:
    given = sorted(str(k) for k in (storage_options or {}) if is_secret_key(str(k)) or "key_id" in str(k).lower())
    if given:
        return f"storage_options keys {given} (values hidden)"
    env = [k for k in _CREDENTIAL_ENV if os.environ.get(k)]
    if env:
        return f"environment variables {env} (values hidden)"
    return "the default credential chain (no credentials in storage_options or AWS_*/AZURE_*/GOOGLE_* variables)"


def remote_error(
    err: BaseException, uri: str, storage_options: Mapping[str, Any] | None, *, what: str
) -> LanceSourceError | None:
    """A clear, secret-free error for an object store failure of ``what`` at ``uri``; None if not one."""
    if is_local_uri(uri) or is_memory_uri(uri):
        return None
    text = str(err)
    parsed = urlparse(uri)
    endpoint = storage_endpoint(storage_options)
    where = f"endpoint {endpoint}" if endpoint else f"the default {parsed.scheme}:// endpoint"
    code = re.search(r"<Code>([A-Za-z]+)</Code>", text)
    code_text = f" ({code.group(1)})" if code else ""
    if "NoSuchBucket" in text:
        reason = f"the bucket {parsed.netloc!r} does not exist at {where}"
    elif any(marker in text for marker in _REFUSED):
        reason = f"{where} refused the credentials{code_text}"
    elif any(marker in text for marker in _UNREACHABLE):
        reason = (
            f"{where} could not be reached (connection refused, timed out or unknown host; "
            "retries follow storage_options client_max_retries / client_retry_timeout / connect_timeout)"
        )
    elif "Failed to connect to namespace" in text or "store: " in text or "ObjectStore" in text:
        reason = f"the object store at {where} answered with an error{code_text}"
    else:
        return None
    detail = scrub(text, storage_options)
    if len(detail) > 600:
        detail = detail[:600] + "..."
    return LanceSourceError(
        f"cannot {what} in the LanceDB database at {uri!r}: {reason}. Tried {where} with credentials from "
        f"{_credential_origin(storage_options)}. lancedb said: {detail}"
    )
