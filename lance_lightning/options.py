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

Every field also declares what changing it between a checkpoint and its resume does
(:func:`setting`, :class:`OnResume`: ``exact``, ``re-cut`` or ``refused``); a field without a
declaration fails this module's import. The checkpoint records the ``refused`` ones
(:meth:`DataOptions.identity`), and :mod:`.state` refuses a resume that changes one, naming it.

Pure: imports nothing of lancedb, torch or Lightning (the split spec's identity imports lancedb
when a checkpoint is written or read).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

import numpy as np

from .mix.spec import MixSpecError, SourceSpec, parse_mix
from .neighbors.spec import parse_neighbors
from .orders import DEFAULT_BLOCK_SIZE, DEFAULT_WINDOW_BLOCKS, MIX_BATCHING, ShuffleMode, get_order, order_names

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


# -- what a change between checkpoint and resume does ---------------------------------------------

EXACT, RECUT, REFUSED = "exact", "re-cut", "refused"
RESUME_KINDS = (EXACT, RECUT, REFUSED)


@dataclass(frozen=True)
class OnResume:
    """What changing one setting between a checkpoint and its resume does; every field of
    :class:`DataOptions` declares one (:func:`setting`), checked when this module is imported.

    * ``exact``: the resumed run reads the same rows in the same order (how they are read, or what
      a batch becomes, may differ);
    * ``re-cut``: the position is kept in rows of the epoch's order, and the rows not yet read are
      cut into batches by the new value;
    * ``refused``: the value decides which rows are in the split or in what order they come; the
      checkpoint records it (:meth:`DataOptions.identity`) and a resume with another value is
      refused, naming the setting (:mod:`.state`).
    """

    kind: str
    why: str
    """What the setting decides, as the refusal (or the docs) says it."""
    recorded: Callable[[DataOptions], Any] | None = None
    """``refused``: the value the checkpoint records (default: the setting's own value); None
    where the value plays no part (``block_size`` of a ``uniform`` shuffle)."""
    follows_checkpoint: bool = False
    """``refused``: None on resume means "whatever the checkpoint recorded" (``version``)."""

    def __post_init__(self) -> None:
        if self.kind not in RESUME_KINDS:
            raise TypeError(f"resume= must be one of {RESUME_KINDS}, got {self.kind!r}")
        if not isinstance(self.why, str) or not self.why.strip():
            raise TypeError("why= must say what the setting decides (a non-empty str)")
        if self.kind != REFUSED and (self.recorded is not None or self.follows_checkpoint):
            raise TypeError(f"recorded= and follows_checkpoint= are for resume={REFUSED!r} settings, not {self.kind!r}")


def setting(
    default: Any = MISSING,
    *,
    resume: str,
    why: str,
    recorded: Callable[[DataOptions], Any] | None = None,
    follows_checkpoint: bool = False,
    **kwargs: Any,
) -> Any:
    """A :class:`DataOptions` field (``dataclasses.field(default, **kwargs)``) that declares what
    changing it between a checkpoint and its resume does: see :class:`OnResume`."""
    rule = OnResume(resume, why, recorded, follows_checkpoint)
    return field(default=default, metadata={"resume": rule}, **kwargs)


def _table_name(options: DataOptions) -> Any:
    return options.table if isinstance(options.table, str) else getattr(options.table, "name", None)


def _split_identity(options: DataOptions) -> Any:
    from .splits import parse_split_spec  # imports lancedb: only where a checkpoint is written or read

    spec = parse_split_spec(options.splits)
    return spec.identity() if spec is not None else None


def _train_split(options: DataOptions) -> str | None:
    return options.stage_splits.get("train")


def _mix_identity(options: DataOptions) -> list[dict[str, Any]] | None:
    return None if options.mix is None else [source.identity() for source in options.mix]


def _neighbor_identity(options: DataOptions) -> Any:
    return None if options.neighbors is None else options.neighbors.identity()


def _order_setting(name: str) -> Callable[[DataOptions], Any]:
    """The setting ``name`` while the ``shuffle`` order depends on it (:attr:`.EpochOrder.settings`), else None."""

    def recorded(options: DataOptions) -> Any:
        return getattr(options, name) if name in get_order(options.shuffle).settings else None

    recorded.__name__ = f"order_setting_{name}"
    return recorded


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

    uri: str | None = setting(
        None,
        resume=EXACT,
        why="where the database lives: a moved copy holds the same table (its version and commit time, which "
        "the checkpoint records, are checked)",
    )
    table: Any = setting(
        None,
        resume=REFUSED,
        why="which table is read",
        recorded=_table_name,
        compare=False,
    )
    columns: tuple[str, ...] | None = setting(
        None, resume=EXACT, why="which columns a batch holds, not which rows or in what order"
    )
    splits: Any = setting(
        DEFAULT_SPLITS,
        resume=REFUSED,
        why="which rows are in the train split, and which are held out",
        recorded=_split_identity,
        compare=False,
    )
    filter: str | None = setting(None, resume=REFUSED, why="which rows are in the splits")
    batch_size: int = setting(
        32,
        resume=RECUT,
        why="how the epoch's order is cut into batches: the rows not yet read are cut into the new batches",
    )
    seed: int | None = setting(
        None,
        resume=REFUSED,
        why="a random split's rows and every shuffled epoch's order (None: the seed seed_everything set, else 0; "
        "the resolved seed is what the checkpoint records)",
    )
    num_workers: int = setting(0, resume=EXACT, why="how the batches are read, not which")
    shuffle: ShuffleMode = setting("uniform", resume=REFUSED, why="the epoch's order")
    drop_last: bool = setting(
        False,
        resume=RECUT,
        why="how the epoch's last, partial step is cut: the rows not yet read are cut by the new rule",
    )
    eval_batch_size: int | None = setting(None, resume=EXACT, why="evaluation batches only, which are read whole")
    stage_splits: dict[str, str] | None = setting(
        None,
        resume=REFUSED,
        why="which split the train stage reads; the other stages' entries may change",
        recorded=_train_split,
        compare=False,
    )
    transform: Any = setting(None, resume=EXACT, why="what a batch becomes, not which rows it holds", compare=False)
    batch_keys: tuple[str, ...] | None = setting(
        None, resume=EXACT, why="the batch's shape (a tuple of these keys or a dict), not which rows it holds"
    )
    nulls: Literal["raise", "mask"] = setting("raise", resume=EXACT, why="what a null becomes, not which rows")
    version: int | None = setting(
        None,
        resume=REFUSED,
        why="which version of the table is read; None reads the checkpoint's",
        follows_checkpoint=True,
    )
    storage_options: dict[str, str] | None = setting(
        None, resume=EXACT, why="how to connect", compare=False, repr=False
    )
    connect_kwargs: dict[str, Any] | None = setting(None, resume=EXACT, why="how to connect", compare=False, repr=False)
    multiprocessing_context: Literal["forkserver", "spawn"] | None = setting(
        None, resume=EXACT, why="how workers start"
    )
    persistent_workers: bool = setting(True, resume=EXACT, why="how long workers live")
    pin_memory: bool = setting(False, resume=EXACT, why="where a batch's memory lives")
    prefetch_factor: int | None = setting(None, resume=EXACT, why="how far workers read ahead")
    read_ahead: int = setting(2, resume=EXACT, why="how far the main process reads ahead")
    read_group_rows: int | None = setting(
        None, resume=EXACT, why="how many rows a worker reads and hands over at once, not which rows or their order"
    )
    block_size: int = setting(
        DEFAULT_BLOCK_SIZE,
        resume=REFUSED,
        why="the block shuffle's blocks, so its order; not recorded under other shuffles",
        recorded=_order_setting("block_size"),
    )
    window_blocks: int = setting(
        DEFAULT_WINDOW_BLOCKS,
        resume=REFUSED,
        why="the block shuffle's windows, so its order; not recorded under other shuffles",
        recorded=_order_setting("window_blocks"),
    )
    resume: Literal["exact", "fresh"] = setting(
        "exact",
        resume=EXACT,
        why="how this run reads the checkpoint: the checkpoint's own value plays no part ('fresh' is the way "
        "to start the data afresh)",
    )
    table_updates: Literal["pin", "next_epoch"] = setting(
        "pin",
        resume=EXACT,
        why="whether later epochs move to newer versions: the interrupted epoch keeps the checkpoint's version",
    )
    in_memory: bool = setting(False, resume=EXACT, why="where the rows are read from, not which")
    memory_budget_bytes: int = setting(DEFAULT_MEMORY_BUDGET, resume=EXACT, why="a bound of in_memory")
    cache: str | None = setting(None, resume=EXACT, why="where the stages live")
    cache_max_bytes: int | None = setting(None, resume=EXACT, why="the stages' budget")
    staging: Literal["auto", "always", "off"] = setting(
        "auto", resume=EXACT, why="whether rows are read from a stage or the table: the same rows either way"
    )
    weight_column: str | None = setting(
        None,
        resume=REFUSED,
        why="the weighted shuffle's weights (a numeric column of the table), so which rows each epoch draws",
    )
    balance_column: str | None = setting(
        None,
        resume=REFUSED,
        why="the weighted shuffle's class balance (weight 1 / the count of the row's value in the train split), so "
        "which rows each epoch draws",
    )
    samples_per_epoch: int | None = setting(
        None,
        resume=REFUSED,
        why="how many rows an epoch of the weighted shuffle draws (None: every row of weight > 0), or an epoch of a "
        "mixture holds (None: one pass over its first source), so the epoch's length and rows",
    )
    weight_replacement: bool = setting(
        False,
        resume=REFUSED,
        why="whether the weighted shuffle draws with replacement (a row may come several times an epoch), so the "
        "epoch's rows",
    )
    neighbors: dict[str, Any] | None = setting(
        None,
        resume=REFUSED,
        why="which neighbours each train row's batch carries (column, k, exclusions, mode, refresh): the lists "
        "are mined from the table version the checkpoint records",
        recorded=_neighbor_identity,
        compare=False,
    )

    mix: Mapping[str, Any] | tuple[SourceSpec, ...] | None = setting(  # given as a mapping; held as the records
        None,
        resume=REFUSED,
        why="the train stage's sources and their proportions, so which rows each epoch holds",
        recorded=_mix_identity,
        compare=False,
    )
    mix_batching: Literal["mixed", "stratified", "source"] = setting(
        "mixed",
        resume=REFUSED,
        why="where a mixture's sources go in the epoch (mixed, stratified per global step, one source a batch), so "
        "the epoch's order",
    )
    eval_by_source: bool = setting(
        False,
        resume=EXACT,
        why="how validation and test are read (one loader per mix source or one per split), not the training rows",
    )

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
            "read_group_rows": as_optional_int("read_group_rows", self.read_group_rows, minimum=1),
            "block_size": as_rows("block_size", self.block_size),
            "window_blocks": as_int("window_blocks", self.window_blocks, minimum=1),
            "resume": as_choice("resume", self.resume, RESUMES),
            "table_updates": as_choice("table_updates", self.table_updates, TABLE_UPDATES),
            "in_memory": as_bool("in_memory", self.in_memory),
            "memory_budget_bytes": as_int("memory_budget_bytes", self.memory_budget_bytes, minimum=1),
            "cache": as_path("cache", self.cache),
            "cache_max_bytes": as_optional_int("cache_max_bytes", self.cache_max_bytes, minimum=1),
            "staging": as_choice("staging", self.staging, STAGING_MODES),
            "weight_column": as_str("weight_column", self.weight_column, what="a numeric column name"),
            "balance_column": as_str("balance_column", self.balance_column, what="a column name"),
            "samples_per_epoch": as_optional_int("samples_per_epoch", self.samples_per_epoch, minimum=1),
            "weight_replacement": as_bool("weight_replacement", self.weight_replacement),
            "mix": _as_mix(self.mix),
            "mix_batching": as_choice("mix_batching", self.mix_batching, MIX_BATCHING),
            "eval_by_source": as_bool("eval_by_source", self.eval_by_source),
            "neighbors": parse_neighbors(self.neighbors, error=SettingError, type_error=SettingTypeError),
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
        check_mixture(checked)
        checked["shuffle"] = weighted_shuffle(checked)
        check_neighbor_settings(checked)
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

    def identity(self, **resolved: Any) -> dict[str, Any]:
        """What a checkpoint records of this run, to refuse a resume that would read other rows or
        another order: the value of every ``refused`` setting (:func:`resume_rules`).

        ``resolved``: values only the datamodule knows, by setting name (the pinned ``version``,
        the split ``stage_splits`` gives the train stage); the others come from the settings.
        """
        rules = resume_rules()
        unknown = sorted(set(resolved) - {n for n, r in rules.items() if r.kind == REFUSED})
        assert not unknown, f"resolved values of settings that are not refused on resume: {unknown}"
        out = {}
        for name, rule in rules.items():
            if rule.kind != REFUSED:
                continue
            if name in resolved:
                out[name] = resolved[name]
            else:
                out[name] = rule.recorded(self) if rule.recorded is not None else getattr(self, name)
        return out

    def follows_checkpoint(self) -> frozenset[str]:
        """The ``refused`` settings left to the checkpoint here (None where ``follows_checkpoint``)."""
        return frozenset(
            name for name, rule in resume_rules().items() if rule.follows_checkpoint and getattr(self, name) is None
        )


WEIGHT_SETTINGS = ("weight_column", "balance_column", "samples_per_epoch", "weight_replacement")
"""The settings of the ``weighted`` shuffle (:class:`~.orders.WeightedOrder`)."""


def _as_mix(value: Any) -> tuple[SourceSpec, ...] | None:
    if isinstance(value, tuple) and value and all(isinstance(v, SourceSpec) for v in value):
        return value
    try:
        return parse_mix(value)
    except MixSpecError as err:
        raise SettingError(str(err)) from err


def check_mixture(checked: Mapping[str, Any]) -> None:
    """Refuse settings a mixture (``mix``) cannot honour, and mixture settings without one."""
    if checked["mix"] is None:
        if checked["mix_batching"] != "mixed":
            raise SettingError(
                f"mix_batching={checked['mix_batching']!r} lays out the sources of a mixture; set mix (the sources "
                "and their proportions) or leave mix_batching out"
            )
        if checked["eval_by_source"]:
            raise SettingError(
                "eval_by_source=True reads validation and test one loader per mix source, but mix is not set: set "
                "mix (the sources) or leave eval_by_source out"
            )
        return
    if not checked["eval_by_source"]:
        stray = {spec.name: sorted(spec.eval_keys()) for spec in checked["mix"] if spec.eval_keys()}
        if stray:
            raise SettingError(
                f"mix source(s) set where their evaluation rows are ({stray}), which only eval_by_source=True reads "
                "(one validation/test loader per source): set eval_by_source=True, or leave those keys out"
            )
    weighs = [name for name in ("weight_column", "balance_column", "weight_replacement") if checked[name]]
    if weighs:
        raise SettingError(
            f"{' and '.join(weighs)} weigh the rows of one split; with mix (several sources) they are not supported: "
            "give each source its proportion, or use weights without mix"
        )
    if checked.get("neighbors") is not None:
        raise SettingError(
            "neighbors are mined for the rows of one split; with mix (several sources) they are not supported yet: "
            "leave out neighbors or mix"
        )
    if checked["shuffle"] != "uniform":
        raise SettingError(
            f"shuffle={checked['shuffle']!r} orders one split; a mixture (mix) draws its sources in its own exact "
            "order (mix_batching says how): leave shuffle at 'uniform'"
        )


def weighted_shuffle(checked: Mapping[str, Any]) -> str:
    """The shuffle of checked settings: ``weighted`` where weights are asked for (``weight_column`` or
    ``balance_column`` with the default ``uniform``); refuses weights with a shuffle that cannot use
    them, and weight settings without weights."""
    shuffle = checked["shuffle"]
    weighs = [name for name in ("weight_column", "balance_column") if checked[name] is not None]
    others = [name for name in ("samples_per_epoch",) if checked[name] is not None and checked["mix"] is None]
    others += ["weight_replacement"] if checked["weight_replacement"] else []
    if weighs and shuffle not in ("uniform", "weighted"):
        raise SettingError(
            f"{' and '.join(weighs)} draw rows by weight (shuffle='weighted'), which shuffle={shuffle!r} does not: "
            "leave shuffle at 'uniform' (the default) or set it to 'weighted', or leave out "
            f"{' and '.join(weighs)}"
        )
    if not weighs and (shuffle == "weighted" or others):
        asked = ", ".join([*(["shuffle='weighted'"] if shuffle == "weighted" else []), *others])
        raise SettingError(
            f"{asked} needs weights a row: set weight_column (a numeric column of the table) or balance_column "
            "(a label column: weight 1 / the count of its value in the train split)"
        )
    return "weighted" if weighs else shuffle


def check_neighbor_settings(checked: Mapping[str, Any]) -> None:
    """``neighbors['refresh_every_n_epochs']`` mines again from the version an epoch reads: it needs
    ``table_updates='next_epoch'`` (a pinned run reads one version: the lists never change)."""
    spec = checked["neighbors"]
    if spec is not None and spec.refresh_every_n_epochs is not None and checked["table_updates"] != "next_epoch":
        raise SettingError(
            f"neighbors['refresh_every_n_epochs']={spec.refresh_every_n_epochs} mines the neighbours again from "
            "the table version an epoch reads, but table_updates='pin' reads one version for the whole run. Pass "
            "table_updates='next_epoch' (each epoch reads the newest version, e.g. embeddings written back), or "
            "leave refresh_every_n_epochs out"
        )


def resume_rules() -> dict[str, OnResume]:
    """Every setting's :class:`OnResume`, in field order."""
    return {f.name: f.metadata["resume"] for f in fields(DataOptions)}


def check_resume_declarations(record: type) -> None:
    """Refuse a settings record with a field that does not declare what a change on resume does:
    a new setting cannot be added without deciding (docs/contributing.md, "A new setting")."""
    missing = [f.name for f in fields(record) if not isinstance(f.metadata.get("resume"), OnResume)]
    if missing:
        raise TypeError(
            f"{record.__name__} field(s) {missing} do not declare what changing them between a checkpoint and its "
            f"resume does: define them with setting(default, resume=..., why=...), resume one of {RESUME_KINDS}"
        )


check_resume_declarations(DataOptions)
