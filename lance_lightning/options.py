"""The datamodule's settings, validated once: small pure validators and the frozen record they fill.

Every check names the setting, what it was given and what is valid, and returns the value in
its plain form (a NumPy integer as an ``int``, an ``os.PathLike`` as a ``str``), so nothing
downstream meets a ``np.int64`` or a ``pathlib.Path``. A value of the wrong kind raises
:class:`SettingTypeError` (a ``TypeError``), one of the right kind but out of range
:class:`SettingError`; both are ``ValueError`` s, like every configuration error of the package.

The rules:

* integers go through ``operator.index`` (``int``, ``np.int64``, ``np.uint64``... are integers;
  ``bool`` and ``float`` are not, not even ``32.0``) and are below ``2**63`` (they meet NumPy
  ``int64`` arithmetic); row counts (batch sizes, ``block_size × window_blocks``) below
  :data:`ROW_LIMIT`; ``seed`` may reach ``2**64 - 1``, what lancedb's split seed takes;
* a bool must be a real ``bool`` (or ``np.bool_``): the string ``"false"`` is not one;
* a path is a non-empty ``str`` or an ``os.PathLike`` naming one;
* a choice must be one of the listed strings;
* a list of names (``columns``) is a list, tuple... of non-empty strings, never one string.

Pure: imports nothing of lancedb, torch or Lightning.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .orders import DEFAULT_BLOCK_SIZE, DEFAULT_WINDOW_BLOCKS, ShuffleMode, order_names

INT64_MAX = 2**63 - 1
ROW_LIMIT = 2**48
"""Bound of the settings that count rows (batch sizes, a shuffle window): more rows than any table
holds, and far enough below 2**63 that rows × world size, or rounded up to whole batches, stay
inside NumPy's int64 (2**51-row windows overflowed there)."""
SEED_LIMIT = 2**64  # lancedb's split seed is a u64
STAGES = ("train", "val", "test", "predict")


class FrozenMapping(Mapping):
    """A read-only, hashable mapping: a default argument that no call can change."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._items = dict(*args, **kwargs)

    def __getitem__(self, key: Any) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)


DEFAULT_SPLITS = FrozenMapping({"train": 0.8, "val": 0.1, "test": 0.1})
DEFAULT_MEMORY_BUDGET = 4 * 1024**3
NULL_POLICIES = ("raise", "mask")
RESUMES = ("exact", "fresh")
TABLE_UPDATES = ("pin", "next_epoch")
STAGING_MODES = ("auto", "always", "off")
WORKER_START_METHODS = ("forkserver", "spawn")
FORK_REFUSED = (
    "multiprocessing_context='fork' is refused: lancedb's native runtime does not survive fork() "
    "reliably (measured with lancedb 0.40: DataLoader workers forked from a process that has read a "
    "table segfaulted, hung or died in 3 of 6 runs, even with each worker reopening the table itself). "
    "Leave it unset (staged splits then fork their workers, which never call lancedb; table readers use "
    "the fork server) or use 'forkserver' or 'spawn'; all need the usual `if __name__ == \"__main__\":` "
    "guard around the code that starts training."
)


class SettingError(ValueError):
    """A setting's value is outside what it accepts (the message names the setting)."""


class SettingTypeError(SettingError, TypeError):
    """A setting's value is of the wrong kind: a ``TypeError``, and a :class:`SettingError` too."""


def shown(value: Any) -> str:
    """``value`` as a message quotes it: its repr (cut at 80 characters), and its type unless obvious."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    if type(value) in (int, float, type(None)):
        return text
    return f"{text} ({type(value).__name__})"


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def as_int(
    name: str, value: Any, *, minimum: int | None = None, limit: int = INT64_MAX + 1, limit_text: str = "2**63"
) -> int:
    """``value`` as an ``int`` in ``[minimum, limit)``; ``bool`` and ``float`` are refused."""
    lower = f" >= {minimum}" if minimum is not None else ""
    try:
        if _is_bool(value):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise SettingTypeError(f"{name} must be an integer{lower}, got {shown(value)}") from None
    if minimum is not None and number < minimum:
        raise SettingError(f"{name} must be an integer{lower}, got {shown(value)}")
    if number >= limit:
        raise SettingError(f"{name} must be an integer{lower} and < {limit_text}, got {shown(value)}")
    return int(number)


def as_optional_int(name: str, value: Any, **bounds: Any) -> int | None:
    """None, or :func:`as_int`."""
    return None if value is None else as_int(name, value, **bounds)


def as_seed(name: str, value: Any) -> int:
    """An integer in ``[0, 2**64)``: what lancedb's split seed takes (larger ones overflow there)."""
    return as_int(name, value, minimum=0, limit=SEED_LIMIT, limit_text="2**64 (what lancedb's split seed takes)")


def as_rows(name: str, value: Any, *, optional: bool = False) -> int | None:
    """A count of rows: an integer in ``[1, ROW_LIMIT)`` (None too when ``optional``)."""
    if value is None and optional:
        return None
    return as_int(name, value, minimum=1, limit=ROW_LIMIT, limit_text="2**48 (rows)")


def as_bool(name: str, value: Any) -> bool:
    """A real ``bool``: ``"false"``, ``0`` and ``None`` are refused, not read as truth values."""
    if _is_bool(value):
        return bool(value)
    hint = " (a string is not read as a bool: pass True or False itself)" if isinstance(value, str) else ""
    raise SettingTypeError(f"{name} must be True or False, got {shown(value)}{hint}")


def as_path(name: str, value: Any, *, what: str = "a directory path", optional: bool = True) -> str | None:
    """A non-empty ``str`` or an ``os.PathLike`` naming one, as a ``str``; None when ``optional``."""
    valid = f"{what} (a non-empty str or os.PathLike){' or None' if optional else ''}"
    if value is None and optional:
        return None
    path = value
    if isinstance(value, os.PathLike):
        try:
            path = os.fspath(value)
        except TypeError:
            path = None
    if not isinstance(path, str):
        raise SettingTypeError(f"{name} must be {valid}, got {shown(value)}")
    if not path.strip() or "\0" in path:
        raise SettingError(f"{name} must be {valid}, got {shown(value)}")
    return path


def as_str(name: str, value: Any, *, what: str, optional: bool = True) -> str | None:
    """A non-empty ``str`` (None when ``optional``)."""
    valid = f"{what} (a non-empty str){' or None' if optional else ''}"
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise SettingTypeError(f"{name} must be {valid}, got {shown(value)}")
    if not value.strip():
        raise SettingError(f"{name} must be {valid}, got {shown(value)}")
    return value


def as_choice(name: str, value: Any, choices: Iterable[str], *, optional: bool = False) -> str | None:
    """One of ``choices`` (strings); None too when ``optional``."""
    choices = tuple(choices)
    if value is None and optional:
        return None
    if isinstance(value, str) and value in choices:
        return value
    listing = ", ".join(repr(c) for c in choices) + (" or None" if optional else "")
    error = SettingError if isinstance(value, str) else SettingTypeError
    raise error(f"{name} must be one of {listing}, got {shown(value)}")


def as_names(name: str, value: Any, *, what: str = "column names") -> tuple[str, ...] | None:
    """None, or a list/tuple/... of non-empty strings; one string is refused (it is not a list)."""
    if value is None:
        return None
    if isinstance(value, str):
        raise SettingTypeError(
            f"{name} must be a list of {what}, got the string {value!r}: pass a list: {name}=[{value!r}]"
        )
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
        raise SettingTypeError(f"{name} must be a list of {what} (str) or None, got {shown(value)}")
    names = tuple(value)
    bad = [shown(n) for n in names if not isinstance(n, str) or not n]
    if bad:
        raise SettingTypeError(f"{name} must be a list of {what} (non-empty str); not names: {', '.join(bad)}")
    return names


def as_mapping(
    name: str, value: Any, *, what: str, values: type | tuple[type, ...] = object, secret: bool = False
) -> dict[str, Any] | None:
    """None, or a mapping with ``str`` keys (and values of type ``values``), as a plain ``dict``.

    ``secret``: the mapping may hold credentials; a message names a wrong value's type, not the value.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        kind = f"a value of type {type(value).__name__}" if secret else shown(value)
        raise SettingTypeError(f"{name} must be a mapping of {what}, or None, got {kind}")
    bad = [
        f"{k!r}: {f'a value of type {type(v).__name__}' if secret else shown(v)}"
        for k, v in value.items()
        if not isinstance(k, str) or not isinstance(v, values)
    ]
    if bad:
        raise SettingTypeError(f"{name} must be a mapping of {what}; not valid: {', '.join(bad)}")
    return dict(value)


@dataclass(frozen=True)
class DataOptions:
    """Every setting of :class:`~lance_lightning.LanceDataModule`, validated once.

    The one record the datamodule's hooks, the stage assembly (:mod:`.assembly`), the sampler and
    the Hydra schema (``lance_lightning.app.config``, generated from these fields) share: the
    defaults live here, the datamodule's signature repeats them (a test holds the two equal).
    ``__post_init__`` checks and normalizes every field, so an instance always holds valid, plain
    values (``int``, ``bool``, ``str``, tuples). What each field means: the datamodule's docstring.
    ``table`` and ``uri`` are checked where the table is opened (:func:`.source.table_source`);
    ``splits`` where it is parsed (:func:`.splits.parse_split_spec`); ``transform`` where it is
    resolved (:func:`.dataset.resolve_transform`).
    """

    uri: str | None = None
    table: Any = field(default=None, compare=False)
    columns: tuple[str, ...] | None = None
    splits: Any = field(default=DEFAULT_SPLITS, compare=False)
    filter: str | None = None
    batch_size: int = 32
    seed: int | None = None
    num_workers: int = 0
    shuffle: ShuffleMode = "uniform"
    drop_last: bool = False
    eval_batch_size: int | None = None
    stage_splits: dict[str, str] | None = field(default=None, compare=False)
    transform: Any = field(default=None, compare=False)
    batch_keys: tuple[str, ...] | None = None
    nulls: Literal["raise", "mask"] = "raise"
    version: int | None = None
    storage_options: dict[str, str] | None = field(default=None, compare=False, repr=False)
    connect_kwargs: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    multiprocessing_context: Literal["forkserver", "spawn"] | None = None
    persistent_workers: bool = True
    pin_memory: bool = False
    prefetch_factor: int | None = None
    read_ahead: int = 2
    block_size: int = DEFAULT_BLOCK_SIZE
    window_blocks: int = DEFAULT_WINDOW_BLOCKS
    resume: Literal["exact", "fresh"] = "exact"
    table_updates: Literal["pin", "next_epoch"] = "pin"
    in_memory: bool = False
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    cache: str | None = None
    cache_max_bytes: int | None = None
    staging: Literal["auto", "always", "off"] = "auto"

    def __post_init__(self) -> None:
        if self.multiprocessing_context == "fork":
            raise SettingError(FORK_REFUSED)
        checked = {
            "batch_size": as_rows("batch_size", self.batch_size),
            "eval_batch_size": as_rows("eval_batch_size", self.eval_batch_size, optional=True),
            "seed": None if self.seed is None else as_seed("seed", self.seed),
            "num_workers": as_int("num_workers", self.num_workers, minimum=0),
            "shuffle": as_choice("shuffle", self.shuffle, order_names()),
            "drop_last": as_bool("drop_last", self.drop_last),
            "nulls": as_choice("nulls", self.nulls, NULL_POLICIES),
            "version": as_optional_int("version", self.version, minimum=1, limit=2**64, limit_text="2**64"),
            "multiprocessing_context": as_choice(
                "multiprocessing_context", self.multiprocessing_context, WORKER_START_METHODS, optional=True
            ),
            "persistent_workers": as_bool("persistent_workers", self.persistent_workers),
            "pin_memory": as_bool("pin_memory", self.pin_memory),
            "prefetch_factor": as_optional_int("prefetch_factor", self.prefetch_factor, minimum=1),
            "read_ahead": as_int("read_ahead", self.read_ahead, minimum=0),
            "block_size": as_rows("block_size", self.block_size),
            "window_blocks": as_int("window_blocks", self.window_blocks, minimum=1),
            "resume": as_choice("resume", self.resume, RESUMES),
            "table_updates": as_choice("table_updates", self.table_updates, TABLE_UPDATES),
            "in_memory": as_bool("in_memory", self.in_memory),
            "memory_budget_bytes": as_int("memory_budget_bytes", self.memory_budget_bytes, minimum=1),
            "cache": as_path("cache", self.cache),
            "cache_max_bytes": as_optional_int("cache_max_bytes", self.cache_max_bytes, minimum=1),
            "staging": as_choice("staging", self.staging, STAGING_MODES),
            "columns": as_names("columns", self.columns),
            "batch_keys": as_names("batch_keys", self.batch_keys, what="batch keys (column names)"),
            "filter": as_str("filter", self.filter, what="an SQL predicate"),
            "stage_splits": as_mapping(
                "stage_splits", self.stage_splits, what="stage name to split name (str)", values=str
            )
            or {},
            "storage_options": as_mapping(
                "storage_options", self.storage_options, what="option name to value (str)", values=str, secret=True
            ),
            "connect_kwargs": as_mapping(
                "connect_kwargs", self.connect_kwargs, what="lancedb.connect argument name (str) to value", secret=True
            ),
        }
        window = checked["block_size"] * checked["window_blocks"]
        if window >= ROW_LIMIT:
            raise SettingError(
                f"block_size × window_blocks (the rows of one shuffle window) must be < 2**48, got "
                f"{checked['block_size']} × {checked['window_blocks']} = {window}"
            )
        if checked["staging"] == "off" and (checked["in_memory"] or checked["cache"] is not None):
            asked = "in_memory=True" if checked["in_memory"] else f"cache={checked['cache']!r}"
            raise SettingError(
                f"staging='off' reads the table, but {asked} is a setting of the stages (lance_lightning/stage): "
                "pass staging='auto' or 'always' with it, or leave it out"
            )
        if checked["batch_keys"] == ():
            raise SettingError("batch_keys must name at least one key (a tuple comes out), or be None (the dict)")
        unknown = sorted(set(checked["stage_splits"]) - set(STAGES))
        if unknown:
            raise SettingError(f"stage_splits names unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
        for key, value in checked.items():
            object.__setattr__(self, key, value)

    @property
    def eval_rows(self) -> int:
        """Rows a batch of the val, test and predict stages."""
        return self.eval_batch_size or self.batch_size

    def batch_rows(self, stage: str) -> int:
        """Rows a batch of ``stage`` on each rank."""
        return self.batch_size if stage == "train" else self.eval_rows

    def identity(self, table_name: str, split_identity: dict[str, Any] | None) -> dict[str, Any]:
        """What decides which row is in which split: a checkpoint must match it to resume."""
        return {"table": table_name, "splits": split_identity, "filter": self.filter, "seed": self.seed}
