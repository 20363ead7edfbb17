"""Same-run speed comparison: torchvision eager vs maskstream on the same weights, frames and threads,
and our ROIAlign vs torchvision.ops.roi_align on identical inputs. Writes BENCHMARKS.md.

    engines/tools/.venv/bin/python engines/tools/compare.py --threads 2 --frames 40 [--r50]

--r50 also exports a full-size maskrcnn_resnet50_fpn with random weights (engines/r50fpn, not committed)
and runs it on the same frames (upscaled by the transform to 800x1333 as torchvision does).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)


def decode_frames(video: str, n: int) -> list[np.ndarray]:
    """The same frames maskstream decodes: GStreamer to raw RGB."""
    w, h = 640, 360
    out = subprocess.run(
        ["gst-launch-1.0", "-q", "filesrc", f"location={video}", "!", "decodebin", "!", "videoconvert", "!",
         f"video/x-raw,format=RGB,width={w},height={h}", "!", "fdsink", "fd=1"],
        check=True, capture_output=True).stdout
    frame = w * h * 3
    count = min(n, len(out) // frame)
    return [np.frombuffer(out[i * frame:(i + 1) * frame], np.uint8).reshape(h, w, 3) for i in range(count)]


def torch_fps(model, frames, threads: int, warmup: int = 3) -> float:
    torch.set_num_threads(threads)
    tensors = [torch.from_numpy(f.copy()).permute(2, 0, 1).float() / 255.0 for f in frames]
    with torch.no_grad():
        for t in tensors[:warmup]:
            model([t])
        t0 = time.perf_counter()
        for t in tensors[warmup:]:
            model([t])
    return (len(tensors) - warmup) / (time.perf_counter() - t0)


def maskstream_bench(engine: str, frames: int, threads: int, pipeline: bool) -> dict:
    exe = os.path.join(ROOT, "target", "release", "maskstream")
    if not os.path.exists(exe):
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [exe, "bench", "--engine", engine, "--frames", str(frames), "--threads", str(threads),
               "--backend", "cpu", "--json", f.name]
        if not pipeline:
            cmd.append("--model-only")
        subprocess.run(cmd, cwd=ROOT, check=True)
        return json.load(open(f.name))


def roi_align_bench(threads: int, repeats: int = 20) -> dict:
    """Box-head-sized ROIAlign: 1000 ROIs over P2-P5 of a 576x320 image, 96 channels, 7x7, sampling 2."""
    from torchvision.ops import MultiScaleRoIAlign

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    c, (h, w) = 96, (320, 576)
    feats = {str(i): torch.randn(1, c, h // 2 ** (i + 2), w // 2 ** (i + 2), generator=g) for i in range(4)}
    xy = torch.rand(1000, 2, generator=g) * torch.tensor([w, h])
    wh = torch.exp(torch.rand(1000, 2, generator=g) * np.log(300.0)) + 4
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1)
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    with torch.no_grad():
        ref = pool(feats, [boxes], [(h, w)])
        t0 = time.perf_counter()
        for _ in range(repeats):
            pool(feats, [boxes], [(h, w)])
        torch_ms = (time.perf_counter() - t0) / repeats * 1e3
    d = tempfile.mkdtemp()
    for k, v in feats.items():
        np.save(os.path.join(d, f"feature_{k}.npy"), v.numpy())
    np.save(os.path.join(d, "boxes.npy"), boxes.numpy())
    np.save(os.path.join(d, "expected.npy"), ref.numpy())
    exe = os.path.join(ROOT, "target", "release", "maskstream")
    out = subprocess.run([exe, "bench-roi-align", d, "--threads", str(threads), "--repeats", str(repeats)],
                         check=True, capture_output=True, text=True).stdout
    ours = json.loads(out)
    return {"torch_ms": torch_ms, "ours_ms": ours["ms"], "max_abs_diff": ours["max_abs_diff"],
            "speedup": torch_ms / ours["ms"]}


NOTES_MARKER = "<!-- notes: kept by compare.py -->"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--r50", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = ap.parse_args()

    frames = decode_frames(os.path.join(ROOT, "assets", "shapes-demo.mp4"), args.frames + 3)
    rows = []
    # maskstream first: torch's idle OpenMP threads keep spinning for a while after each run and would
    # steal the cores from whatever runs next in this process's lifetime
    ms = maskstream_bench(os.path.join(ROOT, "engines", "shapes"), args.frames, args.threads, True)
    roi = roi_align_bench(args.threads)
    # shapes: torchvision eager on the weights the engine was exported from (the training checkpoint
    # where it exists, else the same weights read back from the committed ONNX graphs)
    from model import load_shapes_checkpoint, load_shapes_from_engine

    ckpt = os.path.join(HERE, "work", "shapes.pt")
    if os.path.exists(ckpt):
        shapes = load_shapes_checkpoint(ckpt)
    else:
        shapes = load_shapes_from_engine(os.path.join(ROOT, "engines", "shapes"))
    tv = torch_fps(shapes, frames, args.threads)
    rows.append(("shapes 640x360 (-> 568x320)", tv, ms))
    if args.r50:
        import torchvision

        eng = os.path.join(ROOT, "engines", "r50fpn")
        if not os.path.exists(os.path.join(eng, "manifest.toml")):
            subprocess.run([sys.executable, os.path.join(HERE, "export.py"), "--model", "maskrcnn_resnet50_fpn",
                            "--seed", "0", "--out", eng, "--tolerance", "1e-3"], check=True)
        torch.manual_seed(0)
        r50 = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                 num_classes=91).eval()
        n = min(args.frames, 8)
        # a few seconds a frame on 2 cores: the machine's noise moves single runs by up to a third, so
        # each side runs twice, alternating, and keeps its best
        ms50, tv50 = None, 0.0
        for _ in range(2):
            m = maskstream_bench(eng, n, args.threads, False)
            if ms50 is None or m["model_fps"] > ms50["model_fps"]:
                ms50 = m
            tv50 = max(tv50, torch_fps(r50, frames[:n + 3], args.threads))
        rows.append(("R50-FPN 640x360 (-> 1333x750)", tv50, ms50))

    lines = ["# Benchmarks", "",
             f"Regenerate: `engines/tools/.venv/bin/python engines/tools/compare.py --threads {args.threads}"
             f" --frames {args.frames}{' --r50' if args.r50 else ''}`", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
             f"{args.threads} threads for both sides; date {datetime.date.today()}; torch {torch.__version__}.", "",
             "| model | torchvision eager fps | maskstream model-only fps | ratio | maskstream pipeline fps | "
             "pipeline overhead | peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for name, tv, m in rows:
        ov = m.get("pipeline_overhead")
        lines.append(f"| {name} | {tv:.2f} | {m['model_fps']:.2f} | {m['model_fps'] / tv:.2f}x | "
                     f"{m['pipeline_fps'] or float('nan'):.2f} | "
                     f"{'' if ov is None else f'{ov * 100:+.1f}%'} | {m['peak_rss_mb']:.0f} |")
    lines += ["", "Per-stage ms/frame (maskstream, shapes):", "", "| stage | ms |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in rows[0][2]["stages_ms"]]
    lines += ["", "ROIAlign, 1000 ROIs over P2-P5 (96 ch, 7x7, sampling 2), same inputs:", "",
              "| torchvision.ops MultiScaleRoIAlign ms | maskstream ms | speed-up | max abs diff |",
              "|---|---|---|---|",
              f"| {roi['torch_ms']:.2f} | {roi['ours_ms']:.2f} | {roi['speedup']:.2f}x | {roi['max_abs_diff']:.1e} |"]
    text = "\n".join(lines) + "\n"
    # what follows the marker in the existing file is hand-written (changes and their effect): kept
    if os.path.exists(args.out):
        old = open(args.out).read()
        if NOTES_MARKER in old:
            text += "\n" + NOTES_MARKER + old.split(NOTES_MARKER, 1)[1]
    open(args.out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
