"""Two rewrites of an INT8 (QDQ) backbone graph for ONNX Runtime's CPU kernels. Both keep every value the
runtime reads bit for bit (checked on random inputs at three sizes before the file is replaced).

upsample_add: the FPN's top-down step, `lateral + nearest-2x-upsample(coarser)`, as one broadcast add in
NHWC: lateral [N,2H,2W,C] seen as [N,H,2,W,2,C], the coarser level [N,H,W,C] as [N,H,1,W,1,C]; a nearest 2x
upsample copies each value to a 2x2 block, which is what the broadcast reads. Why: ONNX Runtime runs the
integer convolutions channels-last and so turns the Resize into an NHWC Resize with scales [1,2,2,1], which
misses its only fast path (NCHW, [1,1,2,2]) and copies element by element through index tables: ~1 ms a frame
for P3 -> P2 at the demo's size, on one thread. The explicit Transposes written here are the inverses of the
ones ONNX Runtime inserts around its channels-last convolutions, so its transpose optimizer cancels them:
nothing is transposed at run time (profiled: Transpose time unchanged).

quantized_features: the FPN outputs (P2..P6) leave the graph as the uint8 values they are inside it, with two
more outputs per level, `<name>_scale` (float) and `<name>_zero_point` (uint8): the DequantizeLinear the graph
ended with, (q - zero_point) * scale, is done by maskstream's ROIAlign on the values it samples. Why: writing
~6 MB of floats a frame cost ~0.4 ms inside the graph, and ROIAlign read 4x the memory it needs. The runtime
reads either form (docs/engine-format.md); the RPN head's outputs stay float.

Applied by quantize.py to the INT8 backbone it writes; on an engine quantized before, in place:

    qdq_rewrite.py --engine engines/shapes    # rewrite, check the values equal, record the new sha256
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# what the manifest's calibration line says of a backbone rewritten here
NOTES = {
    "upsample_add": "; the FPN's nearest 2x upsample + add as one broadcast add in NHWC (same values)",
    "quantized_features": "; P2..P6 leave the graph as uint8 with their scale and zero point (same values)",
    "quantized_input": "; the input quantized and laid out space-to-depth by maskstream (same values)",
}


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    for o in graph.output:
        out.setdefault(o.name, []).append(None)  # a graph output: never rewritten away
    return out


def _same_qparams(graph, a: list[str], b: list[str]) -> bool:
    """Whether two (scale, zero point) input pairs hold the same values (initializers, or the same names)."""
    if list(a) == list(b):
        return True
    init = {t.name: t for t in graph.initializer}
    if len(a) != len(b) or any(x not in init or y not in init for x, y in zip(a, b)):
        return False
    return all(np.array_equal(numpy_helper.to_array(init[x]), numpy_helper.to_array(init[y])) for x, y in zip(a, b))


def _is_nearest_2x(graph, r) -> bool:
    """A 4-D nearest Resize by constant scales [1,1,2,2] whose output index 2i, 2i+1 reads input i."""
    if r.op_type != "Resize" or _attr(r, "mode", "nearest") != "nearest":
        return False
    if _attr(r, "coordinate_transformation_mode", "half_pixel") != "asymmetric" or \
            _attr(r, "nearest_mode", "round_prefer_floor") != "floor":
        return False
    if len(r.input) < 3 or (len(r.input) > 3 and r.input[3]):
        return False  # sizes instead of scales
    init = {t.name: t for t in graph.initializer}
    if r.input[2] not in init:
        return False
    return numpy_helper.to_array(init[r.input[2]]).tolist() == [1.0, 1.0, 2.0, 2.0]


def upsample_add(model: onnx.ModelProto) -> int:
    """Rewrites every DQ -> Resize(nearest 2x) -> Q -> DQ -> Add(DQ lateral) -> Q of `model` in place;
    returns how many. Anything else is left as it was."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    count, remove, insert = 0, set(), {}
    for r in [n for n in g.node if _is_nearest_2x(g, n)]:
        cons = _consumers(g)
        dq_in = producer.get(r.input[0])
        users = cons.get(r.output[0], [])
        if dq_in is None or dq_in.op_type != "DequantizeLinear" or len(users) != 1 or users[0] is None:
            continue
        q_r = users[0]
        dq_rs = cons.get(q_r.output[0], [])
        if q_r.op_type != "QuantizeLinear" or len(dq_rs) != 1 or dq_rs[0] is None:
            continue
        dq_r = dq_rs[0]
        adds = cons.get(dq_r.output[0], [])
        if dq_r.op_type != "DequantizeLinear" or len(adds) != 1 or adds[0] is None or adds[0].op_type != "Add":
            continue
        add = adds[0]
        # requantizing the upsampled values must be the identity, or skipping it would change them
        if not (_same_qparams(g, dq_in.input[1:], q_r.input[1:]) and _same_qparams(g, q_r.input[1:], dq_r.input[1:])):
            continue
        other = add.input[1] if add.input[0] == dq_r.output[0] else add.input[0]
        dq_lat = producer.get(other)
        q_outs = cons.get(add.output[0], [])
        if dq_lat is None or dq_lat.op_type != "DequantizeLinear" or len(q_outs) != 1 or q_outs[0] is None \
                or q_outs[0].op_type != "QuantizeLinear":
            continue
        q_add = q_outs[0]
        count += 1
        p = f"/upsample_add_{count}"
        x_q, lat_q, y_q = dq_in.input[0], dq_lat.input[0], q_add.output[0]

        def const(name, values):
            g.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), p + name))
            return p + name

        nodes = [
            helper.make_node("Transpose", [x_q], [p + "_x"], perm=[0, 2, 3, 1]),        # [N,H,W,C]
            helper.make_node("Transpose", [lat_q], [p + "_lat"], perm=[0, 2, 3, 1]),    # [N,2H,2W,C]
            helper.make_node("Shape", [p + "_x"], [p + "_xs"]),
            helper.make_node("Gather", [p + "_xs", const("_i2", [2])], [p + "_w"], axis=0),
            helper.make_node("Gather", [p + "_xs", const("_i3", [3])], [p + "_c"], axis=0),
            helper.make_node("Concat", [const("_x6a", [0, 0, 1]), p + "_w", const("_1", [1]), p + "_c"],
                             [p + "_x6s"], axis=0),                                      # [N,H,1,W,1,C]
            helper.make_node("Concat", [const("_l6a", [0, -1, 2]), p + "_w", const("_2", [2]), p + "_c"],
                             [p + "_l6s"], axis=0),                                      # [N,H,2,W,2,C]
            helper.make_node("Shape", [p + "_lat"], [p + "_ls"]),
            helper.make_node("Reshape", [p + "_x", p + "_x6s"], [p + "_x6"]),
            helper.make_node("Reshape", [p + "_lat", p + "_l6s"], [p + "_l6"]),
            helper.make_node("DequantizeLinear", [p + "_x6", *dq_in.input[1:]], [p + "_x6f"]),
            helper.make_node("DequantizeLinear", [p + "_l6", *dq_lat.input[1:]], [p + "_l6f"]),
            helper.make_node("Add", [p + "_l6f", p + "_x6f"] if add.input[0] == other else [p + "_x6f", p + "_l6f"],
                             [p + "_sf"]),
            helper.make_node("QuantizeLinear", [p + "_sf", *q_add.input[1:]], [p + "_s6"]),
            helper.make_node("Reshape", [p + "_s6", p + "_ls"], [p + "_s"]),
            helper.make_node("Transpose", [p + "_s"], [y_q], perm=[0, 3, 1, 2]),
        ]
        insert[id(add)] = nodes
        remove |= {id(r), id(q_r), id(dq_r), id(add), id(q_add)}
        if cons.get(dq_in.output[0]) == [r]:
            remove.add(id(dq_in))
        if cons.get(dq_lat.output[0]) == [add]:
            remove.add(id(dq_lat))
    if count:
        # the new nodes go where the Add was: everything they read is produced before it
        kept = []
        for n in g.node:
            kept += insert.get(id(n), [])
            if id(n) not in remove:
                kept.append(n)
        del g.node[:]
        g.node.extend(kept)
        used = {i for n in g.node for i in n.input}
        stale = [t for t in g.initializer if t.name not in used and t.name not in {o.name for o in g.output}]
        for t in stale:
            g.initializer.remove(t)
        onnx.checker.check_model(model)
    return count


def quantized_features(model: onnx.ModelProto, names: list[str]) -> int:
    """Every graph output of `names` made by a DequantizeLinear (per-tensor) becomes its uint8 input, plus
    `<name>_scale` and `<name>_zero_point` outputs; returns how many."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    init = {t.name: t for t in g.initializer}
    count = 0
    for out in [o for o in g.output if o.name in names]:
        dq = producer.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        scale, zp = init.get(dq.input[1]), init.get(dq.input[2])
        if scale is None or zp is None or numpy_helper.to_array(scale).size != 1 \
                or numpy_helper.to_array(zp).dtype != np.uint8:
            continue
        quantized = dq.input[0]
        if quantized not in producer or any(out.name in n.input for n in g.node):
            continue  # a graph input, or float values read inside the graph too
        g.node.remove(dq)
        stale = [v for v in g.value_info if v.name == quantized]
        for v in stale:
            g.value_info.remove(v)
        for n in g.node:  # the uint8 tensor takes the output's name
            n.input[:] = [out.name if i == quantized else i for i in n.input]
            n.output[:] = [out.name if o == quantized else o for o in n.output]
        out.type.tensor_type.elem_type = onnx.TensorProto.UINT8
        for suffix, src, elem in (("_scale", dq.input[1], onnx.TensorProto.FLOAT),
                                  ("_zero_point", dq.input[2], onnx.TensorProto.UINT8)):
            g.node.append(helper.make_node("Identity", [src], [out.name + suffix]))
            g.output.append(helper.make_tensor_value_info(out.name + suffix, elem, []))
        count += 1
    if count:
        onnx.checker.check_model(model)
    return count


def _init(g, name):
    for t in g.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def quantized_input(model: onnx.ModelProto) -> dict | None:
    """The graph's float input, its QuantizeLinear and the space-to-depth stem's one-hot convolution
    (quantize.space_to_depth_stem: channel 4c + 2a + b copies input pixel (2y + a - pad, 2x + b - pad) of
    channel c) become one uint8 input [N, H', W', 4C], channels-last, that maskstream writes: quantized as
    QuantizeLinear does, laid out as that convolution would, its padding at the zero point. The one-hot
    convolution only moved pixels (weights 1.0, output range its input's: the same integers), ~0.8 ms a
    frame. Returns the input's parameters for the manifest, or None where the graph does not start so."""
    g = model.graph
    if len(g.input) != 1:
        return None
    inp = g.input[0]
    producer = {o: n for n in g.node for o in n.output}
    cons = _consumers(g)

    def only(tensor, op):
        users = cons.get(tensor, [])
        return users[0] if len(users) == 1 and users[0] is not None and users[0].op_type == op else None

    q = only(inp.name, "QuantizeLinear")
    dq = q and only(q.output[0], "DequantizeLinear")
    conv = dq and only(dq.output[0], "Conv")
    if conv is None or len(conv.input) != 2:
        return None
    scale, zp = _init(g, q.input[1]), _init(g, q.input[2])
    if scale is None or zp is None or scale.size != 1 or zp.dtype != np.uint8 or \
            not _same_qparams(g, q.input[1:], dq.input[1:]):
        return None
    pads = _attr(conv, "pads", [0, 0, 0, 0])
    if _attr(conv, "kernel_shape") != [2, 2] or _attr(conv, "strides") != [2, 2] or _attr(conv, "group", 1) != 1 \
            or _attr(conv, "dilations", [1, 1]) != [1, 1] or len(set(pads)) != 1:
        return None
    wdq = producer.get(conv.input[1])
    if wdq is None or wdq.op_type != "DequantizeLinear":
        return None
    wq, ws = _init(g, wdq.input[0]), _init(g, wdq.input[1])
    if wq is None or ws is None or wq.ndim != 4:
        return None
    cout, cin = wq.shape[:2]
    one_hot = np.zeros((cout, cin, 2, 2), np.float32)
    for c in range(cin):
        for a in range(2):
            for b in range(2):
                one_hot[4 * c + 2 * a + b, c, a, b] = 1.0
    weights = wq.astype(np.float32) * ws.reshape(-1, 1, 1, 1)
    if cout != 4 * cin or not np.allclose(weights, one_hot, atol=1e-6):
        return None
    q_out = only(conv.output[0], "QuantizeLinear")
    if q_out is None or not _same_qparams(g, q.input[1:], q_out.input[1:]):
        return None  # the convolution's output must be requantized at the input's scale: the same integers
    # the new input: [N, H', W', 4C] uint8, transposed to the graph's NCHW (cancelled by ONNX Runtime's
    # channels-last convolutions)
    name = inp.name
    new_input = helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, ["batch", "s2d_height", "s2d_width", cout])
    transpose = helper.make_node("Transpose", [name], [q_out.output[0]], perm=[0, 3, 1, 2], name=name + "_nchw")
    dead = {id(q), id(dq), id(conv), id(q_out)}
    if len(cons.get(wdq.output[0], [])) == 1:
        dead.add(id(wdq))
    kept = [n for n in g.node if id(n) not in dead]
    del g.node[:]
    g.node.extend([transpose] + kept)
    g.input.remove(inp)
    g.input.append(new_input)
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
    onnx.checker.check_model(model)
    return {"space_to_depth": 2, "pad": int(pads[0]), "scale": float(scale.reshape(())),
            "zero_point": int(zp.reshape(()))}


def space_to_depth_input(x: np.ndarray, p: dict) -> np.ndarray:
    """A float batch [N,C,H,W] as a quantized_input graph takes it: QuantizeLinear (x / scale, rounded half
    to even, plus the zero point, clamped to 0..255), padded with the zero point, 2x2 blocks to channels
    4c + 2a + b, channels-last. maskstream's preprocess writes the same bytes."""
    scale, zp, pad = np.float32(p["scale"]), p["zero_point"], p["pad"]
    q = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)
    q = np.pad(q, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=zp)
    n, c, h, w = q.shape
    ho, wo = (h - 2) // 2 + 1, (w - 2) // 2 + 1
    q = q[:, :, :2 * ho, :2 * wo].reshape(n, c, ho, 2, wo, 2)
    return np.ascontiguousarray(q.transpose(0, 2, 4, 1, 3, 5).reshape(n, ho, wo, 4 * c))


def dequantized(outputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Output `name` as floats: a uint8 output through its `_scale` / `_zero_point` outputs, as ONNX's
    DequantizeLinear computes it ((q - zero_point) in int32, to float, times scale)."""
    v = outputs[name]
    if v.dtype != np.uint8 or name + "_scale" not in outputs:
        return v
    zp = np.int32(outputs[name + "_zero_point"])
    return (v.astype(np.int32) - zp).astype(np.float32) * np.float32(outputs[name + "_scale"])


def rewrite_checked(path: str, features: list[str], threads: int = 2) -> tuple[list[str], dict | None]:
    """Applies the rewrites to the graph at `path` in place when every output the runtime reads keeps its
    values (3 input sizes, batches of 1 and 2); returns the names of those that changed something, and
    the quantized input's parameters (None where the input stays float)."""
    model = onnx.load(path)
    done = [name for name, n in (("upsample_add", upsample_add(model)),
                                 ("quantized_features", quantized_features(model, features))) if n]
    quant = quantized_input(model)
    if quant:
        done.append("quantized_input")
    if done:
        with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as tmp:
            out = os.path.join(tmp, os.path.basename(path))
            onnx.save(model, out)
            values_equal(path, out, [(384, 704), (320, 320), (512, 384)], threads, quant)
            os.replace(out, path)
    return done, quant


def values_equal(a: str, b: str, shapes: list[tuple[int, int]], threads: int, quant: dict | None = None) -> None:
    """Runs both graphs on random images of each (height, width); raises unless every output of `a` has
    the same values in `b` (dequantized where `b` gives it as uint8; `b` fed space_to_depth_input where
    its input is quantized)."""
    from engine_model import session
    sa, sb = session(a, threads), session(b, threads)
    name = sa.get_inputs()[0].name
    names_a = [o.name for o in sa.get_outputs()]
    names_b = [o.name for o in sb.get_outputs()]
    rng = np.random.default_rng(0)
    for batch, (h, w) in enumerate(shapes):
        x = rng.uniform(-2.5, 2.5, (1 + batch % 2, 3, h, w)).astype(np.float32)
        x[..., : h // 4, :] = 0.0  # exact zeros, as the batch's padding
        ra = dict(zip(names_a, sa.run(None, {name: x})))
        fed = space_to_depth_input(x, quant) if quant else x
        rb = dict(zip(names_b, sb.run(None, {sb.get_inputs()[0].name: fed})))
        for k in names_a:
            u, v = dequantized(ra, k), dequantized(rb, k)
            if u.shape != v.shape or not np.array_equal(u, v):
                raise SystemExit(f"qdq_rewrite: output {k} differs at {x.shape} "
                                 f"(max |delta| {np.abs(u - v).max() if u.shape == v.shape else 'shape'})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="engines/shapes")
    args = ap.parse_args()
    import tomllib
    from export import sha256
    manifest = os.path.join(args.engine, "manifest.toml")
    with open(manifest) as f:
        text = f.read()
    line = re.search(r'^backbone = \{ file = "([^"]+\.int8\.onnx)", sha256 = "([0-9a-f]+)" \}$', text, re.M)
    if not line:
        raise SystemExit(f"{manifest}: no INT8 backbone in [precision.int8] (run quantize.py first)")
    path = os.path.join(args.engine, line.group(1))
    done, quant = rewrite_checked(path, tomllib.loads(text)["graphs"]["backbone"]["features"])
    if not done:
        print(f"{path}: nothing to rewrite")
        return
    text = text.replace(line.group(0), line.group(0).replace(line.group(2), sha256(path)))
    text = record_notes(text, done)
    if quant:
        text = text.rstrip("\n") + "\n\n" + input_table(quant)
    with open(manifest, "w") as f:
        f.write(text)
    print(f"{path}: {', '.join(done)}; values equal on 3 input sizes; sha256 recorded in {manifest}")


def input_table(quant: dict) -> str:
    """The manifest's [precision.int8.input] table (docs/engine-format.md)."""
    return ("[precision.int8.input]\n"
            + "".join(f"{k} = {quant[k]!r}\n" for k in ("space_to_depth", "pad", "scale", "zero_point")))


def record_notes(text: str, done: list[str]) -> str:
    """The manifest's calibration line with a note for each rewrite in `done` (once)."""
    for name in done:
        if NOTES[name] not in text:
            text = text.replace("; relative RMS error against FP32", NOTES[name] + "; relative RMS error against FP32", 1)
    return text


if __name__ == "__main__":
    main()
