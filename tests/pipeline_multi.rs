//! Two sources in one run, batched together (the run reports model calls of 2 frames), give the same
//! JSON Lines as each run alone.

mod common;

use maskstream::output::FrameRecord;
use maskstream::pipeline::config::{PipelineConfig, SourceConfig};
use maskstream::pipeline::{self, RunContext};

fn config(names: &[&str], out: &std::path::Path, batch: usize) -> PipelineConfig {
    let mut cfg = common::cpu_pipeline();
    cfg.sources = names
        .iter()
        .map(|n| SourceConfig {
            uri: common::root()
                .join("assets/shapes-demo.mp4")
                .display()
                .to_string(),
            name: Some(n.to_string()),
            max_frames: Some(40),
            ..SourceConfig::new("")
        })
        .collect();
    cfg.inference.score_threshold = 0.05;
    cfg.inference.max_batch = Some(batch);
    cfg.output.jsonl = Some(out.join("{name}.jsonl").display().to_string());
    cfg
}

fn same(a: &[FrameRecord], b: &[FrameRecord]) {
    assert_eq!(a.len(), b.len(), "line count");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.frame, x.pts_ns), (y.frame, y.pts_ns));
        assert_eq!(
            x.instances.len(),
            y.instances.len(),
            "frame {:?}: instance count",
            x.frame
        );
        for (i, j) in x.instances.iter().zip(&y.instances) {
            assert_eq!(i.class_id, j.class_id);
            assert!(
                (i.score - j.score).abs() < 1e-4,
                "score {} vs {}",
                i.score,
                j.score
            );
            assert!(common::iou(&i.bbox, &j.bbox) > 0.999);
            let (mi, mj) = (i.mask.decode().unwrap(), j.mask.decode().unwrap());
            assert!(common::mask_iou(&mi, &mj) > 0.99);
        }
    }
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
