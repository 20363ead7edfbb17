"""Export a torchvision Mask R-CNN to a maskstream engine package (docs/engine-format.md).

    # the bundled shapes model, from its training checkpoint
    export.py --model shapes --checkpoint engines/tools/work/shapes.pt --out engines/shapes
    # a full-size R50-FPN (v1 or v2) with random weights, for speed work (not committed)
    export.py --model maskrcnn_resnet50_fpn --seed 0 --out engines/r50fpn
    export.py --model maskrcnn_resnet50_fpn_v2 --checkpoint my.pth --out engines/r50fpn-v2
    # torchvision's COCO weights: the manifest gets COCO's 91 names (with torchvision's N/A gaps)
    export.py --model maskrcnn_resnet50_fpn --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --out engines/coco
    # your own fine-tuned model with 5 classes: names from a file, one per line
    export.py --model maskrcnn_resnet50_fpn --num-classes 6 --classes my-classes.txt --checkpoint my.pth --out engines/mine

Three graphs hold only the dense work: backbone.onnx (backbone + FPN + RPN head), box_head.onnx and
mask_head.onnx. Everything data dependent (anchors, proposals, ROIAlign, NMS, paste) is the runtime's, so
the manifest carries every parameter of it. Each graph is checked against torch with onnxruntime and the
export fails when max |delta| exceeds --tolerance.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import math
import os
import sys

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FORMAT_VERSION = 1
LEVEL_NAMES = ["p2", "p3", "p4", "p5", "p6"]


class BackboneGraph(nn.Module):
    """images [N,3,H,W] (normalized, padded /32) -> P2..P6, objectness per level [N,A,h,w], deltas [N,4A,h,w].

    layout "nhwc" writes P2..P6 as [N,h,w,C], the layout maskstream's ROIAlign reads: ONNX Runtime folds
    that transpose into its own last layout change (measured: no time added, FP32 or INT8), and the
    per-frame transpose of every level on our side goes away. "nchw" is torchvision's layout.
    rpn_layout "nhwc" writes objectness [N,h,w,A] and deltas [N,h,w,4A]: the order torchvision flattens
    them in for the anchors; ONNX Runtime's integer convolutions produce it without the transposes back
    to NCHW it otherwise adds (~0.4 ms a frame in the INT8 graph)."""

    def __init__(self, model, layout: str = "nchw", upsample_by_two: bool = False, rpn_layout: str = "nchw"):
        super().__init__()
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        self.channels_last = layout == "nhwc"
        self.upsample_by_two = upsample_by_two
        self.rpn_channels_last = rpn_layout == "nhwc"

    def fpn(self, images):
        """torchvision's BackboneWithFPN forward with each top-down upsampling by scale_factor 2 instead of
        to the lateral's size: the same values wherever every level is exactly twice the next (inputs
        padded to a multiple of the coarsest stride, as the runtime pads them), and no Shape of the
        lateral in the graph. In the INT8 graph that Shape made ONNX Runtime dequantize each lateral and
        transpose it back to NCHW only to read its size (~1 ms a frame at the demo's size)."""
        fpn = self.backbone.fpn
        x = list(self.backbone.body(images).values())
        last_inner = fpn.get_result_from_inner_blocks(x[-1], -1)
        results = [fpn.get_result_from_layer_blocks(last_inner, -1)]
        for idx in range(len(x) - 2, -1, -1):
            inner_lateral = fpn.get_result_from_inner_blocks(x[idx], idx)
            last_inner = inner_lateral + torch.nn.functional.interpolate(last_inner, scale_factor=2.0, mode="nearest")
            results.insert(0, fpn.get_result_from_layer_blocks(last_inner, idx))
        if fpn.extra_blocks is not None:
            results, _ = fpn.extra_blocks(results, x, [str(i) for i in range(len(results))])
        return results

    def forward(self, images):
        feats = self.fpn(images) if self.upsample_by_two else list(self.backbone(images).values())
        objectness, deltas = self.rpn_head(feats)
        out = [f.permute(0, 2, 3, 1) for f in feats] if self.channels_last else feats
        if self.rpn_channels_last:  # [N, h, w, A]: torchvision's own flattening order for the anchors
            objectness = [o.permute(0, 2, 3, 1) for o in objectness]
            deltas = [d.permute(0, 2, 3, 1) for d in deltas]
        return (*out, *objectness, *deltas)


def upsample_by_two(model, size_divisible: int) -> bool:
    """Whether every FPN level is exactly twice the next on the sizes the runtime feeds: padded to a
    multiple of the coarsest FPN input's stride (32 for a ResNet's layer4)."""
    return size_divisible % 2 ** (1 + len(model.backbone.fpn.inner_blocks)) == 0


class BoxHeadGraph(nn.Module):
    """pooled [N,C,7,7] (layout "nchw") or [N,7,7,C] ("nhwc") -> class_logits [N,K], box_deltas [N,4K].

    "nhwc" is the order maskstream's ROIAlign computes the bins in, so no transpose on its side. For
    torchvision's TwoMLPHead the graph is the same but for fc6's weight columns, permuted to the input's
    order (the same sums); any other head gets a transpose at its input (channels-last convolutions
    cancel it in ONNX Runtime)."""

    def __init__(self, model, layout: str = "nchw"):
        super().__init__()
        head = model.roi_heads.box_head
        self.permute_input = False
        if layout == "nhwc":
            if isinstance(head, TwoMLPHead):
                head = copy.deepcopy(head)
                c = model.backbone.out_channels
                s = head.fc6.in_features // c
                s = int(round(s ** 0.5))
                with torch.no_grad():
                    w = head.fc6.weight
                    head.fc6.weight.copy_(w.view(-1, c, s, s).permute(0, 2, 3, 1).reshape(w.shape))
            else:
                self.permute_input = True
        self.head = head
        self.predictor = model.roi_heads.box_predictor

    def forward(self, x):
        if self.permute_input:
            x = x.permute(0, 3, 1, 2)
        return self.predictor(self.head(x))


class ChannelsLastInput(nn.Module):
    """A torchvision head fed [N,S,S,C]: the reference the "nhwc" graphs are checked against."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x.permute(0, 3, 1, 2))


def fc6_columns_nchw(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """fc6's weight of an "nhwc" box head graph back in torchvision's column order."""
    s = int(round((weight.shape[1] // channels) ** 0.5))
    return weight.view(-1, s, s, channels).permute(0, 3, 1, 2).reshape(weight.shape)


class SubpixelMaskPredictor(nn.Module):
    """torchvision's MaskRCNNPredictor (2x2 stride-2 ConvTranspose -> ReLU -> 1x1 logits) as the same sums
    in operators ONNX Runtime runs fast. A 2x2/2 transposed convolution is one 1x1 convolution to 4 sub-pixel
    groups of channels, (a, b, out) order; ReLU and the 1x1 logits act per pixel, so they run on each group
    before the groups are laid out on the 28x28 grid (a grouped 1x1 convolution, then a reshape of only K
    channels). ONNX Runtime has no integer ConvTranspose: in the INT8 graph it ran in float and took ~40% of
    the mask head; the 1x1 convolutions here are quantized like the rest. Outputs equal torchvision's to
    float rounding (check_graph compares against the torchvision module). model.py reads the weights back."""

    def __init__(self, predictor):
        super().__init__()
        deconv, logits = predictor.conv5_mask, predictor.mask_fcn_logits
        if (tuple(deconv.kernel_size), tuple(deconv.stride), tuple(deconv.padding), tuple(deconv.output_padding),
                deconv.groups, tuple(deconv.dilation)) != ((2, 2), (2, 2), (0, 0), (0, 0), 1, (1, 1)):
            raise ValueError(f"mask predictor: {deconv} is not the 2x2 stride-2 ConvTranspose this rewrite assumes")
        cin, cout = deconv.weight.shape[:2]
        self.classes = logits.out_channels
        self.up = nn.Conv2d(cin, 4 * cout, 1)
        self.logits = nn.Conv2d(4 * cout, 4 * self.classes, 1, groups=4)
        with torch.no_grad():
            # up.weight[(2a + b) * cout + o, c] = deconv.weight[c, o, a, b]
            self.up.weight.copy_(deconv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin, 1, 1))
            self.up.bias.copy_(deconv.bias.repeat(4))
            self.logits.weight.copy_(logits.weight.repeat(4, 1, 1, 1))
            self.logits.bias.copy_(logits.bias.repeat(4))

    def forward(self, x):
        y = self.logits(torch.relu(self.up(x)))  # [N, (a, b, k), h, w]
        n, _, h, w = y.shape
        return y.view(n, 2, 2, self.classes, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, self.classes, 2 * h, 2 * w)


class MaskHeadGraph(nn.Module):
    """pooled [N,C,14,14] (layout "nchw") or [N,14,14,C] ("nhwc": a transpose at the input, which ONNX
    Runtime's channels-last integer convolutions cancel) -> mask_logits [N,K,28,28]; upsample "subpixel"
    (SubpixelMaskPredictor) or "deconv" (torchvision's predictor as it is)."""

    def __init__(self, model, upsample: str = "deconv", layout: str = "nchw"):
        super().__init__()
        self.head = model.roi_heads.mask_head
        predictor = model.roi_heads.mask_predictor
        self.predictor = SubpixelMaskPredictor(predictor) if upsample == "subpixel" else predictor
        self.permute_input = layout == "nhwc"

    def forward(self, x):
        if self.permute_input:
            x = x.permute(0, 3, 1, 2)
        return self.predictor(self.head(x))


def load_model(args):
    import torchvision.models.detection as det

    if args.model == "shapes":
        from model import load_shapes_checkpoint

        if not args.checkpoint:
            sys.exit("--model shapes needs --checkpoint")
        return load_shapes_checkpoint(args.checkpoint), ["__background__", "circle", "rectangle", "triangle"]
    torch.manual_seed(args.seed)
    ctor = getattr(det, args.model)
    model = ctor(weights=None, weights_backbone=None, num_classes=args.num_classes)
    if args.checkpoint:
        sd = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(sd.get("model", sd))
    model.eval()
    return model, class_names(args, args.num_classes)


def class_names(args, num_classes):
    """--classes FILE (one name per line, background first or left out), else COCO's 91 names (with
    torchvision's N/A gaps, so class ids stay the checkpoint's) for a 91-class torchvision model, else
    class1..classN."""
    if args.classes:
        with open(args.classes) as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) == num_classes - 1:
            names = ["__background__"] + names
        if len(names) != num_classes:
            sys.exit(f"--classes {args.classes}: {len(names)} names for a model of {num_classes} classes "
                     f"(background included; give {num_classes - 1} or {num_classes})")
        return names
    if num_classes == 91 and args.model != "shapes":
        import torchvision.models.detection as det

        return list(det.MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    return ["__background__"] + [f"class{i}" for i in range(1, num_classes)]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_graph(module, args_, path, input_names, output_names, dynamic_axes):
    torch.onnx.export(module, args_, path, input_names=input_names, output_names=output_names,
                      dynamic_axes=dynamic_axes, opset_version=17, dynamo=False, do_constant_folding=True)


def check_graph(module, path, inputs: list[torch.Tensor], tolerance: float) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            ref = module(x)
        ref = ref if isinstance(ref, (tuple, list)) else (ref,)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        for r, g in zip(ref, got):
            if tuple(r.shape) != g.shape:
                raise SystemExit(f"{path}: output shape {g.shape} != torch {tuple(r.shape)}")
            worst = max(worst, float(np.abs(r.numpy() - g).max()) if g.size else 0.0)
    if worst > tolerance:
        raise SystemExit(f"{path}: max |delta| vs torch {worst:.3e} exceeds {tolerance:.1e}")
    return worst


def cross_class(text: str) -> dict:
    """--cross-class IOU,FACTOR as the manifest's [mask.cross_class] table (checked as maskstream does)."""
    try:
        iou, factor = (float(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"--cross-class {text!r}: expected IOU,FACTOR, e.g. 0.85,0.5")
    if not (0 < iou <= 1 and 0 <= factor < 1):
        raise SystemExit(f"--cross-class {text!r}: IOU must be in (0, 1] and FACTOR in [0, 1)")
    return {"iou": iou, "factor": factor}


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, float):
        return repr(float(v))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def write_manifest(path, doc: dict):
    lines = ["# maskstream engine manifest: written by engines/tools/export.py, read by src/engine.rs"]
    tables = []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {toml_value(v)}")
    for name, table in tables:
        sub = [(k, v) for k, v in table.items() if isinstance(v, dict)]
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for sname, stable in sub:
            lines.append(f"\n[{name}.{sname}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in stable.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes",
                    choices=["shapes", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
    ap.add_argument("--checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-classes", type=int, default=91)
    ap.add_argument("--feature-layout", choices=["nhwc", "nchw"], default="nhwc",
                    help="layout of the backbone's P2..P6 outputs (nhwc: what ROIAlign reads, no transpose)")
    ap.add_argument("--rpn-layout", choices=["nhwc", "nchw"], default="nhwc",
                    help="layout of the RPN head's outputs (nhwc: torchvision's flattening order, no transpose)")
    ap.add_argument("--head-layout", choices=["nhwc", "nchw"], default="nhwc",
                    help="layout of the pooled features the box and mask heads take (nhwc: the order ROIAlign "
                         "computes them in, no transpose)")
    ap.add_argument("--mask-upsample", choices=["subpixel", "deconv"], default="subpixel",
                    help="the mask predictor's 2x upsampling: subpixel (1x1 convolutions, quantizable; the same "
                         "sums) or deconv (torchvision's ConvTranspose as it is)")
    ap.add_argument("--box-from-mask", type=float, default=0.0,
                    help="share of each pasted mask's own bounds in its output box (0: the box head's box, "
                         "torchvision's; 0.5: the average of the two)")
    ap.add_argument("--cross-class", metavar="IOU,FACTOR",
                    help="score a detection whose mask overlaps a better one of another class by mask IoU >= IOU "
                         "down to FACTOR times its score (e.g. 0.85,0.5; default: off, torchvision's)")
    ap.add_argument("--mask-paste", choices=["torchvision", "exact"], default="torchvision",
                    help="how masks are laid over their boxes: torchvision's paste_masks_in_image (about a pixel "
                         "too wide and tall) or exact (sampled at pixel centres, Detectron2's); measure the AP "
                         "effect (evaluate.py --maskstream)")
    ap.add_argument("--classes", help="class names, one per line (background first or left out)")
    ap.add_argument("--name")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--post-nms-top-n", type=int,
                    help="proposals kept after the RPN's NMS at inference (torchvision: 1000); fewer cost less "
                         "ROIAlign and box head per frame: measure the AP effect (evaluate.py --maskstream)")
    ap.add_argument("--min-size", type=int,
                    help="inference size: the shorter side frames are resized to (torchvision's transform.min_size; "
                         "shapes 320, COCO models 800); larger finds smaller objects and costs about the square: "
                         "measure both (evaluate.py --maskstream, maskstream bench)")
    ap.add_argument("--max-size", type=int, help="cap on the longer side (default: the model's, or 2x --min-size)")
    ap.add_argument("--box-sampling-ratio", type=int,
                    help="samples per bin side of the box head's ROIAlign (torchvision: 2; 1 costs a quarter)")
    args = ap.parse_args()
    torch.set_num_threads(max(os.cpu_count() or 1, 1))

    model, classes = load_model(args)
    if args.post_nms_top_n:
        model.rpn._post_nms_top_n["testing"] = args.post_nms_top_n
    if args.box_sampling_ratio is not None:
        model.roi_heads.box_roi_pool.sampling_ratio = args.box_sampling_ratio
    if args.min_size or args.max_size:
        if args.min_size:
            model.transform.min_size = (args.min_size,)
        model.transform.max_size = args.max_size or (2 * args.min_size if args.min_size else model.transform.max_size)
        if model.transform.max_size < model.transform.min_size[-1]:
            sys.exit(f"--max-size {model.transform.max_size} is under --min-size {model.transform.min_size[-1]}")
    os.makedirs(args.out, exist_ok=True)
    t = model.transform
    rpn, heads = model.rpn, model.roi_heads
    fpn_channels = model.backbone.out_channels
    num_anchors = rpn.head.cls_logits.out_channels
    n_levels = len(rpn.anchor_generator.sizes)
    levels = LEVEL_NAMES[:n_levels]
    feature_keys = list(heads.box_roi_pool.featmap_names)
    all_keys = ["0", "1", "2", "3", "pool"][:n_levels]
    pooled_levels = [levels[all_keys.index(k)] for k in feature_keys]
    mask_levels = [levels[all_keys.index(k)] for k in heads.mask_roi_pool.featmap_names]

    # -- graphs --------------------------------------------------------------------------------------
    min_size = t.min_size[-1]
    h0, w0 = 320, 576
    probe_small = torch.rand(1, 3, h0, w0) * 2 - 1
    probe_other = torch.rand(1, 3, 352, 256) * 2 - 1
    graphs = {}
    bb = BackboneGraph(model, args.feature_layout, upsample_by_two(model, t.size_divisible), args.rpn_layout).eval()
    outs = ([f"{p}" for p in levels] + [f"objectness_{p}" for p in levels] + [f"deltas_{p}" for p in levels])
    bb_path = os.path.join(args.out, "backbone.onnx")
    export_graph(bb, (probe_small,), bb_path, ["images"], outs,
                 {"images": {0: "batch", 2: "height", 3: "width"},
                  **{o: {0: "batch", 2: f"h_{o}", 3: f"w_{o}"} for o in outs}})
    # checked against torchvision's own forward
    graphs["backbone"] = check_graph(BackboneGraph(model, args.feature_layout, rpn_layout=args.rpn_layout).eval(), bb_path,
                                     [probe_small, probe_other], args.tolerance)

    res = heads.box_roi_pool.output_size
    res = res[0] if isinstance(res, (list, tuple)) else res
    mres = heads.mask_roi_pool.output_size
    mres = mres[0] if isinstance(mres, (list, tuple)) else mres
    nhwc = args.head_layout == "nhwc"

    def pooled(n, size):  # random pooled features in the graphs' layout
        return torch.randn(n, size, size, fpn_channels) if nhwc else torch.randn(n, fpn_channels, size, size)

    def reference(module):  # torchvision's module, fed the graphs' layout
        return ChannelsLastInput(module).eval() if nhwc else module

    box = BoxHeadGraph(model, args.head_layout).eval()
    box_path = os.path.join(args.out, "box_head.onnx")
    export_graph(box, (pooled(5, res),), box_path, ["box_features"],
                 ["class_logits", "box_deltas"], {"box_features": {0: "rois"}, "class_logits": {0: "rois"},
                                                  "box_deltas": {0: "rois"}})
    graphs["box_head"] = check_graph(reference(BoxHeadGraph(model).eval()), box_path,
                                     [pooled(n, res) for n in (1, 37)], args.tolerance)
    mask = MaskHeadGraph(model, args.mask_upsample, args.head_layout).eval()
    mask_path = os.path.join(args.out, "mask_head.onnx")
    export_graph(mask, (pooled(3, mres),), mask_path, ["mask_features"],
                 ["mask_logits"], {"mask_features": {0: "rois"}, "mask_logits": {0: "rois"}})
    if args.mask_upsample == "subpixel":  # model.load_shapes_from_engine reads torchvision's weights back
        from model import _deconv_from_subpixel

        back = _deconv_from_subpixel({f"predictor.{k}": v for k, v in mask.predictor.state_dict().items()})
        for k, v in model.roi_heads.mask_predictor.state_dict().items():
            if not torch.equal(back[f"predictor.{k}"], v):
                sys.exit(f"mask head: predictor.{k} does not read back from the subpixel graph's weights")
    # checked against torchvision's own mask head, whichever way the graph upsamples
    graphs["mask_head"] = check_graph(reference(MaskHeadGraph(model).eval()), mask_path,
                                      [pooled(n, mres) for n in (1, 9)], args.tolerance)
    num_classes = heads.box_predictor.cls_score.out_features
    if len(classes) != num_classes:
        classes = class_names(args, num_classes)

    # -- manifest ------------------------------------------------------------------------------------
    ag = rpn.anchor_generator
    doc = {
        "format_version": FORMAT_VERSION,
        "name": args.name or os.path.basename(os.path.normpath(args.out)),
        "source": args.model,
        "model": {"classes": classes, "fpn_channels": fpn_channels, "num_anchors_per_location": num_anchors,
                  "levels": levels},
        "transform": {"min_size": int(min_size), "max_size": int(t.max_size),
                      "size_divisible": int(t.size_divisible), "image_mean": [float(x) for x in t.image_mean],
                      "image_std": [float(x) for x in t.image_std], "input_divisor": 255.0},
        "anchors": {"sizes": [[float(s) for s in sz] for sz in ag.sizes],
                    "aspect_ratios": [[float(r) for r in ar] for ar in ag.aspect_ratios]},
        "rpn": {"pre_nms_top_n": int(rpn._pre_nms_top_n["testing"]),
                "post_nms_top_n": int(rpn._post_nms_top_n["testing"]), "nms_thresh": float(rpn.nms_thresh),
                "min_size": float(rpn.min_size), "score_thresh": float(rpn.score_thresh),
                "box_coder_weights": [float(w) for w in rpn.box_coder.weights],
                "bbox_xform_clip": float(rpn.box_coder.bbox_xform_clip)},
        "roi_heads": {"score_thresh": float(heads.score_thresh), "nms_thresh": float(heads.nms_thresh),
                      "detections_per_img": int(heads.detections_per_img), "min_box_size": 1e-2,
                      "box_coder_weights": [float(w) for w in heads.box_coder.weights],
                      "bbox_xform_clip": float(heads.box_coder.bbox_xform_clip)},
        "box_roi_pool": {"levels": pooled_levels, "output_size": int(res),
                         "sampling_ratio": int(heads.box_roi_pool.sampling_ratio), "aligned": False,
                         "canonical_scale": int(heads.box_roi_pool.canonical_scale),
                         "canonical_level": int(heads.box_roi_pool.canonical_level)},
        "mask_roi_pool": {"levels": mask_levels, "output_size": int(mres),
                          "sampling_ratio": int(heads.mask_roi_pool.sampling_ratio), "aligned": False,
                          "canonical_scale": int(heads.mask_roi_pool.canonical_scale),
                          "canonical_level": int(heads.mask_roi_pool.canonical_level)},
        "mask": {"threshold": 0.5, "resolution": int(2 * mres), "paste_padding": 1, "paste": args.mask_paste,
                 **({"box_from_mask": args.box_from_mask} if args.box_from_mask else {}),
                 **({"cross_class": cross_class(args.cross_class)} if args.cross_class else {})},
        "graphs": {
            "backbone": {"file": "backbone.onnx", "sha256": sha256(bb_path), "input": "images",
                         "features": levels, "feature_layout": args.feature_layout, "objectness": [f"objectness_{p}" for p in levels],
                         "deltas": [f"deltas_{p}" for p in levels], "rpn_layout": args.rpn_layout, "max_abs_diff_vs_torch": graphs["backbone"]},
            "box_head": {"file": "box_head.onnx", "sha256": sha256(box_path), "input": "box_features",
                         "input_layout": args.head_layout, "class_logits": "class_logits", "box_deltas": "box_deltas",
                         "max_abs_diff_vs_torch": graphs["box_head"]},
            "mask_head": {"file": "mask_head.onnx", "sha256": sha256(mask_path), "input": "mask_features",
                          "input_layout": args.head_layout, "mask_logits": "mask_logits", "upsample": args.mask_upsample,
                          "max_abs_diff_vs_torch": graphs["mask_head"]},
        },
    }
    assert math.isclose(doc["rpn"]["bbox_xform_clip"], math.log(1000.0 / 16))
    write_manifest(os.path.join(args.out, "manifest.toml"), doc)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in ("backbone.onnx", "box_head.onnx",
                                                                       "mask_head.onnx"))
    print(f"exported {args.out}: {total / 1e6:.1f} MB; max |delta| vs torch: "
          + ", ".join(f"{k} {v:.2e}" for k, v in graphs.items()))


if __name__ == "__main__":
    main()
