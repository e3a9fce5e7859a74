"""Attentive Normalization (Li, Sun & Wu, arXiv:1908.01259).

AN replaces the single affine transform that follows a feature normalization by a
per-sample mixture of ``k`` affine transforms::

    lam = attention(x)                          # (N, k), in [0, 1]
    gamma = lam @ mixture_weight                # (N, C)
    beta = lam @ mixture_bias                   # (N, C)
    y = gamma * normalize(x) + beta             # normalize(): BN or GN without affine

The attention reads the layer *input* x: its per-channel spatial mean scaled by the inverse
standard deviation (unbiased variance + 1e-3), a 1x1 convolution to k channels, then
(backbone form) a BatchNorm over the k channels, and a hard sigmoid relu6(t + 3) / 6.

Statistics are computed in float32 whatever the autocast dtype: the attention is driven
by small differences of means and variances that fp16 cannot resolve.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HardSigmoid", "AttentionWeights", "AttentiveBatchNorm2d", "AttentiveGroupNorm"]

ATTENTION_VAR_EPS = 1e-3


def stat_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs; float32/float64 inputs keep their own precision."""
    return torch.promote_types(x.dtype, torch.float32)


class HardSigmoid(nn.Module):
    """relu6(x + 3) / 6, the attention's gate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


class AttentionWeights(nn.Module):
    """Per-sample mixture weights ``(N, k)`` from the standardized channel means of x.

    Args:
        num_channels: C, the channels of the normalized feature map.
        k: number of mixture components.
        use_norm: backbone form (1x1 conv without bias, BatchNorm over k); otherwise the
            head form (1x1 conv with bias, no norm).
    """

    def __init__(self, num_channels: int, k: int, use_norm: bool = True) -> None:
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(num_channels, k, kernel_size=1, bias=not use_norm)
        self.norm = nn.BatchNorm2d(k) if use_norm else None
        self.gate = HardSigmoid()

    @staticmethod
    def standardized_means(x: torch.Tensor) -> torch.Tensor:
        """Spatial mean * rsqrt(unbiased spatial variance + 1e-3), shape (N, C, 1, 1), at
        least fp32. Pooling and variance are separate reductions, as in the reference
        implementation: the same kernels round the same way, and whole networks then match
        the reference's outputs bit for bit (checked on CPU)."""
        xs = x.to(stat_dtype(x))
        mean = F.adaptive_avg_pool2d(xs, 1)
        var = torch.var(xs, dim=(2, 3), keepdim=True, correction=1)
        return AttentionWeights.standardize(mean, var)

    @staticmethod
    def standardize(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """Channel means and unbiased variances -> the attention's input."""
        return mean * torch.rsqrt(var + ATTENTION_VAR_EPS)

    def from_standardized_means(self, means: torch.Tensor) -> torch.Tensor:
        """(N, k) mixture weights from :meth:`standardized_means`' (N, C, 1, 1) output."""
        with torch.autocast(device_type=means.device.type, enabled=False):
            t = self.conv(means)
            if self.norm is not None:
                t = self.norm(t)
            return self.gate(t).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.from_standardized_means(self.standardized_means(x))


def _apply_mixture(normalized: torch.Tensor, lam: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
    gamma = (lam @ weight)[:, :, None, None]
    beta = (lam @ bias)[:, :, None, None]
    return gamma * normalized + beta


class AttentiveBatchNorm2d(nn.Module):
    """AN with BatchNorm statistics, the backbones' form ("MixtureBatchNorm2d").

    The BatchNorm is a child module without affine (``norm``), so BN utilities
    (``norm_eval``, freezing, SyncBN conversion) treat it as any BatchNorm while the mixture
    parameters stay here.
    """

    def __init__(self, num_features: int, k: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.k = k
        self.norm = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.mixture_weight = nn.Parameter(torch.empty(k, num_features))
        self.mixture_bias = nn.Parameter(torch.empty(k, num_features))
        self.attention = AttentionWeights(num_features, k, use_norm=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.mixture_weight, 1.0, 0.1)
        nn.init.normal_(self.mixture_bias, 0.0, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.attention(x)
        bn = self.norm
        with torch.autocast(device_type=x.device.type, enabled=False):
            dt = stat_dtype(x)
            xs = x.to(dt)
            weight, bias = self.mixture_weight.to(dt), self.mixture_bias.to(dt)
            # Normalize, then mix, in both modes (no folding of the running statistics into
            # the mixture): the reference's order of operations, hence its exact roundings.
            out = _apply_mixture(bn(xs), lam, weight, bias)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, k={self.k}"


class AttentiveGroupNorm(nn.Module):
    """AN with GroupNorm statistics, the heads' "AN (w/ GN)" ("AttentiveGroupNorm").

    The attention is the head form: 1x1 conv with bias and a hard sigmoid, no norm.
    """

    def __init__(self, num_groups: int, num_channels: int, k: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.k = k
        self.eps = eps
        self.mixture_weight = nn.Parameter(torch.empty(k, num_channels))
        self.mixture_bias = nn.Parameter(torch.empty(k, num_channels))
        self.attention = AttentionWeights(num_channels, k, use_norm=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.mixture_weight, 1.0, 0.1)
        nn.init.normal_(self.mixture_bias, 0.0, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.attention(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            dt = stat_dtype(x)
            normalized = F.group_norm(x.to(dt), self.num_groups, eps=self.eps)
            out = _apply_mixture(normalized, lam, self.mixture_weight.to(dt), self.mixture_bias.to(dt))
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, k={self.k}, eps={self.eps}"
