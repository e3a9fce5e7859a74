"""Training the zoo's detectors: ``anzoo train`` and its Python API.

>>> from anzoo.training import TrainConfig, train
>>> result = train(TrainConfig("r50-an", work_dir="work/r50-an", coco_dir="data/coco"))  # doctest: +SKIP

What is where:

* ``engine.py`` - :func:`train`: sets a run up and returns a :class:`TrainResult` (the recipe,
  and the files a run writes, are in its docstring);
* ``config.py`` - :class:`TrainConfig`, what a run depends on;
* ``model.py`` - the detector a run trains and where its weights start;
* ``batches.py`` - the COCO training set, its aspect-grouped sampler and loader;
* ``trainer.py`` - the loop (:class:`~anzoo.training.trainer.Trainer`, ``run_step``) and
  ``hooks.py`` what is done around its steps (schedule, metrics, progress, checkpoints,
  periodic evaluation);
* ``schedule.py``, ``logger.py`` (``metrics.jsonl``, TensorBoard), ``state.py`` (training
  checkpoints: everything needed to resume), ``periodic_eval.py``.
"""
from __future__ import annotations

__all__ = ["TrainConfig", "TrainResult", "train"]

_WHERE = {"TrainConfig": "config", "TrainResult": "engine", "train": "engine"}


def __getattr__(name: str):
    # resolved on access (never cached), so that importing the package loads nothing else
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'anzoo.training' has no attribute {name!r}")
