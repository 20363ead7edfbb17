"""Same-run speed comparison on the same weights, frames and threads, written to BENCHMARKS.md:

- peers: torchvision eager; the same torchvision model exported whole as one ONNX graph and run by
  onnxruntime (its detections checked against eager); maskstream with the FP32 graphs and with the INT8
  graphs (model-only, the full pipeline without and with MP4 encoding);
- the machine's limit: the model's multiply-adds per frame (counted from the graphs at the frames' shapes)
  against a measured peak of these cores (FP32 matmul in torch, INT8 matmul in onnxruntime), as a fraction;
- our ROIAlign vs torchvision.ops.roi_align on identical inputs.

    engines/tools/.venv/bin/python engines/tools/compare.py --threads 2 --frames 100 [--r50]

--r50 also exports a full-size maskrcnn_resnet50_fpn with random weights (engines/r50fpn, not committed)
and runs it on the same frames (upscaled by the transform to 800x1333 as torchvision does); with random
weights there is no AP to compare, so maskstream's detections are compared with torchvision's instead
(export.py checks the graphs), and its INT8 variant (quantize.py, calibrated on the demo's frames) with
FP32: the graphs' relative RMS error on the calibration inputs, and how many detections survive.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
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


def maskstream_bench(engine: str, frames: int, threads: int, pipeline: bool, precision: str = "fp32",
                     rounds: int = 1, workers: int = 0) -> dict:
    """`maskstream bench`; workers 0 is its default (2 frames in flight on 2 threads or more)."""
    exe = os.path.join(ROOT, "target", "release", "maskstream")
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [exe, "bench", "--engine", engine, "--frames", str(frames), "--threads", str(threads),
               "--backend", "cpu", "--precision", precision, "--workers", str(workers), "--json", f.name]
        cmd += ["--encode", "--rounds", str(rounds)] if pipeline else ["--model-only"]
        subprocess.run(cmd, cwd=ROOT, check=True)
        return json.load(open(f.name))


def median_run(runs: list[dict]) -> dict:
    """The run with the median model frames/s (its other figures kept with it)."""
    return sorted(runs, key=lambda r: r["model_fps"])[len(runs) // 2]


def maskstream_streams(engine: str, threads: int, counts: str, secs: int) -> dict:
    """`bench --streams`: N live test cameras (15 frames/s each) through the full pipeline with tracking,
    with cross-stream batching (up to N frames a model call) and without."""
    exe = os.path.join(ROOT, "target", "release", "maskstream")
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([exe, "bench", "--engine", engine, "--frames", "30", "--threads", str(threads),
                        "--backend", "cpu", "--precision", "int8", "--model-only", "--streams", counts,
                        "--stream-secs", str(secs), "--json", f.name], cwd=ROOT, check=True)
        return json.load(open(f.name))


def whole_graph_export(model, frames, warmup: int = 3) -> tuple[str, list, str]:
    """torchvision's own ONNX export of the whole model (one graph: ROIAlign levels merged with
    ScatterElements, masks pasted in a loop), run by onnxruntime; its detections checked against eager.
    Returns the graph's path, the frames as its inputs, and the check."""
    import onnxruntime as ort

    x = torch.from_numpy(frames[0].copy()).permute(2, 0, 1).float() / 255.0
    path = os.path.join(tempfile.mkdtemp(), "whole.onnx")
    torch.onnx.export(model, ([x],), path, opset_version=17, dynamo=False, input_names=["image"],
                      output_names=["boxes", "labels", "scores", "masks"],
                      dynamic_axes={"image": {1: "h", 2: "w"}})
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    arrays = [(torch.from_numpy(f.copy()).permute(2, 0, 1).float() / 255.0).numpy() for f in frames]
    with torch.no_grad():
        ref = model([torch.from_numpy(arrays[warmup])])[0]
    got = sess.run(None, {"image": arrays[warmup]})
    keep = ref["scores"].numpy() >= 0.3
    same = (len(got[0]) == len(ref["boxes"]) and np.array_equal(got[1], ref["labels"].numpy())
            and float(np.abs(got[0] - ref["boxes"].numpy()).max(initial=0)) < 1e-2)
    check = (f"{len(got[0])} detections ({int(keep.sum())} at score >= 0.3) vs eager {len(ref['boxes'])}: "
             + ("same labels, boxes within 0.01 px" if same else "DIFFERENT"))
    return path, arrays, check


def whole_graph_fps(path: str, arrays, threads: int, workers: int = 1, warmup: int = 3) -> float:
    """The whole-graph export's frames/s: one session on `threads` threads, or `workers` sessions of
    threads/workers each taking the next frame in turn (onnxruntime lets go of the GIL while it runs),
    as maskstream's workers do."""
    import threading

    import onnxruntime as ort

    def session(n: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads = n
        so.inter_op_num_threads = 1
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    sessions = [session(max(1, threads // workers)) for _ in range(workers)]
    for sess in sessions:
        for a in arrays[:warmup]:
            sess.run(None, {"image": a})
    timed = arrays[warmup:]
    lock, nxt = threading.Lock(), [0]

    def work(sess):
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(timed):
                return
            sess.run(None, {"image": timed[i]})

    pool = [threading.Thread(target=work, args=(sess,)) for sess in sessions]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(timed) / (time.perf_counter() - t0)


def _eager_worker(engine: str, ckpt: str, frames, threads: int, warmup: int, barrier, out) -> None:
    """One process of torch_parallel_fps: its own model and torch threads, timed after the barrier."""
    torch.set_num_threads(threads)
    from model import apply_manifest_settings, load_shapes_checkpoint, load_shapes_from_engine

    model = (apply_manifest_settings(load_shapes_checkpoint(ckpt), engine) if os.path.exists(ckpt)
             else load_shapes_from_engine(engine)).eval()
    tensors = [torch.from_numpy(f.copy()).permute(2, 0, 1).float() / 255.0 for f in frames]
    with torch.no_grad():
        for t in tensors[:warmup]:
            model([t])
        barrier.wait()
        t0 = time.perf_counter()
        for t in tensors[warmup:]:
            model([t])
    out.put((t0, time.perf_counter(), len(tensors) - warmup))


def torch_parallel_fps(engine: str, ckpt: str, frames, threads: int, workers: int, warmup: int = 3) -> float:
    """torchvision eager with `workers` processes of threads/workers torch threads, the frames dealt
    out in turn (processes: eager's Python between the operators holds the GIL); frames/s from the first
    start to the last end (CLOCK_MONOTONIC is one clock for every process)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_eager_worker,
                         args=(engine, ckpt, frames[:warmup] + frames[warmup + k::workers],
                               max(1, threads // workers), warmup, barrier, out))
             for k in range(workers)]
    for p in procs:
        p.start()
    got = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sum(n for _, _, n in got) / (max(e for _, e, _ in got) - min(s for s, _, _ in got))


def module_macs(module, x: torch.Tensor) -> float:
    """Multiply-adds of one forward of `module` on `x`: every Conv2d, ConvTranspose2d and Linear (the
    work that matters; the graphs are exported from these same modules)."""
    total = [0.0]

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):  # each output element: Cin/groups * kh * kw
            total[0] += out.numel() * m.weight[0].numel()
        elif isinstance(m, torch.nn.ConvTranspose2d):  # each input element feeds Cout/groups * kh * kw
            total[0] += inp[0].numel() * m.weight[0].numel()
        elif isinstance(m, torch.nn.Linear):
            total[0] += out.numel() * m.in_features

    hooks = [m.register_forward_hook(hook) for m in module.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return total[0]


def peak_gflops(threads: int) -> tuple[float, float]:
    """Measured peak of these cores, 2 ops per multiply-add, best of several runs: FP32 GFLOP/s (the fastest
    of 2048^3 products in torch's matmul and onnxruntime's MatMul, and a 256-channel 3x3 convolution at
    96x168 in torch) and INT8
    GOP/s (onnxruntime MatMulInteger u8 x s8: the MLAS kernels the INT8 graphs use)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    torch.set_num_threads(threads)
    n, reps = 2048, 8
    ops = 2 * n ** 3 / 1e9

    def best(run) -> float:
        run()
        fastest = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            run()
            fastest = min(fastest, time.perf_counter() - t0)
        return ops / fastest

    def ort_matmul(op: str, a_type, b_type, out_type, feed: dict):
        g = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], op,
                              [helper.make_tensor_value_info("a", a_type, [n, n]),
                               helper.make_tensor_value_info("b", b_type, [n, n])],
                              [helper.make_tensor_value_info("c", out_type, [n, n])])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return best(lambda: sess.run(None, feed))

    a, b = torch.randn(n, n), torch.randn(n, n)
    rng = np.random.default_rng(0)
    fp32 = max(best(lambda: torch.matmul(a, b)),
               ort_matmul("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT,
                          {"a": a.numpy(), "b": b.numpy()}))
    # a 3x3 convolution at a backbone's size reaches more than a matmul through torch's oneDNN (measured
    # ~216 against ~180 GFLOP/s here): the peak is the fastest of them, so no runner can exceed it
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 256, 96, 168)
    conv_ops = 2 * 96 * 168 * 256 * 256 * 9 / 1e9
    with torch.no_grad():
        fp32 = max(fp32, best(lambda: conv(x)) * conv_ops / ops)
    int8 = ort_matmul("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32,
                      {"a": rng.integers(0, 255, (n, n), dtype=np.uint8),
                       "b": rng.integers(-127, 127, (n, n), dtype=np.int8)})
    return fp32, int8


def model_gmacs(model, padded: tuple[int, int], rois: int, detections: float) -> dict:
    """Multiply-adds per frame of each graph (G): backbone + RPN head at the padded frame, box head at
    every proposal, mask head at the mean detections per frame."""
    from export import BackboneGraph, BoxHeadGraph, MaskHeadGraph

    c = model.backbone.out_channels
    b = model.roi_heads.box_roi_pool.output_size
    s = model.roi_heads.mask_roi_pool.output_size
    b, s = (b[0] if isinstance(b, (list, tuple)) else b), (s[0] if isinstance(s, (list, tuple)) else s)
    return {"backbone": module_macs(BackboneGraph(model).eval(), torch.zeros(1, 3, *padded)) / 1e9,
            "box_head": module_macs(BoxHeadGraph(model).eval(), torch.zeros(1, c, b, b)) * rois / 1e9,
            "mask_head": module_macs(MaskHeadGraph(model).eval(), torch.zeros(1, c, s, s)) * detections / 1e9}


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


def mean_rois(model, frames, n: int = 10) -> tuple[float, float]:
    """Proposals (box head ROIs) and detections (mask head ROIs, score >= 0.05) per frame."""
    props = []
    hook = model.rpn.register_forward_hook(lambda m, i, o: props.append(len(o[0][0])))
    with torch.no_grad():
        dets = [len(model([torch.from_numpy(f.copy()).permute(2, 0, 1).float() / 255.0])[0]["boxes"])
                for f in frames[:n]]
    hook.remove()
    return sum(props) / len(props), sum(dets) / len(dets)


@torch.no_grad()
def int8_agreement(engine: str, frames, threads: int) -> dict:
    """FP32 vs INT8 graphs of one engine in torchvision's pipeline (engine_model.py) on the same frames:
    the share of FP32 detections with an INT8 detection of the same class at box IoU >= 0.5."""
    from engine_model import engine_model
    from torchvision.ops import box_iou

    fp32, int8 = engine_model(engine, "fp32", threads), engine_model(engine, "int8", threads)
    matched = total = 0
    lo, hi = 1.0, 0.0
    for f in frames:
        x = torch.from_numpy(f.copy()).permute(2, 0, 1).float() / 255.0
        a, b = fp32([x])[0], int8([x])[0]
        if len(a["boxes"]):
            lo, hi = min(lo, float(a["scores"].min())), max(hi, float(a["scores"].max()))
        if len(a["boxes"]) and len(b["boxes"]):
            iou = box_iou(a["boxes"], b["boxes"]) * (a["labels"][:, None] == b["labels"][None, :])
            matched += int((iou.max(1).values >= 0.5).sum())
        total += len(a["boxes"])
    return {"frames": len(frames), "matched": matched / max(total, 1), "score_range": f"{lo:.2f}-{hi:.2f}"}


def fmt_ov(m: dict, key: str) -> str:
    v = m.get(key)
    return "" if v is None else f"{v * 100:+.1f}%"


def cpu_name():
    """The CPU's model and its integer matrix extensions: figures differ between machines (an AMD EPYC
    with AVX-512 VNNI, an Intel Xeon with AMX as well), so the page says which one gave them."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    ext = [e for e, f in (("AVX-512 VNNI", "avx512_vnni"), ("AMX-INT8", "amx_int8")) if f in flags]
    return f"{name} ({', '.join(ext)})" if ext else name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--pipeline-frames", type=int, default=200,
                    help="frames of each pipeline run (the demo has 300)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of (model at the floor, pipeline, pipeline + MP4); overheads are medians")
    ap.add_argument("--streams", default="1,2,4", help="live test cameras at once (bench --streams)")
    ap.add_argument("--stream-secs", type=int, default=20, help="seconds of each camera in those runs")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of each side of the peers table (INT8 and peers), medians")
    ap.add_argument("--r50", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = ap.parse_args()

    engine = os.path.join(ROOT, "engines", "shapes")
    # once, so that every bench below runs the binary of this tree (never a stale one)
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "maskstream"], cwd=ROOT, check=True)
    frames = decode_frames(os.path.join(ROOT, "assets", "shapes-demo.mp4"), args.frames + 3)
    # maskstream first: torch's idle OpenMP threads keep spinning for a while after each run and would
    # steal the cores from whatever runs next in this process's lifetime
    ms32 = maskstream_bench(engine, args.frames, args.threads, False, "fp32")
    # INT8 with frames in flight (the default) and one frame at a time on every thread (workers 1: the
    # lowest latency, and the figure before workers), in turn, `--repeats` times: single runs of this
    # shared machine move by 10-20%, so the table gives each side's median run
    ms8_runs, ms8_one_runs = [], []
    for _ in range(args.repeats):
        ms8_one_runs.append(maskstream_bench(engine, args.frames, args.threads, False, "int8", workers=1))
        ms8_runs.append(maskstream_bench(engine, args.frames, args.threads, False, "int8"))
    ms8, ms8_one = median_run(ms8_runs), median_run(ms8_one_runs)
    # the pipeline's overheads: longer runs, in rounds (each against the model measured just before)
    pl32 = maskstream_bench(engine, args.pipeline_frames, args.threads, True, "fp32", args.rounds)
    pl8 = maskstream_bench(engine, args.pipeline_frames, args.threads, True, "int8", args.rounds)
    multi = maskstream_streams(engine, args.threads, args.streams, args.stream_secs)
    roi = roi_align_bench(args.threads)
    # torchvision eager on the weights the engine was exported from (the training checkpoint where it
    # exists, else the same weights read back from the committed ONNX graphs)
    from model import apply_manifest_settings, load_shapes_checkpoint, load_shapes_from_engine

    ckpt = os.path.join(HERE, "work", "shapes.pt")
    shapes = (apply_manifest_settings(load_shapes_checkpoint(ckpt), engine) if os.path.exists(ckpt)
              else load_shapes_from_engine(engine)).eval()
    # the frames' size after the engine's transform (resized to its min_size, padded): what the graphs see
    resized = shapes.transform([torch.zeros(3, *frames[0].shape[:2])])[0]
    (rh, rw), padded = resized.image_sizes[0], tuple(resized.tensors.shape[-2:])
    # several times slower than the others: 30 timed frames are enough for the whole graph's figure
    whole_path, whole_arrays, whole_check = whole_graph_export(shapes, frames[:33])
    # the peers also given maskstream's frames in flight: ms8's worker count, the threads shared alike;
    # each peer `--repeats` times in turn, medians
    par = ms8.get("workers", 1)
    peer_runs: dict[str, list[float]] = {"tv": [], "whole": [], "tv_par": [], "whole_par": []}
    for _ in range(args.repeats):
        peer_runs["tv"].append(torch_fps(shapes, frames, args.threads))
        peer_runs["whole"].append(whole_graph_fps(whole_path, whole_arrays, args.threads))
        if par > 1:
            peer_runs["whole_par"].append(whole_graph_fps(whole_path, whole_arrays, args.threads, par))
            peer_runs["tv_par"].append(torch_parallel_fps(engine, ckpt, frames, args.threads, par))
    tv, whole = float(np.median(peer_runs["tv"])), float(np.median(peer_runs["whole"]))
    tv_par = float(np.median(peer_runs["tv_par"])) if par > 1 else tv
    whole_par = float(np.median(peer_runs["whole_par"])) if par > 1 else whole
    torch.set_num_threads(args.threads)
    gmacs = model_gmacs(shapes, padded, *mean_rois(shapes, frames))
    peak32, peak8 = peak_gflops(args.threads)
    gflop = 2 * sum(gmacs.values())

    r50_rows = []
    if args.r50:
        import torchvision

        eng = os.path.join(ROOT, "engines", "r50fpn")
        manifest = os.path.join(eng, "manifest.toml")
        # exported again when export.py changed since (a make rule: the graphs follow the exporter)
        if (not os.path.exists(manifest)
                or os.path.getmtime(manifest) < os.path.getmtime(os.path.join(HERE, "export.py"))):
            subprocess.run([sys.executable, os.path.join(HERE, "export.py"), "--model", "maskrcnn_resnet50_fpn",
                            "--seed", "0", "--out", eng, "--tolerance", "1e-3"], check=True)
        text = open(manifest).read()
        if "[precision.int8]" not in text or os.path.getmtime(manifest) < os.path.getmtime(
                os.path.join(HERE, "quantize.py")):
            subprocess.run([sys.executable, os.path.join(HERE, "quantize.py"), "--engine", eng, "--calibration",
                            os.path.join(ROOT, "assets", "shapes-demo.mp4"), "--images", "16",
                            "--threads", str(args.threads), "--check-secs", "60"], check=True)
        torch.manual_seed(0)
        r50 = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                 num_classes=91).eval()
        n = min(args.frames, 8)
        # a few seconds a frame on 2 cores: the machine's noise moves single runs by up to a third, so
        # each side runs twice, alternating, and keeps its best
        best50: dict[str, dict] = {}
        tv50 = 0.0
        for _ in range(2):
            for p in ("fp32", "int8"):
                m = maskstream_bench(eng, n, args.threads, False, p)
                if p not in best50 or m["model_fps"] > best50[p]["model_fps"]:
                    best50[p] = m
            tv50 = max(tv50, torch_fps(r50, frames[:n + 3], args.threads))
        ms50 = best50["fp32"]
        r50_rows.append(("R50-FPN 640x360 (-> 1333x750), FP32", tv50, ms50))
        r50_rows.append(("R50-FPN, INT8 (calibrated on 16 demo frames)", tv50, best50["int8"]))
        r50_int8 = int8_agreement(eng, frames[:4], args.threads)
        r50_int8["calibration"] = re.search(r'calibration = "([^"]*)"', open(manifest).read()).group(1)
        # its work per frame against the FP32 peak: the fastest any FP32 runner could go here
        r50_gmacs = model_gmacs(r50, (768, 1344), *mean_rois(r50, frames, 2))
        r50_gflop = 2 * sum(r50_gmacs.values())

    lines = ["# Benchmarks", "",
             f"Regenerate: `engines/tools/.venv/bin/python engines/tools/compare.py --threads {args.threads}"
             f" --frames {args.frames} --pipeline-frames {args.pipeline_frames} --rounds {args.rounds}"
             f" --streams {args.streams} --stream-secs {args.stream_secs} --repeats {args.repeats}"
             f"{' --r50' if args.r50 else ''}`", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores; "
             f"{args.threads} threads for every side; date {datetime.date.today()}; torch {torch.__version__}; "
             f"the shapes engine on {args.frames} frames of assets/shapes-demo.mp4 ({frames[0].shape[1]}x"
             f"{frames[0].shape[0]} -> {rw}x{rh}).", "",
             "## Peers, same weights, same frames, same threads", "",
             f"Frames/s: the median of {args.repeats} runs each (every run listed), taken in turn.", "",
             "| runner | frames/s | ms/frame | runs | maskstream INT8 is |", "|---|---|---|---|---|"]
    inflight = f"{par} frames in flight, {max(1, args.threads // par)} thread(s) each"

    def runs(values) -> str:
        return " ".join(f"{x:.2f}" for x in values)

    peers = [("torchvision eager (FP32)", tv, runs(peer_runs["tv"])),
             ("torchvision's whole-graph ONNX export in onnxruntime (FP32)", whole, runs(peer_runs["whole"]))]
    if par > 1:
        peers += [(f"torchvision eager (FP32), {inflight} ({par} processes)", tv_par, runs(peer_runs["tv_par"])),
                  (f"the whole-graph export (FP32), {inflight} ({par} sessions)", whole_par,
                   runs(peer_runs["whole_par"]))]
    peers += [(f"maskstream model-only, FP32 graphs ({inflight})", ms32["model_fps"], "one run"),
              ("maskstream model-only, INT8 graphs, one frame at a time (`--workers 1`)", ms8_one["model_fps"],
               runs(r["model_fps"] for r in ms8_one_runs)),
              (f"maskstream model-only, INT8 graphs ({inflight}; the default)", ms8["model_fps"],
               runs(r["model_fps"] for r in ms8_runs))]
    for name, fps, each in peers:
        lines.append(f"| {name} | {fps:.2f} | {1e3 / fps:.1f} | {each} | {ms8['model_fps'] / fps:.2f}x |")
    lines += ["", f"maskstream FP32 is {ms32['model_fps'] / tv:.2f}x torchvision eager and "
              f"{ms32['model_fps'] / whole:.2f}x the whole-graph export. Whole-graph export check: {whole_check}.",
              "", f"maskstream runs {inflight} by default (`[inference] workers`, `--workers`): between ONNX "
              "Runtime's parallel operators its own stages run on one thread and every parallel section wakes "
              "the other threads, so one frame at a time leaves cores idle. The peers' rows with frames in "
              "flight give them the same treatment, the fairest comparison: against those, maskstream INT8 is "
              f"{ms8['model_fps'] / tv_par:.2f}x eager and {ms8['model_fps'] / whole_par:.2f}x the whole-graph "
              f"export; one frame at a time against one frame at a time, {ms8_one['model_fps'] / tv:.2f}x and "
              f"{ms8_one['model_fps'] / whole:.2f}x.",
              "", "## Full pipeline against model-only (same engine, same frames)", "",
              "| precision | model-only fps | model-only at the pipeline's floor fps | pipeline, JSON only | overhead "
              "| pipeline + overlay + H.264 MP4 + JSON | overhead | overhead in each round "
              "| CPU ms/frame: model at the floor, pipeline, + MP4 | peak RSS MB |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in (("FP32", pl32), ("INT8", pl8)):
        each = " ".join(f"{v * 100:+.1f}%" for v in m.get("encode_overhead_rounds", []))
        lines.append(f"| {name} | {m['model_fps']:.2f} | {m.get('model_fps_at_floor') or float('nan'):.2f} | "
                     f"{m['pipeline_fps'] or float('nan'):.2f} | "
                     f"{fmt_ov(m, 'pipeline_overhead')} | {m.get('encode_fps') or float('nan'):.2f} | "
                     f"{fmt_ov(m, 'encode_overhead')} | {each} | "
                     f"{m.get('model_cpu_ms_at_floor') or float('nan'):.1f}, {m.get('pipeline_cpu_ms') or float('nan'):.1f}, "
                     f"{m.get('encode_cpu_ms') or float('nan'):.1f} | {m['peak_rss_mb']:.0f} |")
    lines += ["", f"{args.pipeline_frames} frames a run, {args.rounds} rounds; each round times the model alone "
              "at the pipeline's floor, then the pipeline with JSON only, then with overlay + MP4, and each "
              "overhead is against that round's model figure; the table gives the medians (and each round's MP4 "
              "overhead). Pipeline figures are steady state: like the model-only ones they "
              "leave out the first 3 model calls (ONNX Runtime's first allocations), and they end at the last "
              "frame's output, before the MP4 index is written. CPU ms/frame is the process's CPU time (every "
              "thread) a frame, medians over the rounds. Whole runs, start-up and closing included: "
              f"FP32 {pl32.get('encode_whole_run_fps') or float('nan'):.2f}, INT8 "
              f"{pl8.get('encode_whole_run_fps') or float('nan'):.2f} frames/s with MP4.",
              "", "The pipeline computes no mask for detections under its floor (the tracker's low threshold, "
              "0.1), which nothing downstream reads; its overheads are against the model alone at that floor, "
              "the same work. The model-only column is torchvision's full output (every detection >= 0.05), "
              "as compared with the peers above."]
    lines += ["", "## Many streams on one box (INT8, full pipeline)", "",
              f"`maskstream bench --streams {args.streams} --stream-secs {args.stream_secs}`: N live test cameras "
              "(GStreamer's videotestsrc ball pattern, 640x360, 15 frames/s each) at once, decode -> inference -> tracking -> "
              "null sink, each N with cross-stream batching (up to N frames a model call) and without. Frames "
              "the model cannot keep up with are dropped at the source (live sources do not wait); latency is "
              f"from decoded frame to its outputs. Model alone in that run: {multi['model_fps']:.1f} frames/s.", "",
              "| streams | max_batch | frames/s, all streams | dropped | latency p50 ms | latency p99 ms "
              "| frames a model call |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['streams']} | {r['max_batch']} | {r['fps']:.2f} | {r['dropped_pct']:.0f}% | "
              f"{r['latency_p50_ms']:.1f} | {r['latency_p99_ms']:.1f} | {r['mean_batch']:.2f} |"
              for r in multi["streams"]]
    used32 = gflop * ms32["model_fps"]
    used8 = gflop * ms8["model_fps"]
    lines += ["", "## The machine's limit", "",
              f"Work per frame (multiply-adds x 2, counted from the modules the graphs are exported from): "
              f"backbone + RPN head {2 * gmacs['backbone']:.2f} GFLOP, box head {2 * gmacs['box_head']:.2f} "
              f"(every proposal), mask head {2 * gmacs['mask_head']:.2f} (mean detections): "
              f"**{gflop:.2f} GFLOP/frame**.", "",
              f"Measured peak of these {args.threads} threads (best of 8 runs): FP32 {peak32:.0f} GFLOP/s (the "
              f"fastest of 2048x2048 products in torch and onnxruntime and a 256-channel 3x3 convolution at "
              f"96x168 in torch), INT8 {peak8:.0f} GOP/s (onnxruntime MatMulInteger u8 x s8). The shapes "
              f"model's convolutions are small ({shapes.backbone.out_channels} channels) and reach less than "
              f"these, so the fraction is an upper bound on what is left.", "",
              "| runner | achieved GFLOP/s (or GOP/s) | fraction of the peak |", "|---|---|---|",
              f"| torchvision eager FP32 | {gflop * tv:.0f} | {gflop * tv / peak32:.2f} of FP32 |",
              f"| maskstream FP32 | {used32:.0f} | {used32 / peak32:.2f} of FP32 |",
              f"| maskstream INT8 | {used8:.0f} | {used8 / peak8:.2f} of INT8 |",
              "", f"4x the whole-graph export (one frame at a time) would be {4 * whole:.1f} frames/s: {4 * whole * gflop:.0f} GOP/s, "
              f"{4 * whole * gflop / peak8:.2f} of the INT8 peak for the whole model, our own stages (preprocess, "
              f"proposals, ROIAlign, paste) included; at the INT8 peak, with no time for anything else, the "
              f"model's work would take {gflop / peak8 * 1e3:.1f} ms a frame.",
              "", f"Per-stage ms/frame (maskstream model-only, each on its worker: with {par} frames in flight "
              "they overlap and add up to more than the wall time a frame):", "", "| stage | FP32 | INT8 |",
              "|---|---|---|"]
    s8 = dict(ms8["stages_ms"])
    lines += [f"| {k} | {v:.2f} | {s8.get(k, float('nan')):.2f} |" for k, v in ms32["stages_ms"]]
    if r50_rows:
        lines += ["", "## R50-FPN (random weights)", "",
                  "| model | torchvision eager fps | maskstream model-only fps | ratio | peak RSS MB |",
                  "|---|---|---|---|---|"]
        for name, tv50, m in r50_rows:
            lines.append(f"| {name} | {tv50:.2f} | {m['model_fps']:.2f} | {m['model_fps'] / tv50:.2f}x | "
                         f"{m['peak_rss_mb']:.0f} |")
        # the fastest FP32 rate seen on these cores in this run: the peak microbenchmark, or maskstream
        # itself where a noisy spell held the microbenchmark down
        achieved = r50_gflop * ms50["model_fps"]
        fastest = max(peak32, achieved)
        needed = 2.5 * tv50 * r50_gflop
        lines += ["", f"Its work per frame: backbone + RPN head {2 * r50_gmacs['backbone']:.0f} GFLOP (1344x768 "
                  f"padded), box head {2 * r50_gmacs['box_head']:.0f}, mask head {2 * r50_gmacs['mask_head']:.0f}: "
                  f"{r50_gflop:.0f} GFLOP. torchvision eager runs it at {r50_gflop * tv50:.0f} GFLOP/s, "
                  f"maskstream at {achieved:.0f}; 2.5x torchvision would take {needed:.0f} GFLOP/s, "
                  f"{needed / fastest:.2f}x the fastest FP32 rate seen on these cores in this run ({fastest:.0f}: "
                  f"the peak microbenchmark measured {peak32:.0f}).", "",
                  f"The INT8 row runs {r50_gflop * best50['int8']['model_fps']:.0f} GOP/s, "
                  f"{r50_gflop * best50['int8']['model_fps'] / peak8:.2f} of the INT8 peak. Its graphs: "
                  f"{r50_int8['calibration']}. With random weights its 100 detections a frame are near ties "
                  f"(FP32 scores {r50_int8['score_range']}), so small numerical changes reorder them: of FP32's "
                  f"detections on {r50_int8['frames']} frames, {r50_int8['matched']:.0%} have an INT8 detection "
                  f"of the same class at box IoU >= 0.5. That measures the noise of an untrained model, not INT8's "
                  f"AP cost, which needs trained weights and labelled images (the shapes engine's is above)."]
    lines += ["", "## ROIAlign", "", "1000 ROIs over P2-P5 (96 ch, 7x7, sampling 2), same inputs:", "",
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
