"""The main job: Hydra config schemas, the train / predict / inspect entry points, the demo table,
a small model and callbacks. The library (``lance_lightning``) does not import this package, nor Hydra."""
