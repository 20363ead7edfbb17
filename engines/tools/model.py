"""The narrow `shapes` Mask R-CNN: the paper's structure (ResNet-FPN P2-P6, RPN, TwoMLPHead, 4-conv mask
head, deconv + 1x1 predictor) at widths that run in real time on two CPU cores."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.resnet import BasicBlock
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

SHAPES_CONFIG = {
    "widths": [32, 64, 128, 256],
    "blocks": [2, 2, 2, 2],
    "fpn": 96,
    "representation": 256,
    "num_classes": 4,  # background + circle, rectangle, triangle
    "min_size": 320,
    "max_size": 640,
    "anchor_sizes": [16, 32, 64, 128, 256],
    "aspect_ratios": [0.5, 1.0, 2.0],
}


class NarrowResNet(nn.Module):
    """torchvision's ResNet layout (conv1/bn1/relu/maxpool/layer1-4) with chosen widths."""

    def __init__(self, widths, blocks):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(n):
                down = None
                if b == 0 and (stride != 1 or inplanes != w):
                    down = nn.Sequential(nn.Conv2d(inplanes, w, 1, stride, bias=False), nn.BatchNorm2d(w))
                layers.append(BasicBlock(inplanes, w, stride if b == 0 else 1, down))
                inplanes = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block: stable training from scratch
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


def build_shapes_model(cfg: dict = SHAPES_CONFIG) -> MaskRCNN:
    body = NarrowResNet(cfg["widths"], cfg["blocks"])
    backbone = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, cfg["widths"],
                               cfg["fpn"], extra_blocks=LastLevelMaxPool())
    anchors = AnchorGenerator(tuple((s,) for s in cfg["anchor_sizes"]),
                              (tuple(cfg["aspect_ratios"]),) * len(cfg["anchor_sizes"]))
    f, rep, nc = cfg["fpn"], cfg["representation"], cfg["num_classes"]
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg["min_size"],
        max_size=cfg["max_size"],
        rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(f * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, nc),
        mask_head=MaskRCNNHeads(f, [f] * 4, 1),
        mask_predictor=MaskRCNNPredictor(f, f, nc),
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        box_batch_size_per_image=256,
    )


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the convolution before it (BasicBlocks, stem, downsample)."""

    def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)

    body = model.backbone.body
    fold(body.conv1, body.bn1)
    body.bn1 = nn.Identity()
    for m in list(body.modules()):
        if isinstance(m, BasicBlock):
            fold(m.conv1, m.bn1)
            fold(m.conv2, m.bn2)
            m.bn1, m.bn2 = nn.Identity(), nn.Identity()
            if m.downsample is not None:
                fold(m.downsample[0], m.downsample[1])
                m.downsample[1] = nn.Identity()
    return model


def build_folded_shapes_model(cfg: dict = SHAPES_CONFIG) -> MaskRCNN:
    """The shapes model without BatchNorm (every BN an Identity, the convolutions before them with a
    bias): the structure of the exported engine, and what train.py fine-tunes when it starts from the
    engine's weights (BN frozen into the convolutions). Weights are placeholders until loaded."""
    return fold_batchnorm(build_shapes_model(cfg).eval())


def load_shapes_checkpoint(path: str) -> MaskRCNN:
    """A trained checkpoint as an eval-mode model with BN folded in. The checkpoint holds either real BN
    (training from scratch) or BN already folded (`bn_folded`: fine-tuned from an engine)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ckpt.get("config", SHAPES_CONFIG)
    if ckpt.get("bn_folded"):
        model = build_folded_shapes_model(cfg)
        model.load_state_dict(ckpt["model"])
        return model.eval()
    model = build_shapes_model(cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return fold_batchnorm(model)


# ONNX initializer prefixes of each exported graph -> the torchvision module they came from (export.py)
_GRAPH_PREFIXES = {
    "backbone.onnx": {"backbone.": "backbone.", "rpn_head.": "rpn.head."},
    "box_head.onnx": {"head.": "roi_heads.box_head.", "predictor.": "roi_heads.box_predictor."},
    "mask_head.onnx": {"head.": "roi_heads.mask_head.", "predictor.": "roi_heads.mask_predictor."},
}


def _deconv_from_subpixel(inits: dict) -> dict:
    """A mask head exported with --mask-upsample subpixel (export.SubpixelMaskPredictor) holds the
    ConvTranspose as a 1x1 convolution to 4 sub-pixel groups and the logits repeated per group: the
    predictor's own weights back. Other graphs pass through."""
    if "predictor.up.weight" not in inits:
        return inits
    out = {k: v for k, v in inits.items() if not k.startswith(("predictor.up.", "predictor.logits."))}
    up, up_bias = inits["predictor.up.weight"], inits["predictor.up.bias"]
    cout, cin = up.shape[0] // 4, up.shape[1]
    classes = inits["predictor.logits.weight"].shape[0] // 4
    # up.weight[(2a + b) * cout + o, c] = conv5_mask.weight[c, o, a, b]
    out["predictor.conv5_mask.weight"] = up.reshape(2, 2, cout, cin).permute(3, 2, 0, 1).contiguous()
    out["predictor.conv5_mask.bias"] = up_bias[:cout].clone()
    out["predictor.mask_fcn_logits.weight"] = inits["predictor.logits.weight"][:classes].clone()
    out["predictor.mask_fcn_logits.bias"] = inits["predictor.logits.bias"][:classes].clone()
    return out


def engine_config(engine_dir: str) -> dict:
    """SHAPES_CONFIG with the engine's FPN width (manifest model.fpn_channels): engines narrowed by
    narrow.py carry 64 where the first ones had 96."""
    import os
    import tomllib

    with open(os.path.join(engine_dir, "manifest.toml"), "rb") as f:
        m = tomllib.load(f)
    return {**SHAPES_CONFIG, "fpn": int(m["model"]["fpn_channels"])}


def load_shapes_from_engine(engine_dir: str) -> MaskRCNN:
    """The bundled engine's own weights (BN folded at export) in an eval-mode torchvision model: the
    same weights as the checkpoint it was exported from, for a clone that does not have that file
    (the checkpoint with its optimizer state is 59 MB and is not committed)."""
    import os

    import onnx
    from onnx import numpy_helper

    import tomllib

    model = build_folded_shapes_model(engine_config(engine_dir))
    state = model.state_dict()
    with open(os.path.join(engine_dir, "manifest.toml"), "rb") as f:
        box_layout = tomllib.load(f)["graphs"]["box_head"].get("input_layout", "nchw")
    loaded = set()
    for file, prefixes in _GRAPH_PREFIXES.items():
        inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
                 for i in onnx.load(os.path.join(engine_dir, file)).graph.initializer}
        if file == "mask_head.onnx":
            inits = _deconv_from_subpixel(inits)
        if file == "box_head.onnx" and box_layout == "nhwc":  # fc6's columns in the input's order
            from export import fc6_columns_nchw

            inits["head.fc6.weight"] = fc6_columns_nchw(inits["head.fc6.weight"], engine_config(engine_dir)["fpn"])
        for init_name, value in inits.items():
            src = next((p for p in prefixes if init_name.startswith(p)), None)
            if src is None:
                raise ValueError(f"{file}: initializer {init_name} belongs to no known module")
            name = prefixes[src] + init_name[len(src):]
            if name not in state or state[name].shape != value.shape:
                raise ValueError(f"{file}: {init_name} ({tuple(value.shape)}) does not fit {name}")
            state[name] = value
            loaded.add(name)
    missing = sorted(set(state) - loaded)
    if missing:
        raise ValueError(f"{engine_dir}: no weights for {missing[:5]} ...")
    model.load_state_dict(state)
    apply_manifest_settings(model, engine_dir)
    return model.eval()


def apply_manifest_settings(model: MaskRCNN, engine_dir: str) -> MaskRCNN:
    """The run-time settings an engine's manifest may change from torchvision's defaults (export.py
    --min-size/--max-size, --post-nms-top-n, --box-sampling-ratio, --mask-paste, --box-from-mask), so that
    torch runs the engine exactly as maskstream does (the output boxes through output_boxes)."""
    import os
    import tomllib

    with open(os.path.join(engine_dir, "manifest.toml"), "rb") as f:
        m = tomllib.load(f)
    model.transform.min_size = (m["transform"]["min_size"],)
    model.transform.max_size = m["transform"]["max_size"]
    model.rpn._pre_nms_top_n["testing"] = m["rpn"]["pre_nms_top_n"]
    model.rpn._post_nms_top_n["testing"] = m["rpn"]["post_nms_top_n"]
    model.roi_heads.detections_per_img = m["roi_heads"]["detections_per_img"]
    model.roi_heads.box_roi_pool.sampling_ratio = m["box_roi_pool"]["sampling_ratio"]
    model.roi_heads.mask_roi_pool.sampling_ratio = m["mask_roi_pool"]["sampling_ratio"]
    model.mask_threshold = m["mask"]["threshold"]
    model.box_from_mask = float(m["mask"].get("box_from_mask", 0.0))
    model.cross_class = m["mask"].get("cross_class")
    if m["mask"].get("paste", "torchvision") == "exact":
        use_exact_paste(model)
    return model


def mask_threshold(model: MaskRCNN) -> float:
    """The probability above which a pasted mask pixel is set (the manifest's mask.threshold)."""
    return getattr(model, "mask_threshold", 0.5)


def mask_bounds(m: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2) of a binary mask's set pixels (their outer edges, as src/model/paste.rs
    InstanceMask::bounds); None when none is set."""
    ys, xs = torch.nonzero(m.any(1))[:, 0], torch.nonzero(m.any(0))[:, 0]
    if len(xs) == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def output_boxes(model: MaskRCNN, pred: dict) -> torch.Tensor:
    """The boxes maskstream writes (src/model/paste.rs box_from_mask): each of the box head's boxes moved
    the manifest's mask.box_from_mask share of the way to the bounds (pixel edges) of its thresholded
    mask; the box head's own where the share is 0 or the mask empty."""
    share = getattr(model, "box_from_mask", 0.0)
    boxes = pred["boxes"]
    if share <= 0 or "masks" not in pred or len(boxes) == 0:
        return boxes
    out = boxes.clone()
    for i, m in enumerate(pred["masks"][:, 0] > mask_threshold(model)):
        b = mask_bounds(m)
        if b is None:
            continue
        bounds = torch.tensor(b, dtype=torch.float32)
        out[i] = boxes[i] + torch.tensor(share, dtype=torch.float32) * (bounds - boxes[i])
    return out


def output_scores(model: MaskRCNN, pred: dict) -> torch.Tensor:
    """The scores maskstream writes (src/model/cross_class.rs): with the manifest's mask.cross_class
    {iou, factor}, a detection whose thresholded mask has a mask IoU of `iou` or more with a better-scoring
    one of another class gets `factor` times its score (judged on the box head's scores); else the box
    head's scores. Same order as pred (maskstream sorts best first again)."""
    c = getattr(model, "cross_class", None)
    scores = pred["scores"]
    if not c or "masks" not in pred or len(scores) < 2:
        return scores
    masks = pred["masks"][:, 0] > mask_threshold(model)
    areas = [int(m.sum()) for m in masks]
    bounds = [mask_bounds(m) for m in masks]  # the overlap of two masks lies inside both bounds
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    out = scores.clone()
    for r, j in enumerate(order):
        for i in order[:r]:
            if pred["labels"][i] == pred["labels"][j] or bounds[i] is None or bounds[j] is None:
                continue
            x0, y0 = max(bounds[i][0], bounds[j][0]), max(bounds[i][1], bounds[j][1])
            x1, y1 = min(bounds[i][2], bounds[j][2]), min(bounds[i][3], bounds[j][3])
            if y0 >= y1 or x0 >= x1:
                continue
            inter = int((masks[i, y0:y1, x0:x1] & masks[j, y0:y1, x0:x1]).sum())
            union = areas[i] + areas[j] - inter
            if union > 0 and np.float32(inter) >= np.float32(c["iou"]) * np.float32(union):
                out[j] = scores[j] * torch.tensor(c["factor"], dtype=torch.float32)
                break
    return out


def _exact_taps(lo: torch.Tensor, hi: torch.Tensor, r: int, size: int):
    """src/model/paste.rs exact_taps in the same f32 operations: the first pixel of the window and, per
    pixel, two mask cells and their weights (zero outside the mask)."""
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        return None
    extent = torch.clamp(hi - lo, min=torch.finfo(torch.float32).tiny)
    cell = extent / r
    first = max(float(torch.floor(lo - cell)) - 1.0, 0.0)
    last = min(float(torch.ceil(hi + cell)) + 1.0, float(size))
    if first >= last:
        return None
    x = torch.arange(int(first), int(last), dtype=torch.float32)
    u = (x + 0.5 - lo) / extent * r - 0.5
    f = torch.floor(u)
    w1 = u - f
    w0 = 1.0 - w1
    taps = []
    for i, w in ((f, w0), (f + 1.0, w1)):
        inside = (i >= 0) & (i < r)
        taps += [torch.where(inside, i, 0).long(), torch.where(inside, w, 0.0)]
    return int(first), taps


def paste_exact(masks: torch.Tensor, boxes: torch.Tensor, img_shape) -> torch.Tensor:
    """The exact paste (the manifest's mask.paste = "exact"): [N, 1, R, R] probabilities over boxes in
    frame pixels -> [N, 1, H, W], each pixel the mask sampled bilinearly at the pixel's centre with the
    box in real coordinates, as src/model/paste.rs computes it."""
    h, w = int(img_shape[0]), int(img_shape[1])
    r = masks.shape[-1]
    out = masks.new_zeros((masks.shape[0], 1, h, w))
    for n, (m, b) in enumerate(zip(masks[:, 0].float(), boxes.float())):
        cols, rows = _exact_taps(b[0], b[2], r, w), _exact_taps(b[1], b[3], r, h)
        if cols is None or rows is None:
            continue
        (x0, (ci0, cw0, ci1, cw1)), (y0, (ri0, rw0, ri1, rw1)) = cols, rows
        a, bb = m[ri0], m[ri1]  # rows of the mask, [oh, R]
        t0 = a[:, ci0] * cw0 + a[:, ci1] * cw1
        t1 = bb[:, ci0] * cw0 + bb[:, ci1] * cw1
        out[n, 0, y0:y0 + len(ri0), x0:x0 + len(ci0)] = t0 * rw0[:, None] + t1 * rw1[:, None]
    return out


def use_exact_paste(model: MaskRCNN) -> MaskRCNN:
    """torchvision's postprocess with the exact paste in place of paste_masks_in_image. Under ONNX
    tracing (compare.py's whole-graph peer) torchvision's own paste stays: this one's window sizes are
    Python numbers a trace would freeze; both cost about the same."""
    import types

    from torchvision.models.detection.transform import resize_boxes

    standard = model.transform.postprocess

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training or torch.jit.is_tracing():
            return standard(result, image_shapes, original_image_sizes)
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
            if "masks" in pred:
                pred["masks"] = paste_exact(pred["masks"], pred["boxes"], o_im_s)
        return result

    model.transform.postprocess = types.MethodType(postprocess, model.transform)
    return model
