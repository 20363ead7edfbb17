//! The plugin from Python (GObject introspection, Debian's python3-gi for /usr/bin/python3, not a
//! pyenv `python3`): tests/python/read_metas.py reads the instance metas after maskrcnn ! masktracker.

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn python_gi_reads_the_instance_metas() {
    let root = common::root();
    let out = common::output_within(
        Command::new("/usr/bin/python3")
            .arg(root.join("gst/tests/python/read_metas.py"))
            .args(["assets/shapes-demo.mp4", "engines/shapes", "20"])
            .current_dir(&root)
            .env("GST_PLUGIN_PATH", common::plugin_dir()),
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "read_metas.py failed ({}); python3-gi and the GStreamer typelibs come with \
         scripts/setup.sh\n{stderr}",
        out.status
    );
    let frames: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(frames.len(), 20, "{stdout}");
    let mut seen = 0;
    for f in &frames {
        for i in f["instances"].as_array().unwrap() {
            seen += 1;
            let label = i["label"].as_str().unwrap();
            assert!(["circle", "rectangle", "triangle"].contains(&label), "{i}");
            assert!(i["score"].as_f64().unwrap() >= 0.5, "{i}");
            assert!(i["track_id"].as_u64().unwrap() >= 1, "{i}");
            assert_eq!(i["mask"]["size"], serde_json::json!([360, 640]), "{i}");
            // the RLE decodes to a mask inside the meta's rectangle (the pasted mask may reach a
            // pixel or two past the box, as torchvision's does)
            let rle: maskstream::output::RleRecord =
                serde_json::from_value(i["mask"].clone()).unwrap();
            let bits = rle.decode().unwrap();
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| i[k].as_u64().unwrap() as usize);
            let (mut inside, mut all) = (0usize, 0usize);
            for (k, _) in bits.iter().enumerate().filter(|(_, &b)| b != 0) {
                let (px, py) = (k % 640, k / 640);
                all += 1;
                if px + 2 >= x && px < x + w + 2 && py + 2 >= y && py < y + h + 2 {
                    inside += 1;
                }
            }
            assert!(all > 0, "empty mask: {i}");
            assert!(
                inside * 100 >= all * 99,
                "{inside} of {all} mask pixels in the rectangle: {i}"
            );
        }
    }
    assert!(seen >= 10, "{seen} instances in 20 frames: {stdout}");
}
