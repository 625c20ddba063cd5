"""``RowValueWriter``: a per-row value of each training step (its loss, say) written back into the
table at every epoch's end, so that a weight column the model writes steers the next epoch's draw.

The loop (a curriculum the model steers)::

    data = LanceDataModule(uri, "digits", columns=["id", "image", "label"], weight_column="w",
                           samples_per_epoch=N, weight_replacement=True, table_updates="next_epoch",
                           splits={"kind": "hash", "columns": ["id"], "weights": {...}})
    writer = RowValueWriter(column="w", key="id", output="row_loss", transform=lambda loss: loss + 0.1)
    pl.Trainer(callbacks=[writer], reload_dataloaders_every_n_epochs=1).fit(model, datamodule=data)

where ``training_step`` returns ``{"loss": loss, "row_loss": per_row_loss.detach()}``.

1. **Collect.** ``on_train_batch_end`` takes the ``output`` tensor (one value a row) from the step's
   output dict and the batch's ``key`` column, onto the CPU.
2. **Gather.** ``on_train_epoch_end`` gathers every rank's (key, value) pairs onto rank 0 (no
   process group at world size 1). A row drawn several times in the epoch (sampling with
   replacement, or DDP padding) gets the mean of its values.
3. **One commit.** Rank 0 writes them into ``column`` with one ``merge_insert(key)`` (matched rows
   updated, nothing inserted): one new table version; rows not drawn this epoch keep their value.
   Every rank then learns the outcome (a barrier), so all return or all raise alike.

With ``table_updates="next_epoch"`` and ``reload_dataloaders_every_n_epochs=1`` the datamodule reads
the weights again at the next epoch boundary, at the new version: the values written change the
next epoch's draw, never the current one. A run resumed mid-epoch writes only the rows drawn after
the resume at that epoch's end (the others keep last epoch's value).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import torch

__all__ = ["RowValueError", "RowValueWriter"]


class RowValueError(ValueError):
    """A ``RowValueWriter`` setting, a step's output or a value written is unusable; the message
    names the table, column, key or output at fault."""


class RowValueWriter(pl.Callback):
    """Writes a per-row value of each training step into a table column at every epoch's end.

    Args:
        column: the numeric column that receives the values (e.g. the ``weight_column``), in the
            table the train split reads. It must exist; its type is kept.
        key: a column that identifies a row uniquely (e.g. ``id``); the datamodule must read it
            (``columns=[..., key]``) so that every batch carries it.
        output: the key of the training step's output dict whose tensor holds one value per row
            of the batch (e.g. ``"row_loss"``: ``F.cross_entropy(..., reduction="none").detach()``).
        transform: applied to the epoch's values (a float64 numpy array) before they are written,
            e.g. ``lambda loss: loss + 0.1`` so that weights stay above 0. The results must be
            finite.
        every_n_epochs: write at the end of every n-th epoch only (epochs n-1, 2n-1, ...), with the
            values of that epoch: each write is a new table version, which a datamodule following
            the table reads again (its split's row addresses, and its stage when staged).
    """

    def __init__(
        self,
        column: str,
        key: str = "id",
        output: str = "row_loss",
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        every_n_epochs: int = 1,
    ) -> None:
        for name, value in (("column", column), ("key", key), ("output", output)):
            if not isinstance(value, str) or not value:
                raise RowValueError(f"RowValueWriter: {name} must be a column or output name, got {value!r}")
        if column == key:
            raise RowValueError(f"RowValueWriter: column and key are both {column!r}; the key is never written")
        if transform is not None and not callable(transform):
            raise RowValueError(f"RowValueWriter: transform must be callable, got {transform!r}")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise RowValueError(f"RowValueWriter: every_n_epochs must be an int >= 1, got {every_n_epochs!r}")
        self.every_n_epochs = every_n_epochs
        self.column = column
        self.key = key
        self.output = output
        self.transform = transform
        self.versions: list[int] = []  # the table version each epoch's commit made (rank 0)
        self._keys: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._source: Any = None

    # --- checks, once a fit -------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Checks, before the first batch, that the table the train split reads has ``column``
        (numeric) and ``key``, and that the datamodule reads ``key``."""
        if stage != "fit":
            return
        dm = trainer.datamodule
        source = getattr(dm, "source", None)
        if source is None or not hasattr(source, "pinned"):
            raise RowValueError(
                f"RowValueWriter writes into the table of a LanceDataModule; the Trainer's datamodule is "
                f"{type(dm).__name__ if dm is not None else 'None'} (pass datamodule=LanceDataModule(...) to fit)"
            )
        train = dm.split_for_stage("train") if getattr(dm, "splits", None) is not None else None
        if train is not None:  # the table the train split reads (another one with splits of kind "tables")
            source = dm.split_rows(train).source
        schema = source.pinned(None).open().schema
        names = schema.names
        for role, name in (("column", self.column), ("key", self.key)):
            if name not in names:
                raise RowValueError(
                    f"RowValueWriter: {role} {name!r} is not in table {source.name!r}; its columns are "
                    f"{', '.join(names)}"
                )
        kind = schema.field(self.column).type
        if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            raise RowValueError(
                f"RowValueWriter: column {self.column!r} of table {source.name!r} is of type {kind}; it must be "
                "numeric (a float column for losses or weights)"
            )
        read = getattr(dm, "columns", None)
        if read is not None and self.key not in read:
            raise RowValueError(
                f"RowValueWriter: key {self.key!r} is not among the columns the datamodule reads ({', '.join(read)}); "
                f"add it: LanceDataModule(columns=[..., {self.key!r}])"
            )
        self._source = source

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._keys, self._values = [], []

    def _writes(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # --- collect ------------------------------------------------------------------------------

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Keeps this batch's (key, value) pairs, on the CPU (in the epochs that write)."""
        if not self._writes(trainer) or outputs is None:  # None: the step skipped this batch
            return
        if not isinstance(outputs, Mapping) or self.output not in outputs:
            found = f"a dict with keys {', '.join(map(repr, outputs))}" if isinstance(outputs, Mapping) else "a tensor"
            raise RowValueError(
                f"RowValueWriter: training_step must return a dict with {self.output!r} (one value per row, for "
                f"column {self.column!r}); it returned {found}. Return "
                f'{{"loss": loss, {self.output!r}: per_row.detach()}}'
            )
        if not isinstance(batch, Mapping) or self.key not in batch:
            found = f"keys {', '.join(map(repr, batch))}" if isinstance(batch, Mapping) else type(batch).__name__
            raise RowValueError(
                f"RowValueWriter: the batch has no key column {self.key!r} ({found}); read it with "
                f"LanceDataModule(columns=[..., {self.key!r}]) and keep it in the batch dict"
            )
        keys = _numpy(batch[self.key])
        values = _numpy(outputs[self.output]).astype(np.float64).reshape(-1)
        if len(values) != len(keys):
            raise RowValueError(
                f"RowValueWriter: output {self.output!r} has {len(values)} values for a batch of {len(keys)} rows "
                f"(key {self.key!r}); it needs one value per row (a loss with reduction='none')"
            )
        self._keys.append(keys)
        self._values.append(values)

    # --- gather and write ---------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gathers every rank's pairs onto rank 0, which writes them in one commit; then every rank
        returns, or raises rank 0's error."""
        if not self._writes(trainer):
            return
        local = (
            np.concatenate(self._keys) if self._keys else np.zeros(0, dtype=np.int64),
            np.concatenate(self._values) if self._values else np.zeros(0),
        )
        self._keys, self._values = [], []
        parts = _gather_on_zero(local, trainer)
        error: str | None = None
        if trainer.is_global_zero:
            try:
                version = self._write(parts)
                if version is not None:
                    self.versions.append(version)
            except Exception as err:  # every rank raises it, below
                error = f"{type(err).__name__}: {err}"
        if trainer.world_size > 1:
            error = trainer.strategy.broadcast(error, src=0)  # also the barrier: the write is done
        if error is not None:
            raise RowValueError(
                f"RowValueWriter: writing column {self.column!r} of table {self._source.name!r} failed on rank 0: "
                f"{error}"
            )

    def _write(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> int | None:
        """One ``merge_insert`` of (key, mean value) for every key drawn this epoch; the new version."""
        keys = np.concatenate([k for k, _ in parts])
        values = np.concatenate([v for _, v in parts])
        if len(keys) == 0:
            return None
        unique, inverse = np.unique(keys, return_inverse=True)
        means = np.bincount(inverse, weights=values) / np.bincount(inverse)
        if self.transform is not None:
            means = np.asarray(self.transform(means), dtype=np.float64)
            if means.shape != unique.shape:
                raise RowValueError(
                    f"transform returned shape {means.shape} for {len(unique)} values; it must map each value"
                )
        bad = ~np.isfinite(means)
        if bad.any():
            raise RowValueError(
                f"{int(bad.sum())} of {len(means)} values for column {self.column!r} (from output {self.output!r}) "
                f"are not finite, e.g. {means[bad][0]} at {self.key} = {unique[bad][0]!r}"
            )
        table = self._source.pinned(None).open()
        schema = table.schema
        rows = pa.table(
            {
                self.key: pa.array(unique).cast(schema.field(self.key).type),
                self.column: pa.array(means).cast(schema.field(self.column).type),
            }
        )
        result = table.merge_insert(self.key).when_matched_update_all().execute(rows)
        return int(getattr(result, "version", table.version))


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _gather_on_zero(local: tuple[np.ndarray, np.ndarray], trainer: pl.Trainer) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every rank's pairs on rank 0 (a list, one entry a rank); the others get an empty list."""
    if trainer.world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [local]
    parts: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero else None
    torch.distributed.gather_object(local, parts, dst=0)
    return parts if parts is not None else []
