"""Neighbours in the batch (issue 32): on real tables, through real Trainers and workers.

The reference is a brute-force kNN computed here with NumPy (a full distance matrix), not the
package's exact search.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pytest
import torch

from lance_lightning import LanceDataModule
from lance_lightning.options import SettingError
from lance_lightning.stage.store import in_use
from tests.conftest import toy_table
from tests.helpers import NeighborRecorder, Preempted, SaveThenStop, quiet_trainer

ROWS, DIM = 120, 8


def brute_force(x: np.ndarray, k: int, *, labels=None, eligible=None) -> list[tuple[int, ...]]:
    """Each row's k nearest rows by squared L2 (ids = positions), -1 padded: a full matrix."""
    d = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    if labels is not None:
        d[labels[:, None] == labels[None, :]] = np.inf
    if eligible is not None:
        d[:, ~eligible] = np.inf
    out = []
    for row in d:
        order = np.argsort(row, kind="stable")[:k]
        out.append(tuple(int(i) if np.isfinite(row[i]) else -1 for i in order))
    return out


def table_arrays(table) -> tuple[np.ndarray, np.ndarray]:
    data = table.to_arrow()
    x = np.asarray(data.column("x").combine_chunks().flatten()).reshape(-1, DIM)
    return x, data.column("y").to_numpy()


def datamodule(uri: str, **kwargs) -> LanceDataModule:
    settings = {"splits": {"train": 1.0}, "batch_size": 16, "seed": 5, "columns": ["id", "x", "y"]}
    return LanceDataModule(uri, "toy", **{**settings, **kwargs})


def fit(tmp_path, dm: LanceDataModule, **kwargs) -> NeighborRecorder:
    model = NeighborRecorder()
    quiet_trainer(tmp_path, limit_val_batches=0, **{"max_epochs": 1, **kwargs}).fit(model, datamodule=dm)
    return model


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize(
    "order", [{}, {"shuffle": "block", "block_size": 16, "window_blocks": 2}], ids=["uniform", "block"]
)
def test_exact_neighbours_equal_brute_force_knn(make_table, tmp_path, num_workers, order):
    """Every row of the epoch comes with its brute-force kNN, never itself nor a row of its label,
    at 0 and 2 workers, batch by batch and read in groups (block)."""
    uri, table = make_table("toy", ROWS, dim=DIM)
    x, y = table_arrays(table)
    expected = brute_force(x, 4, labels=y)
    dm = datamodule(
        uri, num_workers=num_workers, staging="always", neighbors={"column": "x", "k": 4, "exclude_same": "y"}, **order
    )
    seen = fit(tmp_path, dm).seen
    assert sorted(i for i, _ in seen) == list(range(ROWS))
    for row, found in seen:
        assert found == expected[row]
        assert row not in found and all(y[n] != y[row] for n in found)


def test_neighbour_columns_and_the_transform(make_table):
    """``columns`` picks the neighbours' columns (here one not among the batch's); the transform sees them."""
    uri, table = make_table("toy", ROWS, dim=DIM)
    x, _ = table_arrays(table)
    dm = datamodule(
        uri,
        columns=["id", "y"],
        transform="tests.helpers.count_neighbors",
        neighbors={"column": "x", "k": 3, "columns": ["id", "x"]},
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    found = batch["neighbors"]
    assert set(found) == {"id", "x", "ids", "mask"} and "x" not in batch
    assert found["x"].shape == (16, 3, DIM) and found["ids"].shape == (16, 3)
    assert np.allclose(found["x"].numpy(), x[found["id"].numpy()])
    assert (found["ids"] == found["id"]).all()  # ids are split positions: here the whole table, in order
    assert (batch["n_valid"] == 3).all()
    dm.teardown()


def test_where_limits_the_neighbours_and_short_rows_are_masked(make_table, tmp_path):
    """Only rows matching ``where`` are neighbours; a row with fewer than k eligible gets them all,
    then padding (mask False, id -1), never fewer silently."""
    uri, table = make_table("toy", ROWS, dim=DIM)
    x, y = table_arrays(table)
    eligible = np.arange(ROWS) % 10 == 0  # 12 rows: labels 0,1,2,0,... (4 of each)
    expected = brute_force(x, 9, labels=y, eligible=eligible)
    dm = datamodule(uri, neighbors={"column": "x", "k": 9, "exclude_same": "y", "where": "id % 10 = 0"})
    seen = dict(fit(tmp_path, dm).seen)
    for row, found in seen.items():
        assert found == expected[row]
        real = [n for n in found if n >= 0]
        assert all(n % 10 == 0 and y[n] != y[row] for n in real)
        assert len(real) == 8  # 12 eligible, 4 of them share the row's label: 8 others, 1 padded
        assert found[-1] == -1


def test_lists_are_mined_once_and_reused(make_table, tmp_path, caplog):
    uri, _ = make_table("toy", ROWS, dim=DIM)
    settings = {"neighbors": {"column": "x", "k": 2}, "cache": str(tmp_path / "stages")}
    first = datamodule(uri, **settings)
    with caplog.at_level(logging.INFO, logger="lance_lightning.stage"):
        first.setup("fit")
    assert any("mined neighbours of" in r.getMessage() for r in caplog.records)
    path = first.neighbor_lists
    stamp = (path / "neighbors.npy").stat().st_mtime_ns
    caplog.clear()
    again = datamodule(uri, **settings)
    with caplog.at_level(logging.INFO, logger="lance_lightning.stage"):
        again.setup("fit")
    assert again.neighbor_lists == path and (path / "neighbors.npy").stat().st_mtime_ns == stamp
    assert any("reusing the neighbour lists" in r.getMessage() for r in caplog.records)
    assert not any("mined neighbours of" in r.getMessage() for r in caplog.records)
    other = datamodule(uri, neighbors={"column": "x", "k": 3}, cache=str(tmp_path / "stages"))
    other.setup("fit")
    assert other.neighbor_lists != path  # k is part of the key
    for dm in (first, again, other):
        dm.teardown()


@pytest.mark.parametrize("staging", ["always", "off"])
def test_same_neighbours_after_a_mid_epoch_resume(make_table, tmp_path, staging):
    """From a stage (groups of batches gathered into slots) and from the table (a batch at a time)."""
    uri, _ = make_table("toy", ROWS, dim=DIM)
    settings = {"num_workers": 2, "staging": staging, "neighbors": {"column": "x", "k": 3, "exclude_same": "y"}}
    reference = fit(tmp_path, datamodule(uri, **settings), max_epochs=2).seen
    ckpt = tmp_path / "mid.ckpt"
    first = NeighborRecorder()
    with pytest.raises(Preempted):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=2, callbacks=[SaveThenStop(11, ckpt)]).fit(
            first, datamodule=datamodule(uri, **settings)
        )
    second = NeighborRecorder()
    quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=2).fit(
        second, datamodule=datamodule(uri, **settings), ckpt_path=ckpt
    )
    assert first.seen + second.seen == reference


def test_a_changed_neighbours_setting_is_refused_on_resume(make_table, tmp_path):
    from lance_lightning.state import ResumeRefusedError

    uri, _ = make_table("toy", ROWS, dim=DIM)
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=1, callbacks=[SaveThenStop(3, ckpt)]).fit(
            NeighborRecorder(), datamodule=datamodule(uri, neighbors={"column": "x", "k": 3})
        )
    with pytest.raises(ResumeRefusedError, match=r"neighbors: the checkpoint's .*'k': 3.*now .*'k': 4"):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=1).fit(
            NeighborRecorder(), datamodule=datamodule(uri, neighbors={"column": "x", "k": 4}), ckpt_path=ckpt
        )
    with pytest.warns(UserWarning, match="resume='fresh'"):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=1).fit(
            NeighborRecorder(),
            datamodule=datamodule(uri, neighbors={"column": "x", "k": 4}, resume="fresh"),
            ckpt_path=ckpt,
        )


@pytest.mark.parametrize(
    ("neighbors", "message"),
    [
        ({"column": "emb", "k": 2}, r"neighbors\['column'\]='emb': table 'toy' has no such column; its columns are"),
        (
            {"column": "name", "k": 2},
            r"neighbors\['column'\]='name': column 'name' of table 'toy' is string, not a vector",
        ),
        ({"column": "y", "k": 2}, r"neighbors\['column'\]='y': .* is int64, not a vector"),
        ({"column": "x", "k": 120}, r"neighbors\['k'\]=120 but split 'train' of table 'toy' has 120 rows.*k < 120"),
        ({"column": "x", "k": 2, "exclude_same": "label"}, r"neighbors\['exclude_same'\] names \['label'\]"),
        (
            {"column": "x", "k": 2, "mode": "index"},
            r"neighbors\['mode'\]='index' but column 'x' .* has no vector index",
        ),
        ({"column": "x", "k": 2, "where": "no_such_column > 1"}, r"neighbors\['where'\]='no_such_column > 1' cannot"),
    ],
    ids=["missing", "string", "int", "k-too-large", "exclude-missing", "no-index", "bad-where"],
)
def test_a_setting_that_does_not_fit_the_table_is_refused_naming_it(make_table, neighbors, message):
    uri, _ = make_table("toy", ROWS, dim=DIM)
    dm = datamodule(uri, columns=None, neighbors=neighbors)
    with pytest.raises(ValueError, match=message):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("neighbors", "message"),
    [
        ({"column": "x", "k": 0}, r"neighbors\['k'\] must be an integer >= 1.*got 0"),
        ({"column": "x", "k": -2}, r"neighbors\['k'\] must be an integer >= 1.*got -2"),
        ({"column": "x", "k": 2.0}, r"neighbors\['k'\] must be an integer >= 1"),
        ({"column": "x"}, r"neighbors needs 'column' .* and 'k'"),
        ({"column": "x", "k": 2, "K": 3}, r"neighbors has unknown key\(s\) \['K'\]"),
        ({"column": "x", "k": 2, "mode": "ann"}, r"neighbors\['mode'\] must be one of 'auto', 'exact', 'index'"),
        ("x", r"neighbors must be a mapping"),
        ({"column": "x", "k": 4, "candidates": 3}, r"neighbors\['candidates'\] must be an integer >= k \(4\)"),
        ({"column": "x", "k": 2, "refresh_every_n_epochs": 1}, r"needs|table_updates='next_epoch'"),
    ],
    ids=["k0", "k-negative", "k-float", "no-k", "unknown-key", "mode", "not-a-mapping", "candidates", "refresh-pinned"],
)
def test_bad_neighbours_settings_are_refused_at_construction(neighbors, message):
    with pytest.raises(SettingError, match=message):
        LanceDataModule("/nowhere", "toy", neighbors=neighbors)


def test_a_column_called_neighbors_is_refused(make_table):
    data = toy_table(ROWS, dim=DIM).append_column("neighbors", pa.array(np.zeros(ROWS, dtype=np.int64)))
    uri, _ = make_table("toy", data)
    with pytest.raises(ValueError, match=r"has a column 'neighbors', the batch key neighbours are put under"):
        LanceDataModule(uri, "toy", splits={"train": 1.0}, neighbors={"column": "x", "k": 2}).setup("fit")


class WriteVectors(pl.Callback):
    """At the end of epoch ``epoch``, writes new vectors ``x`` for every row (one ``merge_insert`` on
    ``id``: a new table version); records the lists each epoch reads."""

    def __init__(self, table, x_new, epoch):
        self.table, self.x_new, self.epoch, self.lists = table, x_new, epoch, []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lists.append(trainer.datamodule.neighbor_lists)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            data = toy_table(ROWS, dim=DIM)
            data = data.set_column(1, "x", pa.FixedSizeListArray.from_arrays(pa.array(self.x_new.ravel()), DIM))
            self.table.merge_insert("id").when_matched_update_all().execute(data)


class AppendRows(pl.Callback):
    """At each epoch's end, appends 10 rows (ids past ``ROWS``); records each epoch's version and lists."""

    def __init__(self, table):
        self.table, self.lists = table, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # a resumed epoch has no epoch start
        dm = trainer.datamodule
        if not self.lists or self.lists[-1][0] != trainer.current_epoch:
            self.lists.append((trainer.current_epoch, dm.table_version, dm.neighbor_lists))

    def on_train_epoch_end(self, trainer, pl_module):
        self.table.add(toy_table(ROWS + 10 * (trainer.current_epoch + 1), dim=DIM).slice(self.table.count_rows()))


@pytest.mark.parametrize("refresh", [None, 1], ids=["follows-the-version", "every-epoch"])
def test_vectors_written_between_epochs_change_the_lists_from_the_next_epoch_only(make_table, tmp_path, refresh):
    uri, table = make_table("toy", ROWS, dim=DIM)
    x, y = table_arrays(table)
    x_new = np.random.default_rng(9).standard_normal((ROWS, DIM)).astype(np.float32)
    before, after = brute_force(x, 3), brute_force(x_new, 3)
    assert before != after
    write = WriteVectors(table, x_new, 0)
    neighbors = {"column": "x", "k": 3, "refresh_every_n_epochs": refresh}
    dm = datamodule(uri, splits=None, table_updates="next_epoch", neighbors=neighbors)
    model = NeighborRecorder()
    quiet_trainer(
        tmp_path, limit_val_batches=0, max_epochs=2, reload_dataloaders_every_n_epochs=1, callbacks=[write]
    ).fit(model, datamodule=dm)
    first, second = model.seen[:ROWS], model.seen[ROWS:]
    assert len(second) == ROWS
    assert all(found == before[row] for row, found in first)
    assert all(found == after[row] for row, found in second)
    assert write.lists[0] != write.lists[1]


def test_refresh_every_two_epochs_keeps_the_lists_between_refreshes_and_on_resume(make_table, tmp_path):
    """Rows appended outside the filter give a new version with the same split: epoch 1 keeps the
    lists of epoch 0 (refresh not due), epoch 2 mines from the version it reads; a run resumed in
    epoch 1 reads epoch 0's lists too (the checkpoint records them)."""
    uri, table = make_table("toy", ROWS, dim=DIM)
    neighbors = {"column": "x", "k": 3, "refresh_every_n_epochs": 2}
    settings = {"splits": None, "filter": f"id < {ROWS}", "table_updates": "next_epoch", "neighbors": neighbors}
    callback = AppendRows(table)
    run = {"limit_val_batches": 0, "max_epochs": 3, "reload_dataloaders_every_n_epochs": 1}
    ckpt = tmp_path / "mid.ckpt"
    first = NeighborRecorder()
    with pytest.raises(Preempted):  # 8 steps an epoch: step 11 is inside epoch 1
        quiet_trainer(tmp_path, **run, callbacks=[callback, SaveThenStop(11, ckpt)]).fit(
            first, datamodule=datamodule(uri, **settings)
        )
    (_, v0, l0), (_, v1, l1) = callback.lists
    assert v0 < v1 and l1 == l0 and f"-v{v0}-" in l0.name  # kept: epoch 1 is not a refresh
    resumed, second = AppendRows(table), NeighborRecorder()
    quiet_trainer(tmp_path, **run, callbacks=[resumed]).fit(
        second, datamodule=datamodule(uri, **settings), ckpt_path=ckpt
    )
    (e1, _, r1), (e2, v2, r2) = resumed.lists
    assert (e1, e2) == (1, 2) and r1 == l0  # the resumed epoch 1 reads the lists epoch 0 mined
    assert v2 > v1 and r2 != l0 and f"-v{v2}-" in r2.name  # epoch 2 is a refresh
    epoch1 = first.seen[ROWS:] + second.seen[: 2 * ROWS - len(first.seen)]
    assert sorted(i for i, _ in epoch1) == list(range(ROWS))
    assert dict(epoch1) == dict(first.seen[:ROWS])  # the same lists: each row the same neighbours


class RelabelInPlace(pl.Callback):
    """When epoch 0 ends, writes column ``y`` anew without moving a row (drop, then add it from an
    SQL expression: a new version, the same row addresses, as ``LancePredictionWriter``'s column
    writes are); records the lists each epoch reads."""

    def __init__(self, table, y: str = "CAST(id % 4 AS BIGINT)"):
        self.table, self.y, self.lists, self.leased = table, y, [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lists.append(trainer.datamodule.neighbor_lists)
        self.leased.append({str(p): in_use(Path(p)) for p in self.lists})  # which lists anything holds now

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.table.drop_columns(["y"])
            self.table.add_columns({"y": self.y})


def test_a_refresh_epoch_mines_again_after_a_column_written_in_place_on_a_version_that_has_not_moved(
    make_table, tmp_path
):
    """``refresh_every_n_epochs=2``: a column written in place at epoch 0's end (the split's rows
    stay where they were; its labels the same groups under other values) leaves epoch 1 on epoch 0's
    lists (not a refresh); epoch 2 is a refresh and mines from the version it reads, although that
    version has not moved since epoch 1. Before, the lists were mined only when the version moved:
    epoch 2 and every later one kept epoch 0's lists."""
    uri, table = make_table("toy", ROWS, dim=DIM)
    x, y = table_arrays(table)
    relabel = RelabelInPlace(table, y="CAST(id % 3 + 100 AS BIGINT)")  # y was id % 3: the same groups
    neighbors = {"column": "x", "k": 3, "exclude_same": "y", "refresh_every_n_epochs": 2}
    dm = datamodule(uri, splits=None, table_updates="next_epoch", neighbors=neighbors)
    model = NeighborRecorder()
    quiet_trainer(
        tmp_path, limit_val_batches=0, max_epochs=3, reload_dataloaders_every_n_epochs=1, callbacks=[relabel]
    ).fit(model, datamodule=dm)
    want = brute_force(x, 3, labels=y)
    assert all(found == want[row] for row, found in model.seen)
    assert relabel.lists[1] == relabel.lists[0] != relabel.lists[2]  # kept in epoch 1, mined in epoch 2
    # the refresh let go of the lists it replaced (nothing else holds them: eviction may take them)
    assert relabel.leased[2] == {str(relabel.lists[0]): False, str(relabel.lists[2]): True}


@pytest.mark.parametrize(
    ("num_workers", "exclusion"), [(0, "exclude_same"), (2, "exclude_same"), (0, "where"), (2, "where")]
)
def test_labels_regrouped_in_place_between_refreshes_are_honoured_from_the_next_epoch(
    make_table, tmp_path, num_workers, exclusion
):
    """``exclude_same`` and ``where`` hold in every epoch, refresh due or not: labels written in place
    at epoch 0's end that group the rows otherwise (or that the filter now keeps otherwise) make
    epoch 1 (not a refresh) mine again from the version it reads, with a warning naming the setting;
    kept, epoch 0's lists would hand rows neighbours that now share their label (or that the filter
    leaves out). Epoch 2 (a refresh) reads the same lists as epoch 1."""
    uri, table = make_table("toy", ROWS, dim=DIM)
    x, y = table_arrays(table)
    relabel = RelabelInPlace(table)  # id % 4: other groups than y's id % 3
    setting = {"exclude_same": "y"} if exclusion == "exclude_same" else {"where": "y < 2"}
    neighbors = {"column": "x", "k": 3, **setting, "refresh_every_n_epochs": 2}
    dm = datamodule(uri, splits=None, table_updates="next_epoch", neighbors=neighbors, num_workers=num_workers)
    model = NeighborRecorder()
    trainer = quiet_trainer(
        tmp_path, limit_val_batches=0, max_epochs=3, reload_dataloaders_every_n_epochs=1, callbacks=[relabel]
    )
    with pytest.warns(UserWarning, match=rf"{exclusion}='[^']+' exclude other rows.*mining them again"):
        trainer.fit(model, datamodule=dm)
    y_after = np.arange(ROWS) % 4
    if exclusion == "exclude_same":
        before, after = brute_force(x, 3, labels=y), brute_force(x, 3, labels=y_after)
    else:
        before, after = brute_force(x, 3, eligible=y < 2), brute_force(x, 3, eligible=y_after < 2)
    epochs = [model.seen[i * ROWS : (i + 1) * ROWS] for i in range(3)]
    assert all(found == before[row] for row, found in epochs[0])
    assert all(found == after[row] for row, found in epochs[1] + epochs[2])
    assert relabel.lists[0] != relabel.lists[1] == relabel.lists[2]


class CleanUpAfterEpoch0(pl.Callback):
    """When epoch 0 ends, appends rows and deletes them again (the split's rows stay where they were),
    then removes every old version (``optimize(cleanup_older_than=0)``): the version epoch 0 mined
    from is gone."""

    def __init__(self, table):
        self.table = table

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.table.add(toy_table(ROWS + 10, dim=DIM).slice(ROWS))
            self.table.delete(f"id >= {ROWS}")
            self.table.optimize(cleanup_older_than=timedelta(0))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_lists_kept_between_refreshes_are_mined_again_when_their_version_was_cleaned_up(
    make_table, tmp_path, num_workers
):
    """Following the table, a run no longer reads the versions before the one it moved to, so their
    cleanup between epochs goes unnoticed; so do lists kept from one of them (refresh not due): they
    are mined again from the version the epoch reads, with a warning naming both versions. Before,
    the epoch stopped with a TableChangedError saying the run read the cleaned-up version."""
    uri, table = make_table("toy", ROWS, dim=DIM)
    x, _ = table_arrays(table)
    neighbors = {"column": "x", "k": 3, "refresh_every_n_epochs": 2}
    dm = datamodule(uri, splits=None, table_updates="next_epoch", neighbors=neighbors, num_workers=num_workers)
    model = NeighborRecorder()
    run = quiet_trainer(
        tmp_path,
        limit_val_batches=0,
        max_epochs=2,
        reload_dataloaders_every_n_epochs=1,
        callbacks=[CleanUpAfterEpoch0(table)],
    )
    with pytest.warns(UserWarning, match=r"mined from version 1 of table 'toy', which cannot be opened any more"):
        run.fit(model, datamodule=dm)
    expected = brute_force(x, 3)
    assert len(model.seen) == 2 * ROWS and all(found == expected[row] for row, found in model.seen)


@pytest.fixture
def indexed_table(make_table):
    """5,000 rows of 32-d vectors in 50 clusters, ``g`` = id % 7, with an IVF-PQ index on ``v``."""
    from lancedb.index import IvfPq

    n, d = 5000, 32
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    v = (centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    data = pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "v": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), d),
            "g": np.arange(n, dtype=np.int64) % 7,
        }
    )
    uri, table = make_table("toy", data)
    table.create_index("v", config=IvfPq(distance_type="l2", num_partitions=16, num_sub_vectors=8))
    return uri, v


def knn(v: np.ndarray, k: int, groups: np.ndarray) -> np.ndarray:
    """Brute force: each row's k nearest rows of another group (full float32 distance matrix)."""
    sq = (v * v).sum(1)
    d = sq[:, None] - 2 * v @ v.T + sq[None, :]
    d[groups[:, None] == groups[None, :]] = np.inf  # the row itself too: its own group
    return np.argsort(d, axis=1, kind="stable")[:, :k]


INDEX_RECALL = 0.95
"""The least recall@10 of index mode against brute force on the indexed table (measured: 1.000 with
the exclusion, 0.998 without, where PQ distances alone gave 0.62: candidates are re-ranked exactly)."""


def test_index_mode_reaches_its_recall_and_auto_picks_by_size(indexed_table, monkeypatch):
    import json

    from lance_lightning.neighbors import mine

    uri, v = indexed_table
    groups = np.arange(len(v)) % 7
    expected = knn(v, 10, groups)
    settings = {"columns": ["id", "g"], "splits": {"train": 1.0}}
    dm = LanceDataModule(
        uri, "toy", **settings, neighbors={"column": "v", "k": 10, "exclude_same": "g", "mode": "index"}
    )
    dm.setup("fit")
    found = np.asarray(dm.datasets["train"].lists.ids)
    assert json.loads((dm.neighbor_lists / "manifest.json").read_text())["mode"] == "index"
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, expected)])
    assert recall >= INDEX_RECALL, recall
    assert (found >= 0).all() and not (groups[found] == groups[:, None]).any()
    dm.teardown()
    for rows, mode in ((len(v), "exact"), (1000, "index")):  # auto: the index above AUTO_INDEX_ROWS rows
        monkeypatch.setattr(mine, "AUTO_INDEX_ROWS", rows)
        auto = LanceDataModule(uri, "toy", **settings, neighbors={"column": "v", "k": 3})
        auto.setup("fit")
        assert json.loads((auto.neighbor_lists / "manifest.json").read_text())["mode"] == mode
        auto.teardown()


def test_damaged_lists_are_mined_again_with_a_warning(make_table, tmp_path):
    """The lists' CRC-32 is checked at setup: bytes changed in place (size and time kept) are found,
    the lists removed and mined again, never read."""
    import os

    from lance_lightning.stage import StageWarning

    uri, table = make_table("toy", ROWS, dim=DIM)
    x, _ = table_arrays(table)
    settings = {"neighbors": {"column": "x", "k": 2}, "cache": str(tmp_path / "stages")}
    first = datamodule(uri, **settings)
    first.setup("fit")
    path = first.neighbor_lists / "neighbors.npy"
    first.teardown()
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-8:] = b"\x00" * 8  # the last row's neighbours become 0, 0
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = datamodule(uri, **settings)
    with pytest.warns(StageWarning, match=r"neighbour lists .* are not used: file neighbors.npy does not hold"):
        again.setup("fit")
    assert [tuple(r) for r in np.asarray(again.datasets["train"].lists.ids)] == brute_force(x, 2)
    again.teardown()


@pytest.mark.parametrize("fault", ["written", "truncated"])
def test_lists_changed_after_setup_stop_the_epoch_naming_them(make_table, tmp_path, fault):
    """After setup, the lists file is mapped: bytes written into it (or a truncation) would reach the
    next batches as other rows' neighbours. Each gather checks it first, as a stage's files are, so
    the next batch is refused, naming the lists and what changed."""
    from lance_lightning.stage import StageError

    uri, _ = make_table("toy", ROWS, dim=DIM)
    dm = datamodule(uri, neighbors={"column": "x", "k": 2}, cache=str(tmp_path / "stages"))
    dm.setup("fit")
    path = dm.neighbor_lists / "neighbors.npy"
    batches = iter(dm.train_dataloader())
    next(batches)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        if fault == "written":
            fh.seek(size - 64)
            fh.write(b"\x00" * 64)  # the last rows' neighbours become row 0
        else:
            fh.truncate(size - 64)
    with pytest.raises(StageError, match=r"neighbour lists at .* are damaged: file neighbors.npy (was modified|has)"):
        next(batches)
    dm.teardown()


def assert_same_batch(got, want, where="batch") -> None:
    """The same keys in the same order, and equal tensors (dtype, shape, values) or lists, nested."""
    assert list(got) == list(want), where
    for key, value in want.items():
        if isinstance(value, dict):
            assert_same_batch(got[key], value, f"{where}[{key!r}]")
        elif isinstance(value, torch.Tensor):
            assert isinstance(got[key], torch.Tensor) and got[key].dtype == value.dtype, f"{where}[{key!r}]"
            assert torch.equal(got[key], value), f"{where}[{key!r}]"
        else:
            assert got[key] == value, f"{where}[{key!r}]"


def read_epoch(dm: LanceDataModule, check=None) -> list[dict]:
    dm.setup("fit")
    train = dm.train_dataloader()
    batches = []
    for batch in train:
        if check is not None:
            check(train, batch)
        batches.append(batch)
    dm.teardown()
    return batches


@pytest.mark.parametrize("staging", ["always", "off"])
@pytest.mark.parametrize("columns", [["x", "y"], ["x", "name"]], ids=["batch-columns", "other-columns"])
def test_workers_gather_batches_and_neighbours_into_reused_slots(make_table, tmp_path, staging, columns):
    """A batch with neighbours holds k + 1 times the rows: with workers reading a stage, its rows,
    its neighbours' rows, ids and mask are gathered straight into a reused shared-memory slot, and
    the training process gets views of it (not fresh shared memory). Every key of every batch (padding masks
    included) equals the batch read without workers, from a stage and from the table, with the
    neighbours' columns among the batch's or not."""
    uri, table = make_table("toy", ROWS, dim=DIM)
    x, _ = table_arrays(table)
    settings = {
        "staging": staging,
        "cache": str(tmp_path / "stages") if staging != "off" else None,
        "neighbors": {"column": "x", "k": 9, "exclude_same": "y", "where": "id % 10 = 0", "columns": columns},
    }
    reference = read_epoch(datamodule(uri, **settings))
    assert any(not b["neighbors"]["mask"].all() for b in reference)  # padding is part of what is compared
    in_slots = []

    def check(train, batch) -> None:
        found = batch["neighbors"]
        slots = train._iterator._lance_slots
        address = found["x"].untyped_storage().data_ptr()  # a view of a worker's slot, or fresh memory
        in_slots.append(
            slots is not None
            and any(r._block is not None and 0 <= address - r._block.data_ptr() < r._block.numel() for r in slots.rings)
        )
        # a neighbour's vector; padding holds the row's own (masked out)
        rows = torch.where(found["mask"], found["ids"], batch["id"][:, None]).numpy()
        np.testing.assert_array_equal(found["x"].numpy(), x[rows])

    got = read_epoch(datamodule(uri, num_workers=2, **settings), check)
    assert len(got) == len(reference)
    for i, (batch, want) in enumerate(zip(got, reference)):
        assert_same_batch(batch, want, f"batch {i}")
    if staging == "off":
        assert not any(in_slots)  # a table reader's batches go the fresh way
    else:
        assert sum(in_slots) >= len(in_slots) - 4  # all but the batches that found every slot busy


def test_mining_a_sample_of_queries_gives_their_rows_of_the_full_lists(indexed_table, make_table):
    """``mine(queries=...)`` (what the 1M benchmark times on a sample) is the full mining's rows for
    those queries, in both modes, exclusions included."""
    import lancedb

    from lance_lightning.neighbors.mine import mine
    from lance_lightning.neighbors.spec import NeighborSpec
    from lance_lightning.reads import scan_row_ids

    uri, v = indexed_table
    table = lancedb.connect(uri).open_table("toy")
    row_ids = np.sort(scan_row_ids(table))
    sample = np.random.default_rng(3).choice(len(v), size=1500, replace=False)  # two query batches, unsorted
    for mode in ("exact", "index"):
        spec = NeighborSpec(column="v", k=10, exclude_same="g", mode=mode)
        full = mine(spec, table, row_ids, mode=mode)
        part = mine(spec, table, row_ids, mode=mode, queries=sample)
        assert part.shape == (len(sample), 10)
        np.testing.assert_array_equal(part, full[sample], err_msg=mode)
