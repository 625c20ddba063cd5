"""``lance-lightning-inspect``: the table, splits, label balance and per-rank plan, before training."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lance_lightning.app.inspect_splits import inspect, render
from lance_lightning.app.report import resolve_world_size

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF), job_name="test"):
        return compose("config", overrides=overrides)


@pytest.fixture
def tiny(digits_db):
    uri, table = digits_db(200)
    return [f"data.uri={uri}", f"data.table={table}", "data.batch_size=16"]


def test_report_on_a_tiny_table_for_two_ranks(tiny):
    report = inspect(compose_cfg([*tiny, "trainer=ddp_sim"]))
    assert report["source"]["version"] == 1
    assert report["tensors"] == {"image": "Tensor[float32, (rows, 8, 8)]", "label": "Tensor[int64, (rows,)]"}
    assert report["splits"] == {"train": 160, "val": 20, "test": 20}
    # label == id % 10: every label appears 20 times over the whole table
    for split, counts in report["label_balance"].items():
        assert sum(counts.values()) == report["splits"][split]
    totals = {}
    for counts in report["label_balance"].values():
        for label, n in counts.items():
            totals[label] = totals.get(label, 0) + n
    assert totals == {str(i): 20 for i in range(10)}

    plan = report["shard_plan"]
    assert report["world_size"] == 2
    assert plan["train"]["batches_per_rank"] == [5, 5]  # 160 rows / (2 ranks x 16)
    assert plan["train"]["rows_per_rank"] == [80, 80]
    assert plan["train"]["padded_rows"] == plan["train"]["dropped_rows"] == 0
    assert plan["val"]["rows_per_rank"] == [10, 10] and plan["val"]["shuffle"] == "none"

    text = render(report)
    for expected in (
        "version 1",
        "image  extension<arrow.fixed_shape_tensor",
        "-> Tensor[float32, (rows, 8, 8)]",
        "id     int64  (not read)",
        "train             160 rows (80.0%)",
        "label: 0: ",
        "per rank, world size 2:",
        "ranks 0-1: 5 batches, 80 rows",
    ):
        assert expected in text, expected


def test_padding_and_dropping_are_reported(tiny):
    padded = inspect(
        compose_cfg(
            [
                *tiny,
                "inspect.world_size=3",
                "data/splits=random_counts",
                "data.splits.train=161",
                "data.splits.val=20",
                "data.splits.test=19",
            ]
        )
    )["shard_plan"]["train"]
    assert padded["rows"] == 161 and padded["world_size"] == 3
    assert padded["padded_rows"] == 1  # 161 rows over 3 ranks: one row read twice
    assert len(set(padded["batches_per_rank"])) == 1 and sum(padded["rows_per_rank"]) == 162

    dropped = inspect(compose_cfg([*tiny, "inspect.world_size=3", "data.drop_last=true"]))
    assert dropped["shard_plan"]["train"]["dropped_rows"] == 160 % (3 * 16)
    assert "row(s) dropped (drop_last)" in render(dropped)


def test_no_label_column(tiny):
    report = inspect(compose_cfg([*tiny, "inspect.label_column=null"]))
    assert report["label_balance"] is None
    missing = inspect(compose_cfg([*tiny, "inspect.label_column=nope"]))
    assert missing["label_balance"] is None and "label:" not in render(missing)


@pytest.mark.parametrize(
    "trainer,world",
    [
        ({"devices": 2, "num_nodes": 3}, 6),
        ({"devices": "4", "num_nodes": 1}, 4),
        ({"devices": [0, 1], "num_nodes": 2}, 4),
        ({"devices": "0,1,2", "num_nodes": 1}, 3),
        ({"devices": "auto", "accelerator": "cpu"}, 1),
    ],
)
def test_world_size_from_the_trainer_config(trainer, world):
    assert resolve_world_size(trainer) == world


def test_console_entry_with_overrides(tiny, run_cli, tmp_path):
    result = run_cli(
        ["-m", "lance_lightning.app.inspect_splits", *tiny, "trainer.accelerator=cpu", "trainer.devices=2"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "per rank, world size 2:" in out and "ranks 0-1: 5 batches, 80 rows" in out
    assert "Tensor[float32, (rows, 8, 8)]" in out
    assert not (tmp_path / "outputs").exists()  # a look, not a run: no Hydra output directory


@pytest.mark.parametrize("world", ["-2", "-1", "0"])
def test_a_world_size_that_is_not_a_count_of_ranks_is_refused(tiny, world):
    with pytest.raises(ValueError, match=rf"inspect.world_size must be a whole number of ranks >= 1, got {world}"):
        inspect(compose_cfg([*tiny, f"inspect.world_size={world}"]))


def test_inspect_fills_no_stage(tiny, tmp_path):
    """The report is a look: even with ``cache=`` set (every split staged by a run), nothing is
    written there, and the plan is the one the staged run would use."""
    cache = tmp_path / "stages"
    report = inspect(compose_cfg([*tiny, f"+data.cache={cache}", "data.num_workers=2"]))
    assert report["splits"] == {"train": 160, "val": 20, "test": 20}
    assert report["shard_plan"]["train"]["batches_per_rank"] == [10]
    assert not cache.exists() or not any(cache.iterdir()), sorted(cache.rglob("*"))


def test_a_weighted_shuffle_shows_the_samples_an_epoch(tiny):
    overrides = [*tiny, "trainer=ddp_sim", "data.balance_column=label", "data.samples_per_epoch=50"]
    report = inspect(compose_cfg(overrides))
    plan = report["shard_plan"]["train"]
    assert (plan["rows"], plan["split_rows"], plan["shuffle"]) == (50, 160, "weighted")
    assert plan["batches_per_rank"] == [2, 2] and plan["rows_per_rank"] == [25, 25]  # 50 over 2 ranks of 16
    text = render(report)
    assert "train    split 'train': 50 samples an epoch (of 160 rows), batch 16, shuffle weighted" in text


def test_a_mixture_shows_each_source_s_rows_share_and_passes(tiny):
    overrides = [*tiny, "trainer=ddp_sim", "data/mix=digits_threes", "data.samples_per_epoch=100"]
    report = inspect(compose_cfg(overrides))
    plan = report["shard_plan"]["train"]
    assert plan["rows"] == 100 and plan["batches_per_rank"] == [4, 4]
    (everything, threes) = plan["sources"]
    assert (everything["name"], everything["per_epoch"], everything["rows"]) == ("all", 75, 160)
    assert threes["name"] == "threes" and threes["per_epoch"] == 25 and threes["share"] == 0.25
    text = render(report)
    assert "source 'all': 75 rows an epoch (75.0%) of its 160 (0.47 passes an epoch)" in text
    assert f"source 'threes': 25 rows an epoch (25.0%) of its {threes['rows']}" in text
