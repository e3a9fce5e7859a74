"""Mutation testing: plant small, plausible bugs and check that the tests catch them.

Each mutant below replaces a few exact strings in anzoo's source. The script copies the
package and its tests into a temporary folder (the working tree is never touched), applies one
mutant, runs the fast test files that should catch it (``pytest -x``, with a timeout) and
reports it *killed* (a test failed) or *survived* (every test passed: a bug the suite misses).
A mutant whose strings are no longer in the source is reported *stale*: update the table.

::

    python tools/mutation.py                    # every mutant, against this checkout's tests
    python tools/mutation.py --list             # the table
    python tools/mutation.py -k rpn -k eval     # mutants whose id contains one of these
    python tools/mutation.py --repo DIR         # another tree's anzoo/ and tests/ (e.g. an old commit)
    python tools/mutation.py --issue-rows       # only the five bugs of issue 19's audit

A test file the tree does not have is skipped, so an older tree is measured with its own tests
(that is how the kill rate "before" is measured). The first five rows are the bugs that the
audit of issue 19 planted; every one must be caught by a test that takes seconds.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str  # under anzoo/
    replacements: tuple[tuple[str, str], ...]  # (exact text, its replacement); each text once in the file
    tests: tuple[str, ...]  # test files or node ids
    what: str
    issue_row: bool = False


M = Mutant
MUTANTS: tuple[Mutant, ...] = (
    # ------------------------------------------------------------ the audit's table (issue 19)
    M("eval-box-without-plus-one", "evaluation/runner.py",
      (("legacy_box=self.legacy_box, rles=rles", "legacy_box=False, rles=rles"),),
      ("tests/evaluation/test_eval_oracle.py", "tests/evaluation/test_eval.py"),
      "evaluation writes boxes without mmdetection v1's +1 width", issue_row=True),
    M("server-option-bounds", "server/schemas.py",
      (("0.3, ge=0.0, le=1.0, allow_inf_nan=False,", "0.3, le=1.0, allow_inf_nan=False,"),
       ("100, ge=1, le=MAX_INSTANCES_LIMIT,", "100, ge=1,")),
      ("tests/server/test_server_options.py", "tests/server/test_server.py"),
      "server accepts a negative score_thr and more than 1000 max_instances", issue_row=True),
    M("server-batches-on-default-model", "server/service.py",
      (("key = (model_id, padded_shape(", "key = (self.default_model, padded_shape("),),
      ("tests/server/test_server_models.py", "tests/server/test_server.py"),
      "server batches every request on the default model (?model= ignored)", issue_row=True),
    M("rcnn-nms-0.6", "models/detection/config.py",
      (("nms_iou: float = 0.5", "nms_iou: float = 0.6"),),
      ("tests/models/test_thresholds.py", "tests/models/test_legacy_postprocess.py", "tests/models/test_legacy_ops.py", "tests/models/test_detectors.py", "tests/inference/test_fast_paths.py"),
      "R-CNN test NMS IoU 0.5 -> 0.6", issue_row=True),
    M("rpn-nms-0.8", "models/detection/config.py",
      (("max_num=1000, nms_thr=0.7)", "max_num=1000, nms_thr=0.8)"),),
      ("tests/models/test_thresholds.py", "tests/models/test_legacy_rpn.py"),
      "RPN test NMS 0.7 -> 0.8", issue_row=True),
    # ------------------------------------------------------------ numerics
    M("area-without-plus-one", "models/detection/box_ops.py",
      (("return (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)",
        "return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])"),),
      ("tests/models/test_thresholds.py", "tests/models/test_legacy_ops.py"),
      "+1 removed from legacy_box_area"),
    M("ties-by-topk", "models/detection/box_ops.py",
      (("""    values, indices = torch.sort(scores, dim=dim, descending=True, stable=True)
    return values.narrow(dim, 0, int(k)), indices.narrow(dim, 0, int(k))""",
        """    return scores.topk(int(k), dim=dim)"""),),
      ("tests/models/test_legacy_ops.py", "tests/models/test_legacy_rpn.py"),
      "top-k among equal scores left to torch.topk (the export's tie rule lost)"),
    M("openvino-top-k-unstable", "export.py",
      (("            op.set_attribute(\"stable\", True)", "            pass"),),
      ("tests/inference/test_export.py::test_exported_proposals_break_ties_as_the_eager_model",),
      "OpenVINO's TopK left unstable (ties broken unlike ONNX and PyTorch)"),
    M("export-mask-head-no-spare-roi", "models/detection/traced.py",
      (("heads.mask_roi_pool(features, torch.cat([_as_rois(scaled), spare]))",
        "heads.mask_roi_pool(features, _as_rois(scaled))"),
       ("        probs = probs[:-1]\n", "")),
      ("tests/inference/test_export.py::test_group_norm_mask_head_without_detections",),
      "exported mask head run on zero RoIs (GroupNorm heads fail without detections)"),
    M("paste-threshold-0.4", "models/detection/postprocess.py",
      (("image_size: tuple[int, int], threshold: float = 0.5", "image_size: tuple[int, int], threshold: float = 0.4"),),
      ("tests/models/test_legacy_postprocess.py",),
      "mask paste keeps probabilities > 0.4 instead of > 0.5"),
    M("softmax-over-rois", "models/detection/roi_heads.py",
      (("scores = torch.softmax(cls_logits.float(), dim=1)", "scores = torch.softmax(cls_logits.float(), dim=0)"),),
      ("tests/models/test_thresholds.py", "tests/models/test_detectors.py"),
      "class scores: softmax over the RoIs instead of the classes"),
    M("roi-finest-scale-112", "models/detection/roi_align.py",
      (("        finest_scale: float = 56,", "        finest_scale: float = 112,"),),
      ("tests/models/test_legacy_ops.py",),
      "RoI level mapping: finest_scale 56 -> 112"),
    M("rcnn-score-at-threshold-kept", "models/detection/postprocess.py",
      (("candidate = multi_scores[:, 1:].t() > score_thr", "candidate = multi_scores[:, 1:].t() >= score_thr"),),
      ("tests/models/test_thresholds.py", "tests/models/test_legacy_postprocess.py"),
      "R-CNN score threshold > -> >="),
    M("rcnn-score-thr-0.1", "models/detection/config.py",
      (("score_thr: float = 0.05", "score_thr: float = 0.1"),),
      ("tests/models/test_thresholds.py", "tests/models/test_legacy_postprocess.py", "tests/models/test_detectors.py"),
      "R-CNN test score threshold 0.05 -> 0.1"),
    M("rcnn-max-per-image-sorts-at-100", "models/detection/postprocess.py",
      (("boxes.shape[0] > max_per_img:", "boxes.shape[0] >= max_per_img:"),),
      ("tests/models/test_thresholds.py", "tests/models/test_legacy_postprocess.py"),
      "100 detections are sorted by score as if cut (> -> >=)"),
    M("rpn-nms-pre-2000", "models/detection/config.py",
      (("RPN_TEST_CFG = RPNProposalConfig(nms_pre=1000", "RPN_TEST_CFG = RPNProposalConfig(nms_pre=2000"),),
      ("tests/models/test_thresholds.py", "tests/models/test_legacy_rpn.py"),
      "RPN test nms_pre 1000 -> 2000"),
    M("rpn-train-proposals-1000", "models/detection/config.py",
      (("RPN_TRAIN_CFG = RPNProposalConfig(nms_pre=2000, nms_post=2000, max_num=2000",
        "RPN_TRAIN_CFG = RPNProposalConfig(nms_pre=2000, nms_post=2000, max_num=1000"),),
      ("tests/models/test_thresholds.py", "tests/models/test_legacy_rpn.py", "tests/models/test_train_targets.py"),
      "RPN training proposals max_num 2000 -> 1000"),
    M("decode-x2-plus-half", "models/detection/box_coder.py",
      (("x2 = gx + gw * 0.5 - 0.5", "x2 = gx + gw * 0.5 + 0.5"),),
      ("tests/models/test_legacy_ops.py",),
      "box decoding: x2 + 0.5 instead of - 0.5"),
    M("cascade-sums-logits", "models/detection/roi_heads.py",
      (("scores = torch.softmax(logits_sum / len(self.stages), dim=1)", "scores = torch.softmax(logits_sum, dim=1)"),),
      ("tests/models/test_detectors.py",),
      "Cascade: softmax of the summed stage logits, not of their mean"),
    M("resize-rounds-half-even", "data/transforms.py",
      (("return int(width * factor + 0.5), int(height * factor + 0.5), factor",
        "return round(width * factor), round(height * factor), factor"),),
      ("tests/data/test_transforms.py",),
      "resized size with Python's round() (half to even) instead of mmcv's half up"),
    # ------------------------------------------------------------ evaluation
    M("eval-keeps-foreign-classes-only", "evaluation/runner.py",
      (("keep = valid[det.labels]", "keep = ~valid[det.labels]"),),
      ("tests/evaluation/test_eval_oracle.py", "tests/evaluation/test_eval.py"),
      "evaluation drops the dataset's classes instead of the others"),
    M("eval-partial-run-counts-unseen-images", "evaluation/metrics.py",
      (("evaluator.params.imgIds = list(image_ids) if image_ids is not None else sorted(coco_gt.getImgIds())",
        "evaluator.params.imgIds = sorted(coco_gt.getImgIds())"),),
      ("tests/evaluation/test_eval_oracle.py", "tests/evaluation/test_eval.py"),
      "a --limit run scores the objects of images it never saw as missed"),
    M("eval-resume-ignored", "cli/evaluate.py",
      (('"resume": resume}', '"resume": False}'),),
      ("tests/e2e/test_cli_options.py::test_eval_batch_size_precision_and_resume", "tests/evaluation/test_eval.py"),
      "anzoo eval --resume is dropped"),
    # ------------------------------------------------------------ server
    M("retry-after-missing", "server/service.py",
      (('(its queue is full); retry shortly",\n                           {"Retry-After": str(self.settings.retry_after_s)})',
        '(its queue is full); retry shortly",\n                           {})'),),
      ("tests/server/test_server.py", "tests/server/test_server_concurrency.py"),
      "a 503 for a full queue without Retry-After"),
    M("auth-bypass", "server/request.py",
      (('if scheme.lower() != "bearer" or not token:', 'if scheme.lower() != "bearer" and not token:'),),
      ("tests/server/test_server.py",),
      "any Authorization scheme with the key passes"),
    M("max-body-off-by-one", "server/request.py",
      (("int(length) > limit", "int(length) >= limit"),),
      ("tests/server/test_server_options.py", "tests/server/test_server.py"),
      "a body of exactly --max-body-mb is refused (Content-Length check)"),
    M("max-body-stream-off-by-one", "server/request.py",
      (("if self.received > limit:", "if self.received >= limit:"),),
      ("tests/server/test_server_options.py", "tests/server/test_server.py"),
      "a streamed body of exactly --max-body-mb is refused"),
    M("max-pixels-off-by-one", "server/service.py",
      (("if header.pixels > limit:", "if header.pixels >= limit:"),),
      ("tests/server/test_server_options.py", "tests/server/test_server.py"),
      "an image of exactly --max-pixels is refused"),
    M("oom-fallback-removed", "server/service.py",
      (("except torch.cuda.OutOfMemoryError:", "except MemoryError:"),),
      ("tests/server/test_server_models.py", "tests/server/test_server.py"),
      "a batch out of GPU memory fails instead of running image by image"),
    M("shutting-down-is-500", "server/service.py",
      (('# the batcher stopped: shutting down\n                raise ApiError(503,',
        '# the batcher stopped: shutting down\n                raise ApiError(500,'),),
      ("tests/server/test_server_models.py", "tests/server/test_server.py"),
      "requests cut off by a shutdown get 500, not 503"),
    M("batcher-ignores-keys", "server/batching.py",
      (("if len(batch) < self.max_batch and job.key == key:", "if len(batch) < self.max_batch:"),),
      ("tests/server/test_server.py",),
      "the batcher mixes keys (models, padded shapes) in a batch"),
    # ------------------------------------------------------------ command line
    M("predict-score-thr-unbounded", "cli/predict.py",
      (('"--score-thr", min=0.0, max=1.0,', '"--score-thr", min=0.0,'),),
      ("tests/cli/test_cli_bounds.py", "tests/cli/test_cli_predict.py"),
      "anzoo predict --score-thr accepts 1.5"),
    M("predict-batch-size-ignored", "cli/predict.py",
      (("batch_size=batch_size,\n                              scale=long_short(scale))",
        "batch_size=1,\n                              scale=long_short(scale))"),),
      ("tests/e2e/test_cli_options.py::test_predict_batch_size_and_precision", "tests/cli/test_cli_predict.py"),
      "anzoo predict --batch-size is dropped"),
    M("unpack-sha256-unchecked", "hub.py",
      (('if digest.hexdigest() != f["sha256"]:', 'if False:'),),
      ("tests/zoo/test_pack.py",),
      "anzoo unpack publishes a file damaged in transit"),
    M("usage-error-boxed", "cli/base.py",
      (("            print_error(usage_message(exc) if isinstance(exc, _click.exceptions.UsageError)\n"
        "                        else exc.format_message())", "            exc.show()"),),
      ("tests/cli/test_cli_usability.py",),
      "a usage error is click's several lines instead of one error line"),
    M("train-images-alone-accepted", "cli/train.py",
      (("if (train_ann is None) != (train_images is None):", "if train_ann is not None and train_images is None:"),),
      ("tests/e2e/test_cli_options.py::test_train_option_checks",),
      "anzoo train --train-images without --train-ann gets past the option check"),
    # ------------------------------------------------------------ added after the tests were written,
    # not aimed at by them (a check that the kill rate is not only the table's); the third survived
    # and got a test (test_server_options.py::test_score_thr_keeps_an_instance_scoring_exactly_it)
    M("results-height-without-plus-one", "data/results.py",
      (("xywh[:, 3] = xyxy[:, 3] - xyxy[:, 1] + extra", "xywh[:, 3] = xyxy[:, 3] - xyxy[:, 1]"),),
      ("tests/data/test_results.py", "tests/evaluation/test_eval_oracle.py", "tests/evaluation/test_eval.py"),
      "COCO boxes: the height without mmdetection v1's +1 (the width keeps it)"),
    M("predictor-batches-mixed-shapes", "inference.py",
      (("groups[padded_shape(*meta.img_shape)].append(i)", "groups[(0, 0)].append(i)"),),
      ("tests/models/test_detectors.py", "tests/cli/test_cli_predict.py"),
      "the predictor batches images of different padded shapes (AN statistics change)"),
    M("render-counts-instances-above", "server/service.py",
      (("det[det.scores >= it.score_thr]", "det[det.scores > it.score_thr]"),),
      ("tests/server/test_server_options.py", "tests/server/test_server.py"),
      "X-Instances of /segment/render leaves out instances scoring exactly score_thr"),
    # ------------------------------------------------------------ zoo, factory, layers (issue 15)
    M("create-model-drops-kwargs", "factory.py",
      (("model = build_model(entry, **{**saved, **kwargs})", "model = build_model(entry, **saved)"),),
      ("tests/zoo/test_factory.py",),
      "create_model(id, num_classes=3, class_names=...) silently builds the entry's 80 classes"),
    M("zoo-number-range-unchecked", "schema.py",
      (("if value < lo or (hi is not None and value > hi):", "if value < lo:"),),
      ("tests/zoo/test_zoo.py",),
      "a zoo file's box_ap of 140 is accepted"),
    M("model-imports-the-cache", "models/backbones/__init__.py",
      (("from ...errors import UnknownModelError\n",
        "from ...errors import UnknownModelError\nfrom ...hub import cache_dir  # noqa: F401\n"),),
      ("tests/test_architecture.py",),
      "a model module imports the weights cache (an import pointing up the layers)"),
)


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, survived, stale, no tests, timeout
    seconds: float
    tests: list[str]
    caught_by: str = ""


def existing_tests(tree: Path, tests: tuple[str, ...]) -> list[str]:
    return [t for t in tests if (tree / t.split("::")[0]).is_file()]


def run_mutant(mutant: Mutant, tree: Path, timeout: float, python: str) -> Outcome:
    source = (tree / "anzoo" / mutant.file).read_text(encoding="utf-8")
    tests = existing_tests(tree, mutant.tests)
    for old, _ in mutant.replacements:
        if source.count(old) != 1:
            return Outcome(mutant, "stale", 0.0, tests, f"{old!r} found {source.count(old)} times")
    if not tests:  # nothing in this tree could catch it
        return Outcome(mutant, "survived", 0.0, tests, "(none of its test files is in this tree)")
    for old, new in mutant.replacements:
        source = source.replace(old, new)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"anzoo-mutant-{mutant.id}-") as tmp:
        work = Path(tmp)
        for name in ("anzoo", "tests"):
            shutil.copytree(tree / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(tree / "pyproject.toml", work / "pyproject.toml")
        (work / "anzoo" / mutant.file).write_text(source, encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [python, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", "--basetemp",
               str(work / ".pytest-tmp"), *tests]
        try:
            proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Outcome(mutant, "timeout", time.perf_counter() - start, tests)
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return Outcome(mutant, "survived", seconds, tests)
    if proc.returncode == 5:
        return Outcome(mutant, "no tests", seconds, tests)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    return Outcome(mutant, "killed", seconds, tests, failed[0] if failed else f"pytest exit {proc.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=ROOT, help="tree holding anzoo/ and tests/ (default: this one)")
    parser.add_argument("-k", action="append", default=[], help="only mutants whose id contains this (repeatable)")
    parser.add_argument("--issue-rows", action="store_true", help="only the five bugs of issue 19's audit")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant (default 900)")
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if (not args.k or any(k in m.id for k in args.k))
              and (m.issue_row or not args.issue_rows)]
    if args.list:
        for m in chosen:
            print(f"{m.id:40} {'(issue) ' if m.issue_row else ''}{m.what}\n{'':40} anzoo/{m.file}; {', '.join(m.tests)}")
        return
    tree = args.repo.resolve()
    print(f"{len(chosen)} mutants of {tree}")
    outcomes = []
    for m in chosen:
        o = run_mutant(m, tree, args.timeout, sys.executable)
        outcomes.append(o)
        mark = "*" if m.issue_row else " "
        print(f"{mark} {m.id:40} {o.status:9} {o.seconds:6.0f} s  {o.caught_by or ', '.join(o.tests)}", flush=True)
    judged = [o for o in outcomes if o.status in ("killed", "survived", "timeout")]
    killed = sum(o.status in ("killed", "timeout") for o in judged)
    print(f"killed {killed} of {len(judged)} mutants ({100 * killed / max(1, len(judged)):.0f} %)"
          + "".join(f"; {sum(o.status == s for o in outcomes)} {s}" for s in ("stale", "no tests")
                    if any(o.status == s for o in outcomes)))
    survivors = [o.mutant.id for o in outcomes if o.status == "survived"]
    if survivors:
        print("survived: " + ", ".join(survivors))
    sys.exit(1 if survivors or any(o.status == "stale" for o in outcomes) else 0)


if __name__ == "__main__":
    main()
