"""anzoo.data.coco: category mapping, annotation loading, the inference dataset and its sampler."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from anzoo.data.coco import (
    COCO_CATEGORIES,
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    CocoImageDataset,
    PaddedShapeBatchSampler,
    build_inference_loader,
    category_id_to_label,
    category_ids_of,
    collate,
    label_to_category_id,
    load_coco_annotations,
)
from anzoo.data.images import load_image
from anzoo.data.synthetic import make_synthetic_coco
from anzoo.data.transforms import pad_to_batch, preprocess_image
from anzoo.errors import DatasetError

# (height, width): the first two and the fourth pad to (800, 1120); the third to (800, 1152);
# the fifth is portrait.
SIZES = [(160, 224), (160, 222), (160, 230), (160, 220), (224, 160)]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco(root, num_images=10, image_size=SIZES, seed=1, image_format="png")
    return root


@pytest.fixture(scope="module")
def ann_file(dataset_root: Path) -> Path:
    return dataset_root / "annotations" / "instances_val2017.json"


# ------------------------------------------------------------------------------- categories


def test_coco_categories_in_mmdet_order() -> None:
    assert len(COCO_CLASSES) == len(COCO_CATEGORY_IDS) == len(COCO_CATEGORIES) == 80
    assert list(COCO_CATEGORY_IDS) == sorted(COCO_CATEGORY_IDS)
    assert set(range(1, 91)) - set(COCO_CATEGORY_IDS) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert (COCO_CLASSES[0], COCO_CATEGORY_IDS[0]) == ("person", 1)
    assert (COCO_CLASSES[9], COCO_CATEGORY_IDS[9]) == ("traffic light", 10)
    assert (COCO_CLASSES[11], COCO_CATEGORY_IDS[11]) == ("stop sign", 13)
    assert (COCO_CLASSES[60], COCO_CATEGORY_IDS[60]) == ("dining table", 67)
    assert (COCO_CLASSES[79], COCO_CATEGORY_IDS[79]) == ("toothbrush", 90)
    assert label_to_category_id(45) == 51 and COCO_CLASSES[45] == "bowl"
    assert category_id_to_label(90) == 79
    assert all(category_id_to_label(c) == i for i, c in enumerate(COCO_CATEGORY_IDS))
    assert category_id_to_label(62, [1, 3, 18, 44, 62, 85]) == 4
    with pytest.raises(DatasetError):
        category_id_to_label(12)


# ------------------------------------------------------------------------------- loading


def test_load_coco_annotations_is_quiet(ann_file: Path, capsys) -> None:
    coco = load_coco_annotations(ann_file)
    assert capsys.readouterr().out == ""
    assert len(coco.imgs) == 10
    assert category_ids_of(coco) == [1, 3, 18, 44, 62, 85]


def test_image_info_file_without_annotations(tmp_path: Path) -> None:
    path = tmp_path / "image_info_test-dev2017.json"
    path.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "a.jpg", "width": 10, "height": 8}],
        "categories": list(COCO_CATEGORIES),
    }))
    coco = load_coco_annotations(path)
    assert list(coco.imgs) == [5] and len(coco.anns) == 0
    assert category_ids_of(coco) == list(COCO_CATEGORY_IDS)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "the top level is a list"),
        (json.dumps({"categories": []}), "missing the 'images' list"),
        (json.dumps({"images": [], "categories": {}}), "'categories' is an object, not a list"),
        (json.dumps({"images": [{"id": 1}], "categories": []}), r"images\[0\] \(id 1\): lacks 'file_name'"),
        (json.dumps({"images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}],
                     "categories": []}), r"images\[1\] \(id 1\): image id 1 appears twice"),
        (json.dumps({"images": [{"id": 1, "file_name": "a"}], "categories": [{"id": 1, "name": "x"}],
                     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}),
         r"annotations\[0\] \(id 1\): lacks 'area', 'iscrowd', 'segmentation'"),
        (json.dumps({"images": [{"id": 1, "file_name": "a"}], "categories": [{"id": 1, "name": "x"}],
                     "annotations": {}}), "'annotations' is an object, not a list"),
    ],
)
def test_malformed_annotation_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=f"bad.json.*{message}"):
        load_coco_annotations(path)


def _two_objects() -> dict:
    """A valid file: one 60x80 image with two objects (a polygon and a crowd RLE)."""
    return {
        "images": [{"id": 7, "file_name": "a.png", "height": 60, "width": 80}],
        "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0,
             "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [40, 5, 10, 10], "area": 100, "iscrowd": 1,
             "segmentation": {"size": [60, 80], "counts": [200, 10, 4590]}},
        ],
    }


def _set(path: str, value):
    """An edit of ``_two_objects()``: set ``images.0.height`` etc. (value ``...`` deletes)."""
    def edit(data: dict) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        last = int(last) if last.isdigit() else last
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    # pycocotools keeps the last of two equal ids: box AP 0.252 instead of 1.0 for this file
    (_set("annotations.1.id", 1), r"annotation id 1: appears 2 times \(annotations\[0\], annotations\[1\]\)"),
    (_set("images.0.file_name", None), r"images\[0\] \(id 7\): 'file_name' must be a non-empty string, got None"),
    (_set("images.0.height", 0), r"images\[0\] \(id 7\): 'height' and 'width' must be positive integers, got 0"),
    (_set("images.0.id", "7"), r"images\[0\] \(id '7'\): 'id' must be an integer"),
    (lambda d: [d["images"][0].pop(k) for k in ("height", "width")],
     r"images\[0\] \(id 7\): 'height' and 'width' are missing; the masks of its annotations need them"),
    (_set("images.0.height", ...), r"'height' and 'width' must be positive integers, got None and 80"),
    (_set("categories.1.id", "2"), r"categories\[1\] \(id '2'\): 'id' must be an integer"),
    (_set("categories.1.id", 1), r"categories\[1\] \(id 1\): category id 1 appears twice"),
    (_set("annotations.0.category_id", "1"), r"annotations\[0\] \(id 1\): 'category_id' must be an integer, got '1'"),
    (_set("annotations.0.category_id", 3), r"'category_id' must be the id of a category in 'categories', got 3"),
    (_set("annotations.1.image_id", 8), r"annotations\[1\] \(id 2\): 'image_id' must be the id of an image"),
    (_set("annotations.0.segmentation", ...), r"annotations\[0\] \(id 1\): lacks 'segmentation'"),
    (_set("annotations.0.segmentation", []), r"annotations\[0\] \(id 1\): 'segmentation' is an empty list"),
    (_set("annotations.0.segmentation", [[10, 10, 30, 10]]), r"first polygon has 4 numbers"),
    (_set("annotations.0.segmentation", [[10, 10, "a", 10, 30, 30]]), r"each a list of finite numbers"),
    (_set("annotations.0.segmentation", [10, 10, 30, 10, 30, 30]), r"each a list of finite numbers"),
    (_set("annotations.0.segmentation", "polygon"), r"a list of polygons or an RLE object, got 'polygon'"),
    (_set("annotations.1.segmentation", {"size": [80, 60], "counts": [4800]}),
     r"annotations\[1\] \(id 2\): 'segmentation' RLE has size \[80, 60\] but its image is \[60, 80\]"),
    (_set("annotations.1.segmentation", {"size": [60, 80], "counts": [200, 10]}), r"add up to 210 pixels"),
    (_set("annotations.1.segmentation", {"counts": "abc"}), r"RLE needs 'size'"),
    (_set("annotations.0.bbox", [10, 10, 20]), r"annotations\[0\] \(id 1\): 'bbox' must be \[x, y, width, height\]"),
    (_set("annotations.0.bbox", [10, 10, -1, 5]), r"'bbox' must be .* got \[10, 10, -1, 5\]"),
    (_set("annotations.0.bbox", [10, 10, None, 5]), r"'bbox' must be"),
    (_set("annotations.0.area", None), r"'area' must be a finite number >= 0, got None"),
    (_set("annotations.0.iscrowd", None), r"'iscrowd' must be 0 or 1, got None"),
    (_set("annotations.0", [1, 2]), r"annotations\[0\]: is a list, not an object"),
    (_set("annotations.0.id", 1.5), r"annotations\[0\] \(id 1.5\): 'id' must be an integer"),
], ids=lambda v: "" if callable(v) else None)
def test_annotation_records_are_checked_before_use(tmp_path: Path, edit, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_two_objects()))
    assert len(load_coco_annotations(path).anns) == 2  # the file as made is valid
    data = _two_objects()
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=f"annotation file .*bad.json is not in COCO format: .*{message}"):
        load_coco_annotations(path)


def test_annotation_check_reports_every_problem_at_once(tmp_path: Path) -> None:
    data = _two_objects()
    data["annotations"] += [dict(data["annotations"][0], id=10 + k, bbox=[1, 2]) for k in range(7)]
    data["images"][0]["file_name"] = ""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as info:
        load_coco_annotations(path)
    text = str(info.value)
    assert "\n" not in text and text.count("'bbox' must be") == 4  # 5 problems quoted
    assert text.startswith(f"annotation file {path} is not in COCO format: images[0] (id 7): 'file_name'")
    assert text.endswith("(8 problems in all; the first 5 are shown)")


def test_training_may_lack_masks_but_not_types(tmp_path: Path) -> None:
    """Training skips annotations without a usable mask (and counts them); wrong types still fail."""
    data = _two_objects()
    data["annotations"][0]["segmentation"] = []
    del data["annotations"][1]["segmentation"]
    data["annotations"].append(dict(data["annotations"][0], id=3, segmentation=[[1, 2, 3, 4]]))
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    assert len(load_coco_annotations(path, require_masks=False).anns) == 3
    with pytest.raises(DatasetError, match="lacks 'segmentation'"):
        load_coco_annotations(path)
    data["annotations"][2]["bbox"] = [1, 2, 3]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"annotations\[2\] \(id 3\): 'bbox' must be"):
        load_coco_annotations(path, require_masks=False)


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nothere.json does not exist"):
        load_coco_annotations(tmp_path / "nothere.json")
    with pytest.raises(DatasetError, match="is a directory"):
        load_coco_annotations(tmp_path)


# ------------------------------------------------------------------------------- dataset


def test_dataset_items_are_preprocessed_images(dataset_root: Path, ann_file: Path) -> None:
    dataset = CocoImageDataset(ann_file, dataset_root / "val2017")
    assert len(dataset) == 10
    assert dataset.image_ids == [100 + 3 * i for i in range(10)]
    assert dataset.category_ids == [1, 3, 18, 44, 62, 85]
    image_id, tensor, meta = dataset[1]
    assert image_id == 103
    expected, expected_meta = preprocess_image(load_image(dataset.image_path(1)))
    assert torch.equal(tensor, expected) and meta == expected_meta
    assert meta.orig_size == SIZES[1] and meta.img_shape == (800, 1110) and meta.pad_shape == (800, 1120)
    assert dataset.padded_shapes()[:5] == [(800, 1120), (800, 1120), (800, 1152), (800, 1120), (1120, 800)]
    subset = CocoImageDataset(ann_file, dataset_root / "val2017", image_ids=[109, 100])
    assert [subset[i][0] for i in range(2)] == [109, 100]


def test_dataset_errors_name_what_is_missing(dataset_root: Path, ann_file: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="image folder .*nowhere does not exist"):
        CocoImageDataset(ann_file, tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="not in the annotation file"):
        CocoImageDataset(ann_file, dataset_root / "val2017", image_ids=[100, 7])
    # A copy of the image folder with one image missing and one corrupt.
    folder = tmp_path / "images"
    folder.mkdir()
    for src in (dataset_root / "val2017").iterdir():
        (folder / src.name).write_bytes(src.read_bytes())
    (folder / "000000000103.png").unlink()
    (folder / "000000000106.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"1 of 10 images are missing .*000000000103.png"):
        CocoImageDataset(ann_file, folder)
    lazy = CocoImageDataset(ann_file, folder, check_files=False)
    with pytest.raises(DatasetError, match="image 103: file .*000000000103.png does not exist"):
        lazy[1]
    with pytest.raises(DatasetError, match="image 106: .*000000000106.png: not an image"):
        lazy[2]


def test_dataloader_with_sampler_and_workers(dataset_root: Path, ann_file: Path) -> None:
    dataset = CocoImageDataset(ann_file, dataset_root / "val2017")
    loader = build_inference_loader(dataset, batch_size=3, num_workers=2, timeout=60)
    assert isinstance(loader, DataLoader) and loader.collate_fn is collate
    seen = []
    for ids, images, metas in loader:
        assert images.dim() == 4 and images.shape[0] == len(ids) == len(metas)
        assert {m.pad_shape for m in metas} == {tuple(images.shape[2:])}
        # Each image in the batch equals its single-image padded tensor (batched == alone).
        for k, image_id in enumerate(ids):
            path = dataset.image_path(dataset.image_ids.index(image_id))
            alone = pad_to_batch([preprocess_image(load_image(path))[0]])
            assert torch.equal(images[k], alone[0])
        seen += ids
    assert sorted(seen) == sorted(dataset.image_ids)


# ------------------------------------------------------------------------------- sampler


def _shapes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    choices = [(800, 1088), (1088, 800), (800, 1216), (800, 800), (96, 1344)]
    return [choices[i] for i in rng.integers(0, len(choices), n)]


def test_sampler_groups_by_padded_shape_in_order() -> None:
    shapes = [(800, 1088), (800, 1216), (800, 1088), (800, 1088), (1088, 800), (800, 1216), (800, 1088)]
    sampler = PaddedShapeBatchSampler(shapes, batch_size=2)
    assert list(sampler) == [[0, 2], [1, 5], [3, 6], [4]]
    assert len(sampler) == 4 and sampler.num_images == 7
    restricted = PaddedShapeBatchSampler(shapes, batch_size=2, indices=[6, 4, 3, 0])
    assert list(restricted) == [[6, 3], [4], [0]]


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 16])
@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_sampler_shards_without_duplicates_or_drops(world_size: int, batch_size: int) -> None:
    shapes = _shapes(37)
    counts: Counter[int] = Counter()
    batch_counts = []
    for rank in range(world_size):
        sampler = PaddedShapeBatchSampler(shapes, batch_size, rank=rank, world_size=world_size)
        again = PaddedShapeBatchSampler(shapes, batch_size, rank=rank, world_size=world_size)
        assert list(sampler) == list(again)  # deterministic
        batches = list(sampler)
        batch_counts.append(len(batches))
        for batch in batches:
            assert 1 <= len(batch) <= batch_size
            assert len({shapes[i] for i in batch}) == 1
            counts.update(batch)
    assert sorted(counts) == list(range(37))
    assert set(counts.values()) == {1}
    assert max(batch_counts) - min(batch_counts) <= 1


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        PaddedShapeBatchSampler([(32, 32)], batch_size=0)
    with pytest.raises(ValueError):
        PaddedShapeBatchSampler([(32, 32)], batch_size=1, rank=2, world_size=2)
    with pytest.raises(ValueError):
        PaddedShapeBatchSampler([(32, 32)] * 3, batch_size=1, indices=[0, 0])
