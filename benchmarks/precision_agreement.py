"""What a faster setting costs in detections: each precision and scale preset against float32
at the released test scale (1333x800), without COCO.

On scikit-image's public-domain photos, a random-weights model biased to detect confidently
(``anzoo.testing.confident_model``: ~100 detections per image, 1000 proposals) runs at every
(scale, precision); its float32 detections at 1333x800 are the reference. Printed per setting:

* matched: the share of reference detections found again, one to one (same class, box IoU >=
  0.9 and mask IoU >= 0.9; reference detections taken best score first);
* box AP, mask AP: COCO AP (IoU 0.50:0.95) of the setting's detections scored with the
  reference detections as ground truth (pycocotools).

Random weights are not scale-consistent the way trained ones are: the scale rows say how much a
detector's detections move with the scale at worst, not the AP a trained model loses there.

    python benchmarks/precision_agreement.py                        # r50-bn, fp32/bf16, 3 scales
    python benchmarks/precision_agreement.py --models r50-an --photos astronaut --scales 1333 800
    python benchmarks/precision_agreement.py --reference 800 480 --scales 800 480   # bf16 alone, cheaper
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

SCALES = ((1333, 800), (1000, 600), (800, 480))
IOU_MIN = 0.9


def detect(model: torch.nn.Module, photos: dict[str, np.ndarray], scale: tuple[int, int], precision: str,
           device: str) -> tuple[list[Any], float]:
    from anzoo.inference import Predictor

    pred = Predictor(model, device=device, precision=precision, scale=scale)
    t0 = time.perf_counter()
    out = [pred.predict_instances([image])[0] for image in photos.values()]
    return out, (time.perf_counter() - t0) / len(photos)


def matched_share(ref: Any, other: Any) -> tuple[int, int]:
    """(reference detections matched one to one, reference detections)."""
    from torchvision.ops import box_iou

    if len(ref) == 0:
        return 0, 0
    box = box_iou(ref.boxes, other.boxes) if len(other) else torch.zeros(len(ref), 0)
    a, b = ref.masks.flatten(1).float(), other.masks.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    mask = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    ok = (box >= IOU_MIN) & (mask >= IOU_MIN) & (ref.labels[:, None] == other.labels[None, :])
    used: set[int] = set()
    found = 0
    for i in ref.scores.argsort(descending=True).tolist():
        candidates = [j for j in torch.nonzero(ok[i]).flatten().tolist() if j not in used]
        if candidates:
            used.add(max(candidates, key=lambda j: float(box[i, j])))
            found += 1
    return found, len(ref)


def ap_against(ref: list[Any], other: list[Any], category_ids: list[int]) -> tuple[float, float]:
    """COCO box and mask AP of ``other`` with ``ref`` as the ground truth."""
    import pycocotools.mask as mask_utils

    from anzoo.data.coco import coco_from_dict
    from anzoo.data.results import instances_to_coco
    from anzoo.evaluation.metrics import coco_evaluate

    images, annotations, results = [], [], []
    for image_id, (r, o) in enumerate(zip(ref, other), start=1):
        h, w = r.image_size
        images.append({"id": image_id, "height": h, "width": w})
        for k, rec in enumerate(instances_to_coco(r, image_id, category_ids), start=len(annotations) + 1):
            rec.pop("score")
            annotations.append({**rec, "id": k, "iscrowd": 0, "area": float(mask_utils.area(rec["segmentation"]))})
        results += instances_to_coco(o, image_id, category_ids)
    gt = coco_from_dict({"images": images, "annotations": annotations,
                         "categories": [{"id": c, "name": str(c)} for c in category_ids]})
    return coco_evaluate(gt, results, "bbox")[0]["AP"], coco_evaluate(gt, results, "segm")[0]["AP"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["r50-bn"])
    parser.add_argument("--photos", nargs="+", default=["astronaut", "coffee", "chelsea", "rocket"])
    parser.add_argument("--scales", type=int, nargs="+", default=[v for s in SCALES for v in s],
                        help="LONG SHORT pairs")
    parser.add_argument("--reference", type=int, nargs=2, default=SCALES[0], metavar=("LONG", "SHORT"),
                        help="the scale of the float32 reference detections")
    parser.add_argument("--precisions", nargs="+", default=None, choices=("fp32", "bf16", "fp16"),
                        help="default: fp32 and bf16 (and fp16 on CUDA)")
    parser.add_argument("--proposals", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precisions = args.precisions or (["fp32", "bf16"] + (["fp16"] if args.device.startswith("cuda") else []))
    scales = [tuple(args.scales[i:i + 2]) for i in range(0, len(args.scales), 2)]
    reference = (tuple(args.reference), "fp32")
    settings = [reference] + [(s, p) for s in scales for p in precisions if (s, p) != reference]

    from anzoo.data.demo import demo_image
    from anzoo.testing import confident_model

    photos = {name: demo_image(name) for name in args.photos}
    print(f"device {args.device}, threads {args.threads}, photos {', '.join(photos)}, {args.proposals} proposals; "
          f"reference: fp32 at {reference[0][0]}x{reference[0][1]}; match: same class, box and mask IoU >= {IOU_MIN}")
    print(f"{'model':12s} {'scale':>9s} {'prec':>4s} {'s/image':>8s} {'dets/img':>8s} {'matched':>8s} "
          f"{'box AP':>7s} {'mask AP':>7s}")
    for model_id in args.models:
        model = confident_model(model_id, proposals=args.proposals, device=args.device)
        category_ids = list(range(1, model.num_classes + 1))
        ref: list[Any] = []
        for scale, precision in settings:
            dets, seconds = detect(model, photos, scale, precision, args.device)
            if (scale, precision) == reference:
                ref = dets
            found = [matched_share(r, d) for r, d in zip(ref, dets)]
            share = sum(f for f, _ in found) / max(1, sum(n for _, n in found))
            box_ap, mask_ap = ap_against(ref, dets, category_ids)
            print(f"{model_id:12s} {scale[0]:>4d}x{scale[1]:<4d} {precision:>4s} {seconds:8.2f} "
                  f"{np.mean([len(d) for d in dets]):8.1f} {100 * share:7.1f}% {100 * box_ap:7.1f} "
                  f"{100 * mask_ap:7.1f}", flush=True)


if __name__ == "__main__":
    main()
