"""Train the shapes Mask R-CNN from random init on freshly generated shapes-world images.

    engines/tools/.venv/bin/python engines/tools/train.py --iters 4000 --out engines/tools/work/shapes.pt

Every batch is new data (seeded by iteration), so there is no over-fitting to a fixed set. The log goes to
stdout and to --log; a checkpoint is written every --save-every iterations and at the end (resumable).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import SHAPES_CONFIG, build_shapes_model  # noqa: E402
from shapes import make_image, random_size, to_target  # noqa: E402


def batch(seed: int, n: int):
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for k in range(n):
        h, w = random_size(rng)
        img, inst = make_image(seed * 16 + k, h, w)
        images.append(torch.from_numpy(img).permute(2, 0, 1).float() / 255.0)
        targets.append(to_target(inst, h, w))
    return images, targets


def lr_at(it: int, total: int, base: float, warmup: int) -> float:
    if it < warmup:
        return base * (0.05 + 0.95 * it / warmup)
    t = (it - warmup) / max(total - warmup, 1)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="engines/tools/work/shapes.pt")
    ap.add_argument("--log", default="engines/tools/work/train_log.txt")
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    model = build_shapes_model().to(args.device)
    model.transform.min_size = (288, 320, 352)  # multi-scale training; inference uses 320
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    start = 0
    if os.path.exists(args.out):
        ckpt = torch.load(args.out, map_location=args.device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        start = ckpt["iter"]
        print(f"resumed from {args.out} at iteration {start}")
    log = open(args.log, "a")
    model.train()
    t0 = time.time()
    acc: dict[str, float] = {}

    def save(it):
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "iter": it,
                    "config": SHAPES_CONFIG}, args.out + ".tmp")
        os.replace(args.out + ".tmp", args.out)

    for it in range(start, args.iters):
        for g in opt.param_groups:
            g["lr"] = lr_at(it, args.iters, args.lr, args.warmup)
        images, targets = batch(args.seed * 1_000_003 + it, args.batch)
        images = [i.to(args.device) for i in images]
        targets = [{k: v.to(args.device) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        for k, v in losses.items():
            acc[k] = acc.get(k, 0.0) + float(v)
        if (it + 1) % 20 == 0:
            el = time.time() - t0
            parts = " ".join(f"{k.replace('loss_', '')}={v / 20:.4f}" for k, v in acc.items())
            line = (f"iter {it + 1}/{args.iters} lr={opt.param_groups[0]['lr']:.2e} {parts} "
                    f"s/iter={el / (it + 1 - start):.2f} elapsed={el / 60:.1f}min")
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()
            acc = {}
        if (it + 1) % args.save_every == 0:
            save(it + 1)
    save(args.iters)
    print("done", flush=True)


if __name__ == "__main__":
    main()
