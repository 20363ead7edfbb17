"""Record torchvision's own outputs as the fixtures the Rust implementation must match.

    make_fixtures.py --checkpoint engines/tools/work/shapes.pt --out tests/fixtures
    make_fixtures.py --engine engines/shapes --out tests/fixtures   # the engine's own weights and settings

detect/<case>/: image.png and what torchvision eager computes on it with the bundled shapes weights (BN
folded, exactly the exported graphs): transformed size, RPN proposals and scores, detections in resized and
original coordinates, 28x28 mask probabilities, binary pasted masks (COCO RLE), pooled box features of the
first proposals.  roi_align/: random multi-level features and boxes on every level, inside, partly and fully
outside, tiny and huge, through torchvision.ops.roi_align / MultiScaleRoIAlign (aligned False/True, sampling
ratio 2 and 0). Arrays are .npy; everything else JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import LevelMapper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import (load_shapes_checkpoint, load_shapes_from_engine, mask_threshold, output_boxes,  # noqa: E402
                   output_scores)
from shapes import _background, make_image  # noqa: E402

# (case name, height, width, seed); seed None = background only, no objects
CASES = [
    ("landscape_640x360", 360, 640, 11),
    ("portrait_360x640", 640, 360, 23),
    ("odd_517x333", 333, 517, 37),
    ("large_1280x720", 720, 1280, 45),
    ("empty_480x480", 480, 480, None),
    # so flat that the height gives another scale than the width: torchvision's ROI poolers keep
    # the scales of their first call (the usual 1/4..1/32, from the cases above), as maskstream
    # takes them from the longer side
    ("flat_1280x64", 64, 1280, 51),
    ("tall_64x1280", 1280, 64, 53),
]


def rle(mask: np.ndarray) -> dict:
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(x) for x in r["size"]], "counts": r["counts"].decode("ascii")}


def detect_case(model, out_dir, name, h, w, seed):
    d = os.path.join(out_dir, "detect", name)
    os.makedirs(d, exist_ok=True)
    if seed is None:
        img = _background(np.random.default_rng(7), h, w)
    else:
        img, _ = make_image(seed, h, w)
    Image.fromarray(img).save(os.path.join(d, "image.png"))
    x = torch.from_numpy(np.asarray(Image.open(os.path.join(d, "image.png")).convert("RGB"))).permute(2, 0, 1)
    x = x.float() / 255.0

    captured = {}
    orig_filter = model.rpn.filter_proposals

    def filter_and_capture(*a, **k):
        boxes, scores = orig_filter(*a, **k)
        captured["boxes"], captured["scores"] = boxes[0], scores[0]
        return boxes, scores

    model.rpn.filter_proposals = filter_and_capture
    with torch.no_grad():
        images, _ = model.transform([x])
        feats = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, feats)
        dets, _ = model.roi_heads(feats, proposals, images.image_sizes)
        resized_boxes = dets[0]["boxes"].clone()
        mask_probs_28 = None
        # 28x28 probabilities of the predicted class, before paste
        if len(resized_boxes):
            mf = model.roi_heads.mask_roi_pool(feats, [resized_boxes], images.image_sizes)
            logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(mf))
            idx = torch.arange(len(resized_boxes))
            mask_probs_28 = logits[idx, dets[0]["labels"]].sigmoid()
        final = model.transform.postprocess(dets, images.image_sizes, [(h, w)])[0]
        pooled = model.roi_heads.box_roi_pool(feats, [captured["boxes"][:8]], images.image_sizes)
        whole = model([x])[0]
    model.rpn.filter_proposals = orig_filter
    assert torch.equal(whole["boxes"], final["boxes"]), "staged run differs from model()"

    np.save(os.path.join(d, "proposals.npy"), captured["boxes"].numpy().astype(np.float32))
    np.save(os.path.join(d, "proposal_scores.npy"), captured["scores"].numpy().astype(np.float32))
    np.save(os.path.join(d, "boxes.npy"), final["boxes"].numpy().astype(np.float32))
    # what maskstream writes: the boxes moved towards their masks' bounds where the manifest asks for it
    np.save(os.path.join(d, "output_boxes.npy"), output_boxes(model, final).numpy().astype(np.float32))
    # and the scores: a second report of one object under another class scored down (mask.cross_class)
    np.save(os.path.join(d, "output_scores.npy"), output_scores(model, final).numpy().astype(np.float32))
    np.save(os.path.join(d, "boxes_resized.npy"), resized_boxes.numpy().astype(np.float32))
    np.save(os.path.join(d, "labels.npy"), final["labels"].numpy().astype(np.int64))
    np.save(os.path.join(d, "scores.npy"), final["scores"].numpy().astype(np.float32))
    n = len(resized_boxes)
    np.save(os.path.join(d, "mask_probs_28.npy"),
            (mask_probs_28.numpy() if n else np.zeros((0, 28, 28))).astype(np.float32))
    np.save(os.path.join(d, "pooled_box_first8.npy"), pooled.numpy().astype(np.float32))
    masks = [rle(m[0].numpy() > mask_threshold(model)) for m in final["masks"]]
    meta = {
        "original_size": [h, w],
        "resized_size": [int(s) for s in images.image_sizes[0]],
        "padded_size": [int(s) for s in images.tensors.shape[-2:]],
        "feature_shapes": {k: [int(s) for s in v.shape] for k, v in feats.items()},
        "num_proposals": int(len(captured["boxes"])),
        "num_detections": int(n),
        "masks": masks,
    }
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(meta, f)
    print(f"{name}: resized {meta['resized_size']} padded {meta['padded_size']} proposals "
          f"{meta['num_proposals']} detections {n} (score>=0.3: {int((final['scores'] >= 0.3).sum())})")


def roi_align_cases(out_dir):
    d = os.path.join(out_dir, "roi_align")
    os.makedirs(d, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    img_h, img_w = 220, 300  # resized image; padded to 224x320
    c = 4
    shapes = [(56, 80), (28, 40), (14, 20), (7, 10)]
    feats = {str(i): torch.randn(2, c, fh, fw, generator=g) for i, (fh, fw) in enumerate(shapes)}

    def boxes_for(n):
        cx = torch.rand(n, generator=g) * 360 - 30
        cy = torch.rand(n, generator=g) * 280 - 30
        size = torch.exp(torch.rand(n, generator=g) * np.log(400.0)) + 0.5  # 1.5 px .. 400 px
        ar = torch.exp((torch.rand(n, generator=g) - 0.5) * 2)
        bw, bh = size * ar.sqrt(), size / ar.sqrt()
        return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)

    special = torch.tensor([
        [10.0, 10.0, 10.5, 10.4],  # tiny
        [-50.0, -40.0, 400.0, 330.0],  # huge, covers all
        [280.0, 200.0, 360.0, 260.0],  # partly outside bottom-right
        [-30.0, -30.0, 20.0, 15.0],  # partly outside top-left
        [400.0, 300.0, 460.0, 350.0],  # fully outside
        [-120.0, -90.0, -60.0, -50.0],  # fully outside, negative
        [50.0, 60.0, 50.0, 60.0],  # degenerate (zero size)
        [0.0, 0.0, 300.0, 220.0],  # exactly the image
        [100.0, 100.0, 324.0, 324.0],  # exactly canonical 224
    ])
    b0 = torch.cat([special, boxes_for(40)])
    b1 = boxes_for(24)
    rois = torch.cat([torch.cat([torch.zeros(len(b0), 1), b0], 1), torch.cat([torch.ones(len(b1), 1), b1], 1)])
    for k, v in feats.items():
        np.save(os.path.join(d, f"feature_{k}.npy"), v.numpy())
    np.save(os.path.join(d, "rois.npy"), rois.numpy())
    meta = {"image_size": [img_h, img_w], "channels": c, "cases": []}
    mapper = LevelMapper(2, 5)
    levels = mapper([b0, b1])
    np.save(os.path.join(d, "levels.npy"), levels.numpy().astype(np.int64))
    scales = [0.25, 0.125, 0.0625, 0.03125]
    for out in (7, 14):
        for sr in (2, 0):
            pool = MultiScaleRoIAlign(["0", "1", "2", "3"], out, sr)
            res = pool(feats, [b0, b1], [(img_h, img_w)] * 2)
            name = f"multi_o{out}_s{sr}_a0"
            np.save(os.path.join(d, name + ".npy"), res.numpy())
            meta["cases"].append({"name": name, "output_size": out, "sampling_ratio": sr, "aligned": False,
                                  "level": None})
            # aligned=True multi-level: same level assignment, torchvision.ops.roi_align per level
            res = torch.zeros(len(rois), c, out, out)
            for lvl in range(4):
                idx = torch.where(levels == lvl)[0]
                res[idx] = roi_align(feats[str(lvl)], rois[idx], out, scales[lvl], sr, aligned=True)
            name = f"multi_o{out}_s{sr}_a1"
            np.save(os.path.join(d, name + ".npy"), res.numpy())
            meta["cases"].append({"name": name, "output_size": out, "sampling_ratio": sr, "aligned": True,
                                  "level": None})
    for lvl in range(4):
        for sr in (0, 2, 3):
            for aligned in (False, True):
                res = roi_align(feats[str(lvl)], rois, 7, scales[lvl], sr, aligned=aligned)
                name = f"single_l{lvl}_o7_s{sr}_a{int(aligned)}"
                np.save(os.path.join(d, name + ".npy"), res.numpy())
                meta["cases"].append({"name": name, "output_size": 7, "sampling_ratio": sr,
                                      "aligned": aligned, "level": lvl, "spatial_scale": scales[lvl]})
    with open(os.path.join(d, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"roi_align: {len(rois)} rois, {len(meta['cases'])} cases")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="engines/tools/work/shapes.pt")
    ap.add_argument("--engine", help="an engine folder instead: its weights and its manifest's settings")
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    torch.set_num_threads(2)
    for sub in ("detect", "roi_align"):
        shutil.rmtree(os.path.join(args.out, sub), ignore_errors=True)
    model = load_shapes_from_engine(args.engine) if args.engine else load_shapes_checkpoint(args.checkpoint)
    for case in CASES:
        detect_case(model, args.out, *case)
    roi_align_cases(args.out)


if __name__ == "__main__":
    main()
