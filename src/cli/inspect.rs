use std::path::PathBuf;

use anyhow::Context;
use maskstream::Engine;

#[derive(clap::Args)]
pub struct Args {
    /// Engine folder (holding manifest.toml).
    pub dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let e = Engine::load_unverified(&args.dir).context("reading the engine manifest")?;
    let m = &e.manifest;
    println!(
        "engine      {} (format {}, from {})",
        m.name, m.format_version, m.source
    );
    println!("classes     {}", m.model.classes[1..].join(", "));
    println!(
        "input       min_size {} max_size {} divisible by {}",
        m.transform.min_size, m.transform.max_size, m.transform.size_divisible
    );
    println!(
        "levels      {} ({} FPN channels)",
        m.model.levels.join(" "),
        m.model.fpn_channels
    );
    println!(
        "anchors     sizes {:?} ratios {:?}",
        m.anchors.sizes.iter().flatten().collect::<Vec<_>>(),
        m.anchors.aspect_ratios[0]
    );
    println!(
        "rpn         pre {} post {} nms {}",
        m.rpn.pre_nms_top_n, m.rpn.post_nms_top_n, m.rpn.nms_thresh
    );
    println!(
        "detections  score > {} nms {} top {}",
        m.roi_heads.score_thresh, m.roi_heads.nms_thresh, m.roi_heads.detections_per_img
    );
    println!(
        "pooling     box {}x{} mask {}x{} sampling {} aligned {}",
        m.box_roi_pool.output_size,
        m.box_roi_pool.output_size,
        m.mask_roi_pool.output_size,
        m.mask_roi_pool.output_size,
        m.box_roi_pool.sampling_ratio,
        m.box_roi_pool.aligned
    );
    for g in m.graph_files() {
        let path = e.graph_path(g.file);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        println!(
            "graph       {:<9} {} {} {:.1} MB",
            g.role,
            g.precision,
            g.file,
            size as f64 / 1e6
        );
    }
    match &m.precision {
        Some(p) => println!("precision   CPU default {}", p.cpu_default),
        None => println!("precision   fp32 only"),
    }
    e.verify_files().context("checking graph checksums")?;
    println!("checksums   ok");
    Ok(())
}
