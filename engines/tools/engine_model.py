"""Any engine run the way torchvision runs Mask R-CNN, from its manifest and ONNX graphs alone.

torchvision's MaskRCNN (transform, anchors, RPN proposals, MultiScaleRoIAlign, box post-processing, mask
paste) configured from manifest.toml, with the three learned parts (backbone + RPN head, box head, mask
head) the engine's own graphs in ONNX Runtime, FP32 or INT8. For engines whose torch weights are not at
hand (a torchvision checkpoint exported elsewhere, the random-weight R50-FPN of compare.py): quantize.py
calibrates their heads on the ROIs this model pools, and compare.py checks INT8 detections against FP32.

Inputs are what torchvision takes: [3, H, W] floats, pixel values divided by the manifest's input_divisor.
"""
from __future__ import annotations

import math
import os
import tomllib
from collections import OrderedDict

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from qdq_rewrite import dequantized

# what torchvision fixes in code and a manifest records: an engine that asks for something else cannot
# be run by torchvision's modules
_TORCHVISION_FIXED = {("roi_heads", "min_box_size"): 0.01}


def session(path: str, threads: int) -> ort.InferenceSession:
    """A CPU session on `threads` intra-op threads (one inter-op: the graphs are sequential)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _nchw(t: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(t).permute(0, 3, 1, 2)


class OrtBackbone(nn.Module):
    """images [N,3,H,W] -> the P levels by manifest name (NCHW, as torchvision's poolers read them); the
    RPN head's outputs of the same run wait for OrtRpnHead."""

    def __init__(self, session: ort.InferenceSession, g: dict, channels: int):
        super().__init__()
        self.session, self.g, self.out_channels = session, g, channels
        self.rpn_outputs = None

    def forward(self, images: torch.Tensor):
        g = self.g
        outs = dict(zip([o.name for o in self.session.get_outputs()],
                        self.session.run(None, {g["input"]: images.numpy()})))
        feats_nhwc = g.get("feature_layout", "nchw") == "nhwc"
        rpn_nhwc = g.get("rpn_layout", "nchw") == "nhwc"
        # an INT8 backbone may give its levels as uint8 with their scale and zero point (qdq_rewrite.py)
        levels = {name: dequantized(outs, name) for name in g["features"]}
        features = OrderedDict(
            (name, _nchw(levels[name]) if feats_nhwc else torch.from_numpy(levels[name])) for name in g["features"])
        conv = _nchw if rpn_nhwc else torch.from_numpy
        self.rpn_outputs = ([conv(outs[o]) for o in g["objectness"]], [conv(outs[d]) for d in g["deltas"]])
        return features


class OrtRpnHead(nn.Module):
    def __init__(self, backbone: OrtBackbone):
        super().__init__()
        self.backbone = [backbone]  # a list: not a submodule twice

    def forward(self, features):
        out, self.backbone[0].rpn_outputs = self.backbone[0].rpn_outputs, None
        if out is None:
            raise RuntimeError("OrtRpnHead: the backbone graph has not run for these features")
        return out


class OrtHead(nn.Module):
    """A head graph: pooled features [N,C,S,S] -> its outputs (one tensor, or a tuple)."""

    def __init__(self, session: ort.InferenceSession, input_name: str, outputs: list[str], layout: str = "nchw"):
        super().__init__()
        self.session, self.input_name, self.outputs = session, input_name, outputs
        self.nhwc = layout == "nhwc"

    def forward(self, x: torch.Tensor):
        if self.nhwc:  # the graph takes [N,S,S,C] (export.py --head-layout nhwc)
            x = x.permute(0, 2, 3, 1)
        res = [torch.from_numpy(r) for r in self.session.run(self.outputs, {self.input_name: x.contiguous().numpy()})]
        return res[0] if len(res) == 1 else tuple(res)


class Passthrough(nn.Module):
    """The predictor slot: the head graph already ends with the predictor."""

    def forward(self, x):
        return x


def _check_fixed(m: dict) -> None:
    for (table, key), value in _TORCHVISION_FIXED.items():
        if not math.isclose(m[table][key], value):
            raise ValueError(f"manifest [{table}] {key} = {m[table][key]}: torchvision's modules fix it at {value}")
    for table in ("box_roi_pool", "mask_roi_pool"):
        if m[table].get("aligned", False):
            raise ValueError(f"manifest [{table}] aligned = true: torchvision's MultiScaleRoIAlign is aligned=False")


def graph_files(m: dict, precision: str) -> dict[str, str]:
    """The three graphs' files at a precision (the [precision.int8] tables for int8)."""
    if precision == "fp32":
        return {g: m["graphs"][g]["file"] for g in ("backbone", "box_head", "mask_head")}
    table = m.get("precision", {}).get(precision)
    if table is None:
        raise ValueError(f"the manifest has no [precision.{precision}] graphs (quantize.py writes them)")
    return {g: table[g]["file"] for g in ("backbone", "box_head", "mask_head")}


def engine_model(engine_dir: str, precision: str = "fp32", threads: int = 2) -> MaskRCNN:
    """The engine as an eval-mode torchvision MaskRCNN whose learned parts are its ONNX graphs."""
    from model import apply_manifest_settings

    with open(os.path.join(engine_dir, "manifest.toml"), "rb") as f:
        m = tomllib.load(f)
    _check_fixed(m)
    files = graph_files(m, precision)
    gb, gbox, gmask = (m["graphs"][g] for g in ("backbone", "box_head", "mask_head"))
    backbone = OrtBackbone(session(os.path.join(engine_dir, files["backbone"]), threads), gb,
                           m["model"]["fpn_channels"])
    t, rpn, rh = m["transform"], m["rpn"], m["roi_heads"]
    anchors = AnchorGenerator(tuple(tuple(s) for s in m["anchors"]["sizes"]),
                              tuple(tuple(a) for a in m["anchors"]["aspect_ratios"]))

    def pool(table: dict) -> MultiScaleRoIAlign:
        return MultiScaleRoIAlign(table["levels"], table["output_size"], table["sampling_ratio"],
                                  canonical_scale=table["canonical_scale"], canonical_level=table["canonical_level"])

    model = MaskRCNN(
        backbone, num_classes=None, min_size=t["min_size"], max_size=t["max_size"],
        image_mean=t["image_mean"], image_std=t["image_std"], size_divisible=t["size_divisible"],
        rpn_anchor_generator=anchors, rpn_head=OrtRpnHead(backbone),
        rpn_nms_thresh=rpn["nms_thresh"], rpn_score_thresh=rpn["score_thresh"],
        box_roi_pool=pool(m["box_roi_pool"]),
        box_head=OrtHead(session(os.path.join(engine_dir, files["box_head"]), threads), gbox["input"],
                         [gbox["class_logits"], gbox["box_deltas"]], gbox.get("input_layout", "nchw")),
        box_predictor=Passthrough(), box_score_thresh=rh["score_thresh"], box_nms_thresh=rh["nms_thresh"],
        bbox_reg_weights=tuple(rh["box_coder_weights"]),
        mask_roi_pool=pool(m["mask_roi_pool"]),
        mask_head=OrtHead(session(os.path.join(engine_dir, files["mask_head"]), threads), gmask["input"],
                          [gmask["mask_logits"]], gmask.get("input_layout", "nchw")),
        mask_predictor=Passthrough())
    model.rpn.min_size = rpn["min_size"]
    model.rpn.box_coder = BoxCoder(tuple(rpn["box_coder_weights"]), rpn["bbox_xform_clip"])
    model.roi_heads.box_coder = BoxCoder(tuple(rh["box_coder_weights"]), rh["bbox_xform_clip"])
    apply_manifest_settings(model, engine_dir)  # proposal counts, sampling ratios, mask threshold and paste
    return model.eval()
