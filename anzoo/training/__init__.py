"""Training the zoo's detectors: ``anzoo train`` and its Python API.

>>> from anzoo.training import TrainConfig, train
>>> result = train(TrainConfig("r50-an", work_dir="work/r50-an", coco_dir="data/coco"))  # doctest: +SKIP

See :mod:`anzoo.training.engine` for the recipe and the files a run writes.
"""
from __future__ import annotations

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str):
    if name in __all__:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'anzoo.training' has no attribute {name!r}")
