"""AOGNet-12m/40m backbones: released structure, checkpoint loading, numerics, detection mode.

The manifests (tests/fixtures/manifests) list every key and shape of the released AOGNet-v2
ImageNet models. The frozen logits were computed with the AOGNet-v2 reference network (float64)
on weights given by a formula of each manifest key's position, see ``formula_state_dict``;
``tools/reference_values/aognet_logits.py`` computes them again from a clone of AOGNet-v2.
"""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from anzoo.errors import CheckpointError
from anzoo.factory import create_backbone
from anzoo.models.backbones import get_backbone_spec, list_backbones
from anzoo.models.backbones.aognet import AOGNet, NodeOp, NodeType
from anzoo.models.backbones.aognet.convert import convert_key
from anzoo.models.layers import AttentiveBatchNorm2d

MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "manifests"
NAMES = ["aognet12m-bn", "aognet12m-an", "aognet40m-bn", "aognet40m-an"]
PARAMS = {"aognet12m-bn": 12_259_099, "aognet12m-an": 12_373_355,
          "aognet40m-bn": 40_153_004, "aognet40m-an": 40_388_880}
OUT_CHANNELS = {"12m": [128, 256, 512, 824], "40m": [224, 448, 896, 1400]}


def manifest(name: str) -> dict[str, list[int]]:
    return json.loads((MANIFESTS / f"imagenet-{name}.manifest.json").read_text())["keys"]


def random_original_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in manifest(name).items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.05
    return sd


def formula_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Deterministic float64 weights in the original layout: sin of the element index shifted
    by the key's position in the manifest, scaled per kind of tensor."""
    sd = {}
    for idx, (key, shape) in enumerate(manifest(name).items()):
        n = math.prod(shape)
        t = torch.sin(torch.arange(n, dtype=torch.float64) * 0.7 + idx * 1.3).reshape(shape)
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.zeros(shape, dtype=torch.long)
        elif len(shape) == 4 or key == "fc.weight":
            sd[key] = t / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("running_var"):
            sd[key] = 1.0 + 0.5 * t * t
        elif key.endswith((".weight", "weight_")):
            sd[key] = 1.0 + 0.2 * t
        else:
            sd[key] = 0.1 * t
    return sd


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classifiers() -> dict[str, AOGNet]:
    """Each ImageNet model built once per module (the 40m ones take seconds)."""
    cache: dict[str, AOGNet] = {}

    class Lazy(dict):
        def __missing__(self, name: str) -> AOGNet:
            torch.manual_seed(0)
            cache[name] = model = create_backbone(name, num_classes=1000).eval()
            self[name] = model
            return model

    return Lazy()


def test_registered():
    assert set(NAMES) <= set(list_backbones())


@pytest.mark.parametrize("name", NAMES)
def test_param_count_and_manifest_keys(classifiers, name):
    model = classifiers[name]
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    original = manifest(name)
    converted = get_backbone_spec(name).checkpoint_filter_fn({k: torch.empty(v) for k, v in original.items()})
    assert len(converted) == len(original)  # 1:1
    own = model.state_dict()
    assert list(converted) == list(own)  # same keys, same (registration) order
    assert {k: list(v.shape) for k, v in converted.items()} == {k: list(v.shape) for k, v in own.items()}


@pytest.mark.parametrize("name", NAMES)
def test_nodes_per_stage(classifiers, name):
    model = classifiers[name]
    expected_types = [(3, 1, 3), (3, 1, 3), (8, 5, 8), (8, 5, 8)]
    blocks = [2, 2, 2, 1] if "12m" in name else [2, 2, 3, 1]
    an_per_block = [3, 3, 4, 4]  # nodes spanning the whole block (AN in their 3x3 conv's norm)
    for s, stage in enumerate(model.stages):
        assert len(stage.blocks) == blocks[s]
        assert (stage.transition is None) == (s == 0)
        for block in stage.blocks:
            g = block.graph
            assert tuple(g.count(t) for t in (NodeType.TERMINAL, NodeType.AND, NodeType.OR)) == expected_types[s]
            assert list(block.nodes) == [str(i) for i in g.order]
            n_an = sum(isinstance(op.norm2, AttentiveBatchNorm2d) for op in block.nodes.values())
            assert n_an == (an_per_block[s] if name.endswith("-an") else 0)
            if n_an:
                assert {op.norm2.k for op in block.nodes.values() if isinstance(op.norm2, AttentiveBatchNorm2d)} \
                    == {(10, 10, 20, 20)[s]}
            drops = [isinstance(op.drop, nn.Dropout2d) for op in block.nodes.values()]
            assert all(drops) if s >= 2 else not any(drops)


@pytest.mark.parametrize("name,expected", [
    ("aognet12m-bn", [54.11097802, 44.35655513, -26.44931128, -60.97187304, -11.72961135, 53.60807254,
                      -40.14506074, 35.60838623]),
    ("aognet12m-an", [1366.404022, 1019.374332, -729.3871577, -1475.141475, -192.4262982, 1354.812813,
                      -911.1133366, 794.7810487]),
])
def test_logits_match_reference_fixture(name, expected):
    model = create_backbone(name, num_classes=1000).double().eval()
    model.load_state_dict(get_backbone_spec(name).checkpoint_filter_fn(formula_state_dict(name)))
    x = torch.sin(torch.arange(3 * 64 * 64, dtype=torch.float64) * 0.01).reshape(1, 3, 64, 64)
    with torch.inference_mode():
        logits = model(x)[0, [0, 1, 2, 3, 4, 5, 500, 999]]
    # float64; measured: 4.3e-9 (bn) and 3.7e-7 (an) on every kernel choice (tools/kernel_spread.py --tests)
    torch.testing.assert_close(logits, torch.tensor(expected, dtype=torch.float64), rtol=1e-7,
                               atol=1e-7 * max(map(abs, expected)))


@pytest.mark.parametrize("name", ["aognet12m-an", "aognet40m-bn"])
@pytest.mark.parametrize("size", [(800, 1216), (513, 771)])
@pytest.mark.slow
def test_full_size_feature_shapes(name, size):
    if name.startswith("aognet12m"):  # a real forward (about a second on one thread)
        model = create_backbone(name).eval()
        with torch.inference_mode():
            feats = model(torch.randn(1, 3, *size))
        assert all(torch.isfinite(f).all() for f in feats.values())
    else:  # shapes only, on the meta device (no compute)
        with torch.device("meta"):
            model = create_backbone(name).eval()
            feats = model(torch.empty(1, 3, *size))
    channels = OUT_CHANNELS[name[6:9]]
    assert model.out_channels == channels
    # 3x3 conv stride 2 (padding 1) rounds up, then the max-pool and the transitions halve
    # rounding down: exact strides 4..32 for the padded sizes detectors use.
    h, w = (size[0] + 1) // 2, (size[1] + 1) // 2
    expected = {}
    for i in range(4):
        h, w = h // 2, w // 2
        expected[f"c{i + 2}"] = (1, channels[i], h, w)
    if size[0] % 32 == 0 and size[1] % 32 == 0:
        assert expected["c5"][2:] == (size[0] // 32, size[1] // 32)
    assert {k: tuple(v.shape) for k, v in feats.items()} == expected


@pytest.mark.parametrize("name", NAMES)
def test_real_forward_shapes(classifiers, name):
    model = classifiers[name]
    with torch.inference_mode():
        feats = model.forward_features(torch.randn(1, 3, 64, 96))
        logits = model(torch.randn(1, 3, 65, 97))
    channels = OUT_CHANNELS[name[6:9]]
    assert [tuple(feats[f"c{i + 2}"].shape) for i in range(4)] == [
        (1, channels[i], 64 // s, 96 // s) for i, s in enumerate((4, 8, 16, 32))]
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_detection_mode_returns_features():
    model = create_backbone("aognet12m-an").eval()
    assert not hasattr(model, "fc")
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 64, 96))
    assert sorted(out) == ["c2", "c3", "c4", "c5"]
    assert [out[k].shape[1] for k in sorted(out)] == OUT_CHANNELS["12m"]


def _save_original(tmp_path: Path, name: str, sd: dict[str, torch.Tensor]) -> tuple[Path, Path]:
    ckpt = {"epoch": 120, "arch": "aognet", "best_acc1": 77.1,
            "state_dict": {"module." + k: v for k, v in sd.items()}}
    plain = tmp_path / "model_best.pth.tar"
    torch.save(ckpt, plain)
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(plain, f"{name}/model_best.pth.tar")
        zf.writestr(f"{name}/config.yaml", "arch: aognet\nnorm_name: MixtureBatchNorm2d\n")
    return plain, archive


def test_original_checkpoint_loads_and_classifies(tmp_path):
    name = "aognet12m-an"
    sd = random_original_state_dict(name)
    plain, archive = _save_original(tmp_path, name, sd)
    node = "stage2.stage_2_block_1.stage_2_block_1_node_0_op.conv_norm_ac_2.conv_norm.conv_norm.1."
    x = torch.randn(1, 3, 64, 64)
    results = []
    for path in (plain, archive):
        model = create_backbone(name, num_classes=1000, pretrained=path).eval()
        an = model.stages[2].blocks[1].nodes["0"].norm2
        assert torch.equal(an.mixture_weight, sd[node + "weight_"])
        assert torch.equal(an.attention.conv.weight, sd[node + "attention_weights.attention.0.weight"])
        assert torch.equal(an.attention.norm.running_var, sd[node + "attention_weights.attention.1.running_var"])
        assert torch.equal(model.fc.weight, sd["fc.weight"])
        with torch.inference_mode():
            logits = model(x)
        assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
        results.append(logits)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)  # same kernels, same input: bit-identical

    # A detection backbone takes the same file without the classifier.
    det = create_backbone(name, pretrained=archive).eval()
    assert torch.equal(det.stem[0].conv.weight, sd["stem.0.conv_norm.conv_norm.0.weight"])
    with torch.inference_mode():
        torch.testing.assert_close(det(x)["c5"], model.forward_features(x)["c5"], rtol=0, atol=0)  # as above


def test_mismatched_checkpoints_are_refused(tmp_path):
    sd = random_original_state_dict("aognet12m-bn")
    extra = dict(sd, **{"stage1.stage_1_block_0.mystery.weight": torch.zeros(3)})
    path = tmp_path / "extra.pth"
    torch.save({"state_dict": extra}, path)
    with pytest.raises(CheckpointError, match="unexpected keys: stage1.stage_1_block_0.mystery.weight"):
        create_backbone("aognet12m-bn", num_classes=1000, pretrained=path)

    missing = {k: v for k, v in sd.items() if "node_13_op" not in k}
    torch.save({"state_dict": missing}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: .*nodes\.13\."):
        create_backbone("aognet12m-bn", num_classes=1000, pretrained=path)

    # An AN checkpoint does not fit the BN model (and the 40m checkpoint not the 12m model).
    torch.save({"state_dict": random_original_state_dict("aognet12m-an")}, path)
    # the message shows the first 3 keys of each list, sorted: AN's attention weights come first
    with pytest.raises(CheckpointError, match=r"264 unexpected keys: \S+\.norm2\.attention\."):
        create_backbone("aognet12m-bn", num_classes=1000, pretrained=path)


def test_convert_key_names():
    assert convert_key("stem.2.conv_norm.conv_norm.1.running_var") == "stem.2.norm.running_var"
    assert convert_key("stage3.stage_3_block_0_transition.0.conv_norm.conv_norm.0.weight") \
        == "stages.3.transition.conv.weight"
    assert convert_key("stage0.stage_0_block_1.stage_0_block_1_node_5_op.shortcut.conv_norm.1.bias") \
        == "stages.0.blocks.1.nodes.5.shortcut.norm.bias"
    assert convert_key("stage2.stage_2_block_0.stage_2_block_0_node_19_op.conv_norm_3.conv_norm.0.weight") \
        == "stages.2.blocks.0.nodes.19.conv3.weight"
    assert convert_key("stage1.stage_1_block_1.extra_norm_ac.0.running_mean") \
        == "stages.1.blocks.1.out_norm.running_mean"
    an = "stage0.stage_0_block_0.stage_0_block_0_node_0_op.conv_norm_ac_2.conv_norm.conv_norm.1"
    assert convert_key(an + ".running_mean", {an}) == "stages.0.blocks.0.nodes.0.norm2.norm.running_mean"
    assert convert_key(an + ".bias_", {an}) == "stages.0.blocks.0.nodes.0.norm2.mixture_bias"
    # Inconsistent names (block ids that disagree) are not AOGNet-v2 names.
    assert convert_key("stage0.stage_1_block_0.extra_norm_ac.0.weight") is None
    # Keys already in anzoo's layout pass through the filter.
    spec = get_backbone_spec("aognet12m-bn")
    own = {"stages.0.blocks.0.nodes.0.conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}
    assert list(spec.checkpoint_filter_fn(own)) == list(own)


def test_dropout_in_train_mode_only():
    torch.manual_seed(0)
    model = create_backbone("aognet12m-bn", num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.allclose(a, b)  # measured: 0.34-0.36 apart on every kernel choice
    model.eval()
    with torch.no_grad():
        c, d = model(x), model(x)
    assert torch.equal(c, d)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_stages_and_norm_eval():
    torch.manual_seed(0)
    model = create_backbone("aognet12m-an", frozen_stages=1, norm_eval=True)
    model.train()
    frozen = [model.stem, model.stages[0]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model.stages[1].parameters())
    assert not model.stem.training and not model.stages[0].training and model.stages[1].training
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))

    before = [_snapshot(m) for m in (model.stem, model.stages[0], model.stages[1])]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    feats = model(torch.randn(2, 3, 64, 64))
    sum(f.mean() for f in feats.values()).backward()
    opt.step()
    after = [_snapshot(m) for m in (model.stem, model.stages[0], model.stages[1])]
    for b, a in zip(before[:2], after[:2]):
        assert all(torch.equal(b[k], a[k]) for k in b)  # weights and running statistics
    stage1_changed = [k for k in before[2] if not torch.equal(before[2][k], after[2][k])]
    assert stage1_changed and all("running" not in k and "num_batches" not in k for k in stage1_changed)


def test_without_norm_eval_statistics_update():
    model = create_backbone("aognet12m-bn", frozen_stages=-1, norm_eval=False).train()
    bn = model.stages[3].blocks[0].out_norm
    before = bn.running_mean.clone()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert not torch.equal(before, bn.running_mean)
    assert all(p.requires_grad for p in model.parameters())


def test_invalid_frozen_stages():
    with pytest.raises(ValueError, match="frozen_stages"):
        create_backbone("aognet12m-bn", frozen_stages=5)


def test_node_op_widths():
    op = NodeOp(16, 48)
    assert op.conv1.out_channels == 12 and op.shortcut is not None
    # The bottleneck width rounds half up and is at least 4.
    assert NodeOp(10, 10).conv1.out_channels == 4 and NodeOp(26, 26).conv1.out_channels == 7
    assert NodeOp(18, 18).conv1.out_channels == 5 and NodeOp(18, 18).shortcut is None
