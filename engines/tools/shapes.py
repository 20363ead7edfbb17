"""The shapes world: synthetic images and videos whose instance truth is known exactly.

Three classes (1 circle/ellipse, 2 rotated rectangle, 3 triangle) on textured, noisy or gradient
backgrounds with distractor lines and blotches. Later instances occlude earlier ones; a mask holds only
the visible pixels, and instances under 30% visible or 40 px^2 are not annotated. Everything is a pure
function of the seed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as mask_util

CLASSES = ["circle", "rectangle", "triangle"]
MIN_VISIBLE_FRACTION = 0.3
MIN_AREA = 40
MAX_INSTANCES = 6
MIN_CONTRAST = 70.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.integers(0, 3)
    base = rng.uniform(0, 255, size=3)
    if kind == 0:  # linear gradient between two colours at a random angle
        other = rng.uniform(0, 255, size=3)
        ang = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xx * math.cos(ang) + yy * math.sin(ang))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = base[None, None, :] * (1 - t[..., None]) + other[None, None, :] * t[..., None]
    elif kind == 1:  # blurred low-frequency texture
        small = rng.uniform(-60, 60, size=(max(h // 24, 2), max(w // 24, 2), 3)).astype(np.float32)
        tex = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        img = base[None, None, :] + tex
    else:  # flat colour with sinusoid stripes
        fx, fy = rng.uniform(0.005, 0.05, size=2)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        stripes = np.sin(xx * fx * 2 * math.pi + yy * fy * 2 * math.pi)[..., None]
        img = base[None, None, :] + stripes * rng.uniform(5, 35, size=3)[None, None, :]
    img = img + rng.normal(0, rng.uniform(2, 14), size=(h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    # distractors: lines and soft blotches, drawn only into the background
    for _ in range(rng.integers(0, 6)):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        col = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.line(img, p1, p2, col, int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
    for _ in range(rng.integers(0, 4)):
        blot = np.zeros((h, w), np.float32)
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(5, max(w // 6, 6))), int(rng.integers(5, max(h // 6, 6))))
        cv2.ellipse(blot, c, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        blot = cv2.GaussianBlur(blot, (0, 0), sigmaX=float(rng.uniform(4, 12)))[..., None]
        col = rng.uniform(0, 255, size=3)[None, None, :]
        alpha = rng.uniform(0.3, 0.7)
        img = (img * (1 - alpha * blot) + col * alpha * blot).astype(np.uint8)
    return img


@dataclass
class Shape:
    """One object: class, centre, size, aspect, rotation, colour; moves in video mode."""

    cls: int  # 1-based category id
    cx: float
    cy: float
    size: float  # half-extent along the major axis, pixels
    aspect: float  # minor/major
    angle: float  # degrees
    color: np.ndarray
    shade: np.ndarray  # colour change across the shape (lightly shaded) or zero (solid)
    tri: np.ndarray = field(default_factory=lambda: np.zeros((3, 2)))  # unit triangle vertices
    vx: float = 0.0
    vy: float = 0.0
    vang: float = 0.0
    vscale: float = 1.0
    track_id: int = 0

    def polygon_mask(self, h: int, w: int, margin: int) -> np.ndarray:
        """Full (unoccluded) mask on a canvas padded by `margin` so off-frame parts are counted."""
        m = np.zeros((h + 2 * margin, w + 2 * margin), np.uint8)
        cx, cy = self.cx + margin, self.cy + margin
        a, b = self.size, self.size * self.aspect
        if self.cls == 1:
            cv2.ellipse(m, (int(round(cx * 16)), int(round(cy * 16))),
                        (int(round(a * 16)), int(round(b * 16))), self.angle, 0, 360, 1, -1,
                        lineType=cv2.LINE_8, shift=4)
            return m
        if self.cls == 2:
            pts = np.array([[-a, -b], [a, -b], [a, b], [-a, b]], np.float64)
        else:
            pts = self.tri * np.array([a, a * max(self.aspect, 0.5)])
        th = math.radians(self.angle)
        rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        pts = pts @ rot.T + np.array([cx, cy])
        cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        return m


def random_shape(rng: np.random.Generator, h: int, w: int, track_id: int = 0) -> Shape:
    cls = int(rng.integers(1, 4))
    lo, hi = 8.0, 0.2 * max(h, w)  # half-extent: objects of ~12 px up to ~40% of the frame
    size = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    aspect = float(rng.uniform(0.4, 1.0)) if cls != 1 or rng.random() < 0.5 else 1.0
    # keep triangles non-degenerate: spread the three vertices at least ~35 degrees apart
    angles = np.sort(rng.uniform(0, 2 * math.pi, 3))
    gaps = np.diff(np.concatenate([angles, angles[:1] + 2 * math.pi]))
    if gaps.min() < 0.6:
        angles = rng.uniform(0, 2 * math.pi) + np.array([0, 2.1, 4.2]) + rng.uniform(-0.4, 0.4, 3)
    tri = np.stack([np.cos(angles), np.sin(angles)], 1)
    color = rng.uniform(0, 255, size=3)
    shade = rng.uniform(-40, 40, size=3) if rng.random() < 0.5 else np.zeros(3)
    return Shape(cls, float(rng.uniform(0, w)), float(rng.uniform(0, h)), size, aspect,
                 float(rng.uniform(0, 360)), color, shade, tri, track_id=track_id)


def render(bg: np.ndarray, shapes: list[Shape], rng: np.random.Generator):
    """Paint shapes in order over bg; return image and the annotated instances (cls, visible mask)."""
    h, w = bg.shape[:2]
    img = bg.astype(np.float32)
    margin = int(max([s.size for s in shapes], default=0) * 1.5) + 2
    full = []
    for s in shapes:
        fm = s.polygon_mask(h, w, margin)
        full_area = int(fm.sum())
        m = fm[margin:margin + h, margin:margin + w].astype(bool)
        # solid or lightly shaded fill; make sure the object stands out from what lies under it
        if m.any():
            under = img[m].mean(0)
            col = s.color.copy()
            if np.abs(col - under).sum() < MIN_CONTRAST:
                col = np.where(under > 127, under - 110, under + 110)
                s.color = col
            ys, xs = np.nonzero(m)
            t = ((xs - xs.min()) / max(xs.max() - xs.min(), 1))[:, None]
            img[ys, xs] = np.clip(col[None, :] + (t - 0.5) * s.shade[None, :], 0, 255)
        full.append((s, m, full_area))
    img = np.clip(img + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
    instances = []
    covered = np.zeros((h, w), bool)
    for s, m, full_area in reversed(full):  # topmost first: it occludes everything below
        vis = m & ~covered
        covered |= m
        area = int(vis.sum())
        if full_area == 0 or area < MIN_AREA or area < MIN_VISIBLE_FRACTION * full_area:
            continue
        instances.append((s, vis))
    instances.reverse()
    return img, instances


def make_image(seed: int, h: int, w: int):
    rng = np.random.default_rng(seed)
    bg = _background(rng, h, w)
    shapes = [random_shape(rng, h, w) for _ in range(int(rng.integers(0, MAX_INSTANCES + 1)))]
    return render(bg, shapes, rng)


def random_size(rng: np.random.Generator, short=(300, 400)) -> tuple[int, int]:
    """(h, w) with a common aspect ratio, portrait or landscape."""
    s = int(rng.integers(*short))
    r = float(rng.choice([16 / 9, 4 / 3, 1.0, 3 / 2]))
    long = int(s * r)
    return (s, long) if rng.random() < 0.75 else (long, s)


class Video:
    """Moving shapes over a slowly drifting background; objects enter and leave the frame."""

    def __init__(self, seed: int, h: int, w: int):
        self.rng = np.random.default_rng(seed)
        self.h, self.w = h, w
        self.bg = _background(self.rng, h + 40, w + 40)
        self.shapes: list[Shape] = []
        self.next_id = 1
        for _ in range(int(self.rng.integers(2, 5))):
            self._spawn(inside=True)
        self.t = 0

    def _spawn(self, inside: bool):
        s = random_shape(self.rng, self.h, self.w, self.next_id)
        s.size = min(s.size, 0.15 * max(self.h, self.w))
        self.next_id += 1
        speed = self.rng.uniform(0.5, 4.0)
        if inside:
            d = self.rng.uniform(0, 2 * math.pi)
        else:  # start just outside an edge, heading inwards
            edge = self.rng.integers(0, 4)
            pad = s.size
            s.cx, s.cy = [(-pad, self.rng.uniform(0, self.h)), (self.w + pad, self.rng.uniform(0, self.h)),
                          (self.rng.uniform(0, self.w), -pad), (self.rng.uniform(0, self.w), self.h + pad)][edge]
            d = math.atan2(self.h / 2 - s.cy, self.w / 2 - s.cx) + self.rng.uniform(-0.5, 0.5)
        s.vx, s.vy = speed * math.cos(d), speed * math.sin(d)
        s.vang = self.rng.uniform(-3, 3)
        s.vscale = self.rng.uniform(0.995, 1.005)
        self.shapes.append(s)

    def frame(self):
        ox = int(20 + 15 * math.sin(self.t / 90))
        oy = int(20 + 15 * math.cos(self.t / 110))
        bg = self.bg[oy:oy + self.h, ox:ox + self.w].copy()
        img, inst = render(bg, self.shapes, self.rng)
        for s in self.shapes:
            s.cx += s.vx
            s.cy += s.vy
            s.angle += s.vang
            s.size = float(np.clip(s.size * s.vscale, 8, 0.2 * max(self.h, self.w)))
        r = lambda s: s.size * 1.5  # noqa: E731
        self.shapes = [s for s in self.shapes if -r(s) < s.cx < self.w + r(s) and -r(s) < s.cy < self.h + r(s)]
        if len(self.shapes) < MAX_INSTANCES and self.rng.random() < 0.04:
            self._spawn(inside=False)
        self.t += 1
        return img, inst


class CocoWriter:
    """Collects images and instances into one COCO dict with compressed-RLE masks."""

    def __init__(self):
        self.images, self.annotations = [], []

    def add(self, image_id: int, h: int, w: int, instances, file_name: str = ""):
        self.images.append({"id": image_id, "height": h, "width": w, "file_name": file_name})
        for s, vis in instances:
            rle = mask_util.encode(np.asfortranarray(vis.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x, y, bw, bh = (float(v) for v in mask_util.toBbox(rle))
            ann = {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": s.cls,
                   "segmentation": rle, "area": float(vis.sum()), "bbox": [x, y, bw, bh], "iscrowd": 0}
            if s.track_id:
                ann["track_id"] = s.track_id
            self.annotations.append(ann)

    def dump(self, path: str):
        cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
        with open(path, "w") as f:
            json.dump({"images": self.images, "annotations": self.annotations, "categories": cats}, f)


def to_target(instances, h: int, w: int):
    """torchvision training target: boxes (x1,y1,x2,y2 exclusive), labels, masks."""
    import torch

    if not instances:
        return {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64),
                "masks": torch.zeros((0, h, w), dtype=torch.uint8)}
    boxes, labels, masks = [], [], []
    for s, vis in instances:
        ys, xs = np.nonzero(vis)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(s.cls)
        masks.append(vis)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "masks": torch.from_numpy(np.stack(masks).astype(np.uint8))}
