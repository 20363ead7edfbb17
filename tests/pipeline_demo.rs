//! The demo end to end through the binary: the output MP4 decodes with the input's frame count, size and
//! duration; the JSON Lines have one line per frame with increasing pts; mask AP50 against the ground
//! truth, computed in Rust.

mod common;

use common::Bounded;

use maskstream::eval::{self, GroundTruth};

#[test]
fn demo_pipeline_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("demo.mp4");
    let jsonl = dir.path().join("demo.jsonl");
    let root = common::root();
    let out = common::maskstream()
        .args(["run", "pipelines/demo.toml", "--output"])
        .arg(&video)
        .arg("--json")
        .arg(&jsonl)
        .args(["--backend", "cpu", "--score-threshold", "0.05"])
        .bounded();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "maskstream run failed: {stderr}");
    println!("{stderr}");

    let input = common::gst_util::decode_file(&root.join("assets/shapes-demo.mp4"), false).unwrap();
    let output = common::gst_util::decode_file(&video, false).unwrap();
    assert_eq!(output.frames.len(), input.frames.len(), "frame count");
    assert_eq!(
        (output.width, output.height),
        (input.width, input.height),
        "frame size"
    );
    assert_eq!(output.last_pts, input.last_pts, "duration (last timestamp)");

    let records = eval::read_jsonl(&jsonl).unwrap();
    assert_eq!(records.len(), input.frames.len(), "one JSON line per frame");
    let pts: Vec<u64> = records.iter().map(|r| r.pts_ns.unwrap()).collect();
    assert!(pts.windows(2).all(|w| w[1] > w[0]), "pts increase");
    assert!(records
        .iter()
        .enumerate()
        .all(|(i, r)| r.frame == Some(i as u64)));

    let gt = GroundTruth::load(&root.join("assets/shapes-demo.gt.json")).unwrap();
    let ap50 = eval::mask_ap(&gt, &records, 0.5).unwrap();
    let ap75 = eval::mask_ap(&gt, &records, 0.75).unwrap();
    println!(
        "demo: mask AP50 {ap50:.4}, AP75 {ap75:.4} over {} instances",
        gt.instances()
    );
    assert!(ap50 >= 0.90, "mask AP50 {ap50} < 0.90");
}

/// `[output] x264_preset` reaches the encoder: x264 writes its settings into the stream (an SEI
/// message, "options: ... subme=N ..."), and the presets differ in their sub-pixel search. Unset,
/// beside CPU inference, it is ultrafast.
#[test]
fn the_x264_preset_reaches_the_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine_dir();
    for (preset, subme) in [
        (None, "subme=0"),
        (Some("superfast"), "subme=1"),
        (Some("veryfast"), "subme=2"),
    ] {
        let name = preset.unwrap_or("default");
        let video = dir.path().join(format!("{name}.mp4"));
        let file = dir.path().join(format!("{name}.toml"));
        let set = preset.map_or(String::new(), |p| format!("x264_preset = \"{p}\"\n"));
        std::fs::write(
            &file,
            format!(
                "engine = {engine:?}\nbackend = \"cpu\"\nthreads = 2\n\n[[source]]\n\
                 uri = \"test://ball?width=160&height=120&fps=30&frames=12\"\nname = \"ball\"\n\n\
                 [output]\nvideo = {video:?}\n{set}"
            ),
        )
        .unwrap();
        let out = common::maskstream().arg("run").arg(&file).bounded();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        // the summary's steady state leaves out the 3 warm-up model calls of each inference worker
        // (a live test source may drop frames while the machine is busy: count from the summary's
        // own total)
        let count = |prefix: &str| -> Option<u64> {
            let line = stderr.lines().find(|l| l.starts_with(prefix))?;
            line[prefix.len()..].split_whitespace().next()?.parse().ok()
        };
        let total = stderr
            .lines()
            .find(|l| l.contains(" frames in ") && l.contains("backend"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok());
        let workers = stderr
            .lines()
            .filter(|l| l.contains(" inference worker"))
            .find_map(|l| {
                l.split(" inference worker")
                    .next()?
                    .rsplit(", ")
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0u64);
        assert!(workers >= 1, "no worker count in the summary: {stderr}");
        let steady = count("steady state (after the first model calls): ");
        assert_eq!(
            steady,
            total
                .and_then(|t| t.checked_sub(3 * workers))
                .filter(|&n| n > 0),
            "steady-state frames: {stderr}"
        );
        let bytes = std::fs::read(&video).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let options = text
            .split("options: ")
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: no x264 settings in the stream"));
        let options = options.split('\0').next().unwrap_or_default();
        assert!(
            options.split(' ').any(|o| o == subme),
            "{name}: expected {subme} in {options}"
        );
    }
}
