"""Measure the shapes model on a fresh held-out set with pycocotools (box AP, mask AP, mask AP50).

    evaluate.py --checkpoint engines/tools/work/shapes.pt --images 500 --out engines/shapes/metrics.txt

Held-out seeds start at 10^9: training draws its images from seeds below 2^31/16 that never reach them.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import load_shapes_checkpoint  # noqa: E402
from shapes import CocoWriter, make_image, random_size  # noqa: E402

HELD_OUT_SEED = 1_000_000_000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="engines/tools/work/shapes.pt")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_shapes_checkpoint(args.checkpoint)
    gt, results = CocoWriter(), []
    t0 = time.time()
    for i in range(args.images):
        rng = np.random.default_rng(HELD_OUT_SEED + i)
        h, w = (360, 640) if i % 2 == 0 else random_size(rng)
        img, inst = make_image(HELD_OUT_SEED + i, h, w)
        gt.add(i, h, w, inst)
        with torch.no_grad():
            out = model([torch.from_numpy(img).permute(2, 0, 1).float() / 255.0])[0]
        for b, label, s, m in zip(out["boxes"], out["labels"], out["scores"], out["masks"]):
            rle = mask_util.encode(np.asfortranarray((m[0] > 0.5).numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x1, y1, x2, y2 = (float(v) for v in b)
            results.append({"image_id": i, "category_id": int(label), "score": float(s),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": rle})
    secs = (time.time() - t0) / args.images
    path = "/tmp/shapes_heldout_gt.json"
    gt.dump(path)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(path)
        dets = coco.loadRes(results) if results else None
    lines = [f"held-out images: {args.images} (seeds {HELD_OUT_SEED}..), instances: {len(gt.annotations)}, "
             f"torch eager {secs * 1000:.0f} ms/image on {args.threads} threads"]
    for iou_type in ("bbox", "segm"):
        if dets is None:
            lines.append(f"{iou_type}: no detections")
            continue
        ev = COCOeval(coco, dets, iou_type)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        name = "box" if iou_type == "bbox" else "mask"
        lines.append(f"{name} AP={ev.stats[0]:.4f} AP50={ev.stats[1]:.4f} AP75={ev.stats[2]:.4f} "
                     f"APs={ev.stats[3]:.4f} APm={ev.stats[4]:.4f} APl={ev.stats[5]:.4f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
