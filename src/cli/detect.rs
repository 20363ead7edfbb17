use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use maskstream::output::FrameRecord;
use maskstream::overlay::{Canvas, Compositor, OverlayStyle};
use maskstream::pipeline::outputs::OutputPlan;
use maskstream::{BackendKind, BackendOptions, MaskRcnn, RgbFrame};

#[derive(clap::Args)]
pub struct Args {
    /// PNG or JPEG images.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Engine folder; defaults to the bundled engines/shapes.
    #[arg(long)]
    pub engine: Option<PathBuf>,
    /// JSON Lines output file, or - for stdout (the default).
    #[arg(long, default_value = "-")]
    pub json: String,
    /// Write an annotated PNG per image here, named <image file name>.annotated.png.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Replace output files that already exist (inputs are never replaced).
    #[arg(long)]
    pub overwrite: bool,
    /// Report only instances scoring at least this.
    #[arg(long, default_value_t = 0.5)]
    pub score_threshold: f32,
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// FP32 or INT8 graphs; auto: the engine's CPU default (INT8 when it has one) on CPU, FP32 on GPUs.
    #[arg(long, value_enum, default_value_t = maskstream::Precision::Auto)]
    pub precision: maskstream::Precision,
    /// Inference threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// The annotated image of an input: its whole file name kept, so `a.png` and `a.jpg` never share one
/// and an input is never its own output.
fn annotated_path(dir: &Path, image: &Path) -> PathBuf {
    let mut name = image
        .file_name()
        .map_or_else(|| "image".into(), |n| n.to_os_string());
    name.push(".annotated.png");
    dir.join(name)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut plan = OutputPlan::default();
    for image in &args.images {
        plan.input(image);
        if let Some(dir) = &args.out_dir {
            plan.output(&annotated_path(dir, image), "annotated image");
        }
    }
    if args.json != "-" {
        plan.output(Path::new(&args.json), "JSON Lines");
    }
    plan.check(args.overwrite)?;
    let engine = args.engine.clone().unwrap_or_else(super::default_engine);
    let opts = BackendOptions {
        kind: args.backend,
        threads: args.threads,
        precision: args.precision,
        ..Default::default()
    };
    let mut model = MaskRcnn::load(&engine, &opts)
        .with_context(|| format!("loading engine {}", engine.display()))?;
    // no mask for what the threshold drops
    model.set_min_score(args.score_threshold);
    let mut sink: Box<dyn Write> = if args.json == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        let f =
            std::fs::File::create(&args.json).with_context(|| format!("creating {}", args.json))?;
        Box::new(std::io::BufWriter::new(f))
    };
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let compositor = Compositor::new(OverlayStyle::default());
    let mut failed = 0usize;
    for path in &args.images {
        if let Err(e) = detect_one(path, &args, &mut model, &compositor, &mut sink) {
            let msg = format!("{e:#}");
            let name = path.display().to_string();
            // one line naming the image once
            if msg.contains(&name) {
                eprintln!("error: {msg}");
            } else {
                eprintln!("error: {name}: {msg}");
            }
            failed += 1;
        }
    }
    sink.flush().context("writing JSON Lines")?;
    if failed > 0 {
        anyhow::bail!("{failed} of {} images failed", args.images.len());
    }
    Ok(())
}

fn detect_one(
    path: &Path,
    args: &Args,
    model: &mut MaskRcnn,
    compositor: &Compositor,
    sink: &mut dyn Write,
) -> anyhow::Result<()> {
    let img = image::open(path)
        .map_err(|e| maskstream::Error::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .to_rgb8();
    let frame = RgbFrame::from_image(&img)?;
    let mut result = model.detect(&frame)?;
    result
        .detections
        .retain(|d| d.score >= args.score_threshold);
    tracing::info!(
        image = %path.display(),
        instances = result.detections.len(),
        ms = result.times.total().as_secs_f64() * 1e3,
        "detected"
    );
    let record = FrameRecord::new(
        &path.display().to_string(),
        frame.width,
        frame.height,
        &result.detections,
        model.classes(),
    );
    serde_json::to_writer(&mut *sink, &record)?;
    sink.write_all(b"\n")?;
    if let Some(dir) = &args.out_dir {
        let mut out = img.clone();
        let (w, h) = (out.width() as usize, out.height() as usize);
        let mut canvas = Canvas {
            data: &mut out,
            width: w,
            height: h,
            stride: w * 3,
        };
        compositor.draw(&mut canvas, &result.detections, model.classes());
        let dest = annotated_path(dir, path);
        out.save(&dest)
            .with_context(|| format!("writing {}", dest.display()))?;
    }
    Ok(())
}
