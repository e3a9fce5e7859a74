"""Attentive Normalization (BN and GN forms) and Switchable Normalization against their
formulas, computed here independently in float64 NumPy on small tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from anzoo.models.layers import (
    AttentiveBatchNorm2d,
    AttentiveGroupNorm,
    HardSigmoid,
    SwitchNorm2d,
    build_norm,
)
from anzoo.models.layers.convert import attentive_norm_key

N, C, H, W, K = 4, 6, 5, 7, 3
BN_EPS = 1e-5
ATT_VAR_EPS = 1e-3


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _hard_sigmoid(t: np.ndarray) -> np.ndarray:
    return np.clip(t + 3.0, 0.0, 6.0) / 6.0


def _standardized_means(x: np.ndarray) -> np.ndarray:
    """(N, C): spatial mean over sqrt(unbiased spatial variance + 1e-3)."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return flat.mean(-1) / np.sqrt(flat.var(-1, ddof=1) + ATT_VAR_EPS)


def _mix(xhat: np.ndarray, lam: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (lam @ w)[:, :, None, None] * xhat + (lam @ b)[:, :, None, None]


def _randomize_an(m: AttentiveBatchNorm2d | AttentiveGroupNorm, gen: torch.Generator) -> None:
    with torch.no_grad():
        m.mixture_weight.copy_(1 + 0.3 * torch.randn(m.mixture_weight.shape, generator=gen))
        m.mixture_bias.copy_(0.3 * torch.randn(m.mixture_bias.shape, generator=gen))
        m.attention.conv.weight.copy_(0.5 * torch.randn(m.attention.conv.weight.shape, generator=gen))
        if m.attention.conv.bias is not None:
            m.attention.conv.bias.copy_(0.5 * torch.randn(m.attention.conv.bias.shape, generator=gen))
        if m.attention.norm is not None:
            m.attention.norm.weight.copy_(0.5 + torch.rand(K, generator=gen))
            m.attention.norm.bias.copy_(0.3 * torch.randn(K, generator=gen))


@pytest.fixture
def x() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    # channel-dependent offsets and scales, so per-channel statistics matter
    return (torch.randn(N, C, H, W, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 3, C).view(1, C, 1, 1)
            + torch.linspace(-2, 2, C, dtype=torch.float64).view(1, C, 1, 1))


def _an_bn_expected(layer: AttentiveBatchNorm2d, xn: np.ndarray, train: bool) -> np.ndarray:
    wc = _np(layer.attention.conv.weight).reshape(K, C)
    g, b = _np(layer.attention.norm.weight), _np(layer.attention.norm.bias)
    t = _standardized_means(xn) @ wc.T  # (N, K)
    if train:
        mu, var = xn.mean((0, 2, 3)), xn.var((0, 2, 3))
        t_mu, t_var = t.mean(0), t.var(0)
    else:
        mu, var = _np(layer.norm.running_mean), _np(layer.norm.running_var)
        t_mu, t_var = _np(layer.attention.norm.running_mean), _np(layer.attention.norm.running_var)
    xhat = (xn - mu[None, :, None, None]) / np.sqrt(var[None, :, None, None] + BN_EPS)
    lam = _hard_sigmoid((t - t_mu) / np.sqrt(t_var + BN_EPS) * g + b)
    assert ((lam > 0) & (lam < 1)).mean() > 0.5, "test inputs should keep the gate unsaturated"
    return _mix(xhat, lam, _np(layer.mixture_weight), _np(layer.mixture_bias))


# measured (outputs, running statistics): <= 7.1e-15 in float64, <= 1.9e-6 in float32, on every
# kernel choice (tools/kernel_spread.py --tests)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_attentive_batch_norm_train_mode(x: torch.Tensor, dtype: torch.dtype, tol: float) -> None:
    layer = AttentiveBatchNorm2d(C, K)
    _randomize_an(layer, torch.Generator().manual_seed(1))
    layer = layer.to(dtype).train()
    expected = _an_bn_expected(layer, _np(x), train=True)
    out = layer(x.to(dtype))
    assert out.dtype == dtype and out.shape == x.shape
    np.testing.assert_allclose(_np(out), expected, rtol=tol, atol=tol)

    # running statistics: momentum 0.1 from (0, 1), unbiased variances
    xn = _np(x)
    t = _standardized_means(xn) @ _np(layer.attention.conv.weight).reshape(K, C).T
    np.testing.assert_allclose(_np(layer.norm.running_mean), 0.1 * xn.mean((0, 2, 3)), rtol=tol, atol=tol)
    np.testing.assert_allclose(_np(layer.norm.running_var), 0.9 + 0.1 * xn.var((0, 2, 3), ddof=1), rtol=tol, atol=tol)
    np.testing.assert_allclose(_np(layer.attention.norm.running_mean), 0.1 * t.mean(0), rtol=tol, atol=tol)
    np.testing.assert_allclose(_np(layer.attention.norm.running_var), 0.9 + 0.1 * t.var(0, ddof=1),
                               rtol=tol, atol=tol)
    assert int(layer.norm.num_batches_tracked) == 1
    assert int(layer.attention.norm.num_batches_tracked) == 1


# measured: <= 7.1e-15 in float64, <= 3.5e-6 in float32 (ATEN_CPU_CAPABILITY=default; 1.7e-6 as is)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_attentive_batch_norm_eval_mode(x: torch.Tensor, dtype: torch.dtype, tol: float) -> None:
    gen = torch.Generator().manual_seed(2)
    layer = AttentiveBatchNorm2d(C, K)
    _randomize_an(layer, gen)
    with torch.no_grad():
        layer.norm.running_mean.copy_(torch.randn(C, generator=gen))
        layer.norm.running_var.copy_(0.5 + 2 * torch.rand(C, generator=gen))
        layer.attention.norm.running_mean.copy_(0.5 * torch.randn(K, generator=gen))
        layer.attention.norm.running_var.copy_(0.5 + torch.rand(K, generator=gen))
    layer = layer.to(dtype).eval()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    expected = _an_bn_expected(layer, _np(x), train=False)
    np.testing.assert_allclose(_np(layer(x.to(dtype))), expected, rtol=tol, atol=tol)
    # one sample at a time gives the same answer (no batch statistics in eval mode)
    np.testing.assert_allclose(_np(layer(x[1:2].to(dtype))), expected[1:2], rtol=tol, atol=tol)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed in eval mode"


def test_attentive_batch_norm_norm_child_in_eval_uses_running_stats(x: torch.Tensor) -> None:
    """``norm_eval`` puts the BatchNorm children in eval mode while the module trains."""
    layer = AttentiveBatchNorm2d(C, K).double()
    _randomize_an(layer, torch.Generator().manual_seed(3))
    layer.train()
    layer.norm.eval()
    layer.attention.norm.eval()
    expected = _an_bn_expected(layer, _np(x), train=False)
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-10, atol=1e-10)  # measured: <= 5.3e-15
    assert int(layer.norm.num_batches_tracked) == 0


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_attentive_group_norm(x: torch.Tensor, groups: int) -> None:
    layer = AttentiveGroupNorm(groups, C, K).double()
    _randomize_an(layer, torch.Generator().manual_seed(4))
    xn = _np(x)
    grouped = xn.reshape(N, groups, -1)
    xhat = ((grouped - grouped.mean(-1, keepdims=True)) / np.sqrt(grouped.var(-1, keepdims=True) + BN_EPS)
            ).reshape(xn.shape)
    t = _standardized_means(xn) @ _np(layer.attention.conv.weight).reshape(K, C).T + _np(layer.attention.conv.bias)
    lam = _hard_sigmoid(t)
    assert ((lam > 0) & (lam < 1)).mean() > 0.5
    expected = _mix(xhat, lam, _np(layer.mixture_weight), _np(layer.mixture_bias))
    for mode in (True, False):  # no batch statistics: both modes agree
        layer.train(mode)
        np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-10, atol=1e-10)
    assert layer.attention.norm is None and not list(layer.buffers())


def _switch_norm_expected(sn: SwitchNorm2d, xn: np.ndarray, train: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Switchable Normalization as its authors' code defines it: instance variance unbiased,
    layer and batch variances from the per-instance second moments."""
    flat = xn.reshape(N, C, -1)
    mean_in, var_in = flat.mean(-1), flat.var(-1, ddof=1)  # (N, C)
    second = var_in + mean_in**2
    mean_ln = mean_in.mean(1, keepdims=True)
    var_ln = second.mean(1, keepdims=True) - mean_ln**2
    if train:
        mean_bn = mean_in.mean(0, keepdims=True)
        var_bn = second.mean(0, keepdims=True) - mean_bn**2
    else:
        mean_bn, var_bn = _np(sn.running_mean)[None], _np(sn.running_var)[None]
    wm = np.exp(_np(sn.mean_weight)) / np.exp(_np(sn.mean_weight)).sum()
    wv = np.exp(_np(sn.var_weight)) / np.exp(_np(sn.var_weight)).sum()
    mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
    var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    y = (xn - mean[:, :, None, None]) / np.sqrt(var[:, :, None, None] + BN_EPS)
    y = y * _np(sn.weight)[None, :, None, None] + _np(sn.bias)[None, :, None, None]
    return y, mean_bn[0], var_bn[0]


def test_switch_norm_train_and_eval(x: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(5)
    sn = SwitchNorm2d(C).double()
    with torch.no_grad():
        sn.weight.copy_(0.5 + torch.rand(C, generator=gen))
        sn.bias.copy_(torch.randn(C, generator=gen))
        sn.mean_weight.copy_(torch.tensor([0.3, -0.5, 1.0]))
        sn.var_weight.copy_(torch.tensor([-0.2, 0.8, 0.1]))
    sn.train()
    expected, mean_bn, var_bn = _switch_norm_expected(sn, _np(x), train=True)
    np.testing.assert_allclose(_np(sn(x)), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(_np(sn.running_mean), 0.1 * mean_bn, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(sn.running_var), 0.9 + 0.1 * var_bn, rtol=1e-10, atol=1e-12)

    with torch.no_grad():
        sn.running_mean.copy_(torch.randn(C, generator=gen))
        sn.running_var.copy_(0.5 + torch.rand(C, generator=gen))
    sn.eval()
    before = sn.running_mean.clone()
    expected, _, _ = _switch_norm_expected(sn, _np(x), train=False)
    np.testing.assert_allclose(_np(sn(x)), expected, rtol=1e-10, atol=1e-10)
    assert torch.equal(sn.running_mean, before)


def test_switch_norm_with_instance_weights_only_is_instance_norm(x: torch.Tensor) -> None:
    """A softmax concentrated on the instance statistics gives instance normalization (with
    the unbiased variance), whatever the batch."""
    sn = SwitchNorm2d(C).double()
    with torch.no_grad():
        sn.mean_weight.copy_(torch.tensor([50.0, 0.0, 0.0]))
        sn.var_weight.copy_(torch.tensor([50.0, 0.0, 0.0]))
    flat = _np(x).reshape(N, C, -1)
    expected = ((flat - flat.mean(-1, keepdims=True)) / np.sqrt(flat.var(-1, ddof=1, keepdims=True) + BN_EPS))
    np.testing.assert_allclose(_np(sn(x)).reshape(N, C, -1), expected, rtol=1e-8, atol=1e-8)  # measured: 1.3e-15


@pytest.mark.parametrize("kind", ["an", "an_gn", "sn"])
def test_statistics_stay_fp32_under_autocast(kind: str) -> None:
    """Under bf16 autocast the layers compute as in fp32: a large offset with small
    variations is exactly where bf16 statistics would fail."""
    torch.manual_seed(0)
    layer = build_norm(kind, 64, k=K)
    if isinstance(layer, (AttentiveBatchNorm2d, AttentiveGroupNorm)):
        _randomize_an(layer, torch.Generator().manual_seed(6))
    xf = 100.0 + 0.01 * torch.randn(2, 64, 6, 6)
    for mode in (True, False):
        layer.train(mode)
        ref = layer(xf)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(xf)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)  # measured: 0 (the same fp32 kernels)
        # a bf16 input (e.g. a conv's output under autocast) gives a bf16 output, computed in fp32
        xb = xf.bfloat16()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outb = layer(xb)
        assert outb.dtype == torch.bfloat16
        # bf16 rounding of the output, not kernels: measured 0.245 (a third of the limit) everywhere
        torch.testing.assert_close(outb.float(), layer(xb.float()), rtol=1e-2, atol=1e-2)


def test_hard_sigmoid() -> None:
    out = HardSigmoid()(torch.tensor([-4.0, -3.0, 0.0, 1.5, 3.0, 9.0]))
    assert out.tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


def test_build_norm_kinds() -> None:
    assert type(build_norm("bn", 64)) is nn.BatchNorm2d
    gn = build_norm("gn", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32
    assert isinstance(build_norm("sn", 64), SwitchNorm2d)
    an = build_norm("an", 64, k=10)
    assert isinstance(an, AttentiveBatchNorm2d) and an.mixture_weight.shape == (10, 64)
    assert an.attention.conv.bias is None and an.attention.norm.eps == 1e-5 and an.norm.eps == 1e-5
    an_gn = build_norm("an_gn", 64, k=20)
    assert isinstance(an_gn, AttentiveGroupNorm) and an_gn.num_groups == 32
    assert an_gn.attention.conv.bias is not None
    with pytest.raises(ValueError, match="k"):
        build_norm("an", 64)
    with pytest.raises(ValueError, match="unknown norm"):
        build_norm("ln", 64)


def test_attentive_norm_key_mapping() -> None:
    assert attentive_norm_key("weight_") == "mixture_weight"
    assert attentive_norm_key("bias_") == "mixture_bias"
    assert attentive_norm_key("running_var") == "norm.running_var"
    assert attentive_norm_key("num_batches_tracked") == "norm.num_batches_tracked"
    assert attentive_norm_key("attention_weights.attention.0.weight") == "attention.conv.weight"
    assert attentive_norm_key("attention_weights.attention.1.running_mean") == "attention.norm.running_mean"
    with pytest.raises(KeyError):
        attentive_norm_key("weight")
    # every mapped name exists in the module
    names = set(AttentiveBatchNorm2d(C, K).state_dict())
    for rest in ("weight_", "bias_", "running_mean", "running_var", "num_batches_tracked",
                 "attention_weights.attention.0.weight", "attention_weights.attention.1.weight",
                 "attention_weights.attention.1.bias", "attention_weights.attention.1.running_mean",
                 "attention_weights.attention.1.running_var",
                 "attention_weights.attention.1.num_batches_tracked"):
        assert attentive_norm_key(rest) in names


def test_attentive_batch_norm_trains_under_autocast() -> None:
    """A conv's bf16 output goes through AN; gradients reach every fp32 parameter."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, padding=1)
    layer = AttentiveBatchNorm2d(16, K).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(conv(torch.randn(4, 3, 8, 8)))
    assert y.dtype == torch.bfloat16
    y.float().square().mean().backward()
    for name, p in [*layer.named_parameters(), ("conv.weight", conv.weight)]:
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
