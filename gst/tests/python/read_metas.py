#!/usr/bin/env python3
"""Reads maskstream's instance metas from Python (GObject introspection, Debian's python3-gi).

Runs a video through maskrcnn ! masktracker into an appsink and prints one JSON line per frame:
{"pts_ns": .., "instances": [{"label", "x", "y", "w", "h", "score", "class_id", "track_id",
"box", "mask": {"size": [h, w], "counts": ...}}]}.

usage: read_metas.py VIDEO ENGINE [FRAMES]   (GST_PLUGIN_PATH must name the plugin's folder)
"""
import json
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstVideo  # noqa: E402


def instances(buf):
    """The instance metas of a buffer, by id (= rank in the frame)."""
    out = []
    i = 0
    while True:
        meta = GstVideo.buffer_get_video_region_of_interest_meta_id(buf, i)
        if meta is None:
            return out
        s = meta.get_param("maskstream/instance")
        if s is not None:
            inst = {
                "label": GLib.quark_to_string(meta.roi_type),
                "x": meta.x, "y": meta.y, "w": meta.w, "h": meta.h,
                "score": s.get_value("score"),
                "class_id": s.get_value("class-id"),
                "box": [s.get_value(k) for k in ("x1", "y1", "x2", "y2")],
                "mask": {"size": [s.get_value("mask-height"), s.get_value("mask-width")],
                         "counts": s.get_value("mask")},
            }
            if s.has_field("track-id"):
                inst["track_id"] = s.get_value("track-id")
            out.append(inst)
        i += 1


def main():
    video, engine = sys.argv[1], sys.argv[2]
    frames = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    Gst.init(None)
    pipeline = Gst.parse_launch(
        f"filesrc location={video} ! decodebin ! videoconvert ! "
        f"maskrcnn engine={engine} backend=cpu threads=2 ! masktracker ! "
        "appsink name=sink sync=false max-buffers=4"
    )
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    n = 0
    while n < frames:
        sample = sink.emit("try-pull-sample", 5 * Gst.SECOND)
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        if msg is not None:
            err, dbg = msg.parse_error()
            print(f"error: {err.message} ({dbg})", file=sys.stderr)
            pipeline.set_state(Gst.State.NULL)
            sys.exit(1)
        if sample is None:
            if sink.get_property("eos"):
                break
            continue
        buf = sample.get_buffer()
        print(json.dumps({"pts_ns": buf.pts, "instances": instances(buf)}), flush=True)
        n += 1
    pipeline.set_state(Gst.State.NULL)


if __name__ == "__main__":
    main()
