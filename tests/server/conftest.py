"""The served model most server tests share (test modules that need another one define their own
``model`` fixture, which takes precedence)."""
from __future__ import annotations

import pytest
import torch

from anzoo.testing import confident_model

#: the model id the shared model is served under
MODEL_ID = "r50-an"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """Random weights that detect; 8 proposals and 2 instances keep a request near 0.1 s (the mask
    head costs ~0.5 GMAC per instance)."""
    return confident_model(MODEL_ID, proposals=8, max_per_img=2)
