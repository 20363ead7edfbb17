"""INT8 variants of an engine's three graphs: ONNX Runtime static quantization (QDQ), recorded in the
manifest's [precision] section (docs/engine-format.md).

    quantize.py --engine engines/shapes                      # calibrate, quantize, check, record
    quantize.py --engine engines/shapes --cpu-default fp32   # keep FP32 the CPU default

Weights: int8, symmetric, per output channel. Activations: uint8, per tensor, ranges from calibration on
shapes-world images (wide and v1 worlds, seeds of their own: neither training's nor evaluate.py's held-out
set). The box and mask heads are calibrated on what they see at run time: the ROIAlign outputs of those
images' proposals and detections (the torch model's poolers, same weights), not on random tensors.
On x86 ONNX Runtime folds each DequantizeLinear -> Conv/Gemm -> QuantizeLinear into integer kernels
(VNNI / AMX where the CPU has them). The FP32 graphs are left untouched: --precision fp32 stays exact.
The INT8 backbone is quantized from the same weights with the ResNet stem rewritten as space-to-depth + a
4x4 convolution (space_to_depth_stem: the same sums, a faster shape for the integer kernels), then rewritten
by qdq_rewrite.py (the same values): the FPN's upsample + add steps as broadcast adds, and P2..P6 given out
as uint8 with their scale and zero point.

Any other engine (a torchvision checkpoint exported with export.py) is calibrated on frames like the ones
it will see: --calibration VIDEO (frames spread evenly over it) or a folder of images. Its torch weights
are not needed: engine_model.py runs its FP32 graphs inside torchvision's pipeline to get the ROIs its
heads see. (The space-to-depth stem needs the torch backbone: the shapes engine only.)

    quantize.py --engine engines/mymodel --calibration site-camera.mp4 --images 32
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
import tempfile
import time

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,  # noqa: E402
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_model import engine_model, session  # noqa: E402
from export import BackboneGraph, export_graph, sha256, upsample_by_two  # noqa: E402
from model import load_shapes_from_engine  # noqa: E402
from shapes import make_image, random_size  # noqa: E402
import qdq_rewrite  # noqa: E402

CALIBRATION_SEED = 1_500_000_000  # above evaluate.py's held-out seeds (10^9..) and far above training's (~1.6e7)
GRAPHS = ("backbone", "box_head", "mask_head")


class Reader(CalibrationDataReader):
    def __init__(self, name: str, tensors: list[np.ndarray]):
        self.name, self.tensors, self.i = name, tensors, 0

    def get_next(self):
        if self.i >= len(self.tensors):
            return None
        self.i += 1
        return {self.name: self.tensors[self.i - 1]}

    def rewind(self):
        self.i = 0


def shapes_images(n: int) -> list[np.ndarray]:
    """Shapes-world calibration images: 3/4 wide world, 1/4 v1, seeds of their own."""
    out = []
    for i in range(n):
        world = "wide" if i % 4 else "v1"
        rng = np.random.default_rng(CALIBRATION_SEED + i)
        h, w = random_size(rng, world=world)
        out.append(make_image(CALIBRATION_SEED + i, h, w, world=world)[0])
    return out


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def video_size(path: str) -> tuple[int, int]:
    info = subprocess.run(["gst-discoverer-1.0", path], capture_output=True, text=True).stdout
    w, h = re.search(r"Width: (\d+)", info), re.search(r"Height: (\d+)", info)
    if not (w and h):
        raise SystemExit(f"--calibration {path}: no video stream found (gst-discoverer-1.0 reads no size)")
    return int(w.group(1)), int(h.group(1))


def video_frames(path: str, n: int) -> list[np.ndarray]:
    """n RGB frames spread evenly over the video: it is decoded once, whole, keeping every k-th frame
    (k doubles whenever more than 2n are kept), then n are picked evenly from those."""
    w, h = video_size(path)
    size = w * h * 3
    proc = subprocess.Popen(["gst-launch-1.0", "-q", "filesrc", f"location={path}", "!", "decodebin", "!",
                             "videoconvert", "!", f"video/x-raw,format=RGB,width={w},height={h}", "!",
                             "fdsink", "fd=1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    kept, stride, index = [], 1, 0
    while True:
        buf = proc.stdout.read(size)
        if len(buf) < size:
            break
        if index % stride == 0:
            kept.append(np.frombuffer(buf, np.uint8).reshape(h, w, 3).copy())
            if len(kept) > 2 * n:
                kept, stride = kept[::2], stride * 2
        index += 1
    if proc.wait() != 0 or not kept:
        raise SystemExit(f"--calibration {path}: GStreamer could not decode it ({index} frames read)")
    picks = np.linspace(0, len(kept) - 1, min(n, len(kept))).round().astype(int)
    return [kept[i] for i in picks]


def folder_images(path: str, n: int) -> list[np.ndarray]:
    from PIL import Image

    names = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise SystemExit(f"--calibration {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    picks = np.linspace(0, len(names) - 1, min(n, len(names))).round().astype(int)
    return [np.asarray(Image.open(os.path.join(path, names[i])).convert("RGB")) for i in sorted(set(picks))]


def calibration_images(path: str | None, n: int, source: str) -> list[np.ndarray]:
    if path is None:
        if source != "shapes":
            raise SystemExit(f"this engine's source is {source}: give --calibration VIDEO or a folder of images "
                             f"like the ones it will see (the shapes world fits only the shapes engine)")
        return shapes_images(n)
    if os.path.isdir(path):
        return folder_images(path, n)
    if os.path.isfile(path):
        return video_frames(path, n)
    raise SystemExit(f"--calibration {path}: no such file or folder")


@torch.no_grad()
def calibration_inputs(engine: str, images: list[np.ndarray], max_rois: int, manifest: dict):
    """Backbone inputs (normalized, padded images) and the pooled features the heads get at run time, from
    the torch model (shapes: its own weights) or the engine's FP32 graphs in torchvision's pipeline."""
    model = (load_shapes_from_engine(engine) if manifest["source"] == "shapes" else engine_model(engine)).eval()
    pooled = {"box": [], "mask": []}
    hooks = [model.roi_heads.box_roi_pool.register_forward_hook(lambda m, i, o: pooled["box"].append(o)),
             model.roi_heads.mask_roi_pool.register_forward_hook(lambda m, i, o: pooled["mask"].append(o))]
    backbone = []
    for img in images:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / manifest["transform"]["input_divisor"]
        backbone.append(model.transform([x])[0].tensors.numpy())
        model([x])
    for h in hooks:
        h.remove()
    rng = np.random.default_rng(0)

    def sample(chunks):  # every image's ROIs, at most max_rois of them per image (proposals are many)
        out = []
        for c in chunks:
            c = c.numpy()
            if len(c) > max_rois:
                c = c[np.sort(rng.choice(len(c), max_rois, replace=False))]
            if len(c):
                out.append(np.ascontiguousarray(c))
        return out

    def layout(name, chunks):  # the head graph's input layout (export.py --head-layout)
        if manifest["graphs"][name].get("input_layout", "nchw") == "nhwc":
            return [np.ascontiguousarray(c.transpose(0, 2, 3, 1)) for c in chunks]
        return chunks

    return {"backbone": backbone, "box_head": layout("box_head", sample(pooled["box"])),
            "mask_head": layout("mask_head", sample(pooled["mask"]))}


def space_to_depth_stem(conv: torch.nn.Conv2d) -> torch.nn.Module | None:
    """The ResNet stem (k x k, k odd, stride 2, padding (k-1)/2, few input channels) as the same sums in a
    shape ONNX Runtime's integer kernels run faster: a 2x2 stride-2 convolution with one-hot weights that
    only moves pixels (space to depth: channel (c, a, b) holds input pixel (2y+a, 2x+b) of channel c,
    padding included), then a (k+1)/2 square stride-1 convolution over 4x the channels, the kernel padded
    with a zero row and column to k+1. On even input sizes (the runtime pads to size_divisible) the output
    is the stem's. With 3 input channels the stem's im2col GEMM was short (k*k*3 = 147) and narrow; this
    took the INT8 backbone from 20.0 to 18.5 ms a frame (demo size, 2 threads). The one-hot layer is exact
    in INT8 too: weights 1.0 quantize exactly and its output range is its input's. None where the
    convolution is not such a stem."""
    k = conv.kernel_size[0]
    if (conv.kernel_size != (k, k) or k % 2 == 0 or conv.stride != (2, 2) or conv.padding != ((k - 1) // 2,) * 2
            or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros"):
        return None
    cout, cin = conv.weight.shape[:2]
    move = torch.nn.Conv2d(cin, 4 * cin, 2, 2, (k - 1) // 2, bias=False)
    half = (k + 1) // 2
    stem = torch.nn.Conv2d(4 * cin, cout, half, 1, 0, bias=conv.bias is not None)
    with torch.no_grad():
        move.weight.zero_()
        for c in range(cin):
            for a in range(2):
                for b in range(2):
                    move.weight[4 * c + 2 * a + b, c, a, b] = 1.0
        # stem.weight[o, (c, a, b), p, q] = conv.weight padded to k+1 [o, c, 2p + a, 2q + b]
        padded = torch.nn.functional.pad(conv.weight, (0, 1, 0, 1))
        stem.weight.copy_(padded.view(cout, cin, half, 2, half, 2).permute(0, 1, 3, 5, 2, 4)
                          .reshape(cout, 4 * cin, half, half))
        if conv.bias is not None:
            stem.bias.copy_(conv.bias)
    return torch.nn.Sequential(move, stem)


def space_to_depth_backbone(engine: str, dst: str) -> bool:
    """The engine's backbone exported again with its stem rewritten (space_to_depth_stem), as the source
    of the INT8 backbone; checked against the FP32 backbone.onnx. False where the rewrite does not apply
    (then the INT8 graph is quantized from backbone.onnx itself)."""
    import tomllib

    with open(os.path.join(engine, "manifest.toml"), "rb") as f:
        m = tomllib.load(f)
    model = load_shapes_from_engine(engine).eval()
    stem = space_to_depth_stem(model.backbone.body.conv1)
    if stem is None or m["transform"]["size_divisible"] % 2:
        return False
    model.backbone.body.conv1 = stem
    g = m["graphs"]["backbone"]
    outs = g["features"] + g["objectness"] + g["deltas"]
    probe = torch.rand(1, 3, 320, 576) * 2 - 1
    bb = BackboneGraph(model, g.get("feature_layout", "nchw"), upsample_by_two(model, m["transform"]["size_divisible"]),
                       g.get("rpn_layout", "nchw"))
    export_graph(bb.eval(), (probe,), dst, [g["input"]], outs,
                 {g["input"]: {0: "batch", 2: "height", 3: "width"},
                  **{o: {0: "batch", 2: f"h_{o}", 3: f"w_{o}"} for o in outs}})
    a, b = session(os.path.join(engine, g["file"]), 1), session(dst, 1)
    for x in (probe, torch.rand(2, 3, 256, 352) * 2 - 1):
        feed = {g["input"]: x.numpy()}
        worst = max(float(np.abs(r - q).max()) for r, q in zip(a.run(None, feed), b.run(None, feed)))
        if worst > 1e-4:
            raise SystemExit(f"space-to-depth stem: max |delta| {worst:.2e} against {g['file']}")
    return True


def input_name(path: str) -> str:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_inputs()[0].name


def quantize(src: str, dst: str, tensors: list[np.ndarray], method: CalibrationMethod):
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_static(pre, dst, Reader(input_name(src), tensors), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                       "CalibMovingAverage": method == CalibrationMethod.MinMax})


def compare(fp32: str, int8: str, tensors: list[np.ndarray], threads: int,
            budget_s: float = float("inf")) -> tuple[float, float, float, int]:
    """Relative error of the int8 graph's outputs (RMS error / RMS of FP32), ms per run of each, and the
    inputs compared (those that fit in budget_s, at least one: R50-FPN's backbone takes seconds each)."""
    a, b = session(fp32, threads), session(int8, threads)
    name = a.get_inputs()[0].name
    num = den = 0.0
    times = [0.0, 0.0]
    start, n = time.time(), 0
    for t in tensors:
        if n and time.time() - start > budget_s:
            break
        n += 1
        for k, s in enumerate((a, b)):
            s.run(None, {name: t})  # warm
            t0 = time.perf_counter()
            out = s.run(None, {name: t})
            times[k] += time.perf_counter() - t0
            if k == 0:
                ref = out
        for r, q in zip(ref, out):
            num += float(((r - q) ** 2).sum())
            den += float((r ** 2).sum())
    return (num / max(den, 1e-30)) ** 0.5, times[0] / n * 1e3, times[1] / n * 1e3, n


def record(manifest: str, files: dict[str, str], cpu_default: str, calibration: str, quant: dict | None = None):
    """Replaces the manifest's [precision] tables (everything from `[precision` to the end of those tables)."""
    with open(manifest) as f:
        text = f.read()
    text = re.sub(r"\n\[precision[^\n]*\](?:\n(?!\[)[^\n]*)*", "", text).rstrip("\n") + "\n"
    engine_dir = os.path.dirname(manifest)
    lines = ["", "[precision]", f'cpu_default = "{cpu_default}"', "", "[precision.int8]",
             f'calibration = "{calibration}"']
    for g in GRAPHS:
        lines.append(f'{g} = {{ file = "{files[g]}", sha256 = "{sha256(os.path.join(engine_dir, files[g]))}" }}')
    if quant:  # the INT8 backbone takes its input quantized (qdq_rewrite.quantized_input)
        lines += ["", qdq_rewrite.input_table(quant).rstrip("\n")]
    with open(manifest, "w") as f:
        f.write(text + "\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="engines/shapes")
    ap.add_argument("--calibration", help="a video or a folder of images like the ones the engine will see "
                                          "(default: the shapes world, for the shapes engine only)")
    ap.add_argument("--images", type=int, default=64, help="calibration images (frames of --calibration)")
    ap.add_argument("--max-rois", type=int, default=128, help="box-head ROIs kept per calibration image")
    ap.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy"])
    ap.add_argument("--cpu-default", default="int8", choices=["int8", "fp32"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check-secs", type=float, default=120.0,
                    help="time for the INT8-vs-FP32 check of each graph (at most 16 calibration inputs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[args.method]
    with open(os.path.join(args.engine, "manifest.toml"), "rb") as f:
        manifest = tomllib.load(f)

    t0 = time.time()
    images = calibration_images(args.calibration, args.images, manifest["source"])
    data = calibration_inputs(args.engine, images, args.max_rois, manifest)
    print(f"calibration: {len(images)} images, {sum(len(t) for t in data['box_head'])} box ROIs, "
          f"{sum(len(t) for t in data['mask_head'])} mask ROIs ({time.time() - t0:.0f} s)")
    if not data["mask_head"]:
        raise SystemExit("calibration: no detection in any calibration image, so nothing to calibrate the mask "
                         "head on: give images with the objects the engine detects (--calibration)")
    files, errors = {}, {}
    tmp = tempfile.TemporaryDirectory()
    stem = os.path.join(tmp.name, "backbone.s2d.onnx")
    s2d = manifest["source"] == "shapes" and space_to_depth_backbone(args.engine, stem)
    for g in GRAPHS:
        src = os.path.join(args.engine, manifest["graphs"][g]["file"])
        files[g] = f"{g}.int8.onnx"
        dst = os.path.join(args.engine, files[g])
        t1 = time.time()
        quantize(stem if g == "backbone" and s2d else src, dst, data[g], method)
        err, ms32, ms8, n = compare(src, dst, data[g][:16], args.threads, args.check_secs)
        if g == "backbone":
            rewritten, quant = qdq_rewrite.rewrite_checked(dst, manifest["graphs"]["backbone"]["features"],
                                                           args.threads)
        errors[g] = err
        print(f"{g}: {os.path.getsize(src) / 1e6:.1f} MB -> {os.path.getsize(dst) / 1e6:.1f} MB, "
              f"relative RMS error {err:.4f}, {ms32:.1f} -> {ms8:.1f} ms per calibration input "
              f"({ms32 / max(ms8, 1e-9):.2f}x, {n} inputs) [{time.time() - t1:.0f} s]")
    what = (f"{len(images)} shapes images (3/4 wide world, 1/4 v1; seeds {CALIBRATION_SEED}..)"
            if args.calibration is None else
            f"{len(images)} {'images' if os.path.isdir(args.calibration) else 'frames'} of "
            f"{os.path.basename(os.path.normpath(args.calibration))}")
    calibration = (f"onnxruntime {ort.__version__} quantize_static QDQ: int8 per-channel symmetric weights, "
                   f"uint8 per-tensor activations, {args.method} ranges from {what} and their ROIAlign outputs"
                   + ("; the backbone's stem as space-to-depth + a 4x4 convolution (same sums)" if s2d else "")
                   + "".join(qdq_rewrite.NOTES[r] for r in rewritten)
                   + "; relative RMS error against FP32 on calibration inputs: "
                   + ", ".join(f"{g} {e:.4f}" for g, e in errors.items()))
    tmp.cleanup()
    record(os.path.join(args.engine, "manifest.toml"), files, args.cpu_default, calibration, quant)
    print(f"recorded in {args.engine}/manifest.toml: [precision] cpu_default = {args.cpu_default}")


if __name__ == "__main__":
    main()
