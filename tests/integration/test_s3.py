"""Tables in object storage, against a real S3-compatible server (moto) on 127.0.0.1.

Training, validation, mid-epoch resume and DataLoader workers read an ``s3://`` table; a split's
node-local stage is filled once from the server and then read instead of it; a new table version
gets a new stage; a split over the staging budget is read from the server (default) or refused
(``cache=``); each failure names the URI and what was tried; no secret leaks anywhere.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import multiprocessing
import re
import uuid
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lance_lightning import LanceBatchDataset, LanceDataModule, LanceSourceError, TableSource
from lance_lightning.dataset import StagedBatchDataset
from lance_lightning.stage import StageBudgetError, ensure_stage
from tests.conftest import toy_table
from tests.helpers import Preempted, SaveThenStop, quiet_trainer

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

ACCESS_KEY = "AKIAS3TESTACCESSKEY1"
SECRET = "s3cr3t-VALUE-that-must-never-leak-0123456789"


class RequestLog(logging.Handler):
    """Counts the requests the moto server answers (werkzeug logs one line per request)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def data_reads(self, bucket: str, since: int = 0) -> int:
        """GETs of table data files (not manifests or listings) since request number ``since``."""
        pattern = re.compile(rf'"GET /{bucket}/[^ ]*\.lance/data/')
        return sum(1 for line in self.lines[since:] if pattern.search(line))


class S3:
    def __init__(self) -> None:
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.log = RequestLog()
        werkzeug = logging.getLogger("werkzeug")
        werkzeug.addHandler(self.log)
        werkzeug.setLevel(logging.INFO)
        werkzeug.propagate = False

    def options(self, **extra: str) -> dict[str, str]:
        return {
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET,
            "aws_endpoint": self.endpoint,
            "aws_region": "us-east-1",
            "allow_http": "true",
            **extra,
        }

    def bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        ).create_bucket(Bucket=name)
        return name

    def auth(self, enabled: bool) -> None:
        """moto checks credentials only when asked to (its reset-auth API)."""
        import urllib.request

        body = b"0" if enabled else b"inf"
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth", data=body, headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(request).read()


@pytest.fixture(scope="module")
def s3():
    server = S3()
    yield server
    logging.getLogger("werkzeug").removeHandler(server.log)
    server.server.stop()


@pytest.fixture
def s3_table(s3):
    """``s3_table(num_rows) -> (uri, table)``: a toy table in a fresh bucket."""
    import lancedb

    def make(num_rows: int = 120, name: str = "toy"):
        uri = f"s3://{s3.bucket()}/db"
        table = lancedb.connect(uri, storage_options=s3.options()).create_table(name, toy_table(num_rows))
        return uri, table

    return make


class Recorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.seen: list[list[int]] = []
        self.val_seen: list[int] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["id"].tolist())
        return torch.nn.functional.cross_entropy(self.layer(batch["x"]), batch["y"])

    def validation_step(self, batch, batch_idx):
        self.val_seen.extend(batch["id"].tolist())
        loss = torch.nn.functional.cross_entropy(self.layer(batch["x"]), batch["y"])
        self.log("val_loss", loss, batch_size=len(batch["id"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, **{"max_epochs": 1, **kwargs})


def datamodule(uri, s3, **kwargs) -> LanceDataModule:
    kwargs = {"splits": {"train": 0.75, "val": 0.25}, "batch_size": 16, "seed": 3, **kwargs}
    return LanceDataModule(uri, "toy", columns=["id", "x", "y"], storage_options=s3.options(), **kwargs)


def flat(batches) -> list[int]:
    return sorted(i for batch in batches for i in batch)


# -- train, validate, workers, resume ------------------------------------------------------


def test_fit_and_validate_with_workers_that_reopen_the_s3_table(s3, s3_table, tmp_path):
    uri, _ = s3_table(120)
    dm = datamodule(uri, s3, num_workers=2, staging="off")  # no stage: the workers read the server
    model = Recorder()
    before = len(s3.log.lines)
    trainer(tmp_path, num_sanity_val_steps=0).fit(model, datamodule=dm)
    train_ids, val_ids = dm.splits["train"].row_ids, dm.splits["val"].row_ids
    assert flat(model.seen) == sorted(train_ids.tolist())  # row address == id: one fragment
    assert sorted(model.val_seen) == sorted(val_ids.tolist())
    assert s3.log.data_reads(uri.split("/")[2], before) > 0  # the workers read from the server
    metrics = trainer(tmp_path).validate(model, datamodule=dm)
    assert np.isfinite(metrics[0]["val_loss"])


@pytest.mark.parametrize("staging", ["off", "auto"])
def test_resume_mid_epoch_from_s3_reads_what_an_uninterrupted_run_reads(s3, s3_table, tmp_path, staging):
    uri, _ = s3_table(100)
    extra = {"splits": {"train": 1.0}, "batch_size": 8, "staging": staging}
    run = dict(max_epochs=2, limit_val_batches=0)
    reference = Recorder()
    trainer(tmp_path, **run).fit(reference, datamodule=datamodule(uri, s3, **extra))
    ckpt = tmp_path / "mid.ckpt"
    first = Recorder()
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(5, ckpt)], **run).fit(first, datamodule=datamodule(uri, s3, **extra))
    second = Recorder()
    trainer(tmp_path, **run).fit(second, datamodule=datamodule(uri, s3, **extra), ckpt_path=ckpt)
    assert first.seen + second.seen == reference.seen
    assert SECRET.encode() not in ckpt.read_bytes() and ACCESS_KEY.encode() not in ckpt.read_bytes()


# -- stages ----------------------------------------------------------------------------------


class CountDataReads(pl.Callback):
    def __init__(self, s3, bucket) -> None:
        self.s3, self.bucket, self.marks = s3, bucket, []

    def on_train_epoch_start(self, trainer, pl_module):
        self.marks.append(len(self.s3.log.lines))

    def on_train_end(self, trainer, pl_module):
        self.marks.append(len(self.s3.log.lines))


def stages(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_a_stage_is_filled_once_then_epochs_read_only_the_local_copy(s3, s3_table, tmp_path):
    uri, _ = s3_table(120)
    bucket = uri.split("/")[2]
    root = tmp_path / "stages"
    dm = datamodule(uri, s3, cache=str(root))
    before = len(s3.log.lines)
    dm.setup("fit")
    assert s3.log.data_reads(bucket, before) > 0  # the fill read the server
    entries = stages(root)
    assert len(entries) == 2 and all(e.startswith("toy-v1-") for e in entries)  # train and val
    assert all(isinstance(dm.datasets[s], StagedBatchDataset) for s in ("train", "val"))
    counter = CountDataReads(s3, bucket)
    model = Recorder()
    trainer(tmp_path, max_epochs=2, callbacks=[counter]).fit(model, datamodule=dm)
    assert s3.log.data_reads(bucket, counter.marks[0]) == 0  # epochs 1 and 2 read only the stages
    assert flat(model.seen[: len(model.seen) // 2]) == sorted(dm.splits["train"].row_ids.tolist())
    val_ids = dm.splits["val"].row_ids.tolist()
    assert sorted(model.val_seen) == sorted(val_ids * (len(model.val_seen) // len(val_ids)))  # sanity + 2 epochs
    # a second run (another rank, a restart) finds the stages and copies nothing
    path = dm.datasets["train"].staged.path
    filled = json.loads((path / "manifest.json").read_text())["fill_id"]
    again = datamodule(uri, s3, cache=str(root))
    before = len(s3.log.lines)
    again.setup("fit")
    split = again.splits["train"]
    assert ensure_stage(split.source, None, split.row_ids, ["id", "x", "y"], root=root, split_name="train") == path
    assert s3.log.data_reads(bucket, before) == 0
    assert json.loads((path / "manifest.json").read_text())["fill_id"] == filled
    assert again.datasets["train"].staged.path == path and stages(root) == entries


def _fill(args) -> tuple[str, int]:
    """Stage rows of the S3 table in this (spawned) process: its path and how many fills it did."""
    uri, options, row_ids, root = args
    fills: list[str] = []

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("staged "):
                fills.append(record.getMessage())

    log = logging.getLogger("lance_lightning.stage")
    log.setLevel(logging.INFO)
    log.addHandler(Count())
    unstamped = TableSource(uri, "toy", 1, options)
    source = unstamped.stamped(unstamped.open())
    path = ensure_stage(source, None, np.asarray(row_ids, np.uint64), ["id", "x"], root=root, split_name="train")
    return str(path), len(fills)


@pytest.mark.long
def test_concurrent_ranks_on_a_node_fill_the_stage_once(s3, s3_table, tmp_path):
    uri, _ = s3_table(3000)
    rows = np.arange(0, 3000, 2, dtype=np.uint64)
    args = (uri, s3.options(), rows.tolist(), str(tmp_path / "stages"))
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(3, mp_context=context) as pool:
        results = list(pool.map(_fill, [args] * 3))
    assert sorted(fills for _, fills in results) == [0, 0, 1]
    assert len({path for path, _ in results}) == 1
    assert len(stages(tmp_path / "stages")) == 1


def test_a_new_table_version_gets_a_new_stage(s3, s3_table, tmp_path):
    uri, table = s3_table(60)
    root = tmp_path / "stages"
    old = datamodule(uri, s3, splits=None, cache=str(root))
    old.setup("fit")
    table.add(toy_table(90).slice(60))  # version 2
    new = datamodule(uri, s3, splits=None, cache=str(root))
    new.setup("fit")
    assert (old.table_version, new.table_version) == (1, 2)
    assert old.datasets["train"].staged.path != new.datasets["train"].staged.path
    rows = new.splits["all"].row_ids
    assert len(rows) == 90 and rows.max() >= 2**32  # the appended rows are a second fragment
    # a stage holds the split in split order: it is read by position
    assert new.datasets["train"][np.arange(90)]["id"].tolist() == list(range(90))
    # pinning the old version reads the old stage again
    pinned = datamodule(uri, s3, splits=None, cache=str(root), version=1)
    pinned.setup("fit")
    assert pinned.datasets["train"].staged.path == old.datasets["train"].staged.path
    assert pinned.datasets["train"][np.arange(60)]["id"].tolist() == list(range(60))
    assert len(stages(root)) == 2


def test_a_split_over_the_staging_budget_is_read_from_the_server_or_refused(s3, s3_table, tmp_path):
    uri, _ = s3_table(120)
    bucket = uri.split("/")[2]
    root = tmp_path / "stages"
    refused = datamodule(uri, s3, cache=str(root), cache_max_bytes=1000)  # cache= asks for stages
    with pytest.raises(StageBudgetError, match=r"split 'train'.*cache_max_bytes=1,000") as err:
        refused.setup("fit")
    assert "toy" in str(err.value) and SECRET not in str(err.value) and ACCESS_KEY not in str(err.value)
    assert stages(root) == []
    fallback = datamodule(uri, s3, cache_max_bytes=1000)  # the default: read from the server instead
    with pytest.warns(UserWarning, match=r"split 'train' .*read from the table.*cache_max_bytes=1,000") as caught:
        fallback.setup("fit")
    assert not [w for w in caught if SECRET in str(w.message) or ACCESS_KEY in str(w.message)]
    assert isinstance(fallback.datasets["train"], LanceBatchDataset)
    counter = CountDataReads(s3, bucket)
    model = Recorder()
    trainer(tmp_path, callbacks=[counter]).fit(model, datamodule=fallback)
    assert s3.log.data_reads(bucket, counter.marks[0]) > 0
    assert flat(model.seen) == sorted(fallback.splits["train"].row_ids.tolist())


# -- failures ------------------------------------------------------------------------------


def _refused(uri, options, match) -> str:
    with pytest.raises(LanceSourceError, match=match) as err:
        LanceDataModule(uri, "toy", storage_options=options).setup("fit")
    message = str(err.value)
    assert uri in message and SECRET not in message and ACCESS_KEY not in message
    return message


def test_missing_bucket_and_missing_table_are_named(s3, s3_table):
    uri, _ = s3_table(20)
    _refused("s3://no-such-bucket/db", s3.options(client_max_retries="0"), r"bucket 'no-such-bucket' does not exist")
    with pytest.raises(LanceSourceError, match=r"no table 'nope' .*tables there: 'toy'"):
        LanceDataModule(uri, "nope", storage_options=s3.options()).setup("fit")


def test_refused_credentials_are_reported_without_the_secret(s3, s3_table, monkeypatch):
    uri, _ = s3_table(20)
    s3.auth(True)
    try:
        message = _refused(uri, s3.options(client_max_retries="0"), r"refused the credentials \(InvalidAccessKeyId\)")
        assert "aws_secret_access_key" in message  # names where the credentials came from
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        env_options = {"aws_endpoint": s3.endpoint, "aws_region": "us-east-1", "allow_http": "true"}
        message = _refused(uri, env_options, "refused the credentials")
        assert "AWS_SECRET_ACCESS_KEY" in message
    finally:
        s3.auth(False)


def test_unreachable_endpoint_is_reported_with_what_was_tried():
    options = {
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET,
        "aws_endpoint": "http://127.0.0.1:9",  # nothing listens on the discard port
        "aws_region": "us-east-1",
        "allow_http": "true",
        "client_max_retries": "0",
        "client_retry_timeout": "1",
    }
    message = _refused("s3://bucket/db", options, r"endpoint http://127.0.0.1:9 could not be reached")
    assert "client_max_retries" in message


# -- secrets -------------------------------------------------------------------------------


def test_secrets_never_reach_logs_hparams_checkpoints_or_reprs(s3, s3_table, tmp_path, caplog, capfd, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger

    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET + "-token")
    uri, _ = s3_table(60)
    caplog.set_level(logging.DEBUG)
    dm = datamodule(uri, s3, cache=str(tmp_path / "cache"))
    run = trainer(
        tmp_path, max_epochs=1, logger=CSVLogger(tmp_path / "logs"), enable_checkpointing=True, enable_progress_bar=True
    )
    run.fit(Recorder(), datamodule=dm)
    captured = capfd.readouterr()
    texts = {
        "logs": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
        "hparams": repr(dict(dm.hparams)),
        "state_dict": repr(dm.state_dict()),
        "repr": repr(dm) + repr(dm.source) + repr(dm.datasets["train"]) + repr(dm.source.describe()),
    }
    for path in [*Path(tmp_path).rglob("*.ckpt"), *Path(tmp_path).rglob("*.yaml"), *Path(tmp_path).rglob("*.json")]:
        texts[str(path)] = path.read_bytes().decode("latin-1")
    leaks = [where for where, text in texts.items() if SECRET in text or ACCESS_KEY in text]
    assert not leaks
    assert any(Path(tmp_path).rglob("*.ckpt")) and any(Path(tmp_path / "cache").rglob("manifest.json"))


def test_hydra_sets_storage_options_key_by_key(s3, s3_table):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import lance_lightning.app.config  # noqa: F401  (registers the schemas)

    uri, _ = s3_table(20)
    conf = Path(__file__).resolve().parents[2] / "conf"
    overrides = [
        "data=lance",
        f"data.uri={uri}",
        "data.table=toy",
        f"data.storage_options.aws_endpoint={s3.endpoint}",
        "data.storage_options.aws_region=us-east-1",
        "data.storage_options.allow_http=true",
        f"data.storage_options.aws_secret_access_key={SECRET}",
        f"data.storage_options.aws_access_key_id={ACCESS_KEY}",
        "data.connect_kwargs.read_consistency_interval=0",
        "data.num_workers=0",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(conf), job_name="s3"):
        cfg = compose("config", overrides=overrides)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert dm.source.storage_options["aws_endpoint"] == s3.endpoint
    hash(dm.source)  # a dict of options must not make the source unhashable (report.py keys by it)
    assert dm.source.connect_kwargs == {"read_consistency_interval": 0}  # seconds, as a number
    assert len(dm.splits["train"]) > 0
    assert SECRET not in repr(dict(dm.hparams)) and SECRET not in repr(dm.state_dict())


# -- DDP -----------------------------------------------------------------------------------


@pytest.mark.distributed
def test_ddp_ranks_reopen_the_s3_table_and_share_one_stage_per_split(s3, tmp_path):
    """2-process DDP (tests/distributed's launcher) reading the S3 table through one stage a split on the node."""
    import lancedb

    from tests.distributed._ddp import DATA, TABLE, Expected, check_stage, launch_lightning, load_records, write_spec
    from tests.distributed._ddp import make_table as make_local_table

    data = lancedb.connect(make_local_table(tmp_path)).open_table(TABLE).to_arrow()
    uri = f"s3://{s3.bucket()}/db"
    lancedb.connect(uri, storage_options=s3.options()).create_table(TABLE, data)
    cache = tmp_path / "cache"
    remote = {"storage_options": s3.options(), "cache": str(cache)}
    run = {"tag": "s3-cache", "action": "fit", "devices": 2, "epochs": 2, "data": remote}
    spec = write_spec(tmp_path, uri, [run], "s3")
    launch_lightning(spec)
    records = load_records(spec, "s3-cache", 2)
    expected = Expected(uri, {**DATA, "storage_options": s3.options()})
    check_stage(records, expected, "train", epochs=2)
    check_stage(records, expected, "val", epochs=2)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2  # train, val: once per node
    log = (tmp_path / "spec-s3-0.log").read_text()
    assert SECRET not in log and ACCESS_KEY not in log
