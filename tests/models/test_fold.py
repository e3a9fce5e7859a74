"""Folding eval-mode BatchNorms (and AN's normalisation) into the convolutions before them
gives the unfolded network's outputs, up to float32 rounding, for every backbone kind."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from anzoo.factory import create_backbone
from anzoo.models.layers import AttentiveBatchNorm2d, fold_batch_norms
from anzoo.models.layers.fold import FoldedAttentiveBatchNorm2d, FoldedNorm

from helpers.norms import randomize_batch_norms

pytestmark = pytest.mark.usefixtures("one_thread")

#: largest difference of the folded backbone's features to the unfolded ones, relative to the
#: features' largest magnitude. Measured with tools/tolerances/fold_spread.py on an AMD EPYC
#: (AVX2): at most 5.1e-6 (r50-an, 2 threads; 1 thread, ATEN_CPU_CAPABILITY=default|avx2 and
#: ONEDNN_MAX_CPU_ISA=AVX2: 3.3e-6 to 4.6e-6): float32 rounding through 50 layers; 10x margin.
FEATURE_REL_TOL = 5e-5

#: backbone -> (norms folded: BatchNorms + AN layers, of which AN)
FOLDED = {"r50-bn": (53, 0), "r50-an": (53, 16), "aognet12m-an": (None, None)}


def folded_pair(name: str) -> tuple[nn.Module, nn.Module, int]:
    torch.manual_seed(0)
    model = randomize_batch_norms(create_backbone(name)).eval()
    folded = copy.deepcopy(model)
    return model, folded, fold_batch_norms(folded)


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max()) for k in a)


@pytest.mark.parametrize("name", sorted(FOLDED))
def test_folded_backbone_gives_the_same_features(name: str) -> None:
    model, folded, count = folded_pair(name)
    norms, an = FOLDED[name]
    assert not any(isinstance(m, (nn.BatchNorm2d, AttentiveBatchNorm2d)) and not _attention_norm(folded, m)
                   for m in folded.modules()), "every conv-BN pair is folded"
    if norms is not None:
        assert count == norms
        assert sum(isinstance(m, FoldedAttentiveBatchNorm2d) for m in folded.modules()) == an
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    assert max_rel_diff(ref, out) <= FEATURE_REL_TOL


def _attention_norm(model: nn.Module, norm: nn.Module) -> bool:
    """BatchNorms that follow no convolution of their own: AN's attention (k channels) and
    AOGNet's block output (after a sum of nodes)."""
    owners = {id(m.attention.norm) for m in model.modules() if hasattr(m, "attention") and m.attention.norm}
    outs = {id(m.out_norm) for m in model.modules() if hasattr(m, "out_norm")}
    return id(norm) in owners | outs


def test_a_folded_model_cannot_be_trained_and_the_original_is_untouched() -> None:
    model, folded, count = folded_pair("r50-an")
    assert count > 0 and isinstance(folded.bn1, FoldedNorm) and isinstance(model.bn1, nn.BatchNorm2d)
    assert model.conv1.bias is None and folded.conv1.bias is not None
    with pytest.raises(RuntimeError, match="folded into its convolutions for inference"):
        folded.train()
    folded.eval()  # eval mode stays possible
    with pytest.raises(ValueError, match="eval-mode models only"):
        fold_batch_norms(model.train())


def test_norms_of_each_image_are_not_folded() -> None:
    for name in ("r50-gn", "r50-sn"):
        model = create_backbone(name).eval()
        assert fold_batch_norms(model) == 0
        assert not any(isinstance(m, FoldedNorm) for m in model.modules())
