"""Render the bundled sample video and its per-frame ground truth.

    make_demo_video.py --out assets/shapes-demo.mp4 --gt assets/shapes-demo.gt.json

640x360, 30 fps, 300 frames of the shapes world in motion (objects move, rotate, scale, enter and leave),
encoded as H.264 (main profile, I420) in MP4 by GStreamer's x264enc; the COCO ground truth has one image per
frame, image id = 0-based frame index, RLE masks, and a track_id per annotation.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import CocoWriter, Video  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/shapes-demo.mp4")
    ap.add_argument("--gt", default="assets/shapes-demo.gt.json")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--bitrate", type=int, default=1600, help="kbit/s")
    args = ap.parse_args()
    w, h = 640, 360
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    pipeline = (f"fdsrc fd=0 ! rawvideoparse width={w} height={h} format=rgb framerate=30/1 ! videoconvert ! "
                f"video/x-raw,format=I420 ! x264enc bitrate={args.bitrate} speed-preset=slow key-int-max=60 ! "
                f"video/x-h264,profile=main ! h264parse ! mp4mux ! filesink location={args.out}")
    enc = subprocess.Popen(["gst-launch-1.0", "-q", "-e", *pipeline.split()], stdin=subprocess.PIPE)
    video, gt = Video(args.seed, h, w), CocoWriter()
    for i in range(args.frames):
        img, inst = video.frame()
        gt.add(i, h, w, inst, file_name=f"frame{i:05d}")
        enc.stdin.write(img.tobytes())
    enc.stdin.close()
    if enc.wait() != 0:
        sys.exit("gst-launch-1.0 failed to encode the demo video")
    gt.dump(args.gt)
    print(f"{args.out}: {os.path.getsize(args.out) / 1e6:.2f} MB, {args.frames} frames, "
          f"{len(gt.annotations)} instances")


if __name__ == "__main__":
    main()
