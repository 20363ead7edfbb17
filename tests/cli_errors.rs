//! Bad input through the binary: clear messages naming what and where, non-zero exit, no panic.

mod common;

use common::Bounded;

use std::path::Path;
use std::process::Output;

fn maskstream(args: &[&str]) -> Output {
    common::maskstream().args(args).bounded()
}

fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert_ne!(out.status.code(), Some(101), "panicked: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// A copy of the bundled engine that a test may break.
fn engine_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(common::engine_dir()).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn edit_manifest(dir: &Path, from: &str, to: &str) {
    let p = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{from}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

fn image() -> String {
    common::fixtures()
        .join("detect/landscape_640x360/image.png")
        .display()
        .to_string()
}

#[test]
fn detect_writes_parseable_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.jsonl");
    let out = maskstream(&[
        "detect",
        &image(),
        "--backend",
        "cpu",
        "--score-threshold",
        "0.05",
        "--json",
        json.to_str().unwrap(),
        "--out-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = maskstream::eval::read_jsonl(&json).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].width, records[0].height), (640, 360));
    for i in &records[0].instances {
        assert_eq!(i.mask.size, [360, 640]);
        assert!(i.mask.decode().is_ok());
    }
    assert!(
        dir.path().join("image.png.annotated.png").is_file(),
        "annotated PNG"
    );
}

#[test]
fn unreadable_image() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let out = maskstream(&["detect", bad.to_str().unwrap(), "--backend", "cpu"]);
    fails_with(&out, &["broken.png", "cannot decode image"]);
    let out = maskstream(&["detect", "/nonexistent/x.png", "--backend", "cpu"]);
    fails_with(&out, &["/nonexistent/x.png"]);
}

#[test]
fn bad_manifest_names_field_and_file() {
    let e = engine_copy();
    // the transform's min_size (an integer; the RPN's is a float), whatever the bundled engine's is
    let text = std::fs::read_to_string(e.path().join("manifest.toml")).unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.strip_prefix("min_size = ")
                .is_some_and(|v| v.parse::<u32>().is_ok())
        })
        .unwrap();
    edit_manifest(e.path(), line, "min_size = 0");
    let out = maskstream(&["detect", &image(), "--engine", e.path().to_str().unwrap()]);
    fails_with(&out, &["manifest.toml", "min_size"]);
    let e = engine_copy();
    edit_manifest(e.path(), "[mask]", "[mask]\nbogus = 1");
    let out = maskstream(&["inspect", e.path().to_str().unwrap()]);
    fails_with(&out, &["manifest.toml", "bogus"]);
}

#[test]
fn missing_or_corrupt_graph() {
    let e = engine_copy();
    std::fs::remove_file(e.path().join("mask_head.onnx")).unwrap();
    let out = maskstream(&["detect", &image(), "--engine", e.path().to_str().unwrap()]);
    fails_with(&out, &["mask_head.onnx"]);
    let e = engine_copy();
    let p = e.path().join("box_head.onnx");
    let mut bytes = std::fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
    let out = maskstream(&["detect", &image(), "--engine", e.path().to_str().unwrap()]);
    fails_with(&out, &["box_head.onnx", "sha256"]);
}

fn detect_on_cpu(engine: &Path, precision: &str) -> Output {
    maskstream(&[
        "detect",
        &image(),
        "--backend",
        "cpu",
        "--precision",
        precision,
        "--engine",
        engine.to_str().unwrap(),
    ])
}

#[test]
fn wrong_tensor_names_and_shapes() {
    // the FP32 and the INT8 graphs are held to the same contract, each named in the message
    for (precision, suffix) in [("fp32", ".onnx"), ("int8", ".int8.onnx")] {
        let e = engine_copy();
        edit_manifest(e.path(), "input = \"box_features\"", "input = \"rois\"");
        let out = detect_on_cpu(e.path(), precision);
        let file = format!("box_head{suffix}");
        fails_with(&out, &[&file, "no input named \"rois\""]);
        let e = engine_copy();
        // a width the graphs do not have, whatever the bundled engine's is
        let text = std::fs::read_to_string(e.path().join("manifest.toml")).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("fpn_channels = "))
            .unwrap()
            .to_string();
        let channels: u32 = line["fpn_channels = ".len()..].trim().parse().unwrap();
        edit_manifest(
            e.path(),
            &line,
            &format!("fpn_channels = {}", channels + 32),
        );
        let out = detect_on_cpu(e.path(), precision);
        let file = format!("backbone{suffix}");
        fails_with(&out, &[&file, "shape"]);
    }
}

#[test]
fn int8_needs_int8_graphs_and_checks_them() {
    // inspect shows both sets of graphs and what a CPU run picks
    let engine = common::engine_dir();
    let out = maskstream(&["inspect", engine.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "fp32 backbone.onnx",
        "int8 mask_head.int8.onnx",
        "CPU default int8",
    ] {
        assert!(text.contains(needle), "inspect lacks {needle:?}: {text}");
    }

    // an engine exported without quantize.py: --precision int8 is refused by name, auto runs FP32
    let e = engine_copy();
    let p = e.path().join("manifest.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let fp32_only = &text[..text
        .find("\n[precision]")
        .expect("bundled engine has INT8 graphs")];
    std::fs::write(&p, fp32_only).unwrap();
    let out = detect_on_cpu(e.path(), "int8");
    fails_with(&out, &["has no INT8 graphs", "--precision fp32"]);
    let out = detect_on_cpu(e.path(), "auto");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a damaged INT8 graph fails the sha256 check whatever the precision asked for
    let e = engine_copy();
    let p = e.path().join("mask_head.int8.onnx");
    let mut bytes = std::fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
    let out = detect_on_cpu(e.path(), "fp32");
    fails_with(&out, &["mask_head.int8.onnx", "sha256"]);

    // an INT8 backbone that takes its input quantized, without the manifest table that says how
    let e = engine_copy();
    let p = e.path().join("manifest.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let at = text
        .find("\n[precision.int8.input]")
        .expect("the bundled INT8 backbone takes its input quantized");
    let end = text[at + 1..]
        .find("\n[")
        .map_or(text.len(), |i| at + 1 + i);
    std::fs::write(&p, format!("{}{}", &text[..at], &text[end..])).unwrap();
    let out = detect_on_cpu(e.path(), "int8");
    fails_with(&out, &["backbone.int8.onnx", "[precision.int8.input]"]);
}

#[test]
fn run_reports_bad_sources_and_pipeline_files() {
    let out = maskstream(&[
        "run",
        "--input",
        "/nonexistent/video.mp4",
        "--json",
        "/tmp/x.jsonl",
    ]);
    fails_with(&out, &["/nonexistent/video.mp4"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, "[[source]]\nuri = \"a.mp4\"\n[queue]\ncapacity = 0\n").unwrap();
    let out = maskstream(&["run", cfg.to_str().unwrap()]);
    fails_with(&out, &["p.toml", "queue.capacity"]);
    // a video where the pipeline file goes: the message says how to pass it
    let out = maskstream(&["run", "assets/shapes-demo.mp4"]);
    fails_with(
        &out,
        &["not a pipeline file", "--input assets/shapes-demo.mp4"],
    );
}

/// Zones and lines that could never count anything are refused before any output is written: a
/// class the engine does not have, a source the file does not name, a polygon with no area or
/// crossing itself, a point with three numbers.
#[test]
fn zones_and_lines_that_cannot_match_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine_dir().display().to_string();
    let demo = common::root()
        .join("assets/shapes-demo.mp4")
        .display()
        .to_string();
    let json = dir.path().join("out.jsonl");
    let head = format!(
        "engine = \"{engine}\"\nbackend = \"cpu\"\n[[source]]\nuri = \"{demo}\"\nname = \"cam1\"\n\
         max_frames = 3\n[output]\njsonl = \"{}\"\n",
        json.display()
    );
    let zone = |body: &str| format!("{head}[[zone]]\nname = \"z\"\n{body}\n");
    for (text, needles) in [
        (
            zone("polygon = [[0, 0], [100, 0], [100, 100]]\nclasses = [\"circel\"]"),
            vec![
                "zone \"z\".classes",
                "\"circel\" is not a class of the engine",
            ],
        ),
        (
            zone("polygon = [[0, 0], [100, 0], [100, 100]]\nsource = \"cam9\""),
            vec![
                "zone \"z\".source",
                "no source is named \"cam9\" (sources: cam1)",
            ],
        ),
        (
            zone("polygon = [[0, 0], [50, 50], [100, 100]]"),
            vec!["encloses no area"],
        ),
        (
            zone("polygon = [[0, 0], [100, 100], [100, 0], [0, 100]]"),
            vec!["crosses itself"],
        ),
        (
            format!("{head}[[line]]\nname = \"l\"\nfrom = [50, 50, 3]\nto = [0, 0]\n"),
            vec!["not 3 numbers"],
        ),
    ] {
        let file = dir.path().join("p.toml");
        std::fs::write(&file, &text).unwrap();
        let out = maskstream(&["run", file.to_str().unwrap()]);
        fails_with(&out, &needles);
        assert!(!json.exists(), "nothing written for {text}");
    }
}

/// Logs and errors written to a file or a pipe are plain text (no terminal colour codes), and an
/// output that cannot be created says so, not "cannot read".
#[test]
fn piped_logs_are_plain_and_write_errors_say_write() {
    let demo = common::root().join("assets/shapes-demo.mp4");
    let out = maskstream(&[
        "run",
        "--backend",
        "cpu",
        "--input",
        demo.to_str().unwrap(),
        "--json",
        "/proc/maskstream-test/out.jsonl",
    ]);
    fails_with(&out, &["/proc/maskstream-test", "cannot create the folder"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(" INFO "), "logs are there: {err}");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
}

#[test]
fn two_inputs_with_one_name_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let demo = common::root().join("assets/shapes-demo.mp4");
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::fs::copy(&demo, dir.path().join(sub).join("cam.mp4")).unwrap();
    }
    let input = |sub: &str| dir.path().join(sub).join("cam.mp4").display().to_string();
    let json = dir.path().join("{name}.jsonl").display().to_string();
    let out = maskstream(&[
        "run",
        "--input",
        &input("a"),
        "--input",
        &input("b"),
        "--json",
        &json,
    ]);
    fails_with(&out, &["two sources are named \"cam\"", "[[source]] name"]);
}
