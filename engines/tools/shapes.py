"""The shapes world: synthetic images and videos whose instance truth is known exactly.

Three classes (1 circle/ellipse, 2 rotated rectangle, 3 triangle). Later instances occlude earlier ones; a
mask holds only the visible pixels, and instances under 30% visible or 40 px^2 are not annotated.
Everything is a pure function of the seed.

Two worlds, chosen by `world=`:
- "v1": the world the first bundled engine was trained on (textured, noisy or gradient backgrounds with
  distractor lines and blotches; sizes around 300-400 px short side). Kept bit-exact: the demo video, its
  ground truth and the test fixtures are regenerated from it. `make_image`/`Video` default to it.
- "wide": the widened world of issue 17, so the model holds up on scenes it never saw: ellipses of any
  eccentricity, rectangles of aspect 0.3-1, irregular triangles, many shapes cut by the frame border,
  shading gradients in any direction and strength, seven background kinds, unannotated distractors
  (rings, crosses/stars, text, clutter), blur / motion blur / JPEG artefacts, sizes 320x240..1280x720.
  train.py and evaluate.py default to it.
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


def _linear_gradient(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """Between `base` and another colour at a random angle."""
    other = rng.uniform(0, 255, size=3)
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(ang) + yy * math.sin(ang))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return base[None, None, :] * (1 - t[..., None]) + other[None, None, :] * t[..., None]


def _lowfreq_texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """Blurred low-frequency texture around `base`."""
    small = rng.uniform(-60, 60, size=(max(h // 24, 2), max(w // 24, 2), 3)).astype(np.float32)
    tex = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return base[None, None, :] + tex


def _stripes(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """Flat colour with sinusoid stripes."""
    fx, fy = rng.uniform(0.005, 0.05, size=2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    stripes = np.sin(xx * fx * 2 * math.pi + yy * fy * 2 * math.pi)[..., None]
    return base[None, None, :] + stripes * rng.uniform(5, 35, size=3)[None, None, :]


def _lines(rng: np.random.Generator, img: np.ndarray, n_max: int) -> None:
    h, w = img.shape[:2]
    for _ in range(rng.integers(0, n_max)):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        col = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.line(img, p1, p2, col, int(rng.integers(1, 4)), lineType=cv2.LINE_AA)


def _blotches(rng: np.random.Generator, img: np.ndarray, n_max: int) -> np.ndarray:
    """Soft blurred ellipses of colour: clutter with no edge to segment."""
    h, w = img.shape[:2]
    for _ in range(rng.integers(0, n_max)):
        blot = np.zeros((h, w), np.float32)
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(5, max(w // 6, 6))), int(rng.integers(5, max(h // 6, 6))))
        cv2.ellipse(blot, c, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        blot = cv2.GaussianBlur(blot, (0, 0), sigmaX=float(rng.uniform(4, 12)))[..., None]
        col = rng.uniform(0, 255, size=3)[None, None, :]
        alpha = rng.uniform(0.3, 0.7)
        img = (img * (1 - alpha * blot) + col * alpha * blot).astype(np.uint8)
    return img


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """v1 background (bit-exact with the first engine's world: keep the order of rng calls)."""
    kind = rng.integers(0, 3)
    base = rng.uniform(0, 255, size=3)
    img = (_linear_gradient, _lowfreq_texture, _stripes)[kind](rng, h, w, base)
    img = img + rng.normal(0, rng.uniform(2, 14), size=(h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    # distractors: lines and soft blotches, drawn only into the background
    _lines(rng, img, 6)
    return _blotches(rng, img, 4)


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
    shade_dir: float | None = None  # radians; None: v1 shading (across x)
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


def _paint(img: np.ndarray, m: np.ndarray, s: Shape) -> None:
    """Solid or shaded fill; make sure the object stands out from what lies under it."""
    under = img[m].mean(0)
    col = s.color.copy()
    if np.abs(col - under).sum() < MIN_CONTRAST:
        col = np.where(under > 127, under - 110, under + 110)
        s.color = col
    ys, xs = np.nonzero(m)
    if s.shade_dir is None:  # v1: across x
        t = ((xs - xs.min()) / max(xs.max() - xs.min(), 1))[:, None]
    else:  # along any direction, 0..1 over the visible extent
        proj = xs * math.cos(s.shade_dir) + ys * math.sin(s.shade_dir)
        t = ((proj - proj.min()) / max(float(proj.max() - proj.min()), 1.0))[:, None]
    img[ys, xs] = np.clip(col[None, :] + (t - 0.5) * s.shade[None, :], 0, 255)


def _visible_instances(full, h: int, w: int):
    """(shape, visible mask) of the annotated instances, bottom to top."""
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
    return instances


def render(bg: np.ndarray, shapes: list[Shape], rng: np.random.Generator, margin_factor: float = 1.5):
    """Paint shapes in order over bg; return image and the annotated instances (cls, visible mask).

    The full mask is drawn on a canvas padded by margin_factor x the largest size, so that the visible
    fraction of a shape cut by the border is measured against its whole area."""
    h, w = bg.shape[:2]
    img = bg.astype(np.float32)
    margin = int(max([s.size for s in shapes], default=0) * margin_factor) + 2
    full = []
    for s in shapes:
        fm = s.polygon_mask(h, w, margin)
        full_area = int(fm.sum())
        m = fm[margin:margin + h, margin:margin + w].astype(bool)
        if m.any():
            _paint(img, m, s)
        full.append((s, m, full_area))
    img = np.clip(img + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
    return img, _visible_instances(full, h, w)


def make_image(seed: int, h: int, w: int, world: str = "v1"):
    """(uint8 HxWx3 RGB image, [(Shape, visible bool mask)]) of one seed in the given world."""
    if world == "wide":
        return make_wide_image(seed, h, w)
    if world != "v1":
        raise ValueError(f"unknown shapes world {world!r} (v1 or wide)")
    rng = np.random.default_rng(seed)
    bg = _background(rng, h, w)
    shapes = [random_shape(rng, h, w) for _ in range(int(rng.integers(0, MAX_INSTANCES + 1)))]
    return render(bg, shapes, rng)


def random_size(rng: np.random.Generator, short=(300, 400), world: str = "v1") -> tuple[int, int]:
    """(h, w) with a common aspect ratio, portrait or landscape."""
    if world == "wide":
        return random_wide_size(rng)
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


# ---------------------------------------------------------------------------------------------------------
# The wide world (issue 17). Everything below draws from one rng seeded by the image seed.

WIDE_MAX_INSTANCES = 8
WIDE_BORDER_FRACTION = 0.3  # share of shapes placed across a frame edge (cut by the border)
WIDE_MARGIN_FACTOR = 2.5  # a shape centred 0.6 size outside the frame reaches ~2 sizes out


def random_wide_size(rng: np.random.Generator) -> tuple[int, int]:
    """(h, w) from 320x240 up to 1280x720, landscape or (30%) portrait."""
    short = int(round(math.exp(rng.uniform(math.log(240), math.log(720)))))
    ratio = float(rng.choice([4 / 3, 16 / 9, 3 / 2, 5 / 4, 1.0]))
    long = min(int(short * ratio), 1280)
    return (long, short) if rng.random() < 0.3 else (short, long)


def _checker_tiles(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """Checkerboard or per-tile colours on a rotated grid, optionally with grout lines: many straight
    edges and right angles that are not rectangles to report."""
    cell = rng.uniform(8, 96, size=2)
    ang = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx * math.cos(ang) + yy * math.sin(ang)) / cell[0]
    v = (-xx * math.sin(ang) + yy * math.cos(ang)) / cell[1]
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    if rng.random() < 0.5:
        other = base + rng.choice([-1, 1]) * rng.uniform(10, 90, size=3)
        img = np.where(((iu + iv) % 2 == 0)[..., None], base, other)
    else:
        palette = base + rng.uniform(-50, 50, size=(13, 3))
        img = palette[(iu * 7 + iv * 3) % 13]
    if rng.random() < 0.5:  # grout: thin darker or lighter lines along the tile edges
        grout = (np.minimum(u - iu, v - iv) * min(cell) < rng.uniform(1, 3))[..., None]
        img = np.where(grout, base * rng.uniform(0.3, 1.6), img)
    return img.astype(np.float32)


def _octave_noise(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """Multi-octave value noise (coarse to fine, amplitude falling by a random persistence)."""
    octaves = int(rng.integers(3, 7))
    persistence = rng.uniform(0.4, 0.7)
    cells = int(rng.integers(2, 5))
    amp = rng.uniform(20, 80)
    tint = rng.uniform(0.3, 1.0, size=3)  # mostly luminance, some colour
    acc = np.zeros((h, w, 3), np.float32)
    for o in range(octaves):
        n = cells * 2 ** o
        small = rng.uniform(-1, 1, size=(max(n * h // max(h, w), 2), max(n * w // max(h, w), 2), 3))
        acc += amp * persistence ** o * cv2.resize(small.astype(np.float32), (w, h),
                                                   interpolation=cv2.INTER_CUBIC)
    return base[None, None, :] + acc * tint[None, None, :]


def _photo_field(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """A smooth photo-like field: two colours split by a soft horizon at any angle, a few large soft
    colour masses and a vignette."""
    other = rng.uniform(0, 255, size=3)
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = ((xx - w * rng.uniform(0.2, 0.8)) * math.cos(ang) + (yy - h * rng.uniform(0.2, 0.8)) * math.sin(ang))
    t = 1 / (1 + np.exp(-d / (max(h, w) * rng.uniform(0.01, 0.2))))
    img = base * (1 - t[..., None]) + other * t[..., None]
    for _ in range(int(rng.integers(2, 7))):
        c = rng.uniform([0, 0], [w, h])
        sig = rng.uniform(0.08, 0.4, size=2) * max(h, w)
        g = np.exp(-0.5 * (((xx - c[0]) / sig[0]) ** 2 + ((yy - c[1]) / sig[1]) ** 2))
        img += g[..., None] * rng.uniform(-70, 70, size=3)
    r2 = ((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2
    return img * (1 - rng.uniform(0, 0.8) * r2)[..., None]


def _flat(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    return np.broadcast_to(base, (h, w, 3)).astype(np.float32)


_WIDE_FIELDS = (_linear_gradient, _lowfreq_texture, _stripes, _checker_tiles, _octave_noise, _photo_field,
                _flat)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _rings(rng: np.random.Generator, img: np.ndarray, n_max: int) -> None:
    """Thin outlines of circles/ellipses: round but not a filled circle."""
    h, w = img.shape[:2]
    for _ in range(rng.integers(0, n_max)):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        a = int(rng.integers(5, max(min(h, w) // 4, 6)))
        axes = (a, max(int(a * rng.uniform(0.3, 1.0)), 2))
        cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, _random_colour(rng),
                    int(rng.integers(1, 4)), lineType=cv2.LINE_AA)


def _stars(rng: np.random.Generator, img: np.ndarray, n_max: int) -> None:
    """Crosses (2 arms) and stars (3-6 arms) of thin strokes."""
    h, w = img.shape[:2]
    for _ in range(rng.integers(0, n_max)):
        c = np.array([rng.integers(0, w), rng.integers(0, h)], np.float64)
        arms, length = int(rng.integers(2, 7)), rng.uniform(5, max(min(h, w) / 8, 6))
        a0, col, th = rng.uniform(0, math.pi), _random_colour(rng), int(rng.integers(1, 5))
        for k in range(arms):
            d = np.array([math.cos(a0 + k * math.pi / arms), math.sin(a0 + k * math.pi / arms)]) * length
            cv2.line(img, tuple(int(v) for v in c - d), tuple(int(v) for v in c + d), col, th,
                     lineType=cv2.LINE_AA)


_GLYPHS = "ABCDEFGHKLMNPRSTUVWXYZ0123456789"
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_PLAIN)


def _text(rng: np.random.Generator, img: np.ndarray, n_max: int) -> None:
    """Strokes of text (overlays, signs); letters such as O and D must not become circles."""
    h, w = img.shape[:2]
    for _ in range(rng.integers(0, n_max)):
        word = "".join(rng.choice(list(_GLYPHS), size=int(rng.integers(1, 8))))
        org = (int(rng.integers(0, w)), int(rng.integers(10, h)))
        cv2.putText(img, word, org, _FONTS[int(rng.integers(0, len(_FONTS)))], float(rng.uniform(0.4, 2.5)),
                    _random_colour(rng), int(rng.integers(1, 4)), lineType=cv2.LINE_AA)


def _clutter(rng: np.random.Generator, img: np.ndarray, n_max: int) -> None:
    """Random-walk polylines (wires, scribbles), open so they enclose nothing."""
    h, w = img.shape[:2]
    for _ in range(rng.integers(0, n_max)):
        n = int(rng.integers(4, 20))
        steps = rng.normal(0, rng.uniform(5, 40), size=(n, 2))
        pts = np.cumsum(steps, 0) + rng.uniform([0, 0], [w, h])
        cv2.polylines(img, [pts.astype(np.int32)], False, _random_colour(rng), int(rng.integers(1, 3)),
                      lineType=cv2.LINE_AA)


def _wide_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One of seven background kinds, pixel noise, then unannotated distractors."""
    kind = int(rng.integers(0, len(_WIDE_FIELDS)))
    base = rng.uniform(0, 255, size=3)
    img = _WIDE_FIELDS[kind](rng, h, w, base)
    img = img + rng.normal(0, rng.uniform(0, 12), size=(h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    _lines(rng, img, 6)
    _rings(rng, img, 3)
    _stars(rng, img, 3)
    _text(rng, img, 3)
    _clutter(rng, img, 3)
    return _blotches(rng, img, 4)


def _irregular_triangle(rng: np.random.Generator) -> np.ndarray:
    """Three vertices with every interior angle >= 18 degrees (no slivers), centroid at 0, farthest
    vertex at distance 1."""
    while True:
        p = rng.uniform(-1, 1, size=(3, 2))
        angles = []
        for i in range(3):
            a, b = p[(i + 1) % 3] - p[i], p[(i + 2) % 3] - p[i]
            cos = float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-9)
            angles.append(math.acos(max(-1.0, min(1.0, cos))))
        if min(angles) >= math.radians(18):
            break
    p -= p.mean(0)
    return p / np.linalg.norm(p, axis=1).max()


def _wide_position(rng: np.random.Generator, h: int, w: int, size: float) -> tuple[float, float]:
    """Anywhere in the frame, or (WIDE_BORDER_FRACTION) centred near an edge so the border cuts it."""
    if rng.random() >= WIDE_BORDER_FRACTION:
        return float(rng.uniform(0, w)), float(rng.uniform(0, h))
    off = rng.uniform(-0.6, 0.7) * size  # negative: the centre lies outside the frame
    along_x, along_y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
    edge = int(rng.integers(0, 4))
    return [(off, along_y), (w - off, along_y), (along_x, off), (along_x, h - off)][edge]


def random_wide_shape(rng: np.random.Generator, h: int, w: int) -> Shape:
    cls = int(rng.integers(1, 4))
    # the model sees a 720-line frame at ~320 lines: keep the smallest objects ~8 px at that scale
    lo = 8.0 * max(1.0, min(h, w) / 400)
    size = float(math.exp(rng.uniform(math.log(lo), math.log(0.2 * max(h, w)))))
    tri = np.zeros((3, 2))
    if cls == 1:  # circles stay common; otherwise any eccentricity down to 1:4
        aspect = 1.0 if rng.random() < 0.3 else float(rng.uniform(0.25, 1.0))
    elif cls == 2:
        aspect = float(rng.uniform(0.3, 1.0))
    else:  # the irregular triangle carries its own proportions
        aspect, tri = 1.0, _irregular_triangle(rng)
    size = max(size, 4.0 / aspect)  # minor half-axis >= 4 px: a thin ellipse is still an ellipse
    cx, cy = _wide_position(rng, h, w, size)
    strength = rng.uniform(0, 160) if rng.random() < 0.7 else 0.0
    # mostly a change of brightness (one sign for all channels), with some colour shift
    shade = strength * (rng.choice([-1.0, 1.0]) + rng.uniform(-0.5, 0.5, size=3))
    return Shape(cls, cx, cy, size, aspect, float(rng.uniform(0, 360)), rng.uniform(0, 255, size=3), shade,
                 tri, shade_dir=float(rng.uniform(0, 2 * math.pi)))


def _motion_kernel(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(3, 14))
    k = np.zeros((n, n), np.float32)
    c = (n - 1) / 2
    ang = rng.uniform(0, math.pi)
    d = np.array([math.cos(ang), math.sin(ang)]) * c
    cv2.line(k, (int(round(c - d[0])), int(round(c - d[1]))), (int(round(c + d[0])), int(round(c + d[1]))),
             1.0, 1)
    return k / k.sum()


def _degrade(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Whole-image camera effects after painting: exposure/contrast, sensor noise, blur, JPEG. The masks
    stay those of the sharp scene."""
    f = img.astype(np.float32)
    if rng.random() < 0.3:
        f = (f - 128) * rng.uniform(0.6, 1.3) + 128 + rng.uniform(-30, 30)
    f = f + rng.normal(0, rng.uniform(0.5, 8), size=f.shape)
    out = np.clip(f, 0, 255).astype(np.uint8)
    r = rng.random()
    if r < 0.25:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=float(rng.uniform(0.5, 2.0)))
    elif r < 0.4:
        out = cv2.filter2D(out, -1, _motion_kernel(rng))
    if rng.random() < 0.35:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(10, 91))])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


def make_wide_image(seed: int, h: int, w: int):
    rng = np.random.default_rng(seed)
    bg = _wide_background(rng, h, w)
    shapes = [random_wide_shape(rng, h, w) for _ in range(int(rng.integers(0, WIDE_MAX_INSTANCES + 1)))]
    img, instances = render(bg, shapes, rng, WIDE_MARGIN_FACTOR)
    return _degrade(rng, img), instances
