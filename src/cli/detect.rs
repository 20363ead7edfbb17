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

/// An image by its content, not its name (a JPEG named .png is read as the JPEG it is); a JPEG
/// cut short is refused: the decoder would give its missing part as grey, without an error.
fn load_image(path: &Path) -> Result<image::RgbImage, String> {
    if path.is_dir() {
        return Err("is a directory, not an image".into());
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.is_empty() {
        return Err("file is empty (0 bytes)".into());
    }
    let format = image::guess_format(&bytes).map_err(|e| e.to_string())?;
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(&bytes) {
        return Err(
            "the JPEG ends early (no end-of-image marker after its last scan): the file \
                    is cut off"
                .into(),
        );
    }
    image::load_from_memory_with_format(&bytes, format)
        .map(|i| i.to_rgb8())
        .map_err(|e| e.to_string())
}

/// The end-of-image marker (FF D9) comes after the last start-of-scan (FF DA). In a scan's data a
/// 0xFF byte is always followed by 0x00 or a restart marker, so FF D9 there is the real end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    matches!((last(0xDA), last(0xD9)), (Some(sos), Some(eoi)) if eoi > sos)
}

fn detect_one(
    path: &Path,
    args: &Args,
    model: &mut MaskRcnn,
    compositor: &Compositor,
    sink: &mut dyn Write,
) -> anyhow::Result<()> {
    let img = load_image(path).map_err(|message| maskstream::Error::Image {
        path: path.to_path_buf(),
        message,
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_read_by_content_and_cut_jpegs_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img =
            image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let jpeg = dir.path().join("a.jpg");
        img.save(&jpeg).unwrap();
        assert_eq!(load_image(&jpeg).unwrap().dimensions(), (64, 48));
        // a JPEG named .png
        let named = dir.path().join("b.png");
        std::fs::copy(&jpeg, &named).unwrap();
        assert_eq!(load_image(&named).unwrap().dimensions(), (64, 48));
        let bytes = std::fs::read(&jpeg).unwrap();
        let cut = dir.path().join("cut.jpg");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert!(load_image(&cut).unwrap_err().contains("ends early"));
        let empty = dir.path().join("e.jpg");
        std::fs::write(&empty, b"").unwrap();
        assert!(load_image(&empty).unwrap_err().contains("empty"));
        assert!(load_image(dir.path()).unwrap_err().contains("directory"));
    }
}
