"""Run the reference mmdetection-v1 fork on CPU for one released row and write its detections
as a parity fixture (tests/fixtures/parity/ROW.json.gz).

    python tools/parity/ref_run.py ROW BACKGROUND_LOGIT LONG SHORT IMAGE [IMAGE ...]

IMAGE names a scikit-image photo (``anzoo.data.demo``). The checkpoint is the deterministic one
of tests/helpers/parity_weights.py with the given background logit, saved in the original layout.
Environment: PARITY_ROOT (reference set-up, see README.md), REF (the two cloned repositories,
default /tmp/ref), THREADS, PARITY_OUT (another folder for the fixture, e.g. a full-scale check).
"""
import gzip
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import refboot  # noqa: E402,F401  (must come before mmdet)

import mmcv  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmdet.apis import init_detector  # noqa: E402
from mmdet.apis.inference import LoadImage  # noqa: E402
from mmdet.datasets.pipelines import Compose  # noqa: E402

sys.path[:0] = [REPO, os.path.join(REPO, 'tests')]
from helpers.parity_weights import save_parity_checkpoint  # noqa: E402

from anzoo.data.demo import demo_image  # noqa: E402
from anzoo.zoo import get_entry  # noqa: E402

REF = os.environ.get('REF', '/tmp/ref')
REFERENCE = ('iVMCL/AttentiveNorm_Detection@7ae8ac2 (mmdetection 1.0rc0 fork), mmcv 0.2.16, CPU float32 '
             'transcriptions of its NMS and RoIAlign CUDA kernels (tools/parity)')


def detect(model, bgr):
    """mmdet.apis.inference_detector without the GPU scatter: the same test pipeline."""
    pipeline = Compose([LoadImage()] + model.cfg.data.test.pipeline[1:])
    data = pipeline(dict(img=bgr))
    imgs = [t[None] for t in data['img']]
    metas = [[m.data] for m in data['img_meta']]
    with torch.no_grad():
        return model(return_loss=False, rescale=True, img=imgs, img_meta=metas)


def main():
    row, bg, long_, short = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    names = sys.argv[5:]
    torch.set_num_threads(int(os.environ.get('THREADS', '2')))
    entry = get_entry(row)
    cfg = mmcv.Config.fromfile(os.path.join(REF, 'AttentiveNorm_Detection', entry.config))
    if 'cfg_file' in cfg.model.backbone:  # AOGNet: its yaml lives in AOGNet-v2's configs
        yaml_name = os.path.basename(os.path.dirname(cfg.model.backbone.cfg_file)) + '.yaml'
        cfg.model.backbone.cfg_file = os.path.join(REF, 'AOGNet-v2', 'configs', yaml_name)
    cfg.model.pretrained = None
    cfg.data.test.pipeline[1].img_scale = (long_, short)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_parity_checkpoint(row, os.path.join(tmp, f'{row}.pth'), background_logit=bg)
        model = init_detector(cfg, str(ckpt), device='cpu')
    images = []
    for name in names:
        rgb = demo_image(name)
        t = time.time()
        bbox_result, segm_result = detect(model, np.ascontiguousarray(rgb[:, :, ::-1]))
        if isinstance(segm_result, tuple):
            segm_result = segm_result[0]
        dets = []
        for label, (boxes, rles) in enumerate(zip(bbox_result, segm_result)):
            for box, rle in zip(boxes, rles):
                counts = rle['counts']
                dets.append({'label': label, 'score': float(box[4]), 'box': [float(v) for v in box[:4]],
                             'rle': {'size': [int(v) for v in rle['size']],
                                     'counts': counts.decode() if isinstance(counts, bytes) else counts}})
        images.append({'image': name, 'shape': list(rgb.shape[:2]), 'detections': dets})
        print(row, name, 'detections', len(dets), 'classes', len({d['label'] for d in dets}),
              '%.1fs' % (time.time() - t), flush=True)
    doc = {'row': row, 'scale': [long_, short], 'background_logit': bg, 'reference': REFERENCE,
           'images': images}
    out_dir = os.environ.get('PARITY_OUT') or os.path.join(REPO, 'tests', 'fixtures', 'parity')
    out = os.path.join(out_dir, f'{row}.json.gz')
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with gzip.open(out, 'wt') as fh:
        json.dump(doc, fh, separators=(',', ':'))


if __name__ == '__main__':
    main()
