"""The package's Hydra configs as a Python package (``lance_lightning.app.conf`` in the wheel).

Another Hydra project composes them with ``hydra.searchpath: [pkg://lance_lightning.app.conf]``
and ``defaults: [data: lance, _self_]``. Hydra imports this package to read it, which registers
the schemas the YAML files start from (``data/lance_schema`` ...) in Hydra's ConfigStore: the
project needs no import of its own.
"""

from lance_lightning.app.config import register_configs

register_configs()
