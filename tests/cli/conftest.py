"""Fixtures of the command tests: commands that load a given model instead of a download."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from anzoo.cli import base as cli_base


@pytest.fixture
def use_model(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], dict[str, Any]]:
    """``use_model(model)``: the commands' ``load_model`` returns ``model``; the returned dict
    records the arguments of the last call (model_id, weights, device) and the model."""
    seen: dict[str, Any] = {}

    def install(model: Any) -> dict[str, Any]:
        def load(model_id: str, weights: Any, device: str) -> Any:
            seen.update(model_id=model_id, weights=weights, device=device)
            return model

        seen["model"] = model
        monkeypatch.setattr(cli_base, "load_model", load)
        return seen

    return install
