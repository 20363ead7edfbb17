//! Fuzzing the two files a user hands maskstream: the engine manifest and the pipeline file. Random and
//! mutated text never panics the parsers; every error names something (the file, a key, a section or a
//! line); what is accepted is within the documented limits. (Broken engine graphs, tensor names and
//! checksums are covered by cli_errors.rs.)

mod common;

use std::path::{Path, PathBuf};

use maskstream::engine::Manifest;
use maskstream::pipeline::config::{redact_uri, PipelineConfig, SourceKind};
use maskstream::pipeline::rtsp::{Credentials, ServeAddress};
use proptest::prelude::*;

fn manifest_text() -> String {
    std::fs::read_to_string(common::engine_dir().join("manifest.toml")).unwrap()
}

/// A pipeline file that sets every key there is.
const PIPELINE: &str = r#"engine = "engines/shapes"
backend = "cpu"
threads = 2

[[source]]
uri = "assets/shapes-demo.mp4"
name = "demo"
max_frames = 100

[[source]]
uri = "test://ball?width=320&height=240&fps=30&frames=10"
name = "ball"

[inference]
score_threshold = 0.5
max_batch = 4
max_wait_ms = 5

[queue]
capacity = 8

[overlay]
alpha = 0.45
outline = true
boxes = true
labels = true
colors = [[255, 0, 0], [0, 255, 0]]
line_width = 2
font_size = 14.0

[output]
video = "out/{name}.mp4"
jsonl = "out/{name}.jsonl"
rtsp = "rtsp://127.0.0.1:0/{name}"
rtsp_credentials_env = "MASKSTREAM_RTSP_CREDENTIALS"
preview = false
bitrate_kbps = 2000
x264_preset = "veryfast"

[rtsp_input]
latency_ms = 200
tcp = false
reconnect_attempts = 5
reconnect_interval_ms = 1000
stall_timeout_ms = 10000
"#;

/// Keys and section names of a TOML text: what an error message may name.
fn identifiers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(section) = l.strip_prefix('[') {
            for part in section.trim_matches(|c| c == '[' || c == ']').split('.') {
                out.push(part.trim().to_string());
            }
        } else if let Some((key, _)) = l.split_once('=') {
            out.push(key.trim().to_string());
        }
    }
    out.retain(|s| !s.is_empty() && !s.starts_with('#'));
    out.sort();
    out.dedup();
    out
}

/// An error message names something a user can find: a key or section, a line, or (for the
/// manifest) the file.
fn names_something(msg: &str, known: &[String]) -> bool {
    let lower = msg.to_ascii_lowercase();
    lower.contains("line ")
        || lower.contains("missing field")
        || lower.contains("unknown field")
        || known.iter().any(|k| msg.contains(k.as_str()))
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    /// Replaces the value after `=` (or the whole line when it has none).
    ReplaceValue(usize, String),
    /// Replaces one number inside a line (in arrays too).
    ReplaceNumber(usize, usize, String),
    InsertLine(usize, String),
    /// Cuts the text at a byte position (rounded down to a character boundary).
    Truncate(usize),
}

fn weird_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "-1",
            "0",
            "-0.0",
            "1",
            "65",
            "1025",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551616",
            "4294967296",
            "1e309",
            "-1e309",
            "1e-320",
            "nan",
            "+nan",
            "-nan",
            "inf",
            "-inf",
            "\"NaN\"",
            "\"inf\"",
            "\"-1\"",
            "\"\"",
            "\"../../../etc/passwd\"",
            "\"/abs/path.onnx\"",
            "true",
            "false",
            "[]",
            "[[]]",
            "[1, \"a\"]",
            "{}",
            "{ x = 1 }",
            "1979-05-27T07:32:00Z",
            "'single'",
            "\"\"\"multi\nline\"\"\"",
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        any::<f32>().prop_map(|v| format!("{v:e}")),
        "[ -~]{0,24}".prop_map(|s| format!("{s:?}")),
        (any::<i32>(), any::<i32>()).prop_map(|(a, b)| format!("[{a}, {b}]")),
    ]
}

/// Numbers of every kind: what keeps the syntax valid and reaches the checks behind it.
fn weird_number() -> impl Strategy<Value = String> {
    prop_oneof![
        (-5i64..300).prop_map(|v| v.to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        (-2.0f64..2.0).prop_map(|v| format!("{v:?}")),
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| format!("{v:?}")),
        prop::sample::select(vec![
            "nan", "-nan", "inf", "-inf", "0", "-0.0", "1e-320", "1e300"
        ])
        .prop_map(str::to_string),
    ]
}

/// Mostly changes that keep the TOML syntax valid (deleted keys, other numbers, other types), so
/// that the checks behind the parser are reached; some that break the syntax.
fn mutation(lines: usize, bytes: usize) -> impl Strategy<Value = Mutation> {
    let line = 0..lines.max(1);
    prop_oneof![
        3 => line.clone().prop_map(Mutation::DeleteLine),
        1 => line.clone().prop_map(Mutation::DuplicateLine),
        1 => (line.clone(), line.clone()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        4 => (line.clone(), weird_value()).prop_map(|(l, v)| Mutation::ReplaceValue(l, v)),
        8 => (line.clone(), 0..8usize, weird_number())
            .prop_map(|(l, k, v)| Mutation::ReplaceNumber(l, k, v)),
        1 => (
            line,
            prop_oneof![
                "[a-z_]{1,12} = [ -~]{0,12}",
                "\\[[a-z_.]{1,12}\\]",
                "\\[\\[[a-z_]{1,8}\\]\\]",
                "[ -~]{0,30}",
            ]
        )
            .prop_map(|(l, s)| Mutation::InsertLine(l, s)),
        1 => (0..bytes.max(1)).prop_map(Mutation::Truncate),
    ]
}

/// Byte ranges of the numbers in a line (digits with sign, point and exponent).
fn numbers(line: &str) -> Vec<(usize, usize)> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let mut start = i;
            if start > 0 && (b[start - 1] == b'-' || b[start - 1] == b'+') {
                start -= 1;
            }
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b"._+-".contains(&b[i])) {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

fn apply(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut tail: Option<usize> = None;
    for m in mutations {
        let n = lines.len();
        if n == 0 {
            break;
        }
        match m {
            Mutation::DeleteLine(i) => {
                lines.remove(i % n);
            }
            Mutation::DuplicateLine(i) => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
            Mutation::ReplaceValue(i, v) => {
                let l = &mut lines[i % n];
                *l = match l.split_once('=') {
                    Some((k, _)) => format!("{k}= {v}"),
                    None => v.clone(),
                };
            }
            Mutation::ReplaceNumber(i, k, v) => {
                let l = &mut lines[i % n];
                let spans = numbers(l);
                if !spans.is_empty() {
                    let (s, e) = spans[k % spans.len()];
                    l.replace_range(s..e, v);
                }
            }
            Mutation::InsertLine(i, s) => lines.insert(i % (n + 1), s.clone()),
            Mutation::Truncate(at) => tail = Some(*at),
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    if let Some(at) = tail {
        let mut at = at % (out.len() + 1);
        while !out.is_char_boundary(at) {
            at -= 1;
        }
        out.truncate(at);
    }
    out
}

fn check_manifest(text: &str, path: &Path, known: &[String]) -> Result<(), TestCaseError> {
    match Manifest::parse(text, path) {
        Ok(m) => {
            // what is accepted is usable: the checks model loading relies on hold
            prop_assert!(m.num_classes() >= 2);
            prop_assert!(!m.model.levels.is_empty());
            prop_assert_eq!(m.mask.resolution, 2 * m.mask_roi_pool.output_size);
            prop_assert!(m.transform.min_size > 0 && m.transform.max_size >= m.transform.min_size);
            for l in &m.box_roi_pool.levels {
                prop_assert!(m.level_index(l).is_some());
            }
        }
        Err(e) => {
            let msg = e.to_string();
            let shown = path.display().to_string();
            prop_assert!(
                msg.starts_with(&shown),
                "error does not name the file: {}",
                msg
            );
            let rest = msg[shown.len()..].trim_start_matches(':').trim();
            prop_assert!(!rest.is_empty(), "empty reason: {}", msg);
            prop_assert!(
                names_something(rest, known),
                "error names no key, section or line: {}",
                msg
            );
        }
    }
    Ok(())
}

fn check_pipeline(text: &str, known: &[String]) -> Result<(), TestCaseError> {
    match PipelineConfig::parse(text) {
        Ok(c) => {
            // what is accepted is within the documented limits, and usable
            prop_assert!(!c.sources.is_empty());
            prop_assert!((0.0..=1.0).contains(&c.inference.score_threshold));
            prop_assert!(c.inference.max_batch.is_none_or(|n| (1..=64).contains(&n)));
            prop_assert!(c.queue.capacity.is_none_or(|n| (1..=1024).contains(&n)));
            prop_assert!((0.0..=1.0).contains(&c.overlay.alpha));
            prop_assert!(c.rtsp_input.reconnect_interval_ms <= 600_000);
            prop_assert!(c.rtsp_input.stall_timeout_ms <= 3_600_000);
            for s in &c.sources {
                let kind = s.kind();
                prop_assert!(kind.is_ok(), "accepted source {:?}: {:?}", s.uri, kind);
                let _ = s.resolved_name();
                if let Ok(k) = kind {
                    let _ = (k.is_live(), k.default_name());
                }
            }
            if let Some(url) = &c.output.rtsp {
                prop_assert!(ServeAddress::parse(url).is_ok());
            }
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(!msg.trim().is_empty());
            prop_assert!(
                names_something(&msg, known),
                "error names no key, section or line: {}",
                msg
            );
        }
    }
    Ok(())
}

fn manifest_path() -> PathBuf {
    PathBuf::from("engines/fuzzed/manifest.toml")
}

#[test]
fn the_bundled_manifest_and_the_full_pipeline_file_parse() {
    // the starting points of the mutations are valid, so mutations test what they change
    Manifest::parse(&manifest_text(), &manifest_path()).unwrap();
    let c = PipelineConfig::parse(PIPELINE).unwrap();
    assert_eq!(c.sources.len(), 2);
    assert_eq!(c.rtsp_input.stall_timeout_ms, 10_000);
}

proptest! {
    // parsing takes microseconds: many cases, so that enough mutants get past the TOML syntax
    #![proptest_config(ProptestConfig { cases: 3000, .. ProptestConfig::default() })]

    #[test]
    fn manifest_mutations(mutations in prop::collection::vec(mutation(110, 3000), 1..4)) {
        let base = manifest_text();
        let text = apply(&base, &mutations);
        check_manifest(&text, &manifest_path(), &identifiers(&base))?;
    }

    #[test]
    fn pipeline_mutations(mutations in prop::collection::vec(mutation(60, 1400), 1..4)) {
        let text = apply(PIPELINE, &mutations);
        check_pipeline(&text, &identifiers(PIPELINE))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn manifest_random_text(text in "(?s).{0,400}") {
        check_manifest(&text, &manifest_path(), &identifiers(&manifest_text()))?;
    }


    #[test]
    fn pipeline_random_text(text in "(?s).{0,400}") {
        check_pipeline(&text, &identifiers(PIPELINE))?;
    }


    /// Numbers of every size in the numeric keys: accepted exactly within the documented range,
    /// refused with the key's name otherwise.
    #[test]
    fn numeric_limits_are_exact(
        score in prop_oneof![any::<f32>(), -0.5f32..1.5],
        batch in prop_oneof![any::<i64>(), -2i64..70],
        capacity in prop_oneof![any::<i64>(), -2i64..1030],
        interval in prop_oneof![any::<i64>(), 0i64..700_000],
    ) {
        let score_toml = if score.is_nan() { "nan".to_string() } else if score.is_infinite() {
            if score > 0.0 { "inf".into() } else { "-inf".into() }
        } else {
            format!("{score:?}")
        };
        let text = format!(
            "[[source]]\nuri = \"a.mp4\"\n[inference]\nscore_threshold = {score_toml}\n\
             max_batch = {batch}\n[queue]\ncapacity = {capacity}\n\
             [rtsp_input]\nreconnect_interval_ms = {interval}\n"
        );
        let ok_score = (0.0..=1.0).contains(&score);
        let ok_batch = (1..=64).contains(&batch);
        let ok_capacity = (1..=1024).contains(&capacity);
        let ok_interval = (0..=600_000).contains(&interval);
        match PipelineConfig::parse(&text) {
            Ok(c) => {
                prop_assert!(ok_score && ok_batch && ok_capacity && ok_interval, "accepted {}", text);
                prop_assert_eq!(c.inference.max_batch.map(|n| n as i64), Some(batch));
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!(ok_score && ok_batch && ok_capacity && ok_interval), "{}", msg);
                let named = (!ok_score && msg.contains("score_threshold"))
                    || (!ok_batch && msg.contains("max_batch"))
                    || (!ok_capacity && msg.contains("capacity"))
                    || (!ok_interval && msg.contains("reconnect_interval_ms"));
                prop_assert!(named, "error does not name the bad key: {} for\n{}", msg, text);
            }
        }
    }

    /// The strings a pipeline file or a peer hands over: source URIs, serving addresses,
    /// credentials. Never a panic; credentials never show in a redacted URI.
    #[test]
    fn uris_addresses_and_credentials(
        scheme in prop::sample::select(vec!["test://", "rtsp://", "rtsps://", "v4l2://", "file://", "http://", ""]),
        rest in "[ -~]{0,60}",
        user in "[a-z]{1,8}",
        password in "[A-Za-z0-9]{6,12}",
    ) {
        let uri = format!("{scheme}{rest}");
        if let Ok(kind) = uri.parse::<SourceKind>() {
            let _ = (kind.is_live(), kind.default_name(), kind.describe());
        }
        let _ = ServeAddress::parse(&uri);
        let _ = Credentials::parse(&rest, "fuzz");
        let _ = redact_uri(&uri);
        let with_creds = format!("rtsp://{user}:{password}@127.0.0.1:554/{}", rest.replace(['/', '?', '#'], ""));
        let shown = redact_uri(&with_creds);
        prop_assert!(!shown.contains(&password), "{}", shown);
        if let Ok(kind) = with_creds.parse::<SourceKind>() {
            prop_assert!(!kind.describe().contains(&password));
        }
    }
}
