"""The Hydra configs in conf/: every group composes and instantiates; the schema refuses typos;
``train(cfg)`` fits, tests and logs the shard plan on a tiny on-disk table."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from lance_lightning import LanceDataModule
from lance_lightning.app.config import (
    ConfigKeyError,
    DataConfig,
    TrainerConfig,
    check_config,
    omegaconf_type,
)
from lance_lightning.app.models import MLPClassifier
from lance_lightning.app.train import instantiate_group, train

CONF = Path(__file__).resolve().parents[2] / "conf"


def options(group: str) -> list[str]:
    """Every option of a config group, straight from the conf/ directory."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(overrides: list[str], *, hydra: bool = False):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF), job_name="test"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def _flatten(node: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def file_settings(group: str, option: str) -> tuple[dict[str, Any], dict[str, str]]:
    """What ``conf/<group>/<option>.yaml`` sets, read straight from the yaml: its values as dotted
    keys from the config's root, and its ``override /<group>: <option>`` choices; the options of
    the same group it extends (``defaults: [default]``) first, its own values over theirs."""
    text = (CONF / group / f"{option}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    settings: dict[str, Any] = {}
    choices: dict[str, str] = {}
    for entry in data.pop("defaults", []):
        if isinstance(entry, str) and (CONF / group / f"{entry}.yaml").is_file():
            parent_settings, parent_choices = file_settings(group, entry)
            settings.update(parent_settings)
            choices.update(parent_choices)
        elif isinstance(entry, dict):
            choices.update({k.split("/", 1)[1]: v for k, v in entry.items() if k.startswith("override /")})
    settings.update(_flatten(data, "" if "@package _global_" in text else f"{group.replace('/', '.')}."))
    return settings, choices


def assert_composed(cfg: DictConfig, settings: dict[str, Any]) -> None:
    """Every value a file sets is in the composed config (interpolations resolved elsewhere)."""
    for key, value in settings.items():
        if isinstance(value, str) and value.startswith("${"):
            continue
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if isinstance(got, (DictConfig, ListConfig)) else got
        assert got == value, key


_ACCELERATORS = {"cpu": "CPUAccelerator", "gpu": "CUDAAccelerator"}
_TRAINER_ATTRIBUTES = {
    "max_epochs",
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "overfit_batches",
    "fast_dev_run",
    "check_val_every_n_epoch",
    "log_every_n_steps",
    "num_nodes",
}
# Set in the yaml, not readable back from a Trainer (or global torch state): composed values only.
_TRAINER_COMPOSE_ONLY = {"deterministic", "sync_batchnorm", "default_root_dir"}


def assert_trainer_follows(trainer: pl.Trainer, settings: dict[str, Any]) -> None:
    """The instantiated Trainer does what the ``trainer.*`` settings say; a setting this does not
    know how to check fails the test (add it here or to _TRAINER_COMPOSE_ONLY)."""
    for key, value in settings.items():
        if not key.startswith("trainer."):
            continue
        name = key.removeprefix("trainer.")
        if name in _TRAINER_ATTRIBUTES:
            assert getattr(trainer, name) == value, name
        elif name == "accelerator":
            assert value == "auto" or type(trainer.accelerator).__name__ == _ACCELERATORS[value]
        elif name == "devices":
            assert value == "auto" or trainer.num_devices == value
        elif name == "enable_checkpointing":
            assert (trainer.checkpoint_callback is not None) == value
        elif name == "detect_anomaly":
            assert trainer._detect_anomaly == value  # no public accessor in Lightning 2.x
        elif name == "strategy":  # a name Lightning resolves
            assert type(trainer.strategy).__name__.lower() == f"{value}strategy"
        elif name == "strategy._target_":
            assert type(trainer.strategy).__name__ == value.rsplit(".", 1)[1]
        elif name == "strategy.process_group_backend":
            assert trainer.strategy.process_group_backend == value
        else:
            assert name in _TRAINER_COMPOSE_ONLY, f"no check for trainer.{name}: add one"


def assert_model_follows(model: pl.LightningModule, settings: dict[str, Any]) -> None:
    """Every ``model.*`` setting is the instantiated model's hyperparameter, and the MLP's layers
    have the widths ``in_features -> hidden_dims -> num_classes`` and the dropout it says."""
    assert isinstance(model, MLPClassifier)
    for key, value in settings.items():
        if key.startswith("model.") and not key.startswith("model._"):
            assert model.hparams[key.removeprefix("model.")] == value, key
    hp = model.hparams
    widths = [hp.in_features, *hp.hidden_dims, hp.num_classes]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(zip(widths, widths[1:]))
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [hp.dropout] * len(hp.hidden_dims)


def assert_data_follows(dm: LanceDataModule, settings: dict[str, Any]) -> None:
    """``data.*`` scalars the datamodule logs as ``data_<name>`` hyperparameters match."""
    for key, value in settings.items():
        name = f"data_{key.removeprefix('data.')}"
        if key.startswith("data.") and name in dm.hparams:
            assert dm.hparams[name] == value, key


@pytest.fixture
def tiny(digits_db, tmp_path):
    """Overrides that point the job at a 200-row table and write into tmp_path."""
    uri, table = digits_db(200)
    return [f"data.uri={uri}", f"data.table={table}", f"paths.output_dir={tmp_path / 'run'}"]


def test_conf_has_the_expected_groups():
    assert set(options("trainer")) >= {"default", "cpu", "gpu", "ddp", "ddp_sim"}
    assert set(options("logger")) >= {"csv", "none"}
    assert {"data", "model", "trainer", "callbacks", "logger", "experiment", "debug"} <= {
        p.name for p in CONF.iterdir() if p.is_dir()
    }


def test_defaults(tmp_path):
    cfg = compose_cfg([], hydra=True)
    assert cfg.data._target_ == "lance_lightning.LanceDataModule"
    assert (cfg.data.uri, cfg.data.table) == ("data/demo", "digits")
    assert dict(cfg.data.splits) == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert list(cfg.data.columns) == ["image", "label"]
    assert cfg.hydra.job.chdir is False  # data/demo stays relative to where the command runs
    assert cfg.hydra.runtime.choices["trainer"] == "default"
    assert list(cfg.logger) == ["csv"]


@pytest.mark.parametrize("option", options("data"))
def test_data_group(option, tiny):
    cfg = compose_cfg([f"data={option}", *tiny])
    dm = instantiate(cfg.data)
    assert isinstance(dm, LanceDataModule)
    dm.setup("fit")
    assert sum(len(s) for s in dm.splits.values()) == 200


@pytest.mark.parametrize("option", options("data/splits"))
def test_split_options_replace_the_spec_whole(option, digits_db, tmp_path):
    uri, table = digits_db(200, "with_split", split=["train", "val", "test", "train", "train"] * 40)
    fit = ["data.splits.train=100", "data.splits.val=20", "data.splits.test=20"] if option == "random_counts" else []
    cfg = compose_cfg([f"data/splits={option}", f"data.uri={uri}", f"data.table={table}", *fit])
    dm = instantiate(cfg.data)
    dm.setup()
    sizes = {name: len(rows) for name, rows in dm.splits.items()}
    assert sum(sizes.values()) <= 200 and sizes
    if option == "all":
        assert cfg.data.splits is None and sizes == {"all": 200}
    else:
        assert set(sizes) == {"train", "val", "test"}


def test_a_mix_option_composes_into_a_mixture_whose_shares_the_command_line_changes(tiny):
    cfg = compose_cfg(["data/mix=digits_threes", "data.mix.threes.proportion=0.5", *tiny])
    assert dict(cfg.data.mix.threes) == {"proportion": 0.5, "filter": "label = 3"}
    dm = instantiate(cfg.data)
    dm.setup("fit")
    train = len(dm.splits["train"])
    labels, sources = [], []
    for batch in dm.train_dataloader():
        labels.append(batch["label"])
        sources.append(batch["source"])
    labels, sources = torch.cat(labels), torch.cat(sources)
    assert torch.bincount(sources).tolist() == [train, round(train * 0.5 / 0.75)]  # one pass over "all"
    assert bool((labels[sources == 1] == 3).all())


def test_split_fraction_override(tiny):
    cfg = compose_cfg(["data.splits.val=0.2", "data.splits.train=0.7", *tiny])
    assert dict(cfg.data.splits) == {"train": 0.7, "val": 0.2, "test": 0.1}
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert {n: len(s) for n, s in dm.splits.items()} == {"train": 140, "val": 40, "test": 20}


@pytest.mark.parametrize("option", options("model"))
def test_model_group(option, tiny):
    settings, _ = file_settings("model", option)
    cfg = compose_cfg([f"model={option}", *tiny])
    assert_composed(cfg, settings)
    assert_model_follows(instantiate(cfg.model), settings)


def test_model_overrides_reach_the_layers(tiny):
    cfg = compose_cfg(["model.hidden_dims=[32,16]", "model.dropout=0.25", *tiny])
    model = instantiate(cfg.model)
    assert [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)] == [
        (64, 32),
        (32, 16),
        (16, 10),
    ]
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.25, 0.25]


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_group(option, tiny, tmp_path):
    settings, _ = file_settings("trainer", option)  # with trainer/default.yaml's, which each extends
    assert settings["trainer.max_epochs"] == 15
    cfg = compose_cfg([f"trainer={option}", *tiny])
    assert_composed(cfg, settings)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("composed values checked; instantiating needs a GPU")
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert_trainer_follows(trainer, settings)
    assert trainer.default_root_dir == str(tmp_path / "run")  # ${paths.output_dir}
    if option == "ddp_sim":
        assert trainer.world_size == 2 and trainer.num_devices == 2


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callbacks_and_logger_groups(group, tiny):
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}", *tiny])
        objects = instantiate_group(cfg[group])
        assert len(objects) == (0 if option == "none" else len(cfg[group]))
        kind = pl.Callback if group == "callbacks" else pl.loggers.Logger
        assert all(isinstance(o, kind) for o in objects)


@pytest.mark.parametrize("group,option", [(g, o) for g in ("experiment", "debug") for o in options(g)])
def test_experiment_and_debug_groups(group, option, tiny):
    settings, choices = file_settings(group, option)
    cfg = compose_cfg([f"{group}={option}", *tiny], hydra=True)
    assert_composed(cfg, settings)
    assert {g: cfg.hydra.runtime.choices[g] for g in choices} == choices
    assert_data_follows(instantiate(cfg.data), settings)
    assert_model_follows(instantiate(cfg.model), settings)
    callbacks = instantiate_group(cfg.callbacks)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=callbacks)
    assert_trainer_follows(trainer, settings)
    if choices.get("callbacks") == "none":
        assert callbacks == [] and instantiate_group(cfg.logger) == []
    if option == "fdr":  # what fast_dev_run=True means to Lightning: one batch of each stage
        assert (trainer.limit_train_batches, trainer.limit_val_batches, trainer.limit_test_batches) == (1, 1, 1)
    if option == "digits_ddp":  # the global batch of `digits` (64), over 2 ranks
        assert trainer.world_size * cfg.data.batch_size == 64


def _error_text(err: BaseException) -> str:
    parts = []
    while err is not None:
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def test_mistyped_key_is_rejected_at_compose_naming_it():
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["data.batchsize=64"])
    assert "data.batchsize" in _error_text(info.value)


def test_wrong_type_is_rejected_at_compose_naming_the_key():
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["data.batch_size=big"])
    assert "data.batch_size" in _error_text(info.value)


def test_forced_unknown_key_is_rejected_before_training(tiny, tmp_path):
    cfg = compose_cfg(["+data.batchsize=64", *tiny])
    with pytest.raises(ConfigKeyError, match=r"data\.batchsize \(did you mean data\.batch_size\?\)"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # nothing was written: no Trainer ran


@pytest.mark.parametrize(
    "override,key", [("data.shuffle=random", "data.shuffle"), ("trainer.precision=17", "trainer.precision")]
)
def test_value_outside_choices_is_rejected(override, key, tiny):
    with pytest.raises(ConfigKeyError, match=key):
        check_config(compose_cfg([override, *tiny]))


def _params(func: Any, *skip: str) -> set[str]:
    return {n for n in inspect.signature(func).parameters if n not in ("self", *skip)}


def test_schemas_follow_the_signatures():
    assert {f.name for f in dataclasses.fields(DataConfig)} == _params(LanceDataModule.__init__) | {
        "_target_",
        "_convert_",
    }
    assert {f.name for f in dataclasses.fields(TrainerConfig)} == _params(
        pl.Trainer.__init__, "logger", "callbacks"
    ) | {"_target_"}
    types = {f.name: f.type for f in dataclasses.fields(DataConfig)}
    assert types["batch_size"] is int
    assert types["columns"] == (list[str] | None)


@pytest.mark.parametrize(
    "hint,expected,choices",
    [
        (int, int, None),
        (int | None, int | None, None),
        (Sequence[str] | None, list[str] | None, None),
        (Mapping[str, Any] | None, dict[str, Any] | None, None),
        (Literal["a", "b"], str, ("a", "b")),
        (Literal["a"] | None, str | None, ("a", None)),
        (typing.Callable[[int], int] | str | None, Any, None),
    ],
)
def test_omegaconf_type(hint, expected, choices):
    assert omegaconf_type(hint) == (expected, choices)


def _accuracy(checkpoints: Path, cfg: DictConfig) -> float:
    """Accuracy of the best checkpoint (the one train() tests) on the test split, counted here."""
    (best,) = [p for p in checkpoints.glob("*.ckpt") if p.name != "last.ckpt"]  # one epoch: one best
    model = MLPClassifier.load_from_checkpoint(best).eval()
    dm = instantiate(cfg.data)
    dm.setup("test")
    right = total = 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            right += int((model(batch["image"]).argmax(1) == batch["label"]).sum())
            total += len(batch["label"])
    assert total == 20
    return right / total


def test_train_fits_tests_and_logs_the_shard_plan(tiny, tmp_path):
    cfg = compose_cfg(
        [*tiny, "trainer=cpu", "trainer.max_epochs=1", "data.batch_size=32", "trainer.enable_progress_bar=false"]
    )
    metrics = train(cfg)
    assert set(metrics) == {"test/acc", "test/loss"}
    # The tiny table's labels are id % 10 over random pixels: no accuracy bound means anything
    # here (tests/integration/test_main_job_accuracy.py holds the real job to one). What must
    # hold is that test/acc is the accuracy of the tested checkpoint on the test split.
    assert metrics["test/acc"] == pytest.approx(_accuracy(tmp_path / "run" / "checkpoints", cfg), abs=1e-6)
    hparams = yaml.safe_load((tmp_path / "run" / "csv" / "hparams.yaml").read_text())
    assert hparams["table_version"] == 1
    assert hparams["split_rows"] == {"train": 160, "val": 20, "test": 20}
    plan = hparams["shard_plan"]
    assert plan["train"]["batches_per_rank"] == [5] and plan["train"]["rows_per_rank"] == [160]
    assert plan["test"]["rows"] == 20 and plan["test"]["world_size"] == 1
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_train_builds_the_demo_table_when_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(["debug=fdr", f"paths.output_dir={tmp_path / 'run'}"])
    metrics = train(cfg)
    assert (tmp_path / "data" / "demo" / "digits.lance").is_dir()
    assert "test/acc" in metrics


def test_demo_command_builds_the_table(tmp_path, capsys):
    import lancedb

    from lance_lightning.app.demo import main

    main(["--uri", str(tmp_path / "db")])
    table = lancedb.connect(str(tmp_path / "db")).open_table("digits")
    assert table.count_rows() == 1797
    assert str(table.schema.field("label").type) == "int64"
    assert "fixed_shape_tensor" in str(table.schema.field("image").type)
    assert "1797 rows" in capsys.readouterr().out
    main(["--uri", str(tmp_path / "db")])  # an existing table is kept
    assert lancedb.connect(str(tmp_path / "db")).open_table("digits").version == table.version
