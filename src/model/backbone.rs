//! Backbone: ResNet + FPN + the RPN head's convolutions, all inside `backbone.onnx`. Its outputs are
//! read here into [`Features`]: per pyramid level the feature map and the RPN head's two maps.

use ort::session::SessionOutputs;

use crate::backend::{BackendOptions, Provider};
use crate::engine::{Engine, FeatureLayout, Manifest, QuantizedInput};
use crate::error::{Error, Result};

use super::graph::{self, Contract, Graph};
use super::preprocess::{space_to_depth_u8, Preprocessed};
use super::roi_align::LevelData;
use super::rpn::LevelHead;

/// One pyramid level of a batch of N images.
#[derive(Debug, Clone, Copy)]
pub struct Level<'a> {
    /// FPN output, [N, C, h, w] or [N, h, w, C] as `layout` says: floats, or an INT8 graph's uint8
    /// values with their scale and zero point (outputs `<name>_scale`, `<name>_zero_point`).
    pub features: LevelData<'a>,
    pub layout: FeatureLayout,
    /// RPN objectness logits [N, A, h, w] or [N, h, w, A] as `rpn_layout` says.
    pub objectness: &'a [f32],
    /// RPN box deltas [N, 4A, h, w] or [N, h, w, 4A].
    pub deltas: &'a [f32],
    pub rpn_layout: FeatureLayout,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// The backbone's output for a batch: levels in the manifest's `model.levels` order (P2..P6).
#[derive(Debug)]
pub struct Features<'a> {
    pub batch: usize,
    pub anchors_per_location: usize,
    pub levels: Vec<Level<'a>>,
}

impl<'a> Features<'a> {
    /// Reads and shape-checks every output named in the manifest.
    pub fn read(outputs: &'a SessionOutputs<'_>, m: &Manifest, batch: usize) -> Result<Self> {
        let g = &m.graphs.backbone;
        let (n, c) = (batch as i64, m.model.fpn_channels as i64);
        let a = m.model.num_anchors_per_location;
        let layout = g.feature_layout;
        let mut levels = Vec::with_capacity(g.features.len());
        for ((feature, obj), del) in g.features.iter().zip(&g.objectness).zip(&g.deltas) {
            let expect = match layout {
                FeatureLayout::Nchw => [n, c, -1, -1],
                FeatureLayout::Nhwc => [n, -1, -1, c],
            };
            let (shape, features) = if graph::is_u8(outputs, feature) {
                let (shape, data) = graph::typed_output::<u8>(outputs, &g.file, feature, &expect)?;
                let scalar = |suffix: &str| format!("{feature}{suffix}");
                let (_, scale) = graph::output(outputs, &g.file, &scalar("_scale"), &[])?;
                let (_, zero_point) =
                    graph::typed_output::<u8>(outputs, &g.file, &scalar("_zero_point"), &[])?;
                let (scale, zero_point) = (scale[0], zero_point[0]);
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(Error::graph(
                        &g.file,
                        format!("output {feature:?}_scale is {scale}, not a positive number"),
                    ));
                }
                let data = LevelData::U8 {
                    data,
                    scale,
                    zero_point,
                };
                (shape, data)
            } else {
                let (shape, data) = graph::output(outputs, &g.file, feature, &expect)?;
                (shape, LevelData::F32(data))
            };
            let (channels, fh, fw) = match layout {
                FeatureLayout::Nchw => (shape[1], shape[2], shape[3]),
                FeatureLayout::Nhwc => (shape[3], shape[1], shape[2]),
            };
            let (fh, fw) = (fh as i64, fw as i64);
            let per_location = |k: i64| match g.rpn_layout {
                FeatureLayout::Nchw => [n, k, fh, fw],
                FeatureLayout::Nhwc => [n, fh, fw, k],
            };
            let (_, objectness) = graph::output(outputs, &g.file, obj, &per_location(a as i64))?;
            let (_, deltas) = graph::output(outputs, &g.file, del, &per_location(4 * a as i64))?;
            levels.push(Level {
                features,
                layout,
                objectness,
                deltas,
                rpn_layout: g.rpn_layout,
                channels,
                height: fh as usize,
                width: fw as usize,
            });
        }
        Ok(Features {
            batch,
            anchors_per_location: a,
            levels,
        })
    }

    /// Feature grid (h, w) of every level: what the anchors depend on.
    pub fn grids(&self) -> Vec<(usize, usize)> {
        self.levels.iter().map(|l| (l.height, l.width)).collect()
    }

    /// The RPN head of image `i` on every level.
    pub fn rpn_heads(&self, i: usize) -> Vec<LevelHead<'a>> {
        let a = self.anchors_per_location;
        self.levels
            .iter()
            .map(|l| {
                let hw = l.height * l.width;
                LevelHead {
                    objectness: &l.objectness[i * a * hw..(i + 1) * a * hw],
                    deltas: &l.deltas[i * 4 * a * hw..(i + 1) * 4 * a * hw],
                    layout: l.rpn_layout,
                    height: l.height,
                    width: l.width,
                    anchors_per_location: a,
                }
            })
            .collect()
    }
}

/// The backbone graph.
#[derive(Debug)]
pub struct Backbone {
    graph: Graph,
    input: String,
    /// Where the (INT8) graph takes its input quantized: how, and the bytes of the batch being run.
    quantized: Option<QuantizedInput>,
    bytes: Vec<u8>,
    bytes_shape: [usize; 4],
}

impl Backbone {
    pub fn load(engine: &Engine, opts: &BackendOptions) -> Result<(Self, Provider)> {
        let g = &engine.manifest.graphs.backbone;
        let outputs: Vec<&str> = g
            .features
            .iter()
            .chain(&g.objectness)
            .chain(&g.deltas)
            .map(String::as_str)
            .collect();
        let features: Vec<&str> = g.features.iter().map(String::as_str).collect();
        let contract = Contract {
            inputs: &[&g.input],
            outputs: &outputs,
            with_channels: &features,
            channels: engine.manifest.model.fpn_channels,
            channel_axis: g.feature_layout.channel_axis(),
        };
        let (graph, provider) = Graph::open(&engine.dir, &g.file, "backbone", opts, &contract)?;
        let input = g.input.clone();
        let quantized = engine.quantized_input();
        if graph.input_is_u8(&input) != quantized.is_some() {
            return Err(Error::graph(
                &g.file,
                format!(
                    "input {input:?} is {}, but the manifest's [precision.int8.input] {}",
                    if quantized.is_some() {
                        "not uint8"
                    } else {
                        "uint8"
                    },
                    if quantized.is_some() {
                        "says it is quantized"
                    } else {
                        "is missing"
                    }
                ),
            ));
        }
        let backbone = Backbone {
            graph,
            input,
            quantized,
            bytes: Vec::new(),
            bytes_shape: [0; 4],
        };
        Ok((backbone, provider))
    }

    /// Lays a preprocessed batch out as the graph takes it: nothing to do for a float input; the
    /// quantized, space-to-depth bytes for a quantized one (part of preprocessing).
    pub fn prepare(&mut self, images: &Preprocessed<'_>) {
        if let Some(q) = &self.quantized {
            self.bytes_shape = space_to_depth_u8(images, q, &mut self.bytes);
        }
    }

    /// Runs the graph on a preprocessed batch [N, 3, H, W]; read the result with [`Features::read`].
    pub fn forward(&mut self, images: &Preprocessed<'_>) -> Result<SessionOutputs<'_>> {
        let (h, w) = images.padded;
        let n = images.sizes.len();
        if images.tensor.len() != n * 3 * h * w {
            return Err(Error::Input(
                "backbone: input does not match its shape".into(),
            ));
        }
        if self.quantized.is_some() {
            if self.bytes_shape[0] != n
                || self.bytes.len() != self.bytes_shape.iter().product::<usize>()
            {
                return Err(Error::Input(
                    "backbone: the quantized input was not prepared for this batch".into(),
                ));
            }
            return self.graph.run(&self.input, self.bytes_shape, &self.bytes);
        }
        self.graph.run(&self.input, [n, 3, h, w], images.tensor)
    }
}
