"""The embedded demo table: scikit-learn's 8x8 handwritten digits, stored as users store images.

``lance-lightning-demo`` builds it explicitly; the train and inspect entry points build it on
first use when the configured ``data.uri``/``data.table`` are the demo's defaults. The data
ships inside scikit-learn (no download): 1,797 rows of

* ``id``: int64, 0..1796
* ``image``: ``arrow.fixed_shape_tensor<float32, [8, 8]>`` (pixel intensity scaled to [0, 1])
* ``label``: int64, the digit 0..9

The table is written in a scratch directory next to its destination and moved into place
with one ``rename``, so concurrent builders (two jobs started at once) never see half a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

DEMO_URI = "data/demo"
DEMO_TABLE = "digits"


def digits_arrow() -> pa.Table:
    """The digits as an Arrow table (id, image, label); needs scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the demo table is built from scikit-learn's digits: pip install 'lance-lightning[demo]'"
        ) from err
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    return pa.table(
        {
            "id": pa.array(np.arange(len(images), dtype=np.int64)),
            "image": pa.FixedShapeTensorArray.from_numpy_ndarray(images),
            "label": pa.array(digits.target.astype(np.int64)),
        }
    )


def table_path(uri: str | os.PathLike[str], table: str) -> Path:
    """Where lancedb keeps ``table`` of the local database ``uri``."""
    return Path(uri) / f"{table}.lance"


def build_demo(uri: str | os.PathLike[str] = DEMO_URI, table: str = DEMO_TABLE, *, overwrite: bool = False) -> Path:
    """Write the digits table ``table`` into the local database ``uri``; return its path.

    An existing table is kept unless ``overwrite``.
    """
    import lancedb

    dest = table_path(uri, table)
    if dest.exists() and not overwrite:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{table}-build-", dir=dest.parent))
    try:
        lancedb.connect(str(scratch)).create_table(table, digits_arrow())
        if overwrite and dest.exists():
            shutil.rmtree(dest)
        try:
            os.rename(scratch / f"{table}.lance", dest)
        except OSError:
            if not dest.exists():  # anything but "another process got there first"
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest


def is_demo_location(uri: str | None, table: object) -> bool:
    """True when ``uri``/``table`` name the default demo table (relative to the working dir)."""
    if uri is None or not isinstance(table, str) or table != DEMO_TABLE:
        return False
    return os.path.abspath(os.fspath(uri)) == os.path.abspath(DEMO_URI)


def ensure_demo(uri: str | None, table: object) -> bool:
    """Build the demo table if ``uri``/``table`` are the demo's and it is missing; True if built."""
    if not is_demo_location(uri, table) or table_path(uri, str(table)).exists():  # type: ignore[arg-type]
        return False
    print(f"lance-lightning: building the demo table {table!r} in {os.path.abspath(str(uri))} (sklearn digits)")
    build_demo(str(uri), str(table))
    return True


def main(argv: list[str] | None = None) -> None:
    """``lance-lightning-demo [--uri data/demo] [--table digits] [--overwrite]``."""
    parser = argparse.ArgumentParser(description="Build the embedded 8x8 digits demo table.")
    parser.add_argument("--uri", default=DEMO_URI, help="database directory (default: %(default)s)")
    parser.add_argument("--table", default=DEMO_TABLE, help="table name (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild an existing table")
    args = parser.parse_args(argv)
    path = build_demo(args.uri, args.table, overwrite=args.overwrite)
    import lancedb

    tbl = lancedb.connect(args.uri).open_table(args.table)
    print(f"{path}: {tbl.count_rows()} rows, version {tbl.version}")
    print(tbl.schema)


if __name__ == "__main__":
    main()
