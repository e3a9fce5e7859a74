"""ResNet-50/101 backbones: structure equal to the released AOGNet-v2 ImageNet models (their
state-dict manifests in tests/fixtures/manifests), checkpoint loading in the original layout,
training behaviour (gradients, frozen stages, norm_eval) and autocast."""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from anzoo.errors import CheckpointError, UnknownModelError
from anzoo.factory import create_backbone
from anzoo.models.backbones import get_backbone_spec, list_backbones
from anzoo.models.backbones.resnet import checkpoint_filter_fn
from anzoo.models.layers import AttentiveBatchNorm2d, SwitchNorm2d

MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "manifests"
RESNET_NAMES = ["r50-bn", "r50-an", "r50-gn", "r50-sn", "r101-bn", "r101-an", "r101-gn", "r101-sn"]


def manifest(name: str) -> dict:
    return json.loads((MANIFESTS / f"imagenet-{name}.manifest.json").read_text())


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _plausible(key: str, shape: list[int] | torch.Size, gen: torch.Generator) -> torch.Tensor:
    """A random tensor of ``shape`` with values a trained model could hold for ``key``, in the
    original (AOGNet-v2) or anzoo naming: keeps a 50-layer forward pass finite and O(1)."""
    shape = list(shape)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.tensor(1000, dtype=torch.long)
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=gen)
    if leaf == "running_mean":
        return 0.1 * torch.randn(shape, generator=gen)
    if leaf in ("weight_", "mixture_weight"):  # gamma = lam @ w, lam ~ 0.5: keep gamma ~ 0.5
        return (1 + 0.1 * torch.randn(shape, generator=gen)) / shape[0]
    if leaf in ("bias_", "mixture_bias"):
        return 0.1 * torch.randn(shape, generator=gen) / shape[0]
    if len(shape) == 1 and leaf == "weight":
        return 0.2 + 0.8 * torch.rand(shape, generator=gen)
    if len(shape) == 1:  # biases, SN's mean/var weights
        return 0.1 * torch.randn(shape, generator=gen)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)


def original_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the released layout (original names), built from the manifest."""
    gen = torch.Generator().manual_seed(seed)
    return {k: _plausible(k, shape, gen) for k, shape in manifest(name)["keys"].items()}


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model.load_state_dict({k: _plausible(k, v.shape, gen) for k, v in model.state_dict().items()})
    return model


def x64(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(n))


@pytest.fixture(scope="module")
def r50_an_original() -> dict[str, torch.Tensor]:
    return original_state_dict("r50-an")


# --------------------------------------------------------------------------- structure
def test_registered_names() -> None:
    assert set(RESNET_NAMES) <= set(list_backbones())
    with pytest.raises(UnknownModelError, match="r50-an"):
        create_backbone("r50-ann")


@pytest.mark.parametrize("name, params", [("r50-bn", 25_557_032), ("r50-an", 25_755_420),
                                          ("r101-bn", 44_549_160), ("r101-an", 45_000_644)])
def test_structure_equals_released_manifest(name: str, params: int) -> None:
    ref = manifest(name)
    assert ref["params"] == params
    model = create_backbone(name, num_classes=1000)
    assert _num_params(model) == params

    own = model.state_dict()
    converted = checkpoint_filter_fn({k: torch.empty(shape) for k, shape in ref["keys"].items()})
    assert len(converted) == len(ref["keys"])  # one-to-one
    assert set(converted) == set(own)
    for key, tensor in converted.items():
        assert tuple(tensor.shape) == tuple(own[key].shape), key
    # only AN keys are renamed
    renamed = set(ref["keys"]) - set(converted)
    assert all(".bn2." in k for k in renamed)
    assert bool(renamed) == name.endswith("-an")


def test_an_only_in_bn2_with_k_per_stage() -> None:
    model = create_backbone("r50-an")
    an_layers = {n: m for n, m in model.named_modules() if isinstance(m, AttentiveBatchNorm2d)}
    assert len(an_layers) == 16 and all(n.endswith(".bn2") for n in an_layers)
    ks = {n.split(".")[0]: m.k for n, m in an_layers.items()}
    assert ks == {"layer1": 10, "layer2": 10, "layer3": 20, "layer4": 20}
    assert type(model.bn1) is nn.BatchNorm2d and type(model.layer1[0].bn3) is nn.BatchNorm2d
    assert type(model.layer1[0].downsample[1]) is nn.BatchNorm2d
    # stem and stride placement (pytorch style: stride in the 3x3)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d) and model.maxpool.kernel_size == 3
    assert model.layer2[0].conv1.stride == (1, 1) and model.layer2[0].conv2.stride == (2, 2)


@pytest.mark.parametrize("name, bn_params, num_norms", [("r50-gn", 25_557_032, 53), ("r50-sn", 25_557_032, 53),
                                                        ("r101-gn", 44_549_160, 104)])
def test_gn_and_sn_variants(name: str, bn_params: int, num_norms: int) -> None:
    model = create_backbone(name, num_classes=1000)
    norms = [m for m in model.modules() if isinstance(m, (nn.GroupNorm, SwitchNorm2d, nn.BatchNorm2d))]
    assert len(norms) == num_norms
    if name.endswith("-gn"):
        assert all(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for m in norms)
        assert _num_params(model) == bn_params  # GN has BN's affine parameters
    else:
        assert all(isinstance(m, SwitchNorm2d) for m in norms)
        assert _num_params(model) == bn_params + 6 * num_norms  # + mean and var mixture weights
    if name.startswith("r50"):
        model.train()
        out = model(x64())
        assert out.shape == (2, 1000) and torch.isfinite(out).all()


def test_detection_and_classifier_outputs() -> None:
    model = create_backbone("r50-an").eval()
    assert model.out_channels == [256, 512, 1024, 2048]
    assert not hasattr(model, "fc")
    with torch.no_grad():
        feats = model(x64(1))
    assert list(feats) == ["c2", "c3", "c4", "c5"]
    for (key, f), c, stride in zip(feats.items(), model.out_channels, (4, 8, 16, 32)):
        assert f.shape == (1, c, 64 // stride, 64 // stride), key

    classifier = create_backbone("r50-bn", num_classes=1000).eval()
    with torch.no_grad():
        assert classifier(x64(1)).shape == (1, 1000)


# --------------------------------------------------------------------------- checkpoints
def _save_original(sd: dict[str, torch.Tensor], path: Path, zipped: bool) -> Path:
    ckpt = {"epoch": 120, "arch": "resnet50", "best_acc1": 77.5,
            "state_dict": {"module." + k: v for k, v in sd.items()}}
    if not zipped:
        torch.save(ckpt, path)
        return path
    inner = path.with_suffix(".inner")
    torch.save(ckpt, inner)
    archive = path.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("resnet-50-an/config.yaml", "arch: 'resnet50'\nnorm_name: 'MixtureBatchNorm2d'\n")
        zf.write(inner, "resnet-50-an/model_best.pth.tar")
    return archive


@pytest.mark.slow
@pytest.mark.parametrize("zipped", [False, True], ids=["pth", "zip"])
def test_original_checkpoint_loads(tmp_path: Path, r50_an_original: dict, zipped: bool) -> None:
    path = _save_original(r50_an_original, tmp_path / "model_best.pth.tar", zipped)
    loaded = create_backbone("r50-an", num_classes=1000, pretrained=path).eval()

    # values land where they belong (checked by name, independently of the converter)
    sd = loaded.state_dict()
    orig = r50_an_original
    assert torch.equal(sd["layer3.2.bn2.mixture_weight"], orig["layer3.2.bn2.weight_"])
    assert torch.equal(sd["layer3.2.bn2.mixture_bias"], orig["layer3.2.bn2.bias_"])
    assert torch.equal(sd["layer3.2.bn2.norm.running_var"], orig["layer3.2.bn2.running_var"])
    assert torch.equal(sd["layer3.2.bn2.attention.conv.weight"],
                       orig["layer3.2.bn2.attention_weights.attention.0.weight"])
    assert torch.equal(sd["layer3.2.bn2.attention.norm.running_mean"],
                       orig["layer3.2.bn2.attention_weights.attention.1.running_mean"])
    assert torch.equal(sd["layer4.1.bn3.weight"], orig["layer4.1.bn3.weight"])
    assert torch.equal(sd["fc.weight"], orig["fc.weight"])

    direct = create_backbone("r50-an", num_classes=1000)
    direct.load_state_dict(checkpoint_filter_fn(orig), strict=True)
    direct.eval()
    if not zipped:  # one forward comparison is enough; the zip test checks the tensors
        x = x64(1)
        with torch.no_grad():
            logits = loaded(x)
            torch.testing.assert_close(logits, direct(x), rtol=0, atol=0)
        assert torch.isfinite(logits).all() and logits.std() > 1e-3
    direct_sd = direct.state_dict()
    assert all(torch.equal(v, direct_sd[k]) for k, v in sd.items())

    # the detection backbone loads the same file without the classifier
    backbone = create_backbone("r50-an", pretrained=path)
    backbone_sd = backbone.state_dict()
    assert set(backbone_sd) == {k for k in direct_sd if not k.startswith("fc.")}
    assert all(torch.equal(v, direct_sd[k]) for k, v in backbone_sd.items())


@pytest.mark.slow
def test_plain_state_dict_and_anzoo_layout_load(tmp_path: Path) -> None:
    sd = original_state_dict("r50-bn", seed=1)
    torch.save(sd, tmp_path / "plain.pth")
    model = create_backbone("r50-bn", num_classes=1000, pretrained=tmp_path / "plain.pth")
    assert torch.equal(model.state_dict()["layer2.0.downsample.0.weight"], sd["layer2.0.downsample.0.weight"])
    # a state dict saved from anzoo's own model passes the filter unchanged
    an_model = randomize(create_backbone("r50-an", num_classes=1000))
    own = an_model.state_dict()
    assert checkpoint_filter_fn(own).keys() == own.keys()
    torch.save(own, tmp_path / "own.pth")
    again = create_backbone("r50-an", num_classes=1000, pretrained=tmp_path / "own.pth")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in own.items())


def test_checkpoint_that_does_not_fit(tmp_path: Path, r50_an_original: dict) -> None:
    sd = dict(r50_an_original)
    del sd["layer2.1.conv1.weight"]
    sd["layer2.1.bn2.attention_weights.attention.2.weight"] = torch.zeros(3)  # unknown AN part
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    sd["layer1.0.bn2.weight_"] = torch.zeros(20, 64)  # wrong k
    path = _save_original(sd, tmp_path / "bad.pth.tar", zipped=False)
    with pytest.raises(CheckpointError) as info:
        create_backbone("r50-an", num_classes=1000, pretrained=path)
    msg = str(info.value)
    assert "missing keys: layer2.1.conv1.weight" in msg
    assert "layer2.1.bn2.attention_weights.attention.2.weight" in msg  # reported, not dropped
    assert "layer5.0.conv1.weight" in msg
    assert "layer1.0.bn2.mixture_weight (20, 64) vs (10, 64)" in msg

    # a BN checkpoint is not an AN model
    torch.save(original_state_dict("r50-bn"), tmp_path / "bn.pth")
    with pytest.raises(CheckpointError, match="missing keys"):
        create_backbone("r50-an", pretrained=tmp_path / "bn.pth")


# --------------------------------------------------------------------------- training
@pytest.mark.slow
def test_gradients_flow_in_train_mode() -> None:
    model = randomize(create_backbone("r50-an", num_classes=10)).train()
    logits = model(x64(2))
    torch.nn.functional.cross_entropy(logits, torch.arange(2)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # running statistics moved (batch statistics in train mode)
    assert int(model.layer3[0].bn2.norm.num_batches_tracked) == 1001


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _sgd_step(model: nn.Module) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1)
    feats = model(x64(2))
    sum(f.square().mean() for f in feats.values()).backward()
    opt.step()


@pytest.mark.slow
def test_frozen_stages_and_norm_eval() -> None:
    model = randomize(create_backbone("r50-an", frozen_stages=1, norm_eval=True))
    model.train()
    frozen_prefixes = ("conv1.", "bn1.", "layer1.")
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen_prefixes)), name
    assert not model.layer1.training and not model.bn1.training and model.layer2.training
    assert not model.layer2[0].bn2.norm.training and not model.layer2[0].bn2.attention.norm.training
    before = _snapshot(model)
    _sgd_step(model)
    after = model.state_dict()
    for key, old in before.items():
        if key.startswith(frozen_prefixes) or "running" in key or "num_batches" in key:
            assert torch.equal(after[key], old), f"{key} changed"
    changed = [k for k in before if k.startswith("layer2.") and not torch.equal(after[k], before[k])]
    assert "layer2.0.conv2.weight" in changed and "layer2.0.bn2.mixture_weight" in changed

    # without norm_eval the unfrozen stages update their statistics, the frozen ones do not
    model = randomize(create_backbone("r50-an", frozen_stages=1)).train()
    before = _snapshot(model)
    _sgd_step(model)
    after = model.state_dict()
    assert not torch.equal(after["layer2.0.bn1.running_mean"], before["layer2.0.bn1.running_mean"])
    assert not torch.equal(after["layer2.0.bn2.attention.norm.running_var"],
                           before["layer2.0.bn2.attention.norm.running_var"])
    assert torch.equal(after["layer1.0.bn2.norm.running_mean"], before["layer1.0.bn2.norm.running_mean"])
    assert torch.equal(after["bn1.running_var"], before["bn1.running_var"])


def test_freezing_applies_at_construction() -> None:
    model = create_backbone("r50-bn", frozen_stages=0)
    assert not model.conv1.weight.requires_grad and model.layer1[0].conv1.weight.requires_grad
    with pytest.raises(ValueError, match="frozen_stages"):
        create_backbone("r50-bn", frozen_stages=5)


def test_autocast_bf16_on_cpu() -> None:
    model = randomize(create_backbone("r50-an")).eval()
    x = x64(1)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    for key in ref:
        assert out[key].dtype == torch.bfloat16
        rel = (out[key].float() - ref[key]).norm() / ref[key].norm()
        assert rel < 0.05, (key, rel.item())


def test_spec_carries_the_filter() -> None:
    for name in RESNET_NAMES:
        assert get_backbone_spec(name).checkpoint_filter_fn is checkpoint_filter_fn
