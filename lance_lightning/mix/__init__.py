"""Mixtures: a training stage drawn from several sources at set proportions (the ``mix`` setting).

:mod:`.spec` parses the setting (pure); :mod:`.resolve` turns each source into rows of a pinned
table (once, at setup); :mod:`.reader` reads a batch of mixture positions from the sources'
readers and adds each row's ``source``. The order of an epoch is
:class:`~lance_lightning.orders.MixtureOrder`.
"""

from .spec import SOURCE_KEYS, MixSpecError, SourceSpec, parse_mix

__all__ = ["SOURCE_KEYS", "MixSpecError", "SourceSpec", "parse_mix"]
