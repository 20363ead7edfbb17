//! Two sources in one run, batched together (the run reports model calls of 2 frames), give the same
//! JSON Lines as each run alone.

mod common;

use maskstream::output::FrameRecord;
use maskstream::pipeline::config::PipelineConfig;
use maskstream::pipeline::{self, RunContext};

fn config(names: &[&str], out: &std::path::Path, batch: usize) -> PipelineConfig {
    let mut cfg = common::demo_sources(names, out, 40);
    cfg.inference.max_batch = Some(batch);
    cfg
}

fn same(a: &[FrameRecord], b: &[FrameRecord]) {
    common::same_records(a, b, "batched against alone");
}

#[test]
fn two_sources_match_single_runs() {
    let dir = tempfile::tempdir().unwrap();
    let both = pipeline::run(&config(&["a", "b"], dir.path(), 2), RunContext::default()).unwrap();
    assert_eq!(both.frames, 80);
    // frames of both streams went through the model together, not one after the other
    let calls = both.stages.batch_calls();
    let mixed = both.stages.cross_source_calls();
    println!(
        "two sources, max_batch 2: model calls by batch size {calls:?}, {mixed} across sources"
    );
    assert!(
        mixed > 0,
        "no model call batched frames of both sources: {calls:?}"
    );
    let alone_dir = dir.path().join("alone");
    let alone = pipeline::run(&config(&["a"], &alone_dir, 1), RunContext::default()).unwrap();
    assert_eq!(alone.frames, 40);
    let read = |p: std::path::PathBuf| maskstream::eval::read_jsonl(&p).unwrap();
    let single = read(alone_dir.join("a.jsonl"));
    let a = read(dir.path().join("a.jsonl"));
    let b = read(dir.path().join("b.jsonl"));
    same(&single, &a);
    same(&single, &b);
    assert!(a.iter().all(|r| r.source == "a") && b.iter().all(|r| r.source == "b"));
}

/// `bench --streams`: one row per N and batching mode, the cross-stream mode batching more than one
/// frame per call on average when the streams outrun inference.
#[test]
fn bench_streams_reports_each_count_with_and_without_batching() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = common::maskstream()
        .args([
            "bench",
            "--backend",
            "cpu",
            "--threads",
            "2",
            "--model-only",
            "--frames",
            "2",
            "--streams",
            "1,2",
            "--stream-secs",
            "3",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = common::json(&json);
    let rows = report["streams"].as_array().unwrap();
    let modes: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["streams"].as_u64().unwrap(),
                r["max_batch"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(modes, [(1, 1), (2, 2), (2, 1)]);
    for r in rows {
        assert!(r["frames"].as_u64().unwrap() > 0, "{r}");
        assert!(r["latency_p99_ms"].as_f64().unwrap() >= r["latency_p50_ms"].as_f64().unwrap());
    }
    assert_eq!(
        rows[2]["mean_batch"].as_f64().unwrap(),
        1.0,
        "no batching when off"
    );
    let bad = common::maskstream()
        .args(["bench", "--streams", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--streams: 0"));
}
