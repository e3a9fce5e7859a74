"""anzoo.data.synthetic: deterministic COCO-format datasets with exact masks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anzoo.data.coco import load_coco_annotations
from anzoo.data.images import load_image
from anzoo.data.results import decode_mask_rle
from anzoo.data.synthetic import _COLOURS, DEFAULT_CATEGORIES, make_synthetic_coco, mask_bbox


def test_layout_and_schema(tmp_path: Path) -> None:
    ann = make_synthetic_coco(tmp_path, num_images=5, image_size=[(64, 96), (80, 60)])
    assert ann == tmp_path / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    assert [c["id"] for c in data["categories"]] == [1, 3, 18, 44, 62, 85]
    assert len(data["images"]) == 5
    ids = [im["id"] for im in data["images"]]
    assert len(set(ids)) == 5 and ids != list(range(1, 6))  # non-contiguous ids
    for k, image in enumerate(data["images"]):
        path = tmp_path / "val2017" / image["file_name"]
        assert path.suffix == ".jpg" and path.is_file()
        pixels = load_image(path)
        assert pixels.shape[:2] == (image["height"], image["width"]) == [(64, 96), (80, 60)][k % 2]
    for a in data["annotations"]:
        assert set(a) >= {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
        assert a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str)
    load_coco_annotations(ann)  # passes anzoo's own format check
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave nothing behind


def test_masks_boxes_and_areas_are_exact(tmp_path: Path) -> None:
    ann = make_synthetic_coco(tmp_path, num_images=6, seed=4, image_format="png", max_objects=5)
    data = json.loads(ann.read_text())
    colour_of = {c["id"]: _COLOURS[i % len(_COLOURS)] for i, c in enumerate(DEFAULT_CATEGORIES)}
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    assert sum(len(v) for v in by_image.values()) >= 6
    for image in data["images"]:
        pixels = load_image(tmp_path / "val2017" / image["file_name"])
        union = np.zeros(pixels.shape[:2], bool)
        for a in by_image.get(image["id"], []):
            mask = decode_mask_rle(a["segmentation"])
            assert mask.shape == pixels.shape[:2]
            assert not (mask & union).any()  # objects never overlap
            union |= mask
            # PNG is lossless: every mask pixel has the category colour, exactly.
            assert (pixels[mask] == colour_of[a["category_id"]]).all()
            assert a["area"] == mask.sum()
            assert a["bbox"] == mask_bbox(mask)
            x, y, w, h = (int(v) for v in a["bbox"])
            assert mask[y, x:x + w].any() and mask[y + h - 1, x:x + w].any()
            assert mask[y:y + h, x].any() and mask[y:y + h, x + w - 1].any()
        # No background pixel has exactly an object colour next to the objects (sanity).
        assert not (pixels[~union] == np.array(_COLOURS[0])).all(axis=1).any()


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = make_synthetic_coco(tmp_path / "a", num_images=3, seed=7)
    b = make_synthetic_coco(tmp_path / "b", num_images=3, seed=7)
    c = make_synthetic_coco(tmp_path / "c", num_images=3, seed=8)
    assert a.read_text().replace("/a", "") == b.read_text().replace("/b", "")
    for image in json.loads(a.read_text())["images"]:
        name = image["file_name"]
        assert (tmp_path / "a/val2017" / name).read_bytes() == (tmp_path / "b/val2017" / name).read_bytes()
    assert json.loads(a.read_text())["annotations"] != json.loads(c.read_text())["annotations"]


def test_crowd_and_empty_image_flags(tmp_path: Path) -> None:
    ann = make_synthetic_coco(tmp_path, num_images=4, with_crowd=True, with_empty_image=True,
                              split="train2017")
    assert ann.name == "instances_train2017.json" and (tmp_path / "train2017").is_dir()
    data = json.loads(ann.read_text())
    crowds = [a for a in data["annotations"] if a["iscrowd"]]
    assert len(crowds) == 1 and crowds[0]["image_id"] == data["images"][0]["id"]
    assert crowds[0]["area"] == decode_mask_rle(crowds[0]["segmentation"]).sum() > 0
    last = data["images"][-1]["id"]
    assert not [a for a in data["annotations"] if a["image_id"] == last]


def test_custom_categories_and_bad_arguments(tmp_path: Path) -> None:
    cats = [{"id": 7, "name": "train"}, {"id": 90, "name": "toothbrush"}]
    data = json.loads(make_synthetic_coco(tmp_path, num_images=3, categories=cats).read_text())
    assert {a["category_id"] for a in data["annotations"]} <= {7, 90}
    assert all("supercategory" in c for c in data["categories"])
    with pytest.raises(ValueError):
        make_synthetic_coco(tmp_path, num_images=0)
    with pytest.raises(ValueError):
        make_synthetic_coco(tmp_path, image_format="gif")
