"""Every setting does, when changed between a checkpoint and its resume, what it declares
(``resume=`` of its field in lance_lightning/options.py): ``exact`` reads the same batches,
``re-cut`` continues the epoch's order at the checkpoint's row in the new batches, ``refused``
raises an error naming the setting, the checkpoint's value and the new one.

The walk is cheap: a datamodule on a small real table, its train position put mid-epoch, its
``state_dict`` saved through ``torch.save``, loaded into a datamodule with the changed setting,
and the rest of the epoch read through its real train loader. Real Trainer resumes with changed
settings: tests/integration/test_resume.py and test_resume_matrix.py.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
from datetime import timedelta

import pytest
import torch

from lance_lightning import LanceDataModule
from lance_lightning.options import EXACT, RECUT, REFUSED, DataOptions, OnResume, resume_rules, setting
from lance_lightning.state import ResumeRefusedError
from tests.conftest import toy_table

pytestmark = pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true but no accelerator")

ROWS = 100  # the train split: 80 rows; the checkpoint stands after 24 of them (3 batches of 8)
BASE = {"splits": {"train": 0.8, "val": 0.2}, "batch_size": 8, "seed": 3, "columns": ["id", "x", "y"]}
AT_ROW = 24
BLOCK = {"shuffle": "block", "block_size": 8, "window_blocks": 2}
HASH = {"kind": "hash", "columns": ["id"], "weights": {"train": 4, "val": 1}}

# setting -> (the checkpoint's settings, the resumed run's settings[, settings of both]); "{tmp}"
# in a value is the test's temporary directory. A new setting needs a change here.
CHANGES = {
    "uri": ({}, {"uri": "{tmp}/moved"}),  # the database copied elsewhere: the same table
    "table": ({}, {"table": "copy"}),
    "columns": ({}, {"columns": ["id", "x"]}),
    "splits": ({}, {"splits": {"train": 0.7, "val": 0.3}}),
    "filter": ({}, {"filter": "id >= 0"}),
    "batch_size": ({}, {"batch_size": 12}),
    "seed": ({}, {"seed": 4}),
    "num_workers": ({}, {"num_workers": 2}),
    "shuffle": ({}, {"shuffle": "block"}),
    "drop_last": ({}, {"drop_last": True, "batch_size": 12}),  # 56 rows left: 4 batches of 12, 8 dropped
    "eval_batch_size": ({}, {"eval_batch_size": 5}),
    "stage_splits": ({}, {"stage_splits": {"train": "val"}}),
    "transform": ({}, {"transform": "tests.helpers.double_x"}),
    "batch_keys": ({}, {"batch_keys": ["id", "x"]}),  # tuples (id, x): ids() reads the first
    "nulls": ({}, {"nulls": "mask"}),
    "version": ({"version": 1}, {"version": 2}),
    "storage_options": ({}, {"storage_options": {"timeout": "30s"}}),
    "connect_kwargs": ({}, {"connect_kwargs": {"read_consistency_interval": timedelta(seconds=0)}}),
    "multiprocessing_context": ({}, {"multiprocessing_context": "spawn"}),
    "persistent_workers": ({}, {"persistent_workers": False}),
    "pin_memory": ({}, {"pin_memory": True}),
    "prefetch_factor": ({}, {"prefetch_factor": 4}),
    "read_ahead": ({}, {"read_ahead": 0}),
    "read_group_rows": ({}, {"read_group_rows": 16}),
    "block_size": ({}, {"block_size": 16}, BLOCK),
    "window_blocks": ({}, {"window_blocks": 3}, BLOCK),
    "resume": ({"resume": "fresh"}, {"resume": "exact"}),  # only the resumed run's value counts
    "table_updates": ({}, {"table_updates": "next_epoch"}, {"splits": HASH}),
    "in_memory": ({}, {"in_memory": True}),
    "memory_budget_bytes": ({}, {"memory_budget_bytes": 10**9}),
    "cache": ({}, {"cache": "{tmp}/stages"}),
    "cache_max_bytes": ({}, {"cache_max_bytes": 10**9}),
    "staging": ({}, {"staging": "off"}),
    # the weighted shuffle: id and y are weights >= 0 (y is 0 for a third of the rows: never drawn)
    "weight_column": ({}, {"weight_column": "y"}, {"weight_column": "id"}),
    "balance_column": ({}, {"balance_column": "id"}, {"balance_column": "y"}),
    "samples_per_epoch": ({"samples_per_epoch": 60}, {"samples_per_epoch": 40}, {"weight_column": "id"}),
    "weight_replacement": ({}, {"weight_replacement": True}, {"weight_column": "id"}),
    # a mixture: the train split's even ids and (a second source) its rows of id < 40
    "mix": (
        {},
        {"mix": {"even": {"proportion": 2, "filter": "id % 2 = 0"}, "low": {"proportion": 1, "filter": "id < 40"}}},
    ),
    "mix_batching": ({}, {"mix_batching": "stratified"}, {"mix": {"a": {"proportion": 1}, "b": {"proportion": 1}}}),
    "neighbors": ({"neighbors": {"column": "x", "k": 2}}, {"neighbors": {"column": "x", "k": 3}}),
    "eval_by_source": ({}, {"eval_by_source": True}, {"mix": {"a": {"proportion": 1}, "b": {"proportion": 1}}}),
}
MIX = {"mix": {"even": {"proportion": 2, "filter": "id % 2 = 0"}, "low": {"proportion": 1, "filter": "id < 40"}}}
# more changes a setting's declaration covers: (setting, the checkpoint's, the resumed run's, both, outcome)
MORE = {
    "version-follows-the-checkpoint": ({"version": 1}, {}, {}, EXACT),
    "version-given-as-the-checkpoint's": ({}, {"version": 2}, {}, EXACT),
    "block_size-of-a-uniform-shuffle": ({}, {"block_size": 16}, {}, EXACT),
    "stage_splits-of-another-stage": ({}, {"stage_splits": {"val": "train", "train": "train"}}, {}, EXACT),
    "shuffle-block-to-uniform": ({}, {"shuffle": "uniform"}, BLOCK, REFUSED),
    "shuffle-uniform-to-none": ({}, {"shuffle": "none"}, {}, REFUSED),
    # seed=None resolves to seed_everything's seed (none here: 0); the checkpoint records the resolved one
    "seed-None-resumed-as-None": ({"seed": None}, {"seed": None}, {}, EXACT),
    "seed-None-resumed-as-its-resolved-0": ({"seed": None}, {"seed": 0}, {}, EXACT),
    "seed-None-resumed-as-another": ({"seed": None}, {"seed": 4}, {}, REFUSED),
    "batch_size-of-a-block-shuffle": ({}, {"batch_size": 4}, BLOCK, RECUT),
    "batch_size-of-a-weighted-shuffle": ({}, {"batch_size": 4}, {"weight_column": "y"}, RECUT),
    "staging-of-a-weighted-shuffle": ({}, {"staging": "off"}, {"weight_column": "y", "samples_per_epoch": 30}, EXACT),
    "balance_column-added-to-weights": ({}, {"balance_column": "y"}, {"weight_column": "id"}, REFUSED),
    "mix-a-proportion-changed": (
        MIX,
        {"mix": {"even": {"proportion": 3, "filter": "id % 2 = 0"}, "low": {"proportion": 1, "filter": "id < 40"}}},
        {},
        REFUSED,
    ),
    "mix-a-filter-changed": (
        MIX,
        {"mix": {"even": {"proportion": 2, "filter": "id % 2 = 1"}, "low": {"proportion": 1, "filter": "id < 40"}}},
        {},
        REFUSED,
    ),
    "mix-samples_per_epoch": ({}, {"samples_per_epoch": 50}, MIX, REFUSED),
    "mix-a-source-s-val_split-changed": (  # where its evaluation rows are: no training row
        {},
        {"mix": {**MIX["mix"], "low": {"proportion": 1, "filter": "id < 40", "val_split": "train"}}},
        {**MIX, "eval_by_source": True},
        EXACT,
    ),
    "batch_size-of-a-mixture": ({}, {"batch_size": 4}, MIX, RECUT),
    "staging-of-a-mixture": ({}, {"staging": "off"}, MIX, EXACT),
    "stratified-mixture-at-another-batch_size": ({}, {"batch_size": 4}, {**MIX, "mix_batching": "stratified"}, RECUT),
    "worker_settings-with-workers": (
        {},
        {"prefetch_factor": 4, "persistent_workers": False},
        {"num_workers": 2},
        EXACT,
    ),
    "num_workers-of-a-table-reader": ({"staging": "off"}, {"staging": "off", "num_workers": 2}, {}, EXACT),
    "multiprocessing_context-of-a-table-reader": (
        {},
        {"multiprocessing_context": "spawn"},
        {"staging": "off", "num_workers": 2},
        EXACT,
    ),
}
SLOW = {"num_workers-of-a-table-reader", "multiprocessing_context-of-a-table-reader"}  # start from a fork server


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """Table ``toy`` (version 1, then rows appended: version 2, the latest) and ``copy``, the same
    rows under another name; the train split reads version 2 unless told otherwise."""
    import lancedb

    uri = str(tmp_path_factory.mktemp("resume_semantics") / "db")
    db = lancedb.connect(uri)
    table = db.create_table("toy", toy_table(ROWS // 2).select(["id", "x", "y"]))
    table.add(toy_table(ROWS).slice(ROWS // 2).select(["id", "x", "y"]))
    db.create_table("copy", table.to_arrow())
    return uri


def settings(changes: dict, tmp_path) -> dict:
    return {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in changes.items()}


def datamodule(uri: str, tmp_path, changes: dict) -> LanceDataModule:
    kwargs = {"uri": uri, "table": "toy", **BASE, **settings(changes, tmp_path)}
    dm = LanceDataModule(**kwargs)
    dm.setup("fit")
    return dm


def rest_of_epoch(dm: LanceDataModule) -> list[list[int]]:
    """The ids of every batch the train loader yields from the position on."""
    return [ids(batch) for batch in dm.train_dataloader()]


def ids(batch) -> list[int]:
    """A batch's ids: its "id" key, or the first of its ``batch_keys`` tuple (every cell puts "id" first)."""
    return (batch[0] if isinstance(batch, tuple) else batch["id"]).tolist()


def checkpoint(dm: LanceDataModule) -> dict:
    """The datamodule's state as a checkpoint holds it: mid-way through epoch 1, through torch.save."""
    dm.samplers["train"].resume_at(epoch=1, consumed_rows=AT_ROW)
    buffer = io.BytesIO()
    torch.save(dm.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def walk(uri: str, tmp_path, then: dict, now: dict, both: dict, expected: str) -> None:
    if "uri" in now:
        shutil.copytree(uri, tmp_path / "moved")  # the database moved elsewhere: the same table
    before = datamodule(uri, tmp_path, {**both, **then})
    whole = rest_of_epoch_from(before, 0)
    state = checkpoint(before)
    continued = rest_of_epoch(before)  # what the checkpoint's run reads after it
    assert [i for batch in continued for i in batch] == whole[AT_ROW:]
    after = datamodule(uri, tmp_path, {**both, **now})
    if expected == REFUSED:
        (name,) = {k for k in now if then.get(k) != now[k]} - {"batch_size"}
        # mix is named source by source, key by key ("mix: source 'even' filter: the checkpoint's ..., now ...")
        was = r"(the checkpoint's .*|unused by the checkpoint's run)"
        said = rf"{name}: (source '\w+' (added|removed|\w+: ))?{was}, now .*resume='fresh'"
        with pytest.raises(ResumeRefusedError, match=said) as err:
            after.load_state_dict(state)
        recorded_otherwise = ("table", "splits", "stage_splits", "neighbors", "mix")  # a name or an identity
        assert repr(settings(now, tmp_path)[name]) in str(err.value) or name in recorded_otherwise
        fresh = datamodule(uri, tmp_path, {**both, **now, "resume": "fresh"})
        with pytest.warns(UserWarning, match="resume='fresh'"):
            fresh.load_state_dict(state)  # the way out: the data afresh, with the new value
        return
    after.load_state_dict(state)
    got = rest_of_epoch(after)
    if expected == EXACT:
        assert got == continued
        return
    # re-cut: the epoch's order goes on at the checkpoint's row, cut into the new batches; no row is
    # read twice and none is skipped, but for the rows the new drop_last leaves out at the end
    rows = [i for batch in got for i in batch]
    batch_size = after.options.batch_size
    assert {len(b) for b in got[:-1]} <= {batch_size}
    if after.options.mix is None:
        assert rows == whole[AT_ROW : AT_ROW + len(rows)]
    else:  # the rest of the epoch, each batch grouped by source within it (so in another order when re-cut)
        assert sorted(rows) == sorted(whole[AT_ROW:])
    left_out = len(whole) - AT_ROW - len(rows)
    assert left_out == 0 or (after.options.drop_last and 0 < left_out < batch_size)


def rest_of_epoch_from(dm: LanceDataModule, row: int) -> list[int]:
    """The ids of epoch 1's order from ``row`` on (the position is put back where it was)."""
    sampler = dm.samplers["train"]
    sampler.resume_at(epoch=1, consumed_rows=row)
    ids = [i for batch in rest_of_epoch(dm) for i in batch]
    sampler.resume_at(epoch=0, consumed_rows=0)
    return ids


def cell(name: str):
    marks = [pytest.mark.long] if name in SLOW else []
    return pytest.param(name, marks=marks, id=name)


def test_every_setting_is_walked():
    assert set(CHANGES) == set(resume_rules()), "a setting without a change in CHANGES: add one"


@pytest.mark.parametrize("name", [cell(n) for n in CHANGES])
def test_a_changed_setting_resumes_as_it_declares(database, tmp_path, name):
    then, now, *both = CHANGES[name]
    walk(database, tmp_path, then, now, both[0] if both else {}, resume_rules()[name].kind)


@pytest.mark.parametrize("name", [cell(n) for n in MORE])
def test_more_changes_resume_as_declared(database, tmp_path, name):
    walk(database, tmp_path, *MORE[name])


def test_the_declarations():
    rules = resume_rules()
    assert {n for n, r in rules.items() if r.kind == RECUT} == {"batch_size", "drop_last"}
    assert {n for n, r in rules.items() if r.kind == REFUSED} == {
        "table",
        "splits",
        "filter",
        "seed",
        "shuffle",
        "stage_splits",
        "version",
        "block_size",
        "window_blocks",
        "weight_column",
        "balance_column",
        "samples_per_epoch",
        "weight_replacement",
        "mix",
        "mix_batching",
        "neighbors",
    }
    assert DataOptions(shuffle="block", block_size=16).identity()["block_size"] == 16
    # weight_column asks for the weighted shuffle: both recorded (a uniform run records None, False)
    weighted = DataOptions(weight_column="w", samples_per_epoch=5).identity()
    assert (weighted["shuffle"], weighted["weight_column"], weighted["samples_per_epoch"]) == ("weighted", "w", 5)
    assert DataOptions().identity()["weight_column"] is None and DataOptions().identity()["weight_replacement"] is False
    assert DataOptions(block_size=16).identity()["block_size"] is None  # uniform: plays no part


def test_a_setting_without_a_declaration_is_refused_at_definition():
    from lance_lightning.options import check_resume_declarations

    @dataclasses.dataclass(frozen=True)
    class Record:
        declared: int = setting(1, resume=EXACT, why="how rows are read")
        undeclared: int = 2

    with pytest.raises(TypeError, match=r"\['undeclared'\] do not declare .*resume="):
        check_resume_declarations(Record)
    with pytest.raises(TypeError, match="resume= must be one of"):
        OnResume("sometimes", "why")
    with pytest.raises(TypeError, match="recorded= and follows_checkpoint= are for resume='refused'"):
        OnResume(EXACT, "why", follows_checkpoint=True)
    with pytest.raises(TypeError, match="why="):
        OnResume(EXACT, " ")


def test_an_older_checkpoint_without_the_new_settings_resumes_and_says_what_it_cannot_check(database, tmp_path):
    before = datamodule(database, tmp_path, {})
    state = checkpoint(before)
    continued = rest_of_epoch(before)
    state["identity"] = {k: state["identity"][k] for k in ("table", "splits", "filter", "seed")}  # as written before
    after = datamodule(database, tmp_path, {})
    with pytest.warns(UserWarning, match=r"does not record shuffle, stage_splits, block_size, window_blocks"):
        after.load_state_dict(state)
    assert rest_of_epoch(after) == continued
