"""Train the shapes Mask R-CNN on freshly generated shapes-world images.

    # fine-tune the bundled engine on the wide world, one cosine cycle that ends at 15:05 UTC
    nohup nice -n 19 engines/tools/.venv/bin/python engines/tools/train.py --world wide \\
        --deadline 15:05 --out /work/train-state/shapes-wide.pt --log /work/train-state/train_log.txt &
    # the first engine: from random init on the v1 world (real BatchNorm)
    train.py --init scratch --world v1 --lr 1e-3 --warmup 200 --iters 3400 --out engines/tools/work/shapes.pt

Where the weights come from, in this order:
  (a) --out, if it exists: the run goes on where it stopped (weights, optimizer, iteration, cycle length);
  (b) --init engine (default): the committed engine's weights (model.load_shapes_from_engine). Those have
      BatchNorm folded into the convolutions, so the model trains without BN (each BN an Identity, the conv
      biases carrying the folded shift): in effect frozen BN, the usual choice for fine-tuning detectors at
      batch 4. The model is checked against the engine's ONNX graphs before the first step;
  (c) --init scratch: random init with real BN (how the first engine was trained).
A checkpoint written from (b) is marked `bn_folded`; load_shapes_checkpoint and export.py read both kinds.

Every batch is new data (seeded by cycle and iteration), so there is no over-fitting to a fixed set. The log
goes to stdout and is appended to --log; the checkpoint is written atomically every --save-every
iterations and at the end.

Cycle length: --iters fixes it. --deadline HH:MM (UTC, today; or a Unix time) sizes it instead: after
--measure iterations the speed under the current load gives the iteration count that ends the cosine at
the deadline, and every checkpoint re-estimates it from the last --save-every iterations (the 2 cores are
shared, so the speed drifts). The count is kept in the checkpoint.

Continuing in a later session:
  - the same command resumes an unfinished cycle from the checkpoint (a finished one just exits);
  - `--new-cycle --deadline ...` (or `--new-cycle --iters N`) starts another warm-up + cosine cycle from the
    checkpoint's weights with a fresh optimizer and new data seeds;
  - after exporting the checkpoint (export.py --model shapes --checkpoint ...), a run with a new --out
    starts from that engine through (b).
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import math
import os
import statistics
import sys
import time
import tomllib

import numpy as np

# Before torch loads OpenMP: on a machine whose cores are shared (other builds, a niced run), spinning OpenMP
# threads burn CPU waiting for a descheduled partner (measured here: 10 s CPU and 60 s wall per training
# step with spinning, 3 s and 19 s without). Passive waiting costs little when the cores are free.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import (SHAPES_CONFIG, build_folded_shapes_model, build_shapes_model, engine_config,  # noqa: E402
                   load_shapes_from_engine)
from shapes import make_image, random_size, to_target  # noqa: E402

# image seeds are batch_seed * 16 + k; they stay far below evaluate.py's held-out seeds (10^9)
CYCLE_SEED_STRIDE = 200_003


def batch(seed: int, n: int, world: str):
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for k in range(n):
        h, w = random_size(rng, world=world)
        img, inst = make_image(seed * 16 + k, h, w, world=world)
        images.append(torch.from_numpy(img).permute(2, 0, 1).float() / 255.0)
        targets.append(to_target(inst, h, w))
    return images, targets


def lr_at(it: int, total: int | None, base: float, warmup: int) -> float:
    """Linear warm-up from 5%, then cosine down to 2% at `total` (peak while total is not known yet)."""
    if it < warmup:
        return base * (0.05 + 0.95 * it / warmup)
    if total is None:
        return base
    t = min((it - warmup) / max(total - warmup, 1), 1.0)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def parse_deadline(text: str) -> float:
    """HH:MM in UTC today, or a Unix time."""
    if ":" not in text:
        return float(text)
    hh, mm = (int(v) for v in text.split(":"))
    now = dt.datetime.now(dt.timezone.utc)
    return now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()


def engine_min_sizes(engine: str) -> tuple[int, ...]:
    with open(os.path.join(engine, "manifest.toml"), "rb") as f:
        size = tomllib.load(f)["transform"]["min_size"]
    return tuple(round(size * k) for k in (0.9, 1.0, 1.1))


def iters_until(deadline: float, it: int, secs_per_iter: float) -> int:
    """Total iterations that end the cycle at the deadline at the given speed (at least one more)."""
    return max(it + 1, it + int((deadline - time.time()) / secs_per_iter))


@torch.no_grad()
def check_against_engine(model, engine_dir: str, world: str) -> float:
    """Max |difference| between the model and the engine's three ONNX graphs on one image and random
    ROI features; exits if it exceeds 1e-4 (export.py's tolerance)."""
    from export import BackboneGraph, BoxHeadGraph, ChannelsLastInput, MaskHeadGraph, check_graph

    model.eval()
    rng = np.random.default_rng(123)
    h, w = random_size(rng, world=world)
    img, _ = make_image(123, h, w, world=world)
    x = model.transform([torch.from_numpy(img).permute(2, 0, 1).float() / 255.0])[0].tensors
    f = model.backbone.out_channels
    g = torch.Generator().manual_seed(0)
    with open(os.path.join(engine_dir, "manifest.toml"), "rb") as fh:
        graphs = tomllib.load(fh)["graphs"]
    bb = graphs["backbone"]
    layout, rpn_layout = bb.get("feature_layout", "nchw"), bb.get("rpn_layout", "nchw")

    def check_head(module, name: str, size: int) -> float:  # random pooled features in the graph's layout
        x = torch.rand(16, f, size, size, generator=g)
        if graphs[name].get("input_layout", "nchw") == "nhwc":
            module, x = ChannelsLastInput(module), x.permute(0, 2, 3, 1).contiguous()
        return check_graph(module, os.path.join(engine_dir, f"{name}.onnx"), [x], 1e-4)

    worst = max(
        check_graph(BackboneGraph(model, layout, rpn_layout=rpn_layout), os.path.join(engine_dir, "backbone.onnx"),
                    [x], 1e-4),
        check_head(BoxHeadGraph(model), "box_head", 7),
        check_head(MaskHeadGraph(model), "mask_head", 14))
    model.train()
    return worst


class Log:
    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.f = open(path, "a")

    def __call__(self, line: str):
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", default="wide", choices=["v1", "wide"])
    ap.add_argument("--init", default="engine", choices=["engine", "scratch"],
                    help="when --out does not exist: the committed engine's weights, or random init")
    ap.add_argument("--engine", default="engines/shapes")
    ap.add_argument("--iters", type=int, help="cycle length (default: from --deadline, else 4000)")
    ap.add_argument("--deadline", help="end the cosine cycle at HH:MM UTC today (or a Unix time)")
    ap.add_argument("--measure", type=int, default=40, help="iterations timed before sizing to --deadline")
    ap.add_argument("--new-cycle", action="store_true", help="weights from --out, fresh optimizer and cycle")
    ap.add_argument("--min-sizes", help="training scales, e.g. 288,320,352 (default: 0.9x, 1x and 1.1x the "
                                        "--engine's inference size, its manifest's transform.min_size)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="/work/train-state/shapes-wide.pt")
    ap.add_argument("--log", default="/work/train-state/train_log.txt")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.deadline and args.warmup < args.measure:
        sys.exit("--warmup must cover --measure: the cosine needs the cycle length")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    log = Log(args.log)
    deadline = parse_deadline(args.deadline) if args.deadline else None
    total = args.iters if args.iters else (None if deadline else 4000)

    ckpt = torch.load(args.out, map_location="cpu", weights_only=False) if os.path.exists(args.out) else None
    folded = ckpt["bn_folded"] if ckpt else args.init == "engine"
    # the widths the run goes on with: the checkpoint's, else the engine's (manifest fpn_channels)
    cfg = ckpt.get("config", SHAPES_CONFIG) if ckpt else engine_config(args.engine) if folded else SHAPES_CONFIG
    model = build_folded_shapes_model(cfg) if folded else build_shapes_model(cfg)
    start, cycle = 0, 0
    if ckpt:
        model.load_state_dict(ckpt["model"])
        cycle = ckpt.get("cycle", 0)
        if args.new_cycle:
            cycle += 1
            log(f"new cycle {cycle} from the weights of {args.out} (iteration {ckpt['iter']} of cycle {cycle - 1})")
        else:
            start = ckpt["iter"]
            total = args.iters or ckpt.get("total") or total
            log(f"resumed from {args.out} at iteration {start} of {total}")
    elif folded:
        model.load_state_dict(load_shapes_from_engine(args.engine).state_dict())
        diff = check_against_engine(model, args.engine, args.world)
        log(f"initialised from {args.engine} (BN folded, trained without BN); "
            f"max |diff| vs its ONNX graphs before the first step: {diff:.2e}")
    else:
        log("initialised from random weights (real BatchNorm)")
    model.to(args.device)
    # multi-scale training around the inference size (the engine's transform.min_size): 0.9x, 1x, 1.1x
    sizes = tuple(int(v) for v in args.min_sizes.split(",")) if args.min_sizes else engine_min_sizes(args.engine)
    model.transform.min_size = sizes
    model.transform.max_size = 2 * max(sizes)  # the shapes engine's 2:1 cap, at the largest scale
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    if ckpt and not args.new_cycle:
        opt.load_state_dict(ckpt["opt"])
    log(f"start {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC: {' '.join(sys.argv[1:])}")

    def save(it):
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "iter": it, "total": total,
                    "cycle": cycle, "bn_folded": folded, "world": args.world, "config": cfg},
                   args.out + ".tmp")
        os.replace(args.out + ".tmp", args.out)

    model.train()
    t0 = time.time()
    # the speed is the median of recent iterations' wall times: a pause (SIGSTOP while something else is
    # measured) is one long iteration that must not read as a slower machine; the deadline still counts it
    recent: collections.deque[float] = collections.deque(maxlen=max(args.save_every, args.measure))
    acc: dict[str, float] = {}
    it = start
    while total is None or it < total:
        t_iter = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(it, total, args.lr, args.warmup)
        seed = args.seed * 1_000_003 + cycle * CYCLE_SEED_STRIDE + it
        images, targets = batch(seed, args.batch, args.world)
        images = [i.to(args.device) for i in images]
        targets = [{k: v.to(args.device) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        it += 1
        recent.append(time.time() - t_iter)
        for k, v in losses.items():
            acc[k] = acc.get(k, 0.0) + v.item()
        if deadline and total is None and it - start >= args.measure:
            spi = statistics.median(recent)
            total = iters_until(deadline, it, spi)
            log(f"measured {spi:.2f} s/iter over {it - start} iterations: cycle of {total} iterations "
                f"ends at the deadline")
        if it % 20 == 0:
            el = time.time() - t0
            parts = " ".join(f"{k.replace('loss_', '')}={v / 20:.4f}" for k, v in acc.items())
            log(f"iter {it}/{total or '?'} lr={opt.param_groups[0]['lr']:.2e} {parts} "
                f"s/iter={el / (it - start):.2f} elapsed={el / 60:.1f}min")
            acc = {}
        if it % args.save_every == 0:
            if deadline and total is not None and it < total:  # the speed drifts: re-aim at the deadline
                spi = statistics.median(recent)
                new_total = iters_until(deadline, it, spi)
                if new_total != total:
                    log(f"re-estimated at {spi:.2f} s/iter: cycle of {new_total} iterations (was {total})")
                    total = new_total
            save(it)
    save(it)
    log(f"done: iteration {it} at {dt.datetime.now(dt.timezone.utc):%H:%M:%S} UTC, checkpoint {args.out}")


if __name__ == "__main__":
    main()
