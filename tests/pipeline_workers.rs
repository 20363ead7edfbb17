//! Inference workers (`[inference] workers`): several frames in flight on copies of the model give
//! the same JSON Lines, in the same order, as one frame at a time; with several sources too, each
//! stream complete and ended after its last frame.

mod common;

use maskstream::output::FrameRecord;
use maskstream::pipeline::config::PipelineConfig;
use maskstream::pipeline::{self, RunContext};

fn config(names: &[&str], out: &std::path::Path, workers: usize, frames: u64) -> PipelineConfig {
    let mut cfg = common::demo_sources(names, out, frames);
    cfg.inference.workers = workers;
    cfg
}

fn read(p: std::path::PathBuf) -> Vec<FrameRecord> {
    maskstream::eval::read_jsonl(&p).unwrap()
}

/// Frame for frame the same instances: a worker's copy of the model computes what the single model
/// does (its thread count changes how ONNX Runtime splits the work, not the sums).
fn same(a: &[FrameRecord], b: &[FrameRecord], what: &str) {
    common::same_records(a, b, what);
}

#[test]
fn workers_keep_every_frame_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let one_dir = dir.path().join("one");
    let one = pipeline::run(&config(&["a"], &one_dir, 1, 45), RunContext::default()).unwrap();
    assert_eq!((one.frames, one.workers), (45, 1));
    let single = read(one_dir.join("a.jsonl"));
    assert_eq!(single.len(), 45);
    assert!(single.iter().any(|r| !r.instances.is_empty()));
    // three workers on two threads: batches finish out of turn, the output must not
    for workers in [2, 3] {
        let d = dir.path().join(format!("w{workers}"));
        let s = pipeline::run(&config(&["a"], &d, workers, 45), RunContext::default()).unwrap();
        assert_eq!((s.frames, s.workers), (45, workers));
        println!("{workers} workers: {s}");
        same(
            &single,
            &read(d.join("a.jsonl")),
            &format!("{workers} workers"),
        );
    }
}

#[test]
fn workers_serve_several_sources_to_their_ends() {
    let dir = tempfile::tempdir().unwrap();
    let alone_dir = dir.path().join("alone");
    pipeline::run(&config(&["a"], &alone_dir, 1, 30), RunContext::default()).unwrap();
    let single = read(alone_dir.join("a.jsonl"));
    let s = pipeline::run(
        &config(&["a", "b", "c"], dir.path(), 2, 30),
        RunContext::default(),
    )
    .unwrap();
    assert_eq!(s.frames, 90);
    for src in &s.sources {
        assert_eq!((src.frames, &src.error), (30, &None), "{}", src.name);
    }
    for name in ["a", "b", "c"] {
        let got = read(dir.path().join(format!("{name}.jsonl")));
        assert!(got.iter().all(|r| r.source == name));
        same(&single, &got, name);
    }
}
