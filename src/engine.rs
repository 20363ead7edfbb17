//! The engine package: `manifest.toml` + three ONNX graphs (docs/engine-format.md).
//!
//! Everything the runtime needs to know about a model comes from here; nothing model-specific is
//! hard-coded elsewhere. Loading validates every field and each graph's sha256 before any frame runs.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    #[serde(default)]
    pub source: String,
    pub model: ModelSection,
    pub transform: Transform,
    pub anchors: Anchors,
    pub rpn: Rpn,
    pub roi_heads: RoiHeads,
    pub box_roi_pool: Pooler,
    pub mask_roi_pool: Pooler,
    pub mask: MaskSection,
    pub graphs: Graphs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Index 0 is the background class.
    pub classes: Vec<String>,
    pub fpn_channels: usize,
    pub num_anchors_per_location: usize,
    /// Feature level names in backbone output order, e.g. p2..p6.
    pub levels: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    pub min_size: u32,
    pub max_size: u32,
    pub size_divisible: u32,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// 8-bit pixel values are divided by this (255) into the 0..1 range torchvision expects.
    pub input_divisor: f32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchors {
    pub sizes: Vec<Vec<f32>>,
    pub aspect_ratios: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rpn {
    pub pre_nms_top_n: usize,
    pub post_nms_top_n: usize,
    pub nms_thresh: f32,
    pub min_size: f32,
    pub score_thresh: f32,
    pub box_coder_weights: [f32; 4],
    pub bbox_xform_clip: f32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoiHeads {
    pub score_thresh: f32,
    pub nms_thresh: f32,
    pub detections_per_img: usize,
    pub min_box_size: f32,
    pub box_coder_weights: [f32; 4],
    pub bbox_xform_clip: f32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pooler {
    /// Which backbone levels ROIs are pooled from (p2..p5 for torchvision).
    pub levels: Vec<String>,
    pub output_size: usize,
    pub sampling_ratio: i32,
    pub aligned: bool,
    pub canonical_scale: u32,
    pub canonical_level: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSection {
    pub threshold: f32,
    pub resolution: usize,
    pub paste_padding: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graphs {
    pub backbone: BackboneGraph,
    pub box_head: BoxHeadGraph,
    pub mask_head: MaskHeadGraph,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneGraph {
    pub file: String,
    pub sha256: String,
    pub input: String,
    pub features: Vec<String>,
    pub objectness: Vec<String>,
    pub deltas: Vec<String>,
    #[serde(default)]
    pub max_abs_diff_vs_torch: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxHeadGraph {
    pub file: String,
    pub sha256: String,
    pub input: String,
    pub class_logits: String,
    pub box_deltas: String,
    #[serde(default)]
    pub max_abs_diff_vs_torch: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskHeadGraph {
    pub file: String,
    pub sha256: String,
    pub input: String,
    pub mask_logits: String,
    #[serde(default)]
    pub max_abs_diff_vs_torch: f64,
}

/// A validated engine package on disk.
#[derive(Debug, Clone)]
pub struct Engine {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Engine {
    /// Reads and validates `dir/manifest.toml` and checks each graph file's sha256.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let engine = Self::load_unverified(dir)?;
        engine.verify_files()?;
        Ok(engine)
    }

    /// Reads and validates the manifest only (used by `inspect`, and by tests of the manifest).
    pub fn load_unverified(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let manifest = Manifest::parse(&text, &path)?;
        Ok(Engine { dir, manifest })
    }

    pub fn graph_path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn verify_files(&self) -> Result<()> {
        let g = &self.manifest.graphs;
        for (file, expected) in [
            (&g.backbone.file, &g.backbone.sha256),
            (&g.box_head.file, &g.box_head.sha256),
            (&g.mask_head.file, &g.mask_head.sha256),
        ] {
            let path = self.graph_path(file);
            let actual = sha256_file(&path)?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(Error::Checksum {
                    path,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }

    pub fn classes(&self) -> &[String] {
        &self.manifest.model.classes
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// A failed manifest check: (field, why).
type Check = std::result::Result<(), (String, String)>;

fn bad(field: &str, why: impl Into<String>) -> Check {
    Err((field.to_string(), why.into()))
}

impl Manifest {
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let m: Manifest = toml::from_str(text).map_err(|e| Error::manifest(path, e.to_string()))?;
        m.validate(path)?;
        Ok(m)
    }

    /// Every section's checks, in file order; the first failure names the field.
    fn validate(&self, path: &Path) -> Result<()> {
        self.check_model()
            .and_then(|()| self.check_transform())
            .and_then(|()| self.check_anchors())
            .and_then(|()| self.check_heads())
            .and_then(|()| self.check_poolers())
            .and_then(|()| self.check_graphs())
            .map_err(|(field, why)| Error::manifest(path, format!("{field}: {why}")))
    }

    fn check_model(&self) -> Check {
        if self.format_version != FORMAT_VERSION {
            return bad(
                "format_version",
                format!(
                    "is {}, this maskstream reads version {FORMAT_VERSION}",
                    self.format_version
                ),
            );
        }
        let m = &self.model;
        if m.classes.len() < 2 {
            return bad(
                "model.classes",
                "needs the background class and at least one object class",
            );
        }
        if m.fpn_channels == 0 {
            return bad("model.fpn_channels", "must be positive");
        }
        if m.levels.is_empty() {
            return bad("model.levels", "is empty");
        }
        Ok(())
    }

    fn check_transform(&self) -> Check {
        let t = &self.transform;
        if t.min_size == 0 || t.max_size < t.min_size {
            return bad(
                "transform",
                format!(
                    "min_size {} / max_size {} must satisfy 0 < min <= max",
                    t.min_size, t.max_size
                ),
            );
        }
        if t.size_divisible == 0 {
            return bad("transform.size_divisible", "must be positive");
        }
        if t.image_std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return bad("transform.image_std", "values must be positive");
        }
        if !(t.input_divisor > 0.0 && t.input_divisor.is_finite()) {
            return bad("transform.input_divisor", "must be positive");
        }
        Ok(())
    }

    fn check_anchors(&self) -> Check {
        let (a, n) = (&self.anchors, self.model.levels.len());
        if a.sizes.len() != n || a.aspect_ratios.len() != n {
            return bad(
                "anchors",
                format!(
                    "sizes has {} levels and aspect_ratios {}, model.levels has {n}",
                    a.sizes.len(),
                    a.aspect_ratios.len()
                ),
            );
        }
        for (s, r) in a.sizes.iter().zip(&a.aspect_ratios) {
            if s.len() * r.len() != self.model.num_anchors_per_location {
                return bad(
                    "anchors",
                    format!(
                        "{} sizes x {} ratios per level != model.num_anchors_per_location {}",
                        s.len(),
                        r.len(),
                        self.model.num_anchors_per_location
                    ),
                );
            }
            if s.iter().chain(r).any(|v| *v <= 0.0 || !v.is_finite()) {
                return bad("anchors", "sizes and aspect ratios must be positive");
            }
        }
        Ok(())
    }

    /// The RPN and the ROI heads.
    fn check_heads(&self) -> Check {
        let r = &self.rpn;
        if r.pre_nms_top_n == 0 || r.post_nms_top_n == 0 {
            return bad("rpn", "pre_nms_top_n and post_nms_top_n must be positive");
        }
        for (field, v) in [
            ("rpn.nms_thresh", r.nms_thresh),
            ("roi_heads.nms_thresh", self.roi_heads.nms_thresh),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(field, format!("{v} is outside 0..1"));
            }
        }
        if r.box_coder_weights
            .iter()
            .chain(&self.roi_heads.box_coder_weights)
            .any(|w| *w <= 0.0)
        {
            return bad("box_coder_weights", "must be positive");
        }
        if self.roi_heads.detections_per_img == 0 {
            return bad("roi_heads.detections_per_img", "must be positive");
        }
        Ok(())
    }

    /// The two ROIAlign poolers and the mask size they feed.
    fn check_poolers(&self) -> Check {
        let levels = &self.model.levels;
        for (name, p) in [
            ("box_roi_pool", &self.box_roi_pool),
            ("mask_roi_pool", &self.mask_roi_pool),
        ] {
            if p.levels.is_empty() || p.levels.iter().any(|l| !levels.contains(l)) {
                return bad(
                    &format!("{name}.levels"),
                    format!(
                        "{:?} must be a non-empty subset of model.levels {levels:?}",
                        p.levels
                    ),
                );
            }
            if p.output_size == 0 || p.sampling_ratio < 0 || p.canonical_scale == 0 {
                return bad(
                    name,
                    "output_size and canonical_scale must be positive, sampling_ratio >= 0",
                );
            }
        }
        if self.mask.resolution != 2 * self.mask_roi_pool.output_size {
            return bad(
                "mask.resolution",
                format!(
                    "{} != 2 x mask_roi_pool.output_size ({})",
                    self.mask.resolution, self.mask_roi_pool.output_size
                ),
            );
        }
        Ok(())
    }

    fn check_graphs(&self) -> Check {
        let (g, n) = (&self.graphs.backbone, self.model.levels.len());
        for (field, list) in [
            ("features", &g.features),
            ("objectness", &g.objectness),
            ("deltas", &g.deltas),
        ] {
            if list.len() != n {
                return bad(
                    &format!("graphs.backbone.{field}"),
                    format!("has {} names, model.levels has {n}", list.len()),
                );
            }
        }
        for (name, file, sha) in [
            ("graphs.backbone", &g.file, &g.sha256),
            (
                "graphs.box_head",
                &self.graphs.box_head.file,
                &self.graphs.box_head.sha256,
            ),
            (
                "graphs.mask_head",
                &self.graphs.mask_head.file,
                &self.graphs.mask_head.sha256,
            ),
        ] {
            if file.is_empty() || file.contains("..") || Path::new(file).is_absolute() {
                return bad(
                    &format!("{name}.file"),
                    format!("{file:?} must be a file name inside the engine folder"),
                );
            }
            if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                return bad(&format!("{name}.sha256"), "must be 64 hex digits");
            }
        }
        Ok(())
    }

    pub fn num_classes(&self) -> usize {
        self.model.classes.len()
    }

    /// Index of a level name in the backbone's output order.
    pub fn level_index(&self, name: &str) -> Option<usize> {
        self.model.levels.iter().position(|l| l == name)
    }
}
