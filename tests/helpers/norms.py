"""Eval-mode norms with statistics and affines away from the identity (a random model's
BatchNorms have mean 0, variance 1, gamma 1, beta 0: folding them would change nothing)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every BatchNorm2d of ``model`` (AN's included) gets running means in [-0.2, 0.2],
    variances in [0.5, 2] and, where it has an affine, gamma in [0.7, 1.3] and beta in
    [-0.1, 0.1]: mild, so that 50 layers of them keep the activations in range."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            c = m.num_features
            m.running_mean.copy_((torch.rand(c, generator=gen) - 0.5) * 0.4)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
            if m.affine:
                m.weight.copy_(0.7 + 0.6 * torch.rand(c, generator=gen))
                m.bias.copy_((torch.rand(c, generator=gen) - 0.5) * 0.2)
    return model
