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
    /// Lower-precision variants of the graphs (written by engines/tools/quantize.py); absent: FP32 only.
    #[serde(default)]
    pub precision: Option<PrecisionSection>,
}

/// Numeric precision of the graphs a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The engine's `precision.cpu_default` on CPU (INT8 where the engine has it), FP32 on GPUs.
    #[default]
    Auto,
    /// The exported graphs as they are: torchvision's outputs to float rounding.
    Fp32,
    /// Statically quantized graphs (QDQ): integer kernels (VNNI/AMX) on CPU.
    Int8,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecisionSection {
    /// What CPU runs use when not told otherwise: "fp32" or "int8".
    pub cpu_default: Precision,
    pub int8: Option<Int8Graphs>,
}

/// The INT8 graphs: same inputs and outputs as the FP32 ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int8Graphs {
    /// How they were made (scheme, calibration data): for `inspect` and the record.
    #[serde(default)]
    pub calibration: String,
    pub backbone: GraphFile,
    pub box_head: GraphFile,
    pub mask_head: GraphFile,
    /// Present where the INT8 backbone takes its input quantized (engines/tools/qdq_rewrite.py).
    #[serde(default)]
    pub input: Option<QuantizedInput>,
}

/// An INT8 backbone's uint8 input: the normalized image quantized as ONNX's QuantizeLinear does
/// (x / scale, rounded half to even, plus the zero point, clamped to 0..255), padded by `pad` pixels of
/// the zero point on every side and laid out space-to-depth, [N, H', W', 4C] with channel 4c + 2a + b
/// holding pixel (2y + a - pad, 2x + b - pad) of channel c: what the stem's one-hot convolution made
/// of the float input inside the graph before.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizedInput {
    /// Block size; 2 is the only one the runtime writes.
    pub space_to_depth: usize,
    pub pad: usize,
    pub scale: f32,
    pub zero_point: u8,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphFile {
    pub file: String,
    pub sha256: String,
}

/// One graph file of the manifest: which graph, at which precision.
#[derive(Debug, Clone, Copy)]
pub struct GraphEntry<'a> {
    /// backbone, box_head or mask_head.
    pub role: &'static str,
    pub precision: Precision,
    pub file: &'a str,
    pub sha256: &'a str,
}

impl GraphEntry<'_> {
    /// The manifest table it comes from, for messages: `graphs.box_head`, `precision.int8.box_head`.
    pub fn field(&self) -> String {
        match self.precision {
            Precision::Int8 => format!("precision.int8.{}", self.role),
            _ => format!("graphs.{}", self.role),
        }
    }
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
    /// How a mask is mapped back onto its box; engines without the key paste as torchvision does.
    #[serde(default)]
    pub paste: PasteMode,
    /// Share of the pasted mask's own bounds in each output box: 0 (the default, torchvision's) keeps
    /// the box head's box; 0.5 averages the two estimates of the object's extent; 1 takes the mask's.
    #[serde(default)]
    pub box_from_mask: f32,
    /// A detection whose pasted mask covers nearly the same pixels as a better-scoring one of another
    /// class (per-class NMS cannot see it) keeps only a share of its score; absent (torchvision's
    /// semantics), both reports stand as the box head scored them.
    #[serde(default)]
    pub cross_class: Option<CrossClass>,
}

/// `[mask] cross_class = { iou = 0.85, factor = 0.5 }`: the second report of one object, under another
/// class, is kept (it is the right one when the first's class is wrong) but scored `factor` times lower.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossClass {
    /// Mask IoU from which two detections of different classes count as one object.
    pub iou: f32,
    /// What the lower-scoring report's score is multiplied by.
    pub factor: f32,
}

/// The geometry of the paste. torchvision's truncates the box to whole pixels and resizes the mask to
/// the box size + 1, so every mask comes out about a pixel wider and taller than its box (most of it on
/// the right and bottom); models exported from torchvision checkpoints keep it, as their users'
/// results do. `exact` samples the mask at each pixel's centre with the box in real coordinates
/// (Detectron2's paste): the mask covers its box, no more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PasteMode {
    #[default]
    Torchvision,
    Exact,
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
    /// Memory layout of the feature outputs (of the FP32 and the INT8 graph alike).
    #[serde(default)]
    pub feature_layout: FeatureLayout,
    pub objectness: Vec<String>,
    pub deltas: Vec<String>,
    /// Memory layout of the RPN head's outputs: [N, A, h, w] and [N, 4A, h, w] (torchvision's), or
    /// [N, h, w, A] and [N, h, w, 4A], the order torchvision flattens them in (no transpose on either
    /// side). Engines without the key are channels-first.
    #[serde(default)]
    pub rpn_layout: FeatureLayout,
    #[serde(default)]
    pub max_abs_diff_vs_torch: f64,
}

/// How the backbone lays out its FPN outputs. ROIAlign reads channels-last; a graph that writes
/// [N, h, w, C] itself (ONNX Runtime folds the transpose into its last layout change, at no cost)
/// spares the per-frame transpose of every level. Engines without the key are channels-first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureLayout {
    /// [N, C, h, w], torchvision's own.
    #[default]
    Nchw,
    /// [N, h, w, C].
    Nhwc,
}

impl FeatureLayout {
    /// Axis of the channels in a feature tensor.
    pub fn channel_axis(self) -> usize {
        match self {
            FeatureLayout::Nchw => 1,
            FeatureLayout::Nhwc => 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxHeadGraph {
    pub file: String,
    pub sha256: String,
    pub input: String,
    /// Memory layout of the pooled input: [R, C, 7, 7] (torchvision's) or [R, 7, 7, C], the order
    /// ROIAlign computes it in (no transpose on our side; fc6's weights are permuted to match).
    /// Engines without the key are channels-first.
    #[serde(default)]
    pub input_layout: FeatureLayout,
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
    /// Memory layout of the pooled input: [R, C, 14, 14] or [R, 14, 14, C] (ONNX Runtime's integer
    /// convolutions run channels-last, so that one needs no transpose on either side).
    #[serde(default)]
    pub input_layout: FeatureLayout,
    pub mask_logits: String,
    /// How the graph does the predictor's 2x upsampling (informational: same inputs and outputs).
    #[serde(default)]
    pub upsample: MaskUpsample,
    #[serde(default)]
    pub max_abs_diff_vs_torch: f64,
}

/// The mask predictor's 2x upsampling inside `mask_head.onnx`. Both compute torchvision's sums; engines
/// without the key hold torchvision's ConvTranspose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskUpsample {
    /// torchvision's 2x2 stride-2 ConvTranspose (ONNX Runtime runs it in float even in an INT8 graph).
    #[default]
    Deconv,
    /// The same weights as 1x1 convolutions to four sub-pixel channel groups, then laid out on the
    /// 2x grid (`export.py --mask-upsample subpixel`): quantizable, ~3x faster in the INT8 graph.
    Subpixel,
}

/// A validated engine package on disk.
#[derive(Debug, Clone)]
pub struct Engine {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The precision of the graphs `manifest.graphs` names now (FP32 until [`Engine::select`]).
    pub precision: Precision,
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
        Ok(Engine {
            dir,
            manifest,
            precision: Precision::Fp32,
        })
    }

    /// The precision a run gets for `requested` (`on_cpu`: the graphs will run on the CPU).
    pub fn resolve(&self, requested: Precision, on_cpu: bool) -> Result<Precision> {
        let section = self.manifest.precision.as_ref();
        let has_int8 = section.is_some_and(|p| p.int8.is_some());
        match requested {
            Precision::Int8 if !has_int8 => Err(Error::Config(format!(
                "engine {} has no INT8 graphs (engines/tools/quantize.py makes them); use --precision fp32",
                self.dir.display()
            ))),
            Precision::Auto => Ok(match section {
                Some(p) if on_cpu && has_int8 && p.cpu_default == Precision::Int8 => Precision::Int8,
                _ => Precision::Fp32,
            }),
            other => Ok(other),
        }
    }

    /// How the selected backbone takes its input: quantized (an INT8 backbone rewritten so), or
    /// None for floats.
    pub fn quantized_input(&self) -> Option<QuantizedInput> {
        if self.precision != Precision::Int8 {
            return None;
        }
        self.manifest.precision.as_ref()?.int8.as_ref()?.input
    }

    /// Points `manifest.graphs` at the graphs of `precision` (already resolved: FP32 or INT8).
    pub fn select(&mut self, precision: Precision) -> Result<()> {
        if precision == Precision::Int8 {
            let int8 = self
                .manifest
                .precision
                .as_ref()
                .and_then(|p| p.int8.clone())
                .ok_or_else(|| {
                    Error::Config(format!("engine {} has no INT8 graphs", self.dir.display()))
                })?;
            let g = &mut self.manifest.graphs;
            (g.backbone.file, g.backbone.sha256) = (int8.backbone.file, int8.backbone.sha256);
            (g.box_head.file, g.box_head.sha256) = (int8.box_head.file, int8.box_head.sha256);
            (g.mask_head.file, g.mask_head.sha256) = (int8.mask_head.file, int8.mask_head.sha256);
        }
        self.precision = precision;
        Ok(())
    }

    pub fn graph_path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Checks the sha256 of every graph the manifest names (FP32 and INT8).
    pub fn verify_files(&self) -> Result<()> {
        for entry in self.manifest.graph_files() {
            let (file, expected) = (entry.file, entry.sha256);
            let path = self.graph_path(file);
            let actual = sha256_file(&path)?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(Error::Checksum {
                    path,
                    expected: expected.to_string(),
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
            .and_then(|()| self.check_precision())
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
            // torchvision maps a box to level k - k_min: the levels must be consecutive, finest first
            let at: Vec<usize> = p
                .levels
                .iter()
                .filter_map(|l| self.level_index(l))
                .collect();
            if at.windows(2).any(|w| w[1] != w[0] + 1) {
                return bad(
                    &format!("{name}.levels"),
                    format!(
                        "{:?} must be consecutive levels in the order of model.levels {levels:?}",
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
        if !(self.mask.threshold > 0.0 && self.mask.threshold < 1.0) {
            return bad(
                "mask.threshold",
                format!("{} is not a probability in (0, 1)", self.mask.threshold),
            );
        }
        if !(0.0..=1.0).contains(&self.mask.box_from_mask) {
            return bad(
                "mask.box_from_mask",
                format!("{} is not a share in [0, 1]", self.mask.box_from_mask),
            );
        }
        if let Some(c) = self.mask.cross_class {
            if !(c.iou > 0.0 && c.iou <= 1.0) {
                return bad(
                    "mask.cross_class.iou",
                    format!("{} is not a mask IoU in (0, 1]", c.iou),
                );
            }
            if !(0.0..1.0).contains(&c.factor) {
                return bad(
                    "mask.cross_class.factor",
                    format!("{} is not a factor in [0, 1)", c.factor),
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

    /// Every graph file the manifest names: the FP32 three, then any INT8 variants.
    pub fn graph_files(&self) -> Vec<GraphEntry<'_>> {
        let g = &self.graphs;
        let fp32 = [
            ("backbone", &g.backbone.file, &g.backbone.sha256),
            ("box_head", &g.box_head.file, &g.box_head.sha256),
            ("mask_head", &g.mask_head.file, &g.mask_head.sha256),
        ]
        .map(|(role, file, sha256)| GraphEntry {
            role,
            precision: Precision::Fp32,
            file,
            sha256,
        });
        let int8 = self
            .precision
            .as_ref()
            .and_then(|p| p.int8.as_ref())
            .map(|q| {
                [
                    ("backbone", &q.backbone),
                    ("box_head", &q.box_head),
                    ("mask_head", &q.mask_head),
                ]
                .map(|(role, f)| GraphEntry {
                    role,
                    precision: Precision::Int8,
                    file: &f.file,
                    sha256: &f.sha256,
                })
            });
        fp32.into_iter().chain(int8.into_iter().flatten()).collect()
    }

    fn check_precision(&self) -> Check {
        match &self.precision {
            Some(p) if p.cpu_default == Precision::Auto => {
                bad("precision.cpu_default", "must be \"fp32\" or \"int8\"")
            }
            Some(p) if p.cpu_default == Precision::Int8 && p.int8.is_none() => bad(
                "precision.cpu_default",
                "is \"int8\" but there is no [precision.int8] section",
            ),
            Some(p) => match p.int8.as_ref().and_then(|i| i.input) {
                Some(q) if q.space_to_depth != 2 => {
                    bad("precision.int8.input.space_to_depth", "must be 2")
                }
                Some(q) if !(q.scale.is_finite() && q.scale > 0.0) => {
                    bad("precision.int8.input.scale", "must be a positive number")
                }
                Some(q) if q.pad > 16 => bad("precision.int8.input.pad", "must be at most 16"),
                _ => Ok(()),
            },
            None => Ok(()),
        }
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
        for entry in self.graph_files() {
            let (name, file, sha) = (entry.field(), entry.file, entry.sha256);
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

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn bundled() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("engines/shapes/manifest.toml");
        let text = std::fs::read_to_string(path).unwrap();
        // the FP32 part only: each test adds its own [precision]
        match text.find("\n[precision]") {
            Some(i) => text[..i].to_string(),
            None => text,
        }
    }

    fn engine(precision: &str) -> std::result::Result<Engine, Error> {
        let text = format!("{}\n{precision}", bundled());
        let manifest = Manifest::parse(&text, Path::new("m.toml"))?;
        Ok(Engine {
            dir: PathBuf::from("e"),
            manifest,
            precision: Precision::Fp32,
        })
    }

    fn int8_section(cpu_default: &str) -> String {
        format!(
            "[precision]\ncpu_default = \"{cpu_default}\"\n[precision.int8]\n\
             backbone = {{ file = \"b8.onnx\", sha256 = \"{SHA}\" }}\n\
             box_head = {{ file = \"h8.onnx\", sha256 = \"{SHA}\" }}\n\
             mask_head = {{ file = \"m8.onnx\", sha256 = \"{SHA}\" }}\n"
        )
    }

    #[test]
    fn auto_is_int8_on_cpu_only_where_the_engine_says_so() {
        let e = engine(&int8_section("int8")).unwrap();
        assert_eq!(e.resolve(Precision::Auto, true).unwrap(), Precision::Int8);
        assert_eq!(e.resolve(Precision::Auto, false).unwrap(), Precision::Fp32);
        assert_eq!(e.resolve(Precision::Fp32, true).unwrap(), Precision::Fp32);
        assert_eq!(e.resolve(Precision::Int8, false).unwrap(), Precision::Int8);
        let e = engine(&int8_section("fp32")).unwrap();
        assert_eq!(e.resolve(Precision::Auto, true).unwrap(), Precision::Fp32);
        assert_eq!(e.resolve(Precision::Int8, true).unwrap(), Precision::Int8);
    }

    #[test]
    fn an_fp32_engine_refuses_int8_by_name() {
        let e = engine("").unwrap();
        assert_eq!(e.resolve(Precision::Auto, true).unwrap(), Precision::Fp32);
        let err = e.resolve(Precision::Int8, true).unwrap_err().to_string();
        assert!(err.contains("no INT8 graphs"), "{err}");
    }

    #[test]
    fn select_points_the_graphs_at_the_int8_files_and_verify_covers_them() {
        let mut e = engine(&int8_section("int8")).unwrap();
        assert_eq!(e.manifest.graph_files().len(), 6);
        e.select(Precision::Int8).unwrap();
        assert_eq!(e.precision, Precision::Int8);
        let g = &e.manifest.graphs;
        assert_eq!(
            [&g.backbone.file, &g.box_head.file, &g.mask_head.file],
            ["b8.onnx", "h8.onnx", "m8.onnx"]
        );
    }

    /// The bundled manifest with `key` of `[section]` left out (`None`) or set to the string `value`.
    fn bundled_with(section: &str, key: &str, value: Option<&str>) -> Result<Manifest> {
        let text: String = bundled()
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .map(|l| format!("{l}\n"))
            .collect();
        let header = format!("[{section}]\n");
        let text = match value {
            Some(v) => text.replace(&header, &format!("{header}{key} = \"{v}\"\n")),
            None => text,
        };
        Manifest::parse(&text, Path::new("m.toml"))
    }

    /// An optional enum key of the manifest: absent it is `default`, each of `values` parses, and an
    /// unknown value is refused naming the key.
    fn check_enum_key<T: PartialEq + std::fmt::Debug>(
        (section, key): (&str, &str),
        get: impl Fn(&Manifest) -> T,
        default: T,
        values: &[(&str, T)],
        unknown: &str,
    ) {
        assert_eq!(get(&bundled_with(section, key, None).unwrap()), default);
        for (v, want) in values {
            assert_eq!(&get(&bundled_with(section, key, Some(v)).unwrap()), want);
        }
        let err = bundled_with(section, key, Some(unknown)).unwrap_err();
        assert!(err.to_string().contains(key), "{err}");
    }

    #[test]
    fn layouts_default_to_channels_first_and_are_checked() {
        for key in ["feature_layout", "rpn_layout"] {
            let get = |m: &Manifest| match key {
                "feature_layout" => m.graphs.backbone.feature_layout,
                _ => m.graphs.backbone.rpn_layout,
            };
            let nhwc = [("nhwc", FeatureLayout::Nhwc)];
            check_enum_key(
                ("graphs.backbone", key),
                get,
                FeatureLayout::Nchw,
                &nhwc,
                "hwc",
            );
        }
        for section in ["graphs.box_head", "graphs.mask_head"] {
            check_enum_key(
                (section, "input_layout"),
                |m| match section {
                    "graphs.box_head" => m.graphs.box_head.input_layout,
                    _ => m.graphs.mask_head.input_layout,
                },
                FeatureLayout::Nchw,
                &[("nhwc", FeatureLayout::Nhwc)],
                "chw",
            );
        }
        assert_eq!(FeatureLayout::Nhwc.channel_axis(), 3);
    }

    #[test]
    fn mask_upsample_defaults_to_torchvisions_deconv_and_is_checked() {
        check_enum_key(
            ("graphs.mask_head", "upsample"),
            |m| m.graphs.mask_head.upsample,
            MaskUpsample::Deconv,
            &[("subpixel", MaskUpsample::Subpixel)],
            "bilinear",
        );
    }

    #[test]
    fn mask_paste_defaults_to_torchvisions_and_is_checked() {
        check_enum_key(
            ("mask", "paste"),
            |m| m.mask.paste,
            PasteMode::Torchvision,
            &[
                ("exact", PasteMode::Exact),
                ("torchvision", PasteMode::Torchvision),
            ],
            "grid",
        );
    }

    #[test]
    fn pooler_levels_must_be_consecutive_finest_first() {
        let pooled = "levels = [\"p2\", \"p3\", \"p4\", \"p5\"]";
        assert!(bundled().contains(pooled));
        for bad in [
            "\"p5\", \"p4\", \"p3\", \"p2\"",
            "\"p2\", \"p4\"",
            "\"p3\", \"p3\"",
        ] {
            let text = bundled().replacen(pooled, &format!("levels = [{bad}]"), 1);
            let err = Manifest::parse(&text, Path::new("m.toml")).unwrap_err();
            assert!(
                err.to_string().contains("must be consecutive levels"),
                "{bad}: {err}"
            );
        }
        let text = bundled().replacen(pooled, "levels = [\"p3\", \"p4\"]", 1);
        Manifest::parse(&text, Path::new("m.toml")).unwrap();
    }

    #[test]
    fn mask_threshold_must_be_a_probability() {
        for bad in ["0.0", "1.0", "1.5", "-0.1", "nan"] {
            let text = bundled().replace(
                "threshold = 0.5\nresolution",
                &format!("threshold = {bad}\nresolution"),
            );
            assert!(text.contains(&format!("threshold = {bad}")));
            let err = Manifest::parse(&text, Path::new("m.toml")).unwrap_err();
            assert!(err.to_string().contains("mask.threshold"), "{bad}: {err}");
        }
    }

    #[test]
    fn box_from_mask_defaults_to_the_box_heads_box_and_is_checked() {
        let m = Manifest::parse(&bundled(), Path::new("m.toml")).unwrap();
        let without = bundled()
            .lines()
            .filter(|l| !l.starts_with("box_from_mask"))
            .collect::<Vec<_>>()
            .join("\n");
        let default = Manifest::parse(&without, Path::new("m.toml")).unwrap();
        assert_eq!(default.mask.box_from_mask, 0.0);
        let set = without.replace("[mask]\n", "[mask]\nbox_from_mask = 0.25\n");
        let parsed = Manifest::parse(&set, Path::new("m.toml")).unwrap();
        assert_eq!(parsed.mask.box_from_mask, 0.25);
        assert!(m.mask.box_from_mask >= 0.0);
        for bad in ["-0.1", "1.5", "nan"] {
            let text = without.replace("[mask]\n", &format!("[mask]\nbox_from_mask = {bad}\n"));
            let err = Manifest::parse(&text, Path::new("m.toml")).unwrap_err();
            assert!(
                err.to_string().contains("mask.box_from_mask"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn cross_class_is_off_unless_asked_and_is_checked() {
        // the bundled manifest without the key, however it was written
        let mut doc: toml::Table = toml::from_str(&bundled()).unwrap();
        if let Some(toml::Value::Table(mask)) = doc.get_mut("mask") {
            mask.remove("cross_class");
        }
        let base = toml::to_string(&doc).unwrap();
        let off = Manifest::parse(&base, Path::new("m.toml")).unwrap();
        assert_eq!(off.mask.cross_class, None);
        let with = |v: &str| base.replace("[mask]\n", &format!("[mask]\ncross_class = {v}\n"));
        let on =
            Manifest::parse(&with("{ iou = 0.8, factor = 0.25 }"), Path::new("m.toml")).unwrap();
        assert_eq!(
            on.mask.cross_class,
            Some(CrossClass {
                iou: 0.8,
                factor: 0.25
            })
        );
        for (v, field) in [
            ("{ iou = 0.0, factor = 0.5 }", "mask.cross_class.iou"),
            ("{ iou = 1.5, factor = 0.5 }", "mask.cross_class.iou"),
            ("{ iou = 0.8, factor = 1.0 }", "mask.cross_class.factor"),
            ("{ iou = 0.8, factor = -0.1 }", "mask.cross_class.factor"),
            ("{ iou = 0.8, factor = nan }", "mask.cross_class.factor"),
            ("{ iou = 0.8 }", "factor"),
            ("{ iou = 0.8, factor = 0.5, extra = 1 }", "extra"),
        ] {
            let err = Manifest::parse(&with(v), Path::new("m.toml")).unwrap_err();
            assert!(err.to_string().contains(field), "{v}: {err}");
        }
    }

    #[test]
    fn bad_precision_sections_name_the_field() {
        let no_int8 = "[precision]\ncpu_default = \"int8\"\n";
        let err = engine(no_int8).unwrap_err().to_string();
        assert!(err.contains("precision.cpu_default"), "{err}");
        let err = engine(&int8_section("auto")).unwrap_err().to_string();
        assert!(err.contains("precision.cpu_default"), "{err}");
        let escape = int8_section("int8").replace("b8.onnx", "../b8.onnx");
        let err = engine(&escape).unwrap_err().to_string();
        assert!(err.contains("precision.int8.backbone.file"), "{err}");
    }

    #[test]
    fn a_quantized_input_is_read_and_checked() {
        let with = |table: &str| format!("{}[precision.int8.input]\n{table}", int8_section("int8"));
        let good = "space_to_depth = 2\npad = 3\nscale = 0.0172\nzero_point = 116\n";
        let mut e = engine(&with(good)).unwrap();
        assert_eq!(e.quantized_input(), None, "FP32 until INT8 is selected");
        e.select(Precision::Int8).unwrap();
        let q = e.quantized_input().unwrap();
        assert_eq!((q.space_to_depth, q.pad, q.zero_point), (2, 3, 116));
        assert_eq!(q.scale, 0.0172);
        for (bad, field) in [
            (
                good.replace("= 2", "= 4"),
                "precision.int8.input.space_to_depth",
            ),
            (good.replace("0.0172", "-1.0"), "precision.int8.input.scale"),
            (
                good.replace("pad = 3", "pad = 99"),
                "precision.int8.input.pad",
            ),
        ] {
            let err = engine(&with(&bad)).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        let err = engine(&with("space_to_depth = 2\npad = 3\nscale = 1.0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("zero_point"), "{err}");
    }
}
