//! `MaskRcnn`: the whole model, stage by stage as in the paper —
//! preprocess → backbone+FPN+RPN head (ONNX) → proposals → ROIAlign 7×7 → box head (ONNX) → detections
//! → ROIAlign 14×14 → mask head (ONNX) → paste.

use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::TensorRef;

use crate::anchors::AnchorGenerator;
use crate::backend::{self, BackendOptions, Provider};
use crate::box_head::{self, DetectionScratch, RawDetections};
use crate::boxes::BoxF;
use crate::engine::{Engine, Manifest, Pooler};
use crate::error::{Error, Result};
use crate::frame::RgbFrame;
use crate::mask_head;
use crate::paste::{self, InstanceMask, PasteScratch};
use crate::preprocess::{padded, resized_size, Preprocessed, Preprocessor};
use crate::roi_align::{self, FeatureMap, Roi, RoiAlignParams, RoiAligner};
use crate::rpn::{self, LevelHead, ProposalScratch, Proposals};

/// One instance found in a frame.
#[derive(Debug, Clone)]
pub struct Detection {
    /// Index into the engine's classes (0 is background, never reported).
    pub class_id: usize,
    pub score: f32,
    /// [x1, y1, x2, y2] in frame pixels.
    pub bbox: BoxF,
    pub mask: InstanceMask,
}

/// Wall time of each stage for one call (a batch shares the model stages).
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    pub preprocess: Duration,
    pub backbone: Duration,
    pub proposals: Duration,
    pub roi_align_box: Duration,
    pub box_head: Duration,
    pub detections: Duration,
    pub roi_align_mask: Duration,
    pub mask_head: Duration,
    pub paste: Duration,
}

impl StageTimes {
    pub const NAMES: [&'static str; 9] = [
        "preprocess",
        "backbone",
        "proposals",
        "roi_align_box",
        "box_head",
        "detections",
        "roi_align_mask",
        "mask_head",
        "paste",
    ];

    pub fn as_array(&self) -> [Duration; 9] {
        [
            self.preprocess,
            self.backbone,
            self.proposals,
            self.roi_align_box,
            self.box_head,
            self.detections,
            self.roi_align_mask,
            self.mask_head,
            self.paste,
        ]
    }

    pub fn total(&self) -> Duration {
        self.as_array().iter().sum()
    }
}

/// Result for one frame, with the intermediates that parity tests and debugging look at.
#[derive(Debug, Clone, Default)]
pub struct Detections {
    pub detections: Vec<Detection>,
    /// RPN proposals in resized-image pixels, best first.
    pub proposals: Proposals,
    /// (height, width) after resize and after padding.
    pub resized: (usize, usize),
    pub padded: (usize, usize),
    pub times: StageTimes,
}

/// A loaded engine: three ONNX Runtime sessions and the Rust stages between them.
pub struct MaskRcnn {
    engine: Engine,
    backbone: Session,
    box_head: Session,
    mask_head: Session,
    provider: Provider,
    anchors: AnchorGenerator,
    pre: Preprocessor,
    input: Vec<f32>,
    proposal_scratch: ProposalScratch,
    detection_scratch: DetectionScratch,
    paste_scratch: PasteScratch,
    pooled: Vec<f32>,
    probs: Vec<f32>,
    aligner: RoiAligner,
}

impl std::fmt::Debug for MaskRcnn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskRcnn")
            .field("engine", &self.engine.dir)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

fn check_names(session: &Session, graph: &str, inputs: &[&str], outputs: &[&str]) -> Result<()> {
    for (what, names, outlets) in [
        ("input", inputs, session.inputs()),
        ("output", outputs, session.outputs()),
    ] {
        if let Some(name) = names
            .iter()
            .find(|n| !outlets.iter().any(|o| o.name() == **n))
        {
            let has: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
            return Err(Error::graph(
                graph,
                format!("has no {what} named {name:?} (it has {has:?})"),
            ));
        }
    }
    Ok(())
}

/// Where the graph declares the channel dimension (dim 1) of a named tensor, it must be the
/// manifest's `model.fpn_channels`: caught at load, naming the graph, rather than at the first frame.
fn check_channels(session: &Session, graph: &str, names: &[&str], channels: usize) -> Result<()> {
    let outlets = session.inputs().iter().chain(session.outputs());
    for o in outlets.filter(|o| names.contains(&o.name())) {
        let Some(shape) = o.dtype().tensor_shape() else {
            continue;
        };
        if let Some(&c) = shape.get(1).filter(|&&c| c > 0 && c as usize != channels) {
            return Err(Error::graph(
                graph,
                format!(
                    "{} has shape {:?}: {c} channels, but the manifest says model.fpn_channels = {channels}",
                    o.name(),
                    &shape[..]
                ),
            ));
        }
    }
    Ok(())
}

/// Extracts an f32 output and checks its shape: `expect` entries of -1 match any size.
fn output<'a>(
    outputs: &'a ort::session::SessionOutputs<'_>,
    graph: &str,
    name: &str,
    expect: &[i64],
) -> Result<(Vec<usize>, &'a [f32])> {
    let value = outputs
        .get(name)
        .ok_or_else(|| Error::graph(graph, format!("output {name:?} missing")))?;
    let (shape, data) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| Error::graph(graph, format!("output {name:?}: {e}")))?;
    let dims: &[i64] = shape;
    let ok = dims.len() == expect.len() && dims.iter().zip(expect).all(|(d, e)| *e < 0 || d == e);
    if !ok {
        return Err(Error::graph(
            graph,
            format!("output {name:?} has shape {dims:?}, expected {expect:?} (-1 = any)"),
        ));
    }
    Ok((dims.iter().map(|&d| d as usize).collect(), data))
}

fn pool_params(p: &Pooler) -> RoiAlignParams {
    RoiAlignParams {
        output_size: p.output_size,
        sampling_ratio: p.sampling_ratio,
        aligned: p.aligned,
    }
}

impl MaskRcnn {
    /// Loads and verifies the engine in `dir` and opens its graphs with the requested backend.
    pub fn load(dir: impl AsRef<std::path::Path>, opts: &BackendOptions) -> Result<Self> {
        let engine = Engine::load(dir)?;
        let m = &engine.manifest;
        let g = &m.graphs;
        let mut opts = opts.clone();
        if opts.cache_dir.is_none() {
            opts.cache_dir = Some(engine.dir.join("cache"));
        }
        let (backbone, provider) =
            backend::session(&engine.graph_path(&g.backbone.file), "backbone", &opts)?;
        let outs: Vec<&str> = g
            .backbone
            .features
            .iter()
            .chain(&g.backbone.objectness)
            .chain(&g.backbone.deltas)
            .map(String::as_str)
            .collect();
        check_names(&backbone, &g.backbone.file, &[&g.backbone.input], &outs)?;
        let c = m.model.fpn_channels;
        check_channels(
            &backbone,
            &g.backbone.file,
            &g.backbone
                .features
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            c,
        )?;
        let (box_head, _) =
            backend::session(&engine.graph_path(&g.box_head.file), "box_head", &opts)?;
        check_names(
            &box_head,
            &g.box_head.file,
            &[&g.box_head.input],
            &[&g.box_head.class_logits, &g.box_head.box_deltas],
        )?;
        check_channels(&box_head, &g.box_head.file, &[&g.box_head.input], c)?;
        let (mask_head, _) =
            backend::session(&engine.graph_path(&g.mask_head.file), "mask_head", &opts)?;
        check_names(
            &mask_head,
            &g.mask_head.file,
            &[&g.mask_head.input],
            &[&g.mask_head.mask_logits],
        )?;
        check_channels(&mask_head, &g.mask_head.file, &[&g.mask_head.input], c)?;
        tracing::info!(engine = %engine.dir.display(), %provider, "engine loaded");
        let mut model = MaskRcnn {
            anchors: AnchorGenerator::new(&m.anchors),
            engine,
            backbone,
            box_head,
            mask_head,
            provider,
            pre: Preprocessor::default(),
            input: Vec::new(),
            proposal_scratch: ProposalScratch::default(),
            detection_scratch: DetectionScratch::default(),
            paste_scratch: PasteScratch::default(),
            pooled: Vec::new(),
            probs: Vec::new(),
            aligner: RoiAligner::default(),
        };
        model.warm_heads()?;
        Ok(model)
    }

    /// Runs both heads once at their largest inputs (every proposal of a frame; the most detections
    /// a frame may keep), so that ONNX Runtime's memory arena reaches its high-water mark at load
    /// instead of growing in steps whenever a frame brings more detections than any before.
    fn warm_heads(&mut self) -> Result<()> {
        let m = &self.engine.manifest;
        let c = m.model.fpn_channels;
        let runs = [
            (
                &mut self.box_head,
                &m.graphs.box_head.file,
                &m.graphs.box_head.input,
                m.rpn.post_nms_top_n,
                m.box_roi_pool.output_size,
            ),
            (
                &mut self.mask_head,
                &m.graphs.mask_head.file,
                &m.graphs.mask_head.input,
                m.roi_heads.detections_per_img,
                m.mask_roi_pool.output_size,
            ),
        ];
        for (session, file, input, n, res) in runs {
            self.pooled.clear();
            self.pooled.resize(n * c * res * res, 0.0);
            let tensor = TensorRef::from_array_view(([n, c, res, res], &self.pooled[..]))?;
            session
                .run(ort::inputs![input.as_str() => tensor])
                .map_err(|e| Error::graph(file, format!("run at [{n}, {c}, {res}, {res}]: {e}")))?;
        }
        // `pooled` keeps its capacity: the first frames need that much again
        Ok(())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.engine.manifest
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn classes(&self) -> &[String] {
        self.engine.classes()
    }

    /// The execution provider that runs the graphs.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Detects instances in one frame.
    pub fn detect(&mut self, frame: &RgbFrame<'_>) -> Result<Detections> {
        let mut out = self.detect_batch(std::slice::from_ref(frame))?;
        out.pop()
            .ok_or_else(|| Error::Input("empty batch result".into()))
    }

    /// Detects instances in several frames with one pass through each graph (frames are padded to the
    /// largest, as torchvision batches them). Stage times are those of the whole batch.
    pub fn detect_batch(&mut self, frames: &[RgbFrame<'_>]) -> Result<Vec<Detections>> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        // disjoint borrows of every field: the manifest is read while the sessions and buffers are used
        let Self {
            engine,
            backbone,
            box_head: box_session,
            mask_head: mask_session,
            anchors,
            pre,
            input,
            proposal_scratch,
            detection_scratch,
            paste_scratch,
            pooled,
            probs,
            aligner,
            ..
        } = self;
        let m = &engine.manifest;
        let mut times = StageTimes::default();

        // -- preprocess ----------------------------------------------------------------------------
        let t = Instant::now();
        let div = m.transform.size_divisible as usize;
        let (mut ph, mut pw) = (0, 0);
        for f in frames {
            let (rh, rw) = resized_size(f.height, f.width, &m.transform);
            ph = ph.max(padded(rh, div));
            pw = pw.max(padded(rw, div));
        }
        let n = frames.len();
        let per_image = 3 * ph * pw;
        input.resize(n * per_image, 0.0);
        let mut sizes: Vec<Preprocessed> = Vec::with_capacity(n);
        for (i, f) in frames.iter().enumerate() {
            let _span = tracing::trace_span!("preprocess").entered();
            sizes.push(pre.run(
                f,
                &m.transform,
                (ph, pw),
                &mut input[i * per_image..(i + 1) * per_image],
            ));
        }
        times.preprocess = t.elapsed();

        // -- backbone + FPN + RPN head ---------------------------------------------------------------
        let t = Instant::now();
        let g = &m.graphs.backbone;
        let graph = g.file.as_str();
        let tensor = TensorRef::from_array_view(([n, 3, ph, pw], &input[..]))?;
        let outputs = {
            let _span = tracing::debug_span!("backbone").entered();
            backbone.run(ort::inputs![g.input.as_str() => tensor])?
        };
        let c = m.model.fpn_channels as i64;
        let a = m.model.num_anchors_per_location as i64;
        let mut features = Vec::with_capacity(g.features.len());
        for name in &g.features {
            let (shape, data) = output(&outputs, graph, name, &[n as i64, c, -1, -1])?;
            features.push((shape, data));
        }
        let mut heads = Vec::with_capacity(g.features.len());
        for (l, (obj_name, delta_name)) in g.objectness.iter().zip(&g.deltas).enumerate() {
            let (fh, fw) = (features[l].0[2] as i64, features[l].0[3] as i64);
            let (_, obj) = output(&outputs, graph, obj_name, &[n as i64, a, fh, fw])?;
            let (_, del) = output(&outputs, graph, delta_name, &[n as i64, 4 * a, fh, fw])?;
            heads.push((obj, del, fh as usize, fw as usize));
        }
        times.backbone = t.elapsed();

        // -- proposals -----------------------------------------------------------------------------
        let t = Instant::now();
        let grids: Vec<(usize, usize)> = heads.iter().map(|h| (h.2, h.3)).collect();
        let level_anchors = anchors.get((ph, pw), &grids);
        let a = a as usize;
        let mut proposals = Vec::with_capacity(n);
        for (i, size) in sizes.iter().enumerate() {
            let _span = tracing::debug_span!("proposals").entered();
            let level_heads: Vec<LevelHead<'_>> = heads
                .iter()
                .map(|&(obj, del, h, w)| LevelHead {
                    objectness: &obj[i * a * h * w..(i + 1) * a * h * w],
                    deltas: &del[i * 4 * a * h * w..(i + 1) * 4 * a * h * w],
                    height: h,
                    width: w,
                    anchors_per_location: a,
                })
                .collect();
            proposals.push(rpn::propose(
                &level_heads,
                level_anchors,
                size.resized,
                &m.rpn,
                proposal_scratch,
            ));
        }
        times.proposals = t.elapsed();

        // -- ROIAlign 7x7 + box head ---------------------------------------------------------------
        let max_h = sizes.iter().map(|s| s.resized.0).max().unwrap_or(1);
        let max_w = sizes.iter().map(|s| s.resized.1).max().unwrap_or(1);
        let pool_levels = |p: &Pooler| -> Result<(Vec<FeatureMap<'_>>, i32, i32)> {
            let mut maps = Vec::with_capacity(p.levels.len());
            let mut ks = Vec::with_capacity(p.levels.len());
            for name in &p.levels {
                let li = m
                    .level_index(name)
                    .ok_or_else(|| Error::graph(graph, format!("no level {name}")))?;
                let (shape, data) = &features[li];
                let scale = roi_align::infer_scale(shape[2], max_h);
                if roi_align::infer_scale(shape[3], max_w) != scale {
                    return Err(Error::graph(
                        graph,
                        format!(
                            "level {name}: feature {}x{} gives different scales per axis",
                            shape[2], shape[3]
                        ),
                    ));
                }
                ks.push(-scale.log2().round() as i32);
                maps.push(FeatureMap {
                    data,
                    batch: shape[0],
                    channels: shape[1],
                    height: shape[2],
                    width: shape[3],
                    spatial_scale: scale,
                });
            }
            let k_min = ks.first().copied().unwrap_or(0);
            let k_max = ks.last().copied().unwrap_or(0);
            Ok((maps, k_min, k_max))
        };
        let rois_for = |boxes: &[&[BoxF]], p: &Pooler, k_min: i32, k_max: i32| -> Vec<Roi> {
            boxes
                .iter()
                .enumerate()
                .flat_map(|(i, bs)| {
                    bs.iter().map(move |b| Roi {
                        batch: i,
                        level: roi_align::map_level(
                            b,
                            k_min,
                            k_max,
                            p.canonical_scale as f32,
                            p.canonical_level as f32,
                        ),
                        bbox: *b,
                    })
                })
                .collect()
        };

        let t = Instant::now();
        let bp = &m.box_roi_pool;
        let (maps, k_min, k_max) = pool_levels(bp)?;
        let prop_boxes: Vec<&[BoxF]> = proposals
            .iter()
            .map(|p: &Proposals| p.boxes.as_slice())
            .collect();
        let rois = rois_for(&prop_boxes, bp, k_min, k_max);
        let res = bp.output_size;
        pooled.resize(rois.len() * c as usize * res * res, 0.0);
        {
            let _span = tracing::debug_span!("roi_align_box", rois = rois.len()).entered();
            aligner.prepare(&maps)?;
            aligner.pool(&maps, &rois, &pool_params(bp), pooled)?;
        }
        times.roi_align_box = t.elapsed();

        let t = Instant::now();
        let num_classes = m.num_classes();
        let bh = &m.graphs.box_head;
        let mut raw: Vec<RawDetections> = Vec::with_capacity(n);
        if rois.is_empty() {
            raw.resize(n, RawDetections::default());
            times.box_head = t.elapsed();
        } else {
            let tensor =
                TensorRef::from_array_view(([rois.len(), c as usize, res, res], &pooled[..]))?;
            let out = {
                let _span = tracing::debug_span!("box_head").entered();
                box_session.run(ort::inputs![bh.input.as_str() => tensor])?
            };
            let r = rois.len() as i64;
            let (_, logits) = output(&out, &bh.file, &bh.class_logits, &[r, num_classes as i64])?;
            let (_, deltas) = output(&out, &bh.file, &bh.box_deltas, &[r, 4 * num_classes as i64])?;
            times.box_head = t.elapsed();
            let t = Instant::now();
            let mut start = 0;
            for (i, p) in proposals.iter().enumerate() {
                let _span = tracing::debug_span!("detections").entered();
                let k = p.boxes.len();
                raw.push(box_head::postprocess(
                    &p.boxes,
                    &logits[start * num_classes..(start + k) * num_classes],
                    &deltas[start * 4 * num_classes..(start + k) * 4 * num_classes],
                    num_classes,
                    sizes[i].resized,
                    &m.roi_heads,
                    detection_scratch,
                ));
                start += k;
            }
            times.detections = t.elapsed();
        }

        // -- ROIAlign 14x14 + mask head --------------------------------------------------------------
        let t = Instant::now();
        let mp = &m.mask_roi_pool;
        let (maps, k_min, k_max) = pool_levels(mp)?;
        let det_boxes: Vec<&[BoxF]> = raw.iter().map(|d| d.boxes.as_slice()).collect();
        let rois = rois_for(&det_boxes, mp, k_min, k_max);
        let mres = mp.output_size;
        pooled.resize(rois.len() * c as usize * mres * mres, 0.0);
        {
            let _span = tracing::debug_span!("roi_align_mask", rois = rois.len()).entered();
            if mp.levels != bp.levels {
                aligner.prepare(&maps)?;
            }
            aligner.pool(&maps, &rois, &pool_params(mp), pooled)?;
        }
        times.roi_align_mask = t.elapsed();

        let t = Instant::now();
        let labels: Vec<usize> = raw.iter().flat_map(|d| d.labels.iter().copied()).collect();
        let resolution = m.mask.resolution;
        if !rois.is_empty() {
            let mh = &m.graphs.mask_head;
            let tensor =
                TensorRef::from_array_view(([rois.len(), c as usize, mres, mres], &pooled[..]))?;
            let out = {
                let _span = tracing::debug_span!("mask_head").entered();
                mask_session.run(ort::inputs![mh.input.as_str() => tensor])?
            };
            let (_, logits) = output(
                &out,
                &mh.file,
                &mh.mask_logits,
                &[
                    rois.len() as i64,
                    num_classes as i64,
                    resolution as i64,
                    resolution as i64,
                ],
            )?;
            mask_head::class_probabilities(logits, &labels, num_classes, resolution, probs);
        } else {
            probs.clear();
        }
        times.mask_head = t.elapsed();

        // -- paste -----------------------------------------------------------------------------------
        let t = Instant::now();
        let plane = resolution * resolution;
        let mut results = Vec::with_capacity(n);
        let mut offset = 0;
        for ((d, size), p) in raw.into_iter().zip(&sizes).zip(proposals) {
            let _span = tracing::debug_span!("paste").entered();
            let mut detections = Vec::with_capacity(d.boxes.len());
            for (j, ((b, &score), &label)) in
                d.boxes.iter().zip(&d.scores).zip(&d.labels).enumerate()
            {
                let bbox = paste::to_original(b, size.resized, size.original);
                let mask = paste::paste(
                    &probs[(offset + j) * plane..(offset + j + 1) * plane],
                    resolution,
                    &bbox,
                    size.original,
                    m.mask.paste_padding,
                    m.mask.threshold,
                    paste_scratch,
                );
                detections.push(Detection {
                    class_id: label,
                    score,
                    bbox,
                    mask,
                });
            }
            offset += d.boxes.len();
            results.push(Detections {
                detections,
                proposals: p,
                resized: size.resized,
                padded: (ph, pw),
                times: StageTimes::default(),
            });
        }
        times.paste = t.elapsed();
        for r in &mut results {
            r.times = times;
        }
        Ok(results)
    }
}
