"""create_model, build_model and create_backbone: what reaches the builder, what a model knows of
its zoo entry, and where weights are resolved (above anzoo.models)."""
from __future__ import annotations

import pytest
import torch

import anzoo
from anzoo import factory, hub, runtime
from anzoo.errors import CheckpointError, OfflineError
from anzoo.factory import build_model, create_backbone, create_model, save_model
from anzoo.models import backbones
from anzoo.schema import ZooEntry
from anzoo.zoo import get_entry


def _classes_of(model: torch.nn.Module) -> int:
    """Output classes of the box classifier (background included)."""
    return model.roi_heads.box_predictor.cls_score.out_features


def test_unknown_keyword_is_a_type_error_before_any_download(monkeypatch):
    monkeypatch.setenv("ANZOO_OFFLINE", "1")  # a download attempt would be an OfflineError
    with pytest.raises(TypeError, match=r"'num_class'.*takes num_classes, class_names, frozen_stages"):
        create_model("r50-bn", pretrained=True, num_class=3)


def test_num_classes_and_class_names_reach_the_builder():
    model = create_model("r50-bn", num_classes=3, class_names=["cat", "dog", "cow"])
    assert (model.num_classes, model.class_names, _classes_of(model)) == (3, ["cat", "dog", "cow"], 4)
    model = create_model("r50-bn", class_names=("cat", "dog"))  # the count follows the names
    assert (model.num_classes, model.class_names, _classes_of(model)) == (2, ["cat", "dog"], 3)
    # a silent 80-class model (what num_classes=3 gave before) would label with COCO's names
    with pytest.raises(ValueError, match="num_classes=3 differs from r50-bn's 80: give class_names too"):
        create_model("r50-bn", num_classes=3)
    with pytest.raises(ValueError, match="class_names has 1 names but num_classes is 3"):
        create_model("r50-bn", num_classes=3, class_names=["cat"])


def test_builder_options_reach_the_builder():
    frozen = [n for n, p in create_model("r50-bn").backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("conv1.", "bn1.", "layer1.")) for n in frozen)  # the recipe's default
    assert all(p.requires_grad for p in create_model("r50-bn", frozen_stages=-1).backbone.parameters())


def test_build_model_attaches_the_zoo_metadata():
    entry = get_entry("r50-an")
    model = build_model(entry, num_classes=2, class_names=["cat", "dog"], category_ids=[7, 9])
    assert isinstance(model.zoo_entry, ZooEntry) and model.zoo_entry is entry
    assert (model.model_id, model.category_ids, model.class_names) == ("r50-an", [7, 9], ["cat", "dog"])
    plain = build_model("r50-an")
    assert (plain.category_ids, plain.class_names, plain.num_classes) == (None, None, 80)  # COCO's
    assert plain.training  # create_model puts it in eval mode, build_model leaves it as built


@pytest.mark.slow
def test_saved_classes_load_back_and_the_callers_classes_win(tmp_path):
    model = build_model("r50-bn", num_classes=2, class_names=["cat", "dog"], category_ids=[7, 9])
    path = save_model(model, tmp_path / "pets.pth")
    loaded = create_model("r50-bn", pretrained=path)
    assert (loaded.num_classes, loaded.class_names, loaded.category_ids) == (2, ["cat", "dog"], [7, 9])
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    renamed = create_model("r50-bn", pretrained=path, class_names=["kitten", "puppy"])
    assert renamed.class_names == ["kitten", "puppy"] and renamed.category_ids == [7, 9]
    with pytest.raises(CheckpointError, match="shape mismatches"):  # three classes: the weights do not fit
        create_model("r50-bn", pretrained=path, class_names=["a", "b", "c"])


def test_backbone_weights_are_resolved_above_the_models(tmp_path, monkeypatch):
    assert anzoo.create_backbone is factory.create_backbone
    assert factory.resolve_device is runtime.resolve_device  # one copy
    with pytest.raises(TypeError, match=r"anzoo.create_backbone\(name, pretrained=...\)"):
        backbones.create_backbone("r50-bn", pretrained=True)
    # pretrained=True goes through the zoo's backbone entry and the weights cache
    monkeypatch.setenv("ANZOO_OFFLINE", "1")
    with pytest.raises(OfflineError, match="backbone r50-bn"):
        create_backbone("r50-bn", pretrained=True)
    torch.manual_seed(0)
    released = backbones.build_backbone("r50-bn", num_classes=1000).state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in released.items()}}, tmp_path / "r50-bn.pth.tar")
    hub.import_backbone_weights("r50-bn", tmp_path / "r50-bn.pth.tar")
    loaded = create_backbone("r50-bn", pretrained=True).state_dict()
    assert set(loaded) == {k for k in released if not k.startswith("fc.")}
    assert all(torch.equal(v, released[k]) for k, v in loaded.items())
