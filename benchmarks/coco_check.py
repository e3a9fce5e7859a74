"""Time of the COCO annotation check (``anzoo.data.coco_format``) at COCO's own sizes.

Builds, in memory, a COCO-format dataset of the size of val2017 (5k images, 36.8k annotations)
or train2017 (118k images, 860k annotations): polygons of 6 to 40 points (like COCO's, about
46 numbers per annotation), 1% crowd regions with uncompressed RLE, and times
``check_coco_dataset`` on it, beside ``json.loads`` of the same data and pycocotools'
``createIndex`` (what loading the file costs anyway).

    python benchmarks/coco_check.py                      # val2017 and train2017 sizes, check only
    python benchmarks/coco_check.py --json               # also json.loads and createIndex (train2017: ~6 GB RAM)
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from anzoo.data.coco import COCO_CATEGORIES, coco_from_dict
from anzoo.data.coco_format import check_coco_dataset

SIZES = {"val2017": (5_000, 36_781), "train2017": (118_287, 860_001)}


def make_dataset(num_images: int, num_annotations: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images = [{"id": 1000 + 7 * i, "file_name": f"{1000 + 7 * i:012d}.jpg", "height": 480, "width": 640,
               "license": 1, "coco_url": "", "date_captured": "", "flickr_url": ""} for i in range(num_images)]
    cat_ids = [c["id"] for c in COCO_CATEGORIES]
    image_of = rng.integers(0, num_images, num_annotations)
    cats = rng.integers(0, len(cat_ids), num_annotations)
    points = rng.integers(6, 41, num_annotations)
    crowd = rng.random(num_annotations) < 0.01
    annotations = []
    for k in range(num_annotations):
        if crowd[k]:
            counts = rng.integers(1, 1500, 200).tolist()
            counts.append(480 * 640 - sum(counts))
            seg: object = {"size": [480, 640], "counts": counts}
        else:
            seg = [np.round(rng.uniform(0, 470, 2 * int(points[k])), 2).tolist()]
        annotations.append({"id": k + 1, "image_id": images[int(image_of[k])]["id"],
                            "category_id": cat_ids[int(cats[k])], "segmentation": seg,
                            "area": float(np.round(rng.uniform(1, 5e4), 2)),
                            "bbox": np.round(rng.uniform(0, 300, 4), 2).tolist(), "iscrowd": int(crowd[k])})
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations,
            "categories": [dict(c) for c in COCO_CATEGORIES]}


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--repeat", type=int, default=3, help="best of N timings of the check")
    p.add_argument("--json", action="store_true", help="also time json.loads and createIndex")
    args = p.parse_args()
    for name in args.sets:
        n_img, n_ann = SIZES[name]
        data = make_dataset(n_img, n_ann)
        n_numbers = sum(len(a["segmentation"][0]) for a in data["annotations"] if not a["iscrowd"])
        line = (f"{name}: {n_img} images, {n_ann} annotations ({n_numbers / n_ann:.0f} polygon numbers each): "
                f"check {best_of(lambda: check_coco_dataset(data, name), args.repeat):.2f} s "
                f"(require_masks), {best_of(lambda: check_coco_dataset(data, name, require_masks=False), 1):.2f} s "
                f"(training)")
        if args.json:
            text = json.dumps(data)
            del data
            start = time.perf_counter()
            data = json.loads(text)
            loads = time.perf_counter() - start
            size_mb = len(text) / 1e6
            del text
            start = time.perf_counter()
            coco_from_dict(data)
            index = time.perf_counter() - start
            line += f"; json.loads {loads:.2f} s ({size_mb:.0f} MB), createIndex {index:.2f} s"
        print(line, flush=True)
        del data


if __name__ == "__main__":
    main()
