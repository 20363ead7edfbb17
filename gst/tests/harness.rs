//! The elements in `gst_check::Harness`: `maskrcnn`'s metas against what `maskstream detect` reports
//! for the same image (the same `MaskRcnn::detect` + score threshold + `FrameRecord`), the overlay
//! touching mask pixels only, the tracker's ids, the latency query and engine errors.

mod common;

use gst::prelude::*;
use gst_check::Harness;
use gst_video::prelude::*;
use gstmaskstream::meta::{self, Instance};
use maskstream::model::paste::InstanceMask;
use maskstream::model::Detection;
use maskstream::output::FrameRecord;
use maskstream::RgbFrame;

fn instances(buf: &gst::BufferRef) -> Vec<Instance> {
    meta::instances(buf)
        .into_iter()
        .map(|r| r.expect("instance meta parses"))
        .collect()
}

/// What `maskstream detect --backend cpu --threads 2` writes for the image (default threshold 0.5).
fn detect_record(img: &image::RgbImage) -> FrameRecord {
    let mut model = common::cpu_model();
    let frame = RgbFrame::from_image(img).unwrap();
    let mut r = model.detect(&frame).unwrap();
    r.detections.retain(|d| d.score >= 0.5);
    FrameRecord::new(
        "image",
        frame.width,
        frame.height,
        &r.detections,
        model.classes(),
    )
}

fn maskrcnn_harness() -> Harness {
    common::init();
    let mut h = Harness::new_parse(&common::maskrcnn_desc());
    h.play();
    h
}

#[test]
fn maskrcnn_metas_match_detect() {
    // 517 wide: RGB rows are padded to 1552 bytes, so the element must honour the stride
    for name in ["landscape_640x360", "odd_517x333"] {
        let img = common::fixture_image(name);
        let expected = detect_record(&img);
        assert!(
            !expected.instances.is_empty(),
            "{name}: fixture has instances"
        );
        let mut h = maskrcnn_harness();
        let (caps, buf) = common::video_buffer(&img, gst_video::VideoFormat::Rgb);
        let before = common::rgb_pixels(&buf, &caps);
        h.set_src_caps(caps.clone());
        h.push(buf).unwrap();
        let out = h.pull().unwrap();
        assert_eq!(
            common::rgb_pixels(&out, &caps),
            before,
            "{name}: pixels unchanged"
        );
        let got = instances(&out);
        assert_eq!(
            got.len(),
            expected.instances.len(),
            "{name}: instance count"
        );
        let mut rois: Vec<_> = out
            .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
            .map(|m| (m.id(), m.roi_type().to_string(), m.rect()))
            .collect();
        rois.sort_by_key(|r| r.0);
        let rois: Vec<_> = rois.into_iter().map(|(_, t, r)| (t, r)).collect();
        for (i, (g, e)) in got.iter().zip(&expected.instances).enumerate() {
            assert_eq!(g.label, e.label, "{name} #{i}: label");
            assert_eq!(rois[i].0, e.label, "{name} #{i}: roi type");
            assert_eq!(g.detection.class_id, e.class_id, "{name} #{i}: class");
            assert_eq!(g.detection.score, e.score, "{name} #{i}: score");
            assert_eq!(g.detection.bbox, e.bbox, "{name} #{i}: box");
            assert_eq!(
                rois[i].1,
                meta::roi_rect(&e.bbox, img.width() as usize, img.height() as usize),
                "{name} #{i}: roi rect"
            );
            assert_eq!(g.track_id, None, "{name} #{i}: untracked");
            let counts =
                maskstream::rle::to_string(&maskstream::rle::encode_mask(&g.detection.mask));
            assert_eq!(counts, e.mask.counts, "{name} #{i}: RLE");
            assert_eq!(
                [g.detection.mask.frame_height, g.detection.mask.frame_width],
                e.mask.size,
                "{name} #{i}: RLE size"
            );
        }
        // the latency query adds the inference time to upstream's (zero here)
        let latency = h.query_latency().expect("latency answered");
        assert!(latency > gst::ClockTime::ZERO, "{name}: latency {latency}");
    }
}

#[test]
fn maskrcnn_converts_other_formats() {
    let img = common::fixture_image("landscape_640x360");
    let expected = detect_record(&img);
    // BGRx through the element's converter: the same pixels, so the same instances exactly
    let mut h = maskrcnn_harness();
    let (caps, buf) = common::video_buffer(&img, gst_video::VideoFormat::Bgrx);
    h.set_src_caps(caps);
    h.push(buf).unwrap();
    let got = instances(&h.pull().unwrap());
    assert_eq!(got.len(), expected.instances.len());
    for (g, e) in got.iter().zip(&expected.instances) {
        assert_eq!(
            (g.detection.class_id, g.detection.bbox),
            (e.class_id, e.bbox)
        );
    }
    // I420 and NV12 (chroma subsampled, then back to RGB inside): every confident instance still found
    common::init();
    for format in ["I420", "NV12"] {
        let mut h = Harness::new_parse(&format!(
            "videoconvert ! video/x-raw,format={format} ! {}",
            common::maskrcnn_desc()
        ));
        h.play();
        let (caps, buf) = common::video_buffer(&img, gst_video::VideoFormat::Rgb);
        h.set_src_caps(caps);
        h.push(buf).unwrap();
        let out = h.pull().unwrap();
        let got = instances(&out);
        for e in expected.instances.iter().filter(|e| e.score >= 0.8) {
            let best = got
                .iter()
                .filter(|g| g.label == e.label)
                .map(|g| maskstream::model::boxes::iou(&g.detection.bbox, &e.bbox))
                .fold(0.0f32, f32::max);
            assert!(
                best >= 0.8,
                "{} {:?}: best IoU in {format} {best}",
                e.label,
                e.bbox
            );
        }
    }
}

#[test]
fn maskoverlay_changes_pixels_inside_masks_only() {
    let img = common::fixture_image("landscape_640x360");
    for format in [gst_video::VideoFormat::Rgb, gst_video::VideoFormat::Bgrx] {
        common::init();
        let mut h = Harness::new_parse(&format!(
            "{} ! maskoverlay boxes=false labels=false",
            common::maskrcnn_desc()
        ));
        h.play();
        let (caps, buf) = common::video_buffer(&img, format);
        h.set_src_caps(caps.clone());
        h.push(buf).unwrap();
        let out = h.pull().unwrap();
        let got = instances(&out);
        assert!(!got.is_empty());
        let (w, hgt) = (img.width() as usize, img.height() as usize);
        let mut inside = vec![false; w * hgt];
        for i in &got {
            for (k, &b) in i.detection.mask.to_full().iter().enumerate() {
                inside[k] |= b != 0;
            }
        }
        let info = gst_video::VideoInfo::from_caps(&caps).unwrap();
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(&out, &info).unwrap();
        let stride = frame.plane_stride()[0] as usize;
        let bpp = if format == gst_video::VideoFormat::Rgb {
            3
        } else {
            4
        };
        let order = if format == gst_video::VideoFormat::Rgb {
            [0, 1, 2]
        } else {
            [2, 1, 0]
        };
        let data = frame.plane_data(0).unwrap();
        let (mut changed_inside, mut changed_outside) = (0usize, 0usize);
        for y in 0..hgt {
            for x in 0..w {
                let p = img.get_pixel(x as u32, y as u32).0;
                let o = y * stride + x * bpp;
                let q = [data[o + order[0]], data[o + order[1]], data[o + order[2]]];
                if p != q {
                    if inside[y * w + x] {
                        changed_inside += 1;
                    } else {
                        changed_outside += 1;
                    }
                }
            }
        }
        let mask_px = inside.iter().filter(|&&b| b).count();
        assert_eq!(
            changed_outside, 0,
            "{format:?}: pixels changed outside the masks"
        );
        assert!(
            changed_inside * 10 >= mask_px * 9,
            "{format:?}: only {changed_inside} of {mask_px} mask pixels changed"
        );
    }
}

/// A square instance at (x, y), side 20.
fn square(x: usize, y: usize, class_id: usize, score: f32) -> Detection {
    Detection {
        class_id,
        score,
        bbox: [x as f32, y as f32, (x + 20) as f32, (y + 20) as f32],
        mask: InstanceMask {
            frame_height: 120,
            frame_width: 160,
            x0: x,
            y0: y,
            width: 20,
            height: 20,
            data: vec![1; 400],
        },
    }
}

#[test]
fn masktracker_keeps_ids_across_frames() {
    common::init();
    let mut h = Harness::new("masktracker");
    h.play();
    h.set_src_caps_str("video/x-raw,format=RGB,width=160,height=120,framerate=30/1");
    let mut ids: Vec<Vec<(String, u64)>> = Vec::new();
    for k in 0..6usize {
        let mut buf = gst::Buffer::with_size(160 * 120 * 3).unwrap();
        {
            let b = buf.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(33 * k as u64));
            meta::attach(b, &square(10 + 2 * k, 10, 1, 0.9), "circle", None);
            meta::attach(b, &square(100 - 2 * k, 70, 2, 0.95), "rectangle", None);
            // below the tracker's score threshold: dropped
            meta::attach(b, &square(60, 40, 3, 0.2), "triangle", None);
        }
        h.push(buf).unwrap();
        let out = h.pull().unwrap();
        let got = instances(&out);
        ids.push(
            got.iter()
                .map(|i| (i.label.clone(), i.track_id.expect("tracked")))
                .collect(),
        );
        assert_eq!(
            out.iter_meta::<gst_video::VideoRegionOfInterestMeta>()
                .count(),
            got.len(),
            "no stale metas"
        );
    }
    let first = &ids[0];
    assert_eq!(first.len(), 2, "{ids:?}");
    assert_ne!(first[0].1, first[1].1);
    for f in &ids {
        let mut f = f.clone();
        f.sort();
        let mut e = first.clone();
        e.sort();
        assert_eq!(f, e, "ids stay with their objects: {ids:?}");
    }
}

#[test]
fn engine_load_error_is_an_element_error() {
    common::init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=1 ! maskrcnn engine=/nonexistent/engine backend=cpu ! fakesink",
    )
    .unwrap();
    let _ = pipeline.set_state(gst::State::Playing);
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Error, gst::MessageType::Eos],
        )
        .expect("a message");
    let text = match msg.view() {
        gst::MessageView::Error(e) => format!("{}", e.error()),
        other => panic!("expected an error, got {other:?}"),
    };
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        text.contains("Could not load engine /nonexistent/engine"),
        "message: {text}"
    );
}

#[test]
fn maskjsonsink_writes_detects_json() {
    let img = common::fixture_image("odd_517x333");
    let expected = detect_record(&img).with_frame(0, Some(0));
    common::init();
    let dir = std::env::temp_dir().join(format!("maskstream-jsonsink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.jsonl");
    let mut h = Harness::new_parse(&format!(
        "{} ! maskjsonsink source=image location={}",
        common::maskrcnn_desc(),
        path.display()
    ));
    h.play();
    let (caps, buf) = common::video_buffer(&img, gst_video::VideoFormat::Rgb);
    h.set_src_caps(caps);
    h.push(buf).unwrap();
    assert!(h.push_event(gst::event::Eos::new()));
    // the line is flushed as it is written
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let got: FrameRecord = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(got, expected);
    drop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn maskrcnn_batches_late_buffers_and_drains_at_eos() {
    let img = common::fixture_image("landscape_640x360");
    let expected = detect_record(&img);
    common::init();
    let mut h = Harness::new_parse(&format!("{} max-batch=3", common::maskrcnn_desc()));
    h.play();
    let buffer = |k: u64| {
        let (caps, mut buf) = common::video_buffer(&img, gst_video::VideoFormat::Rgb);
        buf.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(33 * k));
        (caps, buf)
    };
    let (caps, first) = buffer(0);
    h.set_src_caps(caps);
    // the (test) clock stands at 100 s: every buffer is late, so they wait to be inferred together
    h.set_time(gst::ClockTime::from_seconds(100)).unwrap();
    h.push(first).unwrap();
    assert!(h.try_pull().is_none(), "first buffer held for the batch");
    h.push(buffer(1).1).unwrap();
    assert!(h.try_pull().is_none(), "second buffer held for the batch");
    h.push(buffer(2).1).unwrap();
    let check = |buf: &gst::BufferRef, k: u64| {
        assert_eq!(buf.pts(), Some(gst::ClockTime::from_mseconds(33 * k)));
        let got = instances(buf);
        assert_eq!(got.len(), expected.instances.len(), "frame {k}");
        for (g, e) in got.iter().zip(&expected.instances) {
            assert_eq!(g.label, e.label, "frame {k}");
            let iou = maskstream::model::boxes::iou(&g.detection.bbox, &e.bbox);
            assert!(iou > 0.99, "frame {k}: box IoU {iou} against detect");
        }
    };
    for k in 0..3 {
        check(&h.try_pull().expect("batch of three out"), k);
    }
    // a held buffer goes out before EOS
    h.push(buffer(3).1).unwrap();
    assert!(h.try_pull().is_none());
    assert!(h.push_event(gst::event::Eos::new()));
    check(&h.try_pull().expect("drained at EOS"), 3);
    let bin = h.element().unwrap().downcast::<gst::Bin>().unwrap();
    let maskrcnn = bin
        .iterate_elements()
        .into_iter()
        .flatten()
        .find(|e| e.factory().is_some_and(|f| f.name() == "maskrcnn"))
        .unwrap();
    let frames: u64 = maskrcnn.property("frames");
    assert_eq!(frames, 4);
}
