"""Importable helpers for tests (transforms must be importable by dotted path in workers)."""

from __future__ import annotations

from typing import Any


def double_x(batch: dict[str, Any]) -> dict[str, Any]:
    batch["x_doubled"] = batch["x"] * 2
    return batch
