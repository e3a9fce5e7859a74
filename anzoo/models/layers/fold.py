"""Folding eval-mode BatchNorm into the convolution before it, for inference.

In eval mode a BatchNorm is a per-channel affine map ``y = (x - mean) / std * gamma + beta``
with fixed statistics, so ``bn(conv(x))`` is one convolution with rescaled weights and a bias:
one pass over the feature map less per norm. Attentive Normalization (BN form) folds its
normalisation the same way; its affine is a per-image mixture and stays, and its attention,
which reads the statistics of the un-normalised map, gets them back exactly from the folded
map (``mean(x) = std * mean(x') + mean``, ``var(x) = std^2 * var(x')``). GroupNorm, Switchable
Norm and AN (w/ GN) normalise with each image's own statistics and are left as they are.

Which convolution a norm follows is declared by the modules (``CONV_NORM_PAIRS``: attribute
names) and found in ``nn.Sequential`` containers (a ``Conv2d`` followed by a norm). A folded
model is for inference only: its ``train()`` raises.
"""
from __future__ import annotations

import torch
from torch import nn

from .attentive_norm import AttentiveBatchNorm2d, _apply_mixture, stat_dtype

__all__ = ["FoldedNorm", "FoldedAttentiveBatchNorm2d", "count_foldable", "fold_batch_norms"]


def _refuse_training(mode: bool) -> None:
    if mode:
        raise RuntimeError("this model's BatchNorms are folded into its convolutions for inference: "
                           "it cannot be trained (fold a copy, train the original)")


class FoldedNorm(nn.Identity):
    """Where a BatchNorm was: its work is done by the convolution before it."""

    def train(self, mode: bool = True) -> FoldedNorm:
        _refuse_training(mode)
        return super().train(False)


class FoldedAttentiveBatchNorm2d(nn.Module):
    """AN (BN form) after a convolution that already normalises: the per-image mixture of
    affines on the input, the attention from the statistics the input had before folding."""

    def __init__(self, an: AttentiveBatchNorm2d, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.num_features, self.k = an.num_features, an.k
        self.attention = an.attention
        self.mixture_weight, self.mixture_bias = an.mixture_weight, an.mixture_bias
        self.register_buffer("folded_mean", mean.reshape(1, -1, 1, 1).clone())
        self.register_buffer("folded_std", std.reshape(1, -1, 1, 1).clone())

    def train(self, mode: bool = True) -> FoldedAttentiveBatchNorm2d:
        _refuse_training(mode)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            dt = stat_dtype(x)
            xs = x.to(dt)
            mean = torch.nn.functional.adaptive_avg_pool2d(xs, 1)
            var = torch.var(xs, dim=(2, 3), keepdim=True, correction=1)
            std, shift = self.folded_std.to(dt), self.folded_mean.to(dt)
            means = self.attention.standardize(std * mean + shift, std * std * var)
            lam = self.attention.from_standardized_means(means)
            out = _apply_mixture(xs, lam, self.mixture_weight.to(dt), self.mixture_bias.to(dt))
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, k={self.k}, folded"


def _statistics(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.training or bn.running_mean is None or bn.running_var is None:
        raise ValueError("only BatchNorms in eval mode with running statistics can be folded")
    return bn.running_mean.double(), torch.sqrt(bn.running_var.double() + bn.eps)


def _fold_into(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """conv's output times ``scale`` plus ``shift`` per channel, computed in float64 and stored
    in conv's dtype."""
    weight = conv.weight.detach()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    new_weight = (weight.double() * scale.reshape(-1, 1, 1, 1)).to(weight.dtype)
    new_bias = (bias * scale + shift).to(weight.dtype)
    conv.weight = nn.Parameter(new_weight, requires_grad=False)
    conv.bias = nn.Parameter(new_bias, requires_grad=False)


def _foldable(conv: nn.Module | None, norm: nn.Module | None) -> bool:
    """A convolution followed by a BatchNorm (or AN's BatchNorm form): statistics fixed in eval mode."""
    if not isinstance(conv, nn.Conv2d):
        return False
    return type(norm) is nn.BatchNorm2d or (isinstance(norm, AttentiveBatchNorm2d) and type(norm.norm) is nn.BatchNorm2d
                                            and not norm.norm.affine)


def fold_pair(conv: nn.Module, norm: nn.Module) -> nn.Module | None:
    """Fold ``norm`` into ``conv`` (changed in place); the module to put where ``norm`` was, or
    None when ``norm`` is not foldable (not a BatchNorm, or statistics of each image)."""
    if not _foldable(conv, norm):
        return None
    if type(norm) is nn.BatchNorm2d:
        mean, std = _statistics(norm)
        gamma = norm.weight.detach().double() if norm.affine else torch.ones_like(mean)
        beta = norm.bias.detach().double() if norm.affine else torch.zeros_like(mean)
        _fold_into(conv, gamma / std, beta - mean * gamma / std)
        return FoldedNorm()
    assert isinstance(norm, AttentiveBatchNorm2d) and isinstance(conv, nn.Conv2d)
    mean, std = _statistics(norm.norm)
    _fold_into(conv, 1.0 / std, -mean / std)
    return FoldedAttentiveBatchNorm2d(norm, mean.float(), std.float())


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    pairs = list(getattr(type(module), "CONV_NORM_PAIRS", ()))
    if isinstance(module, nn.Sequential):
        names = [name for name, _ in module.named_children()]
        pairs += list(zip(names[:-1], names[1:]))
    return pairs


def _conv_norm_pairs(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module, nn.Module]]:
    """(parent, norm's attribute name, conv, norm) of every foldable pair."""
    out = []
    for module in list(model.modules()):
        for conv_name, norm_name in _pairs(module):
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if _foldable(conv, norm):
                out.append((module, norm_name, conv, norm))
    return out


def count_foldable(model: nn.Module) -> int:
    """How many norms :func:`fold_batch_norms` would fold (nothing is changed)."""
    return len(_conv_norm_pairs(model))


@torch.no_grad()
def fold_batch_norms(model: nn.Module) -> int:
    """Fold every foldable norm of ``model`` (in eval mode) into the convolution before it,
    in place; returns how many were folded. The model is for inference from then on."""
    if model.training:
        raise ValueError("fold_batch_norms folds eval-mode models only (call .eval() first)")
    pairs = _conv_norm_pairs(model)
    for module, norm_name, conv, norm in pairs:
        setattr(module, norm_name, fold_pair(conv, norm))  # Sequential children are attributes too
    return len(pairs)
