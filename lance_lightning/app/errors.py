"""One clear line instead of a traceback for the package's own configuration errors.

A wrong table name, column, URI, setting or split spec raises an exception of ``lance_lightning``
whose message already says what is wrong and what is valid; a Hydra job would bury it under
30-67 lines of traceback (Lightning's and Hydra's frames). :func:`reported_errors` prints that
message alone and exits with status 1; ``HYDRA_FULL_ERROR=1`` shows the whole traceback as usual.
Any other exception (a bug, a crash in the user's model) keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

FULL_ERROR_ENV = "HYDRA_FULL_ERROR"


def package_error(err: BaseException) -> BaseException | None:
    """The first exception of ``lance_lightning`` in ``err``'s chain (causes and contexts), or None.

    Hydra's ``instantiate`` wraps the datamodule's error in an ``InstantiationException``: its
    cause is the message worth showing."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__module__.startswith("lance_lightning") and isinstance(current, (ValueError, KeyError)):
            return current
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def reported_errors(entry: str, *, full_error_env: str = FULL_ERROR_ENV) -> Iterator[None]:
    """Run the body; a configuration error of the package is printed as ``<entry>: error: <message>``
    on stderr, with exit status 1, unless ``<full_error_env>=1`` (``HYDRA_FULL_ERROR``, as Hydra's)."""
    try:
        yield
    except Exception as err:
        found = package_error(err)
        if found is None or os.environ.get(full_error_env) == "1":
            raise
        print(f"{entry}: error: {found} (set {full_error_env}=1 for the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
