"""``batch_keys``: each batch as the tuple a model unpacks (``x, y = batch``) instead of a dict.

Most LightningModules are written against ``TensorDataset``-style batches: ``x, y = batch``.
Unpacking a dict gives its keys (strings), so such a model fails far from the cause
(``'str' object has no attribute 'size'``). With ``batch_keys=("x", "y")`` the loader hands out
``(batch["x"], batch["y"])``: the last step in the training process, after the reader, the user's
``transform`` (which may rename or add keys) and the worker hand-over, so it holds for every read
path (staged, table, block, none), with or without workers, on every rank.

A plain ``tuple``, not a named tuple: a named tuple type made from settings would be a new class
each run (unpicklable by reference, e.g. into a callback's saved batch), and its fields would have
to be Python identifiers (column names need not be). Keep ``batch_keys=None`` to get the dict,
whose keys already name the values.

Pure: imports nothing of lancedb, torch or Lightning.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .options import SettingError


class BatchKeysError(SettingError):
    """``batch_keys`` names a key the batches do not have, or the batches are not dicts."""


def check_batch_keys(batch: Any, keys: tuple[str, ...], *, where: str) -> None:
    """Refuse, naming the missing key(s) and the keys there are, when ``batch`` lacks one of
    ``keys``; ``where`` says which batches (``"stage 'train' (split 'train', after transform
    tests.helpers.f)"``)."""
    if not isinstance(batch, Mapping):
        raise BatchKeysError(
            f"batch_keys={list(keys)} picks keys out of dict batches, but the batches of {where} are a "
            f"{type(batch).__name__}: make the transform return a dict, or set batch_keys=None"
        )
    missing = [k for k in keys if k not in batch]
    if missing:
        there = ", ".join(repr(str(k)) for k in batch)
        raise BatchKeysError(
            f"batch_keys names {', '.join(map(repr, missing))}, which the batches of {where} do not have; "
            f"their keys: {there}"
        )


def as_tuple(batch: Any, keys: tuple[str, ...]) -> tuple[Any, ...]:
    """``(batch[k] for k in keys)`` as a tuple; a batch that lacks a key is refused by name."""
    try:
        return tuple(batch[k] for k in keys)
    except (KeyError, TypeError):
        check_batch_keys(batch, keys, where="this loader")
        raise


def keyed(batches: Iterable[Any], keys: tuple[str, ...] | None) -> Iterator[Any]:
    """``batches`` as tuples of ``keys`` (unchanged when ``keys`` is None)."""
    if keys is None:
        yield from batches
        return
    for batch in batches:
        yield as_tuple(batch, keys)
