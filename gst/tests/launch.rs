//! gst-launch-1.0 end to end: the demo video through maskrcnn ! masktracker ! maskoverlay into an MP4
//! that gst-discoverer-1.0 reads back, with the instances drawn on it, and through a tee into
//! maskjsonsink's JSON Lines. The plugin is found through
//! GST_PLUGIN_PATH (the cdylib cargo built next to this test).

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn gst_launch_writes_an_annotated_mp4() {
    let root = common::root();
    let dir = std::env::temp_dir().join(format!("maskstream-gst-launch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("annotated.mp4");
    let json = dir.join("annotated.jsonl");
    let desc = format!(
        "filesrc location=assets/shapes-demo.mp4 ! decodebin ! videoconvert ! \
         maskrcnn engine=engines/shapes backend=cpu threads=2 ! masktracker ! tee name=t \
         t. ! queue ! maskoverlay ! videoconvert ! video/x-raw,format=I420 ! \
         x264enc speed-preset=ultrafast ! mp4mux ! filesink location={} \
         t. ! queue ! maskjsonsink location={}",
        out.display(),
        json.display()
    );
    let run = common::output_within(
        Command::new("gst-launch-1.0")
            .args(desc.split_whitespace())
            .current_dir(&root)
            .env("GST_PLUGIN_PATH", common::plugin_dir()),
        Duration::from_secs(480),
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "gst-launch-1.0 failed: {}\n{stdout}\n{stderr}",
        run.status
    );
    assert!(stdout.contains("Got EOS"), "{stdout}");

    let disc = common::output_within(
        Command::new("gst-discoverer-1.0").arg(&out),
        Duration::from_secs(60),
    );
    let info = String::from_utf8_lossy(&disc.stdout);
    assert!(disc.status.success(), "{info}");
    assert!(
        info.contains("Duration: 0:00:09.9") || info.contains("Duration: 0:00:10.0"),
        "{info}"
    );
    assert!(
        info.contains("H.264") && info.contains("Width: 640") && info.contains("Height: 360"),
        "{info}"
    );

    // masks drawn: against the source, sampled at 2 frames/s, the annotated frames differ by far
    // more than the encoder's noise
    let (orig, w, h) = common::decode_sampled(&root.join("assets/shapes-demo.mp4"), 2);
    let (ann, w2, h2) = common::decode_sampled(&out, 2);
    assert_eq!((w, h), (w2, h2));
    assert_eq!(orig.len(), ann.len());
    let changed: Vec<f64> = orig
        .iter()
        .zip(&ann)
        .map(|(a, b)| {
            let n = a
                .chunks_exact(3)
                .zip(b.chunks_exact(3))
                .filter(|(p, q)| p.iter().zip(q.iter()).any(|(x, y)| x.abs_diff(*y) > 48))
                .count();
            n as f64 / (w * h) as f64
        })
        .collect();
    let drawn = changed.iter().filter(|&&c| c > 0.01).count();
    assert!(
        drawn * 2 >= changed.len(),
        "share of pixels changed per sampled frame: {changed:?}"
    );

    // the JSON Lines branch: a line per frame, tracked instances
    let text = std::fs::read_to_string(&json).unwrap();
    let records: Vec<maskstream::output::FrameRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(records.len(), 300);
    assert!(records.windows(2).all(|w| w[0].pts_ns < w[1].pts_ns));
    let tracked = records.iter().flat_map(|r| &r.instances).count();
    assert!(tracked >= 100, "{tracked} instances in 300 frames");
    assert!(records
        .iter()
        .flat_map(|r| &r.instances)
        .all(|i| i.track_id.is_some() && i.score >= 0.5));
    let _ = std::fs::remove_dir_all(&dir);
}
