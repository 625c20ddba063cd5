"""Typed schemas of the Hydra configuration, registered in Hydra's ConfigStore.

Each YAML file of a schema'd group starts from its schema (``defaults: [<schema>, _self_]``),
so a mistyped key (``data.batchsize=64``) or a wrong type (``data.batch_size=big``) is
rejected while the config is composed, before anything is instantiated, with the key named.

=============================  ======================  =====================================
ConfigStore name               used by                 one field per argument of
=============================  ======================  =====================================
``train_schema``               ``conf/config.yaml``    (the job's own top-level keys)
``data/lance_schema``          ``conf/data/*.yaml``    ``lance_lightning.LanceDataModule``
``model/mlp_schema``           ``conf/model/*.yaml``   ``lance_lightning.app.models.MLPClassifier``
``trainer/trainer_schema``     ``conf/trainer/*.yaml`` ``lightning.pytorch.Trainer``
=============================  ======================  =====================================

The data, model and trainer schemas are generated from the constructors' signatures and
type hints, so they follow the code: a new ``LanceDataModule`` argument is configurable
the moment it exists, and an argument that does not exist is refused. Types OmegaConf can
check (int, float, bool, str, lists and dicts of them, Optional) are kept; ``Literal``
choices become their type plus a check in :func:`check_config`; anything else (unions such
as ``str | Strategy``, which may be given as a ``_target_`` node) is ``Any``.
``callbacks`` and ``logger`` are left out of the trainer schema: they have their own groups.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

DATA_TARGET = "lance_lightning.LanceDataModule"
MODEL_TARGET = "lance_lightning.app.models.MLPClassifier"
TRAINER_TARGET = "lightning.pytorch.Trainer"

_SCALARS = (int, float, bool, str)
_SEQUENCES = (list, tuple, cabc.Sequence, cabc.MutableSequence)
_MAPPINGS = (dict, cabc.Mapping, cabc.MutableMapping)


# -- schema generation ---------------------------------------------------------------------


def _strip_none(hint: Any) -> tuple[list[Any], bool]:
    """The non-None members of a Union (or ``[hint]``) and whether None was one of them."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return [a for a in args if a is not type(None)], type(None) in args
    return [hint], False


def omegaconf_type(hint: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(a type OmegaConf can check, the allowed values when ``hint`` is a ``Literal``)."""
    members, optional = _strip_none(hint)
    choices: tuple[Any, ...] | None = None
    if all(typing.get_origin(m) is typing.Literal for m in members):
        choices = tuple(v for m in members for v in typing.get_args(m))
        kinds = {type(v) for v in choices}
        out: Any = kinds.pop() if len(kinds) == 1 and kinds <= set(_SCALARS) else Any
    elif len(members) == 1:
        out = _single_type(members[0])
    else:  # e.g. str | Strategy: a name, or a node with a _target_
        out = Any
    if optional and out is not Any:
        out = out | None
    if choices is not None and optional:
        choices = (*choices, None)
    return out, choices


def _single_type(hint: Any) -> Any:
    if hint in _SCALARS:
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _SEQUENCES:
        item = args[0] if args and (origin is not tuple or len(args) == 1 or args[1] is Ellipsis) else Any
        return list[item if item in _SCALARS else Any]
    if origin in _MAPPINGS:
        value = args[1] if len(args) == 2 and args[1] in _SCALARS else Any
        return dict[str, value]
    return Any


def _plain_default(value: Any) -> Any:
    """A default OmegaConf can hold: tuples as lists, read-only mappings as dicts."""
    if isinstance(value, cabc.Mapping):
        return {str(k): _plain_default(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_default(v) for v in value]
    return value


@dataclass(frozen=True)
class Schema:
    """A generated schema: the dataclass and the ``Literal`` choices of its fields."""

    node: type
    target: str
    choices: dict[str, tuple[Any, ...]]

    @property
    def keys(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.node)}


def schema_from_signature(
    name: str,
    target: str,
    func: Any,
    *,
    exclude: tuple[str, ...] = (),
    convert: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> Schema:
    """A dataclass with ``_target_`` plus one typed field per parameter of ``func``.

    ``defaults`` replaces the signature's default of the named parameters.
    """
    hints = typing.get_type_hints(func)  # a function's parameters, or a dataclass's fields
    fields: list[tuple[str, Any, Any]] = [("_target_", str, field(default=target))]
    if convert is not None:
        fields.append(("_convert_", str, field(default=convert)))
    choices: dict[str, tuple[Any, ...]] = {}
    for pname, param in inspect.signature(func).parameters.items():
        if pname in ("self", *exclude) or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        ftype, allowed = omegaconf_type(hints.get(pname, Any))
        if allowed is not None:
            choices[pname] = allowed
        default = (defaults or {}).get(pname, param.default)
        if default is param.empty:
            fields.append((pname, ftype, field(default=MISSING)))
        else:
            default = _plain_default(default)
            if isinstance(default, (list, dict)):
                fields.append((pname, ftype, field(default_factory=lambda d=default: _plain_default(d))))
            else:
                fields.append((pname, ftype, field(default=default)))
    return Schema(dataclasses.make_dataclass(name, fields), target, choices)


def _data_schema() -> Schema:
    from ..options import DataOptions

    # From DataOptions: the one record of the datamodule's settings, their types and defaults.
    # _convert_=all: plain dicts and lists, not DictConfig, reach the datamodule (and its hparams).
    # splits defaults to null here, and each data config picks an option of the data/splits
    # group: Hydra merges a dict into a dict, so starting from {train, val, test} a hash spec
    # would keep those keys too; choosing a group option replaces the spec whole.
    # storage_options and connect_kwargs default to {} (not null) so that one key can be set from
    # the command line: data.storage_options.aws_endpoint=http://... (null has no keys to set).
    return schema_from_signature(
        "DataConfig",
        DATA_TARGET,
        DataOptions,
        convert="all",
        defaults={"splits": None, "storage_options": {}, "connect_kwargs": {}},
    )


def _model_schema() -> Schema:
    from .models import MLPClassifier

    return schema_from_signature("MLPConfig", MODEL_TARGET, MLPClassifier.__init__, convert="all")


def _trainer_schema() -> Schema:
    from lightning.pytorch import Trainer

    return schema_from_signature("TrainerConfig", TRAINER_TARGET, Trainer.__init__, exclude=("logger", "callbacks"))


DATA_SCHEMA = _data_schema()
MODEL_SCHEMA = _model_schema()
TRAINER_SCHEMA = _trainer_schema()
DataConfig = DATA_SCHEMA.node
MLPConfig = MODEL_SCHEMA.node
TrainerConfig = TRAINER_SCHEMA.node
SCHEMAS = {"data": DATA_SCHEMA, "model": MODEL_SCHEMA, "trainer": TRAINER_SCHEMA}


# -- the job's own keys ----------------------------------------------------------------------


@dataclass
class PathsConfig:
    """Where a run writes (logs, checkpoints); Hydra's run directory by default."""

    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class InspectConfig:
    """Options of ``lance-lightning-inspect`` (ignored by training)."""

    label_column: str | None = "label"  # null: no label balance
    world_size: int | None = None  # null: trainer.devices x trainer.num_nodes


@dataclass
class JobConfig:
    """What every job's top level holds: one node per config group (train and predict share them)."""

    data: Any = MISSING
    model: Any = MISSING
    trainer: Any = MISSING
    callbacks: dict[str, Any] | None = field(default_factory=dict)
    logger: dict[str, Any] | None = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class TrainConfig(JobConfig):
    """The train job's top level: the config groups plus the run's own settings."""

    inspect: InspectConfig = field(default_factory=InspectConfig)
    task_name: str = "train"
    seed: int | None = 42  # null: no global seeding
    train: bool = True
    test: bool = True
    ckpt_path: str | None = None  # resume training from this checkpoint
    build_demo: bool = True  # build the demo table when data names it and it is missing


# -- checks the schemas cannot express -------------------------------------------------------


class ConfigKeyError(KeyError):
    """A config node has a key its target does not take, or a value outside its choices."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def check_config(cfg: Any) -> None:
    """Reject, naming the key, what the schemas let through: keys added with ``+``
    (``+data.batchsize=64``) and values outside a ``Literal`` (``data.shuffle=random``).

    Only nodes whose ``_target_`` is the schema's own are checked: a config that swaps in
    another model or datamodule class is that class's business.
    """
    for node_name, schema in SCHEMAS.items():
        node = cfg.get(node_name) if hasattr(cfg, "get") else None
        if node is None or not hasattr(node, "keys") or node.get("_target_") != schema.target:
            continue
        known = schema.keys
        unknown = sorted(str(k) for k in node if k not in known)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hints.append(f"{node_name}.{key}" + (f" (did you mean {node_name}.{close[0]}?)" if close else ""))
            arguments = ", ".join(sorted(k for k in known if not k.startswith("_")))
            raise ConfigKeyError(f"{', '.join(hints)}: not an argument of {schema.target}; its arguments: {arguments}")
        for key, allowed in schema.choices.items():
            if key in node and node[key] not in allowed:
                raise ConfigKeyError(
                    f"{node_name}.{key}={node[key]!r} is not one of {', '.join(map(repr, allowed))} ({schema.target})"
                )


# Free-form maps: each key is the storage's or lancedb's business, so any key may be set
# without Hydra's "+" (data.storage_options.aws_endpoint=http://...); the other fields stay strict.
OPEN_DATA_MAPS = ("storage_options", "connect_kwargs")


def _data_node() -> Any:
    node = OmegaConf.structured(DataConfig)
    for key in OPEN_DATA_MAPS:
        OmegaConf.set_struct(node[key], False)
    return node


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent; done on import of this module)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="data", name="lance_schema", node=_data_node())
    cs.store(group="model", name="mlp_schema", node=MLPConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)


register_configs()
