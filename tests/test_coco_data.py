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
        ("[1, 2]", "top level is a list"),
        (json.dumps({"categories": []}), "missing the 'images' list"),
        (json.dumps({"images": [], "categories": {}}), "'categories' is not a list"),
        (json.dumps({"images": [{"id": 1}], "categories": []}), r"images\[0\] lacks"),
        (json.dumps({"images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}],
                     "categories": []}), "image id 1 appears twice"),
        (json.dumps({"images": [{"id": 1, "file_name": "a"}], "categories": [{"id": 1, "name": "x"}],
                     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}),
         r"annotations\[0\] lacks"),
        (json.dumps({"images": [{"id": 1, "file_name": "a"}], "categories": [{"id": 1, "name": "x"}],
                     "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1],
                                      "area": 1, "iscrowd": 0}]}), "unknown image id 2"),
    ],
)
def test_malformed_annotation_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=f"bad.json.*{message}"):
        load_coco_annotations(path)


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
