"""Export a detector to one ONNX file, verify it, and run it (``anzoo export``, ``predict --weights X.onnx``).

The file holds the whole test path after preprocessing (:class:`~anzoo.models.detection.traced.TracedDetector`):
backbone, FPN, RPN with mmdetection v1's proposal selection, RoI heads (Mask R-CNN's or
Cascade's three stages), per-class NMS with +1 areas and the 28x28 mask probabilities.

* In: ``image`` ``(1, 3, H, W)`` float32 (the photo resized to the test scale, normalized with
  the ImageNet mean/std in RGB order, zero-padded to a multiple of 32: exactly
  ``anzoo.data.transforms.preprocess_image`` + ``pad_to_batch``; any H, W), ``image_shape``
  ``(2,)`` int64 (h, w before padding), ``scale_factor`` ``()`` float32.
* Out: ``boxes`` ``(N, 4)`` (original-image pixels, inclusive corners), ``scores`` ``(N,)``,
  ``labels`` ``(N,)`` int64 (contiguous, 0-based), ``mask_probs`` ``(N, 28, 28)``,
  ``mask_boxes`` ``(N, 4)`` (the boxes mmdetection v1 pasted the masks into).
* Pasting the masks into the image stays outside the file, in anzoo's post-processing (the
  same code as for PyTorch).
* Metadata (``metadata_props``, key ``anzoo``, JSON): model id, classes, category ids, test
  scale, normalization, size divisor, anzoo version, the checkpoint's sha256, opset.

The file is written atomically and, unless told not to, verified before it appears: ONNX
Runtime and PyTorch run on two photos through the same :class:`~anzoo.inference.Predictor`
and must agree (:data:`TOLERANCES`); otherwise nothing is left behind.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.defaults import TEST_SCALE
from .data.transforms import IMAGE_MEAN, IMAGE_STD, SIZE_DIVISOR, pad_to_batch, preprocess_image
from .errors import AnzooError
from .fileio import atomic_path
from .models.detection.detections import Detections
from .models.detection.detector import TwoStageDetector
from .models.detection.traced import OUTPUT_NAMES, TracedDetector
from .version import __version__

__all__ = ["BACKENDS", "ExportError", "ExportCheck", "OnnxDetector", "TOLERANCES", "DEFAULT_OPSET", "export_onnx",
           "compare_detections", "is_onnx_file", "read_metadata"]

log = logging.getLogger(__name__)

#: ONNX opset of the exported graph (RoiAlign's ``coordinate_transformation_mode`` needs 16).
DEFAULT_OPSET = 17
MIN_OPSET = 16
INPUT_NAMES = ("image", "image_shape", "scale_factor")
METADATA_KEY = "anzoo"
#: the photos the export is verified on (scikit-image's, two sizes: 512x512 and 400x600)
VERIFY_PHOTOS = ("astronaut", "coffee")
#: what the verification demands of ONNX Runtime against PyTorch, per detection
TOLERANCES = {"box_px": 0.5, "score": 1e-3, "mask_iou": 0.98}
#: near-ties (compare_detections) allowed per detection, 1 in 10: measured at most 1 in 100 over
#: the 16 released rows (r50-bn, r101-an; ONNX Runtime and OpenVINO, 1 and 2 threads, parity weights)
MAX_TIE_SHARE = 0.1


class ExportError(AnzooError):
    """The export cannot be made, or its file does not give PyTorch's detections."""


@dataclass
class ExportCheck:
    """ONNX Runtime against PyTorch on one image."""

    image: str
    detections: int  # PyTorch's
    onnx_detections: int
    same_labels: bool
    max_box_px: float
    max_score: float
    min_mask_iou: float  # the ONNX mask probabilities pasted into PyTorch's boxes
    ties: int = 0  # near-equal scores the two runtimes broke differently (see compare_detections)
    min_mask_iou_own_boxes: float = 1.0  # each runtime's masks pasted into its own boxes
    window_shifts: int = 0  # detections whose integer paste window differs between the runtimes
    seconds_torch: float = 0.0
    seconds_onnx: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ExportError(f"{module} is not installed: pip install 'anzoo[export]'") from exc


def is_onnx_file(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``--weights`` names an exported file (the suffix decides)."""
    return path is not None and Path(path).suffix.lower() == ".onnx"


def export_metadata(model: TwoStageDetector, scale: tuple[int, int], opset: int,
                    checkpoint_sha256: str | None) -> dict[str, Any]:
    """What a runtime needs besides the graph: the classes, preprocessing and provenance."""
    from .data.coco import COCO_CATEGORY_IDS, COCO_CLASSES

    classes = list(model.class_names or COCO_CLASSES)
    category_ids = list(model.category_ids or (COCO_CATEGORY_IDS if model.class_names is None
                                               else range(1, len(classes) + 1)))
    return {"model_id": model.model_id, "classes": classes, "category_ids": category_ids,
            "test_scale": list(scale), "normalization": {"mean": list(IMAGE_MEAN), "std": list(IMAGE_STD),
                                                         "channel_order": "RGB", "range": "0-255"},
            "size_divisor": SIZE_DIVISOR, "anzoo_version": __version__, "checkpoint_sha256": checkpoint_sha256,
            "opset": opset, "inputs": list(INPUT_NAMES), "outputs": list(OUTPUT_NAMES),
            "mask_pasting": "outside the graph (anzoo.models.detection.postprocess)"}


def graph_inputs(tensor: torch.Tensor, meta: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One preprocessed image as the graph's three inputs."""
    batch = tensor if tensor.dim() == 4 else pad_to_batch([tensor])
    return (batch.float(), torch.tensor([int(meta.img_shape[0]), int(meta.img_shape[1])], dtype=torch.int64),
            torch.tensor(float(meta.scale_factor), dtype=torch.float32))


def trace_onnx(model: TwoStageDetector, scale: tuple[int, int] = TEST_SCALE, opset: int = DEFAULT_OPSET) -> bytes:
    """The ONNX graph of ``model``'s test path (weights included), traced on a synthetic image
    at ``scale``; height and width stay dynamic."""
    if opset < MIN_OPSET:
        raise ExportError(f"`opset` must be at least {MIN_OPSET} (RoiAlign without the half-pixel shift)")
    long_side, short_side = max(scale), min(scale)
    sample = np.random.default_rng(0).integers(0, 256, (short_side, long_side, 3), dtype=np.uint8)
    tensor, meta = preprocess_image(sample, scale=scale)
    model = model.cpu().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the tracer warns about every shape check it records as a constant; those are static
        warnings.simplefilter("ignore")
        torch.onnx.export(TracedDetector(model), graph_inputs(tensor, meta), buffer, dynamo=False,
                          opset_version=opset, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes={"image": {2: "height", 3: "width"},
                                        **{name: {0: "detections"} for name in OUTPUT_NAMES}})
    return buffer.getvalue()


def export_onnx(model: TwoStageDetector, path: str | os.PathLike[str], *, scale: tuple[int, int] = TEST_SCALE,
                opset: int = DEFAULT_OPSET, checkpoint_sha256: str | None = None, verify: bool = True,
                images: dict[str, np.ndarray] | None = None) -> list[ExportCheck]:
    """Write ``model`` as one ONNX file at ``path`` (atomically) and, with ``verify``, check it
    in ONNX Runtime against PyTorch on ``images`` (default: :data:`VERIFY_PHOTOS`) first.

    Returns the checks (empty without ``verify``). Raises :class:`ExportError` when onnx or
    onnxruntime is missing or the checks fail; then no file is left at ``path``.
    """
    onnx = _require("onnx")
    if verify:
        _require("onnxruntime")
        images = images if images is not None else _verify_photos()
    proto = onnx.load_from_string(trace_onnx(model, scale, opset))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(export_metadata(model, scale, opset, checkpoint_sha256))
    checks: list[ExportCheck] = []
    with atomic_path(path) as tmp:
        onnx.save(proto, os.fspath(tmp))
        if verify:
            assert images is not None
            checks = verify_export(model, tmp, images, scale)
            failed = [c for c in checks if not c.ok]
            if failed:
                raise ExportError("the exported file does not give PyTorch's detections ("
                                  + "; ".join(f"{c.image}: {', '.join(c.problems)}" for c in failed)
                                  + f"); {Path(path).name} was not written")
    return checks


def _verify_photos() -> dict[str, np.ndarray]:
    from .data.demo import demo_image

    return {name: demo_image(name) for name in VERIFY_PHOTOS}


def verify_export(model: TwoStageDetector, onnx_path: str | os.PathLike[str], images: dict[str, np.ndarray],
                  scale: tuple[int, int]) -> list[ExportCheck]:
    """PyTorch and ONNX Runtime on each image through the same Predictor, compared."""
    import time

    from .inference import Predictor

    torch_predictor = Predictor(model, device="cpu", mask_paste="legacy", scale=scale)
    onnx_predictor = Predictor(OnnxDetector(onnx_path), mask_paste="legacy", scale=scale)
    checks = []
    for name, image in images.items():
        t0 = time.perf_counter()
        expected = torch_predictor.detect(image)[0]
        t1 = time.perf_counter()
        got = onnx_predictor.detect(image)[0]
        t2 = time.perf_counter()
        check = compare_detections(name, expected, got, torch_predictor, model.roi_heads.test_cfg.nms_iou)
        check.seconds_torch, check.seconds_onnx = t1 - t0, t2 - t1
        log.info("%s: %d detections (%d near-ties broken the other way), boxes %.2g px, scores %.2g, "
                 "mask IoU >= %.4f (own boxes: >= %.4f, %d paste windows 1 px apart)", name, check.detections,
                 check.ties, check.max_box_px, check.max_score, check.min_mask_iou, check.min_mask_iou_own_boxes,
                 check.window_shifts)
        checks.append(check)
    return checks


def compare_detections(name: str, expected: Detections, got: Detections, predictor: Any,
                       nms_iou: float = 0.5) -> ExportCheck:
    """Pair each PyTorch detection with the ONNX one of the same class and box (within
    :data:`TOLERANCES`), then report the largest box and score differences and the smallest
    mask IoU over the pairs (the ONNX masks pasted into PyTorch's boxes, so that the box
    difference, checked on its own, is not counted twice; each into its own boxes too, reported).

    Two runtimes round differently (scores differ by ~1e-5), so where two candidates score
    within that of each other the NMS (or the cut at ``max_per_img``) may keep the other one,
    and with it suppress another box or not. A left-over pair of the same class that NMS could
    not keep both of (+1 IoU above ``nms_iou``), or two detections (of any classes) scoring
    within the tolerance of the cut at ``max_per_img``, counts in ``ties``: shown, allowed for
    a share :data:`MAX_TIE_SHARE` of the detections (at least one). The same can happen one stage earlier, where RPN objectness
    scores an ulp apart straddle a top-k cut (exactly equal scores are broken by index on both
    sides, ``box_ops``' tie rule); the heads mostly refine other proposals to the same
    detections. Anything else left unpaired is a problem."""
    check = ExportCheck(name, len(expected), len(got), same_labels=False, max_box_px=0.0, max_score=0.0,
                        min_mask_iou=1.0)
    if len(expected) != len(got):
        check.problems.append(f"{len(got)} detections instead of {len(expected)}")
    check.same_labels = bool(torch.equal(expected.labels.cpu(), got.labels.cpu()))
    expected, got = expected.to("cpu"), got.to("cpu")
    pairs, ties, unpaired = _pair_detections(expected, got, nms_iou)
    check.ties = len(ties)
    if unpaired:
        check.problems.append(f"{unpaired} detection(s) without a counterpart")
    if check.ties > max(1, int(len(expected) * MAX_TIE_SHARE)):
        check.problems.append(f"{check.ties} near-ties broken differently")
    if pairs:
        i, j = (torch.tensor(idx) for idx in zip(*pairs))
        check.max_box_px = float((expected.boxes[i] - got.boxes[j]).abs().max())
        check.max_score = float((expected.scores[i] - got.scores[j]).abs().max())
        ours, theirs = expected[i], got[j]
        check.min_mask_iou = _min_mask_iou(predictor.paste_masks(ours), predictor.paste_masks(
            replace(theirs, boxes=ours.boxes, mask_boxes=ours.mask_boxes)))
        # end to end: a box corner 1e-3 px either side of an integer moves mmdetection v1's
        # truncated paste window by a pixel, which a thin mask feels
        check.min_mask_iou_own_boxes = _min_mask_iou(predictor.paste_masks(ours), predictor.paste_masks(theirs))
        check.window_shifts = int((_paste_windows(ours) != _paste_windows(theirs)).any(1).sum())
    if check.max_box_px > TOLERANCES["box_px"]:
        check.problems.append(f"boxes differ by {check.max_box_px:.3g} px")
    if check.max_score > TOLERANCES["score"]:
        check.problems.append(f"scores differ by {check.max_score:.3g}")
    if check.min_mask_iou < TOLERANCES["mask_iou"]:
        check.problems.append(f"mask IoU {check.min_mask_iou:.4f}")
    return check


def _pair_detections(expected: Detections, got: Detections, nms_iou: float
                     ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """(pairs within the tolerances, near-tie pairs, how many detections stayed unpaired)."""
    from .models.detection.box_ops import legacy_box_iou

    box_diff = (expected.boxes[:, None, :] - got.boxes[None, :, :]).abs().amax(-1)
    score_diff = (expected.scores[:, None] - got.scores[None, :]).abs()
    same = (expected.labels[:, None] == got.labels[None, :]) & (score_diff <= TOLERANCES["score"])
    free = torch.ones(len(got), dtype=torch.bool)
    pairs, left = [], []
    for i in range(len(expected)):
        fits = same[i] & free & (box_diff[i] <= TOLERANCES["box_px"])
        if fits.any():
            j = int(torch.where(fits, box_diff[i], torch.inf).argmin())
            pairs.append((i, j))
            free[j] = False
        else:
            left.append(i)
    ties: list[tuple[int, int]] = []
    if left and len(got):
        floor = expected.scores.min()  # the lowest kept score: where the max_per_img cut fell
        overlap = legacy_box_iou(expected.boxes, got.boxes) > nms_iou
        at_cut = (got.scores - floor).abs() <= TOLERANCES["score"]
    same_class = expected.labels[:, None] == got.labels[None, :]
    for i in left:
        near_cut = bool((expected.scores[i] - floor).abs() <= TOLERANCES["score"])
        # the same box that NMS let the other runtime keep, or (any class) the other side of
        # the max_per_img cut: scores a rounding apart decide which get in
        fits = free & ((same_class[i] & overlap[i]) | (at_cut & near_cut))
        if fits.any():
            j = int(torch.where(fits, score_diff[i], torch.inf).argmin())
            ties.append((i, j))
            free[j] = False
    return pairs, ties, len(expected) - len(pairs) - len(ties) + int(free.sum())


def _paste_windows(det: Detections) -> torch.Tensor:
    from .models.detection.postprocess import clipped_paste_windows

    boxes = det.mask_boxes if det.mask_boxes is not None else det.boxes
    return torch.stack(clipped_paste_windows(boxes, det.image_size), dim=1)


def _min_mask_iou(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None or b is None or a.shape[0] == 0:
        return 1.0
    a, b = a.flatten(1), b.flatten(1)
    inter = (a & b).sum(1).double()
    union = (a | b).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))  # two empty masks agree
    return float(iou.min())


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``anzoo`` metadata of an exported file (needs only onnxruntime)."""
    return OnnxDetector(path).metadata


#: the runtimes an exported file runs on (`anzoo predict --backend`)
BACKENDS = ("onnxruntime", "openvino")


def _onnxruntime_session(path: Path, threads: int) -> tuple[Any, dict[str, str]]:
    """A function running the file in ONNX Runtime (CPU), and the file's metadata."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for unreadable files
        raise ExportError(f"{path} is not a readable ONNX file: {exc}") from exc
    return (lambda feed: session.run(list(OUTPUT_NAMES), feed)), session.get_modelmeta().custom_metadata_map


def _openvino_session(path: Path, threads: int) -> tuple[Any, dict[str, str]]:
    """The same on OpenVINO (CPU, float32 kept: its default CPU precision may be bf16)."""
    ov = _require("openvino")
    onnx = _require("onnx")
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
        core = ov.Core()
        graph = core.read_model(os.fspath(path))
        _stable_top_k(graph)
        compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                     "INFERENCE_NUM_THREADS": threads})
    except Exception as exc:
        raise ExportError(f"{path} is not a readable ONNX file: {exc}") from exc
    run = _openvino_runner(compiled)
    run.new_request = lambda: _openvino_runner(compiled)  # type: ignore[attr-defined]
    return run, {p.key: p.value for p in proto.metadata_props}


def _openvino_runner(compiled: Any) -> Any:
    """A function running ``compiled`` through an infer request of its own (a request serves
    one caller at a time)."""
    request = compiled.create_infer_request()

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = request.infer(feed)
        return [np.array(result[compiled.output(name)]) for name in OUTPUT_NAMES]

    return run


def _stable_top_k(graph: Any) -> None:
    """ONNX ``TopK`` puts the lower index first among equal values (the tie rule the export
    relies on, ``box_ops``); OpenVINO's import leaves its ``TopK`` unstable, so that a
    saturated RPN would keep other proposals than PyTorch. Its opset-11 ``TopK`` has the switch."""
    for op in graph.get_ops():
        if op.get_type_name() == "TopK" and "stable" in op.get_attributes():
            op.set_attribute("stable", True)


class OnnxDetector:
    """An exported file behind the detector interface the :class:`~anzoo.inference.Predictor`
    uses (``detect(batch, metas)``, ``class_names``, ``category_ids``), run by ONNX Runtime or
    OpenVINO on the CPU. Images of a batch run one at a time (the graph takes one)."""

    def __init__(self, path: str | os.PathLike[str], backend: str = "onnxruntime", threads: int | None = None) -> None:
        if backend not in BACKENDS:
            raise ExportError(f"`backend` must be one of {', '.join(BACKENDS)}, not {backend!r}")
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"ONNX file not found: {path}")
        opener = _onnxruntime_session if backend == "onnxruntime" else _openvino_session
        #: the runtime's threads, fixed when the session is made
        self.threads = threads or torch.get_num_threads()
        self._run, metadata = opener(path, self.threads)
        raw = metadata.get(METADATA_KEY)
        if raw is None:
            raise ExportError(f"{path} was not exported by anzoo (no '{METADATA_KEY}' metadata)")
        #: tells the Predictor this model is no torch module (no device moves, no autocast)
        self.runtime = backend
        self.metadata: dict[str, Any] = json.loads(raw)
        self.path = path
        self.model_id: str | None = self.metadata.get("model_id")
        self.class_names: list[str] = list(self.metadata["classes"])
        self.category_ids: list[int] = list(self.metadata["category_ids"])

    def reopen(self, threads: int) -> OnnxDetector:
        """The same file for another caller thread (a server replica). ONNX Runtime: a session
        of its own with ``threads`` threads (a session's thread count is fixed when it is made).
        OpenVINO: an infer request of its own on the same compiled model, whose threads it
        shares; compiling the file again with another thread count left the process to crash
        at its next fork (OpenVINO 2026.4, seen in the test suite)."""
        if self.runtime == "openvino":
            clone = copy.copy(self)
            clone._run = self._run.new_request()
            return clone
        return OnnxDetector(self.path, backend=self.runtime, threads=threads)

    def to(self, device: Any) -> OnnxDetector:
        """The Predictor's device move: the file runs on the CPU (the Predictor checks)."""
        return self

    def eval(self) -> OnnxDetector:
        return self

    @property
    def test_scale(self) -> tuple[int, int]:
        scale = self.metadata.get("test_scale") or TEST_SCALE
        return int(scale[0]), int(scale[1])

    def detect(self, images: torch.Tensor, metas: Any, with_masks: bool = True) -> list[Detections]:
        """``TwoStageDetector.detect`` on ONNX Runtime: a padded batch in, Detections out."""
        out = []
        for i, meta in enumerate(metas):
            batch, shape, factor = graph_inputs(images[i:i + 1].cpu(), meta)
            boxes, scores, labels, probs, mask_boxes = self._run(
                {"image": batch.numpy(), "image_shape": shape.numpy(), "scale_factor": factor.numpy()})
            out.append(Detections(tuple(meta.orig_size), torch.from_numpy(boxes), torch.from_numpy(scores),
                                  torch.from_numpy(labels), torch.from_numpy(probs) if with_masks else None,
                                  torch.from_numpy(mask_boxes) if with_masks else None))
        return out


def checks_as_dicts(checks: list[ExportCheck]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]
