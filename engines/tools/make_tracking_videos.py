"""Render the tracking ground-truth videos: scripted trajectories in the shapes world.

    make_tracking_videos.py --out-dir assets

- shapes-occlusion.mp4: objects crossing and occluding each other, one leaving the frame and coming back
  (same identity), one standing still while others pass in front of it.
- shapes-line.mp4: objects crossing the directed line `gate` from (320, 340) to (320, 20) a known number
  of times in each direction (left_to_right: from the picture's left half into its right half), one
  turning back before it, one wobbling a few pixels about it after crossing.

Each comes with COCO ground truth (one image per frame, image id = frame index, RLE masks of the visible
pixels, track_id per annotation) as <name>.gt.json; shapes-line.gt.json also holds the line and its
expected counts under "lines". 640x360, 30 fps, H.264 (main, I420) in MP4 by GStreamer's x264enc, as
make_demo_video.py does. Everything is a pure function of the scripts below and the seed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import CocoWriter, _background, random_shape, render  # noqa: E402

W, H, FPS = 640, 360, 30


class Scripted:
    """An object on a piecewise-linear path: keyframes (frame, cx, cy); absent outside their span."""

    def __init__(self, rng, track_id: int, cls: int, size: float, keys, spin: float = 1.0, gaps=()):
        self.shape = random_shape(rng, H, W, track_id)
        self.shape.cls = cls
        self.shape.size = size
        if cls == 1:
            self.shape.aspect = 1.0 if track_id % 2 else 0.7
        self.keys = keys
        self.spin = spin
        self.gaps = gaps  # (start, end) frame spans in which the object is off stage

    def at(self, t: int):
        k = self.keys
        if t < k[0][0] or t > k[-1][0] or any(a <= t < b for a, b in self.gaps):
            return None
        for (t0, x0, y0), (t1, x1, y1) in zip(k, k[1:]):
            if t0 <= t <= t1:
                u = (t - t0) / max(t1 - t0, 1)
                s = self.shape
                s.cx, s.cy = x0 + (x1 - x0) * u, y0 + (y1 - y0) * u
                s.angle = (s.angle + self.spin) % 360
                return s
        return None


def occlusion_script(rng):
    n = 270
    return n, [
        # a still object that others pass in front of (listed first: drawn under the rest)
        Scripted(rng, 1, 2, 34, [(0, 330, 200), (n, 330, 205)], spin=0.2),
        # two objects crossing each other head-on; the second is drawn on top
        Scripted(rng, 2, 1, 30, [(0, -40, 110), (n, 700, 130)]),
        Scripted(rng, 3, 3, 36, [(10, 690, 140), (n, -60, 100)], spin=-1.5),
        # passes in front of the still object, top to bottom
        Scripted(rng, 4, 1, 26, [(40, 300, -40), (200, 360, 400)]),
        # leaves on the right and comes back (same identity) 50 frames later, heading left
        Scripted(rng, 5, 3, 30, [(0, 520, 290), (60, 700, 290), (110, 700, 270), (n, 380, 270)],
                 gaps=((60, 110),)),
        # diagonal, crossing the head-on pair and the still object
        Scripted(rng, 6, 2, 24, [(90, -40, 330), (n, 560, 20)], spin=2.0),
    ], []


def line_script(rng):
    n = 240
    gate = {"name": "gate", "from": [320, 340], "to": [320, 20]}
    objs = [  # one lane (y) each, or lanes shared at different times, so nobody occludes anybody
        # left -> right
        Scripted(rng, 1, 1, 24, [(0, 60, 80), (120, 560, 80)]),
        Scripted(rng, 2, 2, 24, [(20, 40, 250), (160, 600, 250)]),
        Scripted(rng, 3, 3, 26, [(130, 100, 140), (239, 560, 145)]),
        # right -> left
        Scripted(rng, 4, 3, 24, [(10, 600, 300), (150, 60, 300)], spin=-1.0),
        # right -> left, then back left -> right: one of each
        Scripted(rng, 5, 1, 22, [(40, 560, 195), (110, 200, 195), (130, 200, 195), (220, 520, 195)]),
        # turns back 50 px short of the line: none
        Scripted(rng, 6, 2, 22, [(0, 80, 140), (50, 270, 140), (110, 60, 140)]),
        # crosses left -> right, then wobbles by a few pixels right at the line: one
        Scripted(rng, 7, 1, 22, [(125, 150, 70), (170, 325, 70), (180, 319, 70), (190, 325, 70),
                                 (200, 319, 70), (239, 325, 70)]),
    ]
    # left_to_right: 1, 2, 3, 5, 7; right_to_left: 4, 5
    gate.update({"left_to_right": 5, "right_to_left": 2})
    return n, objs, [gate]


def make(name: str, script, out_dir: str, seed: int, bitrate: int):
    rng = np.random.default_rng(seed)
    bg = _background(rng, H, W)
    n, objs, lines = script(rng)
    video = os.path.join(out_dir, f"{name}.mp4")
    gt_path = os.path.join(out_dir, f"{name}.gt.json")
    pipeline = (f"fdsrc fd=0 ! rawvideoparse width={W} height={H} format=rgb framerate={FPS}/1 ! "
                f"videoconvert ! video/x-raw,format=I420 ! x264enc bitrate={bitrate} speed-preset=slow "
                f"key-int-max=60 ! video/x-h264,profile=main ! h264parse ! mp4mux ! filesink location={video}")
    enc = subprocess.Popen(["gst-launch-1.0", "-q", "-e", *pipeline.split()], stdin=subprocess.PIPE)
    gt = CocoWriter()
    for t in range(n):
        shapes = [s for s in (o.at(t) for o in objs) if s is not None]
        img, inst = render(bg, shapes, rng)
        gt.add(t, H, W, inst, file_name=f"frame{t:05d}")
        enc.stdin.write(img.tobytes())
    enc.stdin.close()
    if enc.wait() != 0:
        sys.exit(f"gst-launch-1.0 failed to encode {video}")
    gt.dump(gt_path)
    if lines:
        with open(gt_path) as f:
            d = json.load(f)
        d["lines"] = lines
        with open(gt_path, "w") as f:
            json.dump(d, f)
    tracks = len({a["track_id"] for a in gt.annotations})
    print(f"{video}: {os.path.getsize(video) / 1e6:.2f} MB, {n} frames, {len(gt.annotations)} instances, "
          f"{tracks} tracks")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default="assets")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bitrate", type=int, default=1200, help="kbit/s")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    make("shapes-occlusion", occlusion_script, args.out_dir, args.seed, args.bitrate)
    make("shapes-line", line_script, args.out_dir, args.seed + 1, args.bitrate)


if __name__ == "__main__":
    main()
