"""Switchable Normalization (Luo, Ren, Peng, Zhang & Li, "Differentiable Learning-to-Normalize
via Switchable Normalization", ICLR 2019, arXiv:1806.10779).

The mean and variance used to normalize are learned softmax mixtures of three estimates:
instance (per sample and channel), layer (per sample) and batch (per channel)::

    mu = w_in * mu_in + w_ln * mu_ln + w_bn * mu_bn      (w = softmax(mean_weight))
    s2 = v_in * s2_in + v_ln * s2_ln + v_bn * s2_bn      (v = softmax(var_weight))
    y = gamma * (x - mu) / sqrt(s2 + eps) + beta

Instance and layer statistics come from the sample at hand in every mode; the batch ones
are replaced by running averages in eval mode (momentum as in ``nn.BatchNorm2d``).
Variances are biased except the instance one, which, as in the paper's code, is unbiased.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SwitchNorm2d"]


class SwitchNorm2d(nn.Module):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        # Order of the three components: instance, layer, batch.
        self.mean_weight = nn.Parameter(torch.ones(3))
        self.var_weight = nn.Parameter(torch.ones(3))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        with torch.autocast(device_type=x.device.type, enabled=False):
            dt = torch.promote_types(x.dtype, torch.float32)  # half inputs: fp32 statistics
            xf = x.to(dt).reshape(n, c, -1)
            var_in, mean_in = torch.var_mean(xf, dim=2, keepdim=True, correction=1)
            # The paper's code pools second moments: var_ln = mean_c(var_in + mean_in^2) - mean_ln^2.
            # The same quantity as mean_c(var_in) + mean_c((mean_in - mean_ln)^2) avoids the
            # cancellation of E[x^2] - E[x]^2 (negative variances, NaN) when |mean| >> std.
            mean_ln = mean_in.mean(1, keepdim=True)
            var_ln = var_in.mean(1, keepdim=True) + (mean_in - mean_ln).square().mean(1, keepdim=True)
            if self.training:
                mean_bn = mean_in.mean(0, keepdim=True)
                var_bn = var_in.mean(0, keepdim=True) + (mean_in - mean_bn).square().mean(0, keepdim=True)
                with torch.no_grad():
                    self.running_mean.lerp_(mean_bn.flatten().to(self.running_mean.dtype), self.momentum)
                    self.running_var.lerp_(var_bn.flatten().to(self.running_var.dtype), self.momentum)
            else:
                mean_bn = self.running_mean.to(dt).view(1, c, 1)
                var_bn = self.running_var.to(dt).view(1, c, 1)
            wm = torch.softmax(self.mean_weight.to(dt), 0)
            wv = torch.softmax(self.var_weight.to(dt), 0)
            mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
            var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
            y = (xf - mean) * torch.rsqrt(var + self.eps)
            y = y.reshape_as(x) * self.weight.to(dt).view(1, c, 1, 1) + self.bias.to(dt).view(1, c, 1, 1)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
