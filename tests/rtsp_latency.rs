//! RTSP round-trip latency, a measurement rather than a check (run with `--ignored --nocapture`):
//! a live test pattern (videotestsrc "ball": every frame differs) is served with the overlay off; a
//! client on 127.0.0.1 receives the stream; each received frame is matched by content to the pattern's
//! frame number, and its arrival time is compared with the moment maskstream handed that frame to its
//! sinks (a frame's JSON line is written just before the frame is pushed, so the line marks the push).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use maskstream::pipeline::config::{PipelineConfig, SourceConfig};
use maskstream::pipeline::{self, RunContext};

/// 64x36 grey thumbnail: enough to tell consecutive frames of the demo apart.
fn thumb(rgb: &[u8], w: usize, h: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; 64 * 36];
    for (i, v) in t.iter_mut().enumerate() {
        let (tx, ty) = (i % 64, i / 64);
        let (x, y) = (tx * w / 64 + w / 128, ty * h / 36 + h / 72);
        let p = &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
        *v = (p[0] as f32 + p[1] as f32 + p[2] as f32) / 3.0;
    }
    t
}

/// The same pattern rendered offline: frame n of a non-live videotestsrc equals frame n of the live one.
fn reference_frames(n: usize, w: usize, h: usize) -> Vec<Vec<u8>> {
    let p = gst::parse::launch(&format!(
        "videotestsrc pattern=ball num-buffers={n} ! video/x-raw,width={w},height={h},framerate=30/1 ! videoconvert ! video/x-raw,format=RGB ! appsink name=s sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = p
        .by_name("s")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let mut out = Vec::new();
    while let Ok(s) = sink.pull_sample() {
        out.push(
            s.buffer()
                .unwrap()
                .map_readable()
                .unwrap()
                .as_slice()
                .to_vec(),
        );
    }
    let _ = p.set_state(gst::State::Null);
    out
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn rtsp_round_trip_latency() {
    gst::init().unwrap();
    let (w, h) = (640usize, 360usize);
    let reference = reference_frames(3000, w, h);
    let thumbs: Vec<Vec<f32>> = reference.iter().map(|f| thumb(f, w, h)).collect();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("lat.jsonl");
    let mut cfg = PipelineConfig {
        engine: common::engine_dir(),
        backend: maskstream::BackendKind::Cpu,
        ..Default::default()
    };
    cfg.sources = vec![SourceConfig {
        uri: "test://ball?width=640&height=360&fps=30".into(),
        name: Some("lat".into()),
        max_frames: None,
        ..SourceConfig::new("")
    }];
    cfg.queue.capacity = Some(2);
    cfg.overlay.alpha = 0.0;
    cfg.overlay.outline = false;
    cfg.overlay.boxes = false;
    cfg.overlay.labels = false;
    cfg.output.rtsp = Some("rtsp://127.0.0.1:0/{name}".into());
    cfg.output.jsonl = Some(jsonl.display().to_string());
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = RunContext {
        stop: stop.clone(),
        progress: Box::new(pipeline::NoProgress),
        on_rtsp_ready: Some(Box::new(move |u| {
            let _ = tx.send(u);
        })),

        ..Default::default()
    };
    let run = std::thread::spawn(move || pipeline::run(&cfg, ctx));
    let url = rx.recv_timeout(Duration::from_secs(60)).unwrap()[0].clone();

    // push times: when each JSON line appears
    let pushed: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let (p2, s2, path) = (pushed.clone(), stop.clone(), jsonl.clone());
    let tail = std::thread::spawn(move || {
        while !path.exists() && !s2.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let Ok(f) = std::fs::File::open(&path) else {
            return;
        };
        let mut r = BufReader::new(f);
        let mut line = String::new();
        while !s2.load(Ordering::Relaxed) {
            // a line may arrive in pieces (the writer's buffer is smaller than a busy frame's line):
            // keep what was read until its newline comes
            if r.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
                let now = Instant::now();
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                p2.lock().unwrap().insert(v["frame"].as_u64().unwrap(), now);
                line.clear();
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });

    let src = gst::ElementFactory::make("rtspsrc")
        .property("location", &url)
        .property("latency", 0u32)
        .build()
        .unwrap();
    let decode = gst::ElementFactory::make("decodebin").build().unwrap();
    let convert = gst::ElementFactory::make("videoconvert").build().unwrap();
    let sink = gst_app::AppSink::builder()
        .caps(
            &gst::Caps::builder("video/x-raw")
                .field("format", "RGB")
                .build(),
        )
        .sync(false)
        .build();
    let p = gst::Pipeline::new();
    p.add_many([&src, &decode, &convert, sink.upcast_ref()])
        .unwrap();
    convert.link(&sink).unwrap();
    let d = decode.clone();
    src.connect_pad_added(move |_, pad| {
        let _ = pad.link(&d.static_pad("sink").unwrap());
    });
    let c = convert.clone();
    decode.connect_pad_added(move |_, pad| {
        let s = c.static_pad("sink").unwrap();
        if !s.is_linked() {
            let _ = pad.link(&s);
        }
    });
    p.set_state(gst::State::Playing).unwrap();
    let mut lat = Vec::new();
    let (mut received, mut unclear, mut unmatched) = (0, 0, 0);
    let t0 = Instant::now();
    while lat.len() < 120 && t0.elapsed() < Duration::from_secs(90) {
        let Some(s) = sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        let at = Instant::now();
        received += 1;
        let b = s.buffer().unwrap();
        let m = b.map_readable().unwrap();
        let t = thumb(m.as_slice(), w, h);
        let mut sad: Vec<(usize, f32)> = thumbs
            .iter()
            .enumerate()
            .map(|(i, x)| (i, x.iter().zip(&t).map(|(a, b)| (a - b).abs()).sum::<f32>()))
            .collect();
        sad.sort_by(|a, b| a.1.total_cmp(&b.1));
        // only frames that match one input frame clearly better than any other
        if sad[0].1 > 0.8 * sad[1].1 {
            unclear += 1;
            continue;
        }
        let best = sad[0].0;
        if let Some(pt) = pushed.lock().unwrap().get(&(best as u64)) {
            if at >= *pt {
                lat.push((at - *pt).as_secs_f64() * 1e3);
            }
        } else {
            unmatched += 1;
        }
    }
    let _ = p.set_state(gst::State::Null);
    stop.store(true, Ordering::Relaxed);
    let summary = run.join().unwrap().unwrap();
    tail.join().unwrap();
    assert!(lat.len() >= 30, "only {} frames matched ({received} received, {unclear} unclear, {unmatched} not pushed yet)", lat.len());
    lat.sort_by(f64::total_cmp);
    let q = |f: f64| lat[((lat.len() - 1) as f64 * f) as usize];
    println!("RTSP round trip (push to sink -> decoded by a client on 127.0.0.1, rtspsrc latency=0): {} frames, p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms", lat.len(), q(0.5), q(0.9), q(1.0));
    println!("{summary}");
}
