"""Regenerate the preprocessing values frozen in ``tests/data/test_transforms.py`` with mmcv 0.2.16,
the version mmdetection v1 ran: its test pipeline ``Resize(img_scale=(1333, 800),
keep_ratio=True)`` (``mmcv.imrescale``) -> ``Normalize(to_rgb=True)`` (``mmcv.imnormalize``)
-> ``Pad(size_divisor=32)`` (``mmcv.impad_to_multiple``), on a BGR image as mmcv reads one.

Printed: the sizes and scale factors of ``test_rescale_size``, the 1 x 2 -> 1 x 4 resize of
``test_resize_is_opencv_bilinear_on_uint8``, and the pixels, checksum and shapes of
``test_matches_frozen_mmcv_reference`` (the test's 6 x 9 ``_fixture_image``).

mmcv 0.2.16 is pure Python but for an optical-flow extension that is not needed: its sdist
unpacked into ``$PARITY_ROOT/site`` (default /tmp/parity/site) with ``mmcv/_ext.py`` holding
``flow_warp_c = None``, plus ``addict`` (as for ``tools/parity``, see its README)::

    pip download mmcv==0.2.16 --no-deps --no-binary :all:   # needs cython<3, setuptools<70, wheel
    tar xzf mmcv-0.2.16.tar.gz && cp -r mmcv-0.2.16/mmcv $PARITY_ROOT/site/
    echo 'flow_warp_c = None' > $PARITY_ROOT/site/mmcv/_ext.py
    pip install --target $PARITY_ROOT/site addict
    python tools/reference_values/mmcv_transforms.py            # prints the values
    python tools/reference_values/mmcv_transforms.py --check    # compares with the test
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdict import report  # noqa: E402

SCALE = (1333, 800)
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # mmdetection v1's img_norm_cfg
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
#: (width, height) of test_rescale_size's cases
SIZES = [(640, 480), (480, 640), (1333, 800), (500, 375), (2000, 100), (100, 2000), (3000, 2000), (2666, 5), (1, 1)]
PIXELS = [(0, 0), (100, 333), (401, 650), (799, 1199)]


def reference_values() -> dict:
    sys.path[:0] = [str(Path(os.environ.get("PARITY_ROOT", "/tmp/parity")) / "site"), str(ROOT / "tests"), str(ROOT / "tests" / "data")]
    import mmcv
    from test_transforms import _fixture_image

    assert mmcv.__version__ == "0.2.16", mmcv.__version__
    sizes = {}
    for w, h in SIZES:
        out, factor = mmcv.imrescale(np.zeros((h, w, 3), np.uint8), SCALE, return_scale=True)
        sizes[(w, h)] = (out.shape[1], out.shape[0], factor)
    ramp = mmcv.imresize(np.array([[0, 255]], np.uint8), (4, 1)).tolist()

    bgr = np.ascontiguousarray(_fixture_image()[..., ::-1])  # the test gives anzoo RGB; mmcv reads BGR
    resized, factor = mmcv.imrescale(bgr, SCALE, return_scale=True)
    normalized = mmcv.imnormalize(resized, MEAN, STD, to_rgb=True)
    padded = mmcv.impad_to_multiple(normalized, 32, pad_val=0).transpose(2, 0, 1)  # CHW, as the test
    return {
        "sizes": sizes, "ramp": ramp, "img_shape": resized.shape[:2], "pad_shape": padded.shape[1:],
        "scale_factor": factor, "reference": {yx: padded[:, yx[0], yx[1]].tolist() for yx in PIXELS},
        "checksum": float(padded.astype(np.float64).sum()),
    }


def print_values(v: dict) -> None:
    print("# test_rescale_size: (width, height) -> (new width, new height, scale factor)")
    for (w, h), (nw, nh, f) in v["sizes"].items():
        print(f"({w}, {h}, ({nw}, {nh}, {f!r})),")
    print(f"# test_resize_is_opencv_bilinear_on_uint8: {v['ramp']!r}")
    print("# test_matches_frozen_mmcv_reference")
    print(f"assert meta.img_shape == {tuple(v['img_shape'])!r} and meta.pad_shape == {tuple(v['pad_shape'])!r}")
    print(f"assert meta.scale_factor == {v['scale_factor']!r}")
    print("reference = {")
    for yx, values in v["reference"].items():
        print(f"    {yx!r}: {values!r},")
    print("}")
    print(f"checksum: {v['checksum']!r}")


def stored_values() -> dict:
    """The values ``tests/data/test_transforms.py`` holds, read from its source."""
    text = (ROOT / "tests" / "data" / "test_transforms.py").read_text(encoding="utf-8")
    tree = ast.parse(text)
    found: dict = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "reference" for t in node.targets):
            found["reference"] = ast.literal_eval(node.value)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "parametrize" and \
                ast.literal_eval(node.args[0]) == "width, height, expected":
            # our own test file: its cases hold arithmetic such as 800 / 480
            cases = eval(compile(ast.Expression(node.args[1]), "test_transforms.py", "eval"), {"__builtins__": {}})
            found["sizes"] = {(w, h): e for w, h, e in cases}
    found["checksum"] = float(re.search(r"sum\(\)\.item\(\) == pytest\.approx\(([0-9.]+)", text).group(1))
    found["scale_factor"] = float(re.search(r"meta\.scale_factor == ([0-9.]+)\n", text).group(1))
    found["ramp"] = ast.literal_eval(re.search(r"out\.tolist\(\) == (\[\[[^\]]*\]\])", text).group(1))
    return found


def check(v: dict) -> list[str]:
    s = stored_values()
    problems = [k for k in ("reference", "scale_factor", "ramp") if s[k] != v[k]]
    if abs(s["checksum"] - v["checksum"]) > 1e-3:  # the test's tolerance
        problems.append("checksum")
    for key, (nw, nh, factor) in s["sizes"].items():
        mw, mh, mf = v["sizes"][key]
        if (nw, nh) != (mw, mh) or abs(factor - mf) > 1e-15 * abs(mf):
            problems.append(f"rescale {key}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the values the test stores")
    args = parser.parse_args()
    v = reference_values()
    print_values(v)
    if args.check:
        report(check(v))


if __name__ == "__main__":
    main()
