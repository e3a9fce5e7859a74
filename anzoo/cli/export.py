"""``anzoo export``: a zoo model as one ONNX file, verified against PyTorch before it is kept."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..data.defaults import TEST_SCALE
from ..errors import AnzooError
from . import base
from .base import JsonOpt, ModelIdArg, TestScaleOpt, WeightsOpt, command, console, long_short, print_json

#: the opsets the export is tested with (16 is the first with RoiAlign's legacy coordinate mode)
OPSET_MIN, OPSET_MAX = 16, 21


@command("export")
def export(
    model_id: ModelIdArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="The ONNX file to write (*.onnx).",
                                      show_default=False)],
    weights: WeightsOpt = None,
    opset: Annotated[int, typer.Option("--opset", min=OPSET_MIN, max=OPSET_MAX, help="ONNX opset.")] = 17,
    scale: TestScaleOpt = TEST_SCALE,
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", help="Skip running the file in ONNX Runtime against PyTorch on two photos.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Export a detector to ONNX (the whole test path but mask pasting) and check it gives PyTorch's detections."""
    from ..export import TOLERANCES, checks_as_dicts, export_onnx
    from ..hub import fetch_weights, sha256_file

    if out.suffix.lower() != ".onnx":
        raise AnzooError(f"--out must name an .onnx file, not {out.name}")
    if weights is None:
        weights = fetch_weights(model_id)
    model = base.load_model(model_id, weights, "cpu")
    checks = export_onnx(model, out, scale=long_short(scale), opset=opset, checkpoint_sha256=sha256_file(weights),
                         verify=not no_verify)
    if json_:
        print_json({"path": str(out), "verified": not no_verify, "tolerances": TOLERANCES,
                    "checks": checks_as_dicts(checks)})
        return
    if checks:
        table = Table("image", "detections", "near-ties", "max box diff (px)", "max score diff", "min mask IoU",
                      "(own boxes)", "PyTorch s", "ONNX Runtime s", title=f"ONNX Runtime vs PyTorch (limits: boxes "
                      f"{TOLERANCES['box_px']} px, scores {TOLERANCES['score']}, mask IoU {TOLERANCES['mask_iou']})")
        for c in checks:
            table.add_row(c.image, str(c.detections), str(c.ties), f"{c.max_box_px:.2g}", f"{c.max_score:.2g}",
                          f"{c.min_mask_iou:.4f}", f"{c.min_mask_iou_own_boxes:.4f}", f"{c.seconds_torch:.2f}",
                          f"{c.seconds_onnx:.2f}")
        console.print(table)
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB{', verified' if checks else ', not verified'})",
                  highlight=False)
