use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use maskstream::model::Detection;
use maskstream::{BackendOptions, RgbFrame};

use super::{Backend, Precision};
use crate::meta;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "maskrcnn",
        gst::DebugColorFlags::empty(),
        Some("maskstream Mask R-CNN inference"),
    )
});

const DEFAULT_SCORE_THRESHOLD: f32 = 0.5;
const DEFAULT_THREADS: u32 = 0;
const DEFAULT_MAX_BATCH: u32 = 1;

/// The bundled engine: ./engines/shapes when run from a checkout, else the one this plugin was built
/// next to (as `maskstream detect` does).
fn default_engine() -> PathBuf {
    let local = PathBuf::from("engines/shapes");
    if local.join("manifest.toml").is_file() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engines/shapes")
}

#[derive(Debug, Clone)]
struct Settings {
    engine: Option<String>,
    backend: Backend,
    precision: Precision,
    score_threshold: f32,
    threads: u32,
    max_batch: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            engine: None,
            backend: Backend::Auto,
            precision: Precision::Auto,
            score_threshold: DEFAULT_SCORE_THRESHOLD,
            threads: DEFAULT_THREADS,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }
}

/// Between start and stop: the loaded model and what the caps need to feed it.
struct State {
    model: maskstream::MaskRcnn,
    classes: Vec<String>,
    info: Option<gst_video::VideoInfo>,
    /// To packed RGB when the input is not RGB already, with the buffer it converts into.
    convert: Option<Convert>,
}

struct Convert {
    converter: gst_video::VideoConverter,
    rgb_info: gst_video::VideoInfo,
    /// One per frame of the largest batch so far.
    rgb: Vec<gst::Buffer>,
}

/// Buffers held for a batch, and those inferred but not pushed yet.
#[derive(Default)]
struct Batch {
    pending: Vec<gst::Buffer>,
    ready: VecDeque<gst::Buffer>,
}

#[derive(Debug, Default)]
struct Stats {
    frames: u64,
    total: Duration,
    /// What the latency query answers (the slowest inference seen), and whether downstream knows it.
    latency: Duration,
}

#[derive(Default)]
pub struct MaskRcnn {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Mutex<Stats>,
    batch: Mutex<Batch>,
    /// The pipeline's latency (from the sink's latency event): a live buffer is due that long
    /// after its running time.
    pipeline_latency: Mutex<gst::ClockTime>,
}

#[glib::object_subclass]
impl ObjectSubclass for MaskRcnn {
    const NAME: &'static str = "GstMaskRcnn";
    type Type = super::MaskRcnn;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for MaskRcnn {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("engine")
                    .nick("Engine")
                    .blurb(
                        "Engine folder (manifest.toml and its ONNX graphs); unset: the bundled \
                         engines/shapes",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("backend", Backend::Auto)
                    .nick("Backend")
                    .blurb("Execution provider that runs the graphs")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("precision", Precision::Auto)
                    .nick("Precision")
                    .blurb(
                        "FP32 or INT8 graphs (auto: the engine's CPU default on CPU, FP32 on GPUs)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecFloat::builder("score-threshold")
                    .nick("Score threshold")
                    .blurb("Instances scoring below this get no meta")
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_SCORE_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("ONNX Runtime intra-op threads per graph (0 = one per core)")
                    .minimum(0)
                    .maximum(1024)
                    .default_value(DEFAULT_THREADS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-batch")
                    .nick("Maximum batch")
                    .blurb(
                        "Frames inferred together when the element is behind (a buffer already \
                         late against the clock waits for the next ones, up to this many); 1 = \
                         every frame on its own",
                    )
                    .minimum(1)
                    .maximum(64)
                    .default_value(DEFAULT_MAX_BATCH)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("frames")
                    .nick("Frames")
                    .blurb("Frames inferred since the element started")
                    .read_only()
                    .build(),
                glib::ParamSpecDouble::builder("mean-inference-ms")
                    .nick("Mean inference time")
                    .blurb("Mean time per frame of conversion and inference, in milliseconds")
                    .minimum(0.0)
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        match pspec.name() {
            "engine" => s.engine = value.get().expect("type checked upstream"),
            "backend" => s.backend = value.get().expect("type checked upstream"),
            "precision" => s.precision = value.get().expect("type checked upstream"),
            "score-threshold" => s.score_threshold = value.get().expect("type checked upstream"),
            "threads" => s.threads = value.get().expect("type checked upstream"),
            "max-batch" => s.max_batch = value.get().expect("type checked upstream"),
            other => unreachable!("no writable property {other}"),
        }
        gst::debug!(CAT, imp = self, "{} set to {:?}", pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "engine" => s.engine.to_value(),
            "backend" => s.backend.to_value(),
            "precision" => s.precision.to_value(),
            "score-threshold" => s.score_threshold.to_value(),
            "threads" => s.threads.to_value(),
            "max-batch" => s.max_batch.to_value(),
            "frames" => self.stats.lock().unwrap().frames.to_value(),
            "mean-inference-ms" => {
                let st = self.stats.lock().unwrap();
                let ms = if st.frames == 0 {
                    0.0
                } else {
                    st.total.as_secs_f64() * 1e3 / st.frames as f64
                };
                ms.to_value()
            }
            other => unreachable!("no property {other}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // late frames are dropped (and counted in QoS messages) on live pipelines
        self.obj().set_qos(true);
    }
}

impl GstObjectImpl for MaskRcnn {}

impl ElementImpl for MaskRcnn {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Mask R-CNN instance segmentation",
                "Filter/Analyzer/Video",
                "Finds object instances with maskstream's Mask R-CNN and attaches one \
                 GstVideoRegionOfInterestMeta per instance (roi type = label) with a \
                 maskstream/instance structure: score, class-id, box, COCO RLE mask",
                "maskstream developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list([
                    gst_video::VideoFormat::Rgb,
                    gst_video::VideoFormat::Rgbx,
                    gst_video::VideoFormat::Bgrx,
                    gst_video::VideoFormat::Nv12,
                    gst_video::VideoFormat::I420,
                ])
                .build();
            crate::src_and_sink(&caps)
        });
        TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for MaskRcnn {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let s = self.settings.lock().unwrap().clone();
        let engine = s.engine.map(PathBuf::from).unwrap_or_else(default_engine);
        let opts = BackendOptions {
            kind: s.backend.into(),
            precision: s.precision.into(),
            threads: s.threads as usize,
            ..Default::default()
        };
        gst::info!(CAT, imp = self, "loading engine {}", engine.display());
        let t0 = Instant::now();
        let model = maskstream::MaskRcnn::load(&engine, &opts).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                ("Could not load engine {}: {}", engine.display(), e)
            )
        })?;
        gst::info!(
            CAT,
            imp = self,
            "engine {} loaded on {} in {:?}",
            engine.display(),
            model.provider(),
            t0.elapsed()
        );
        let classes = model.classes().to_vec();
        *self.stats.lock().unwrap() = Stats::default();
        *self.state.lock().unwrap() = Some(State {
            model,
            classes,
            info: None,
            convert: None,
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // drops the sessions and their memory
        *self.state.lock().unwrap() = None;
        *self.batch.lock().unwrap() = Batch::default();
        *self.pipeline_latency.lock().unwrap() = gst::ClockTime::ZERO;
        gst::info!(CAT, imp = self, "stopped");
        Ok(())
    }

    fn set_caps(&self, incaps: &gst::Caps, outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = gst_video::VideoInfo::from_caps(incaps)
            .map_err(|_| gst::loggable_error!(CAT, "Invalid input caps {}", incaps))?;
        if incaps != outcaps {
            return Err(gst::loggable_error!(
                CAT,
                "Output caps {} differ from input {}",
                outcaps,
                incaps
            ));
        }
        let convert = if info.format() == gst_video::VideoFormat::Rgb {
            None
        } else {
            let rgb_info = gst_video::VideoInfo::builder(
                gst_video::VideoFormat::Rgb,
                info.width(),
                info.height(),
            )
            .fps(info.fps())
            .par(info.par())
            .interlace_mode(info.interlace_mode())
            .build()
            .map_err(|e| gst::loggable_error!(CAT, "RGB video info: {}", e))?;
            let converter = gst_video::VideoConverter::new(&info, &rgb_info, None)
                .map_err(|e| gst::loggable_error!(CAT, "No converter to RGB: {}", e))?;
            Some(Convert {
                converter,
                rgb_info,
                rgb: Vec::new(),
            })
        };
        let mut state = self.state.lock().unwrap();
        let Some(state) = state.as_mut() else {
            return Err(gst::loggable_error!(CAT, "Caps set before start"));
        };
        gst::debug!(CAT, imp = self, "input {:?}", info);
        state.info = Some(info);
        state.convert = convert;
        Ok(())
    }

    fn query(&self, direction: gst::PadDirection, query: &mut gst::QueryRef) -> bool {
        if direction == gst::PadDirection::Src {
            if let gst::QueryViewMut::Latency(q) = query.view_mut() {
                let mut upstream = gst::query::Latency::new();
                let sinkpad = self.obj().static_pad("sink").expect("always pad");
                if !sinkpad.peer_query(&mut upstream) {
                    return false;
                }
                let (live, min, max) = upstream.result();
                let ours = gst::ClockTime::try_from(self.stats.lock().unwrap().latency)
                    .unwrap_or(gst::ClockTime::ZERO);
                gst::debug!(
                    CAT,
                    imp = self,
                    "latency: upstream {min} + inference {ours}"
                );
                q.set(live, min + ours, max.map(|m| m + ours));
                return true;
            }
        }
        BaseTransformImplExt::parent_query(self, direction, query)
    }

    fn generate_output(
        &self,
    ) -> Result<gst_base::subclass::base_transform::GenerateOutputSuccess, gst::FlowError> {
        use gst_base::subclass::base_transform::GenerateOutputSuccess as Out;
        if let Some(b) = self.batch.lock().unwrap().ready.pop_front() {
            return Ok(Out::Buffer(b));
        }
        let Some(inbuf) = self.take_queued_buffer() else {
            return Ok(Out::NoOutput);
        };
        let max = self.settings.lock().unwrap().max_batch as usize;
        let wait = {
            let mut batch = self.batch.lock().unwrap();
            let late = max > 1 && self.behind(&inbuf);
            batch.pending.push(inbuf);
            late && batch.pending.len() < max
        };
        if wait {
            return Ok(Out::NoOutput);
        }
        self.infer_pending()?;
        Ok(self
            .batch
            .lock()
            .unwrap()
            .ready
            .pop_front()
            .map_or(Out::NoOutput, Out::Buffer))
    }

    fn src_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Latency(l) = event.view() {
            *self.pipeline_latency.lock().unwrap() = l.latency();
        }
        self.parent_src_event(event)
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::FlushStop(_) => {
                *self.batch.lock().unwrap() = Batch::default();
            }
            // a held batch goes out before whatever follows it in the stream
            gst::EventView::Eos(_)
            | gst::EventView::Caps(_)
            | gst::EventView::Segment(_)
            | gst::EventView::Gap(_) => {
                if let Err(e) = self.drain() {
                    gst::debug!(CAT, imp = self, "draining the batch: {:?}", e);
                }
            }
            _ => {}
        }
        self.parent_sink_event(event)
    }
}

impl MaskRcnn {
    /// Whether `buf` is already late against the pipeline clock (by more than the pipeline's latency,
    /// or the inference latency the element announced when that is more); never without a clock or
    /// timestamps.
    fn behind(&self, buf: &gst::BufferRef) -> bool {
        let obj = self.obj();
        let (Some(clock), Some(base), Some(pts)) = (obj.clock(), obj.base_time(), buf.pts()) else {
            return false;
        };
        let Ok(segment) = obj.segment().downcast::<gst::ClockTime>() else {
            return false;
        };
        let Some(running) = segment.to_running_time(pts) else {
            return false;
        };
        let now = clock.time().saturating_sub(base);
        let ours = gst::ClockTime::try_from(self.stats.lock().unwrap().latency)
            .unwrap_or(gst::ClockTime::ZERO);
        let pipeline = *self.pipeline_latency.lock().unwrap();
        now > running + ours.max(pipeline)
    }

    /// Infers the held buffers together; they join the ready queue.
    fn infer_pending(&self) -> Result<(), gst::FlowError> {
        let pending = std::mem::take(&mut self.batch.lock().unwrap().pending);
        if pending.is_empty() {
            return Ok(());
        }
        let out = self.infer(pending)?;
        self.batch.lock().unwrap().ready.extend(out);
        Ok(())
    }

    /// Infers and pushes whatever is held (before EOS, caps, segments, gaps).
    fn drain(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.infer_pending()?;
        let src = self.obj().static_pad("src").expect("always pad");
        loop {
            let next = self.batch.lock().unwrap().ready.pop_front();
            match next {
                Some(b) => src.push(b)?,
                None => return Ok(gst::FlowSuccess::Ok),
            };
        }
    }

    /// One pass of the model over `bufs`; each gets its instance metas.
    fn infer(&self, mut bufs: Vec<gst::Buffer>) -> Result<Vec<gst::Buffer>, gst::FlowError> {
        let threshold = self.settings.lock().unwrap().score_threshold;
        let t0 = Instant::now();
        let (results, classes) = {
            let mut guard = self.state.lock().unwrap();
            let Some(state) = guard.as_mut() else {
                gst::element_imp_error!(self, gst::CoreError::Negotiation, ("Not started"));
                return Err(gst::FlowError::NotNegotiated);
            };
            // no mask for what the threshold drops
            state.model.set_min_score(threshold);
            let results = state.detect_batch(&bufs).map_err(|e| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("Inference failed: {}", e)
                );
                gst::FlowError::Error
            })?;
            (results, state.classes.clone())
        };
        let took = t0.elapsed();
        for (buf, detections) in bufs.iter_mut().zip(results) {
            let buf = buf.make_mut();
            let mut kept = 0;
            for d in detections.iter().filter(|d| d.score >= threshold) {
                let label = classes.get(d.class_id).map_or("", String::as_str);
                meta::attach(buf, d, label, None);
                kept += 1;
            }
            gst::log!(CAT, imp = self, "{:?}: {} instances", buf.pts(), kept);
        }
        gst::log!(CAT, imp = self, "{} frames in {:?}", bufs.len(), took);
        let announce = {
            let mut st = self.stats.lock().unwrap();
            st.frames += bufs.len() as u64;
            st.total += took;
            // tell the pipeline when inference got slower than the latency it was told about
            // (the first frame, then only by more than a quarter)
            if took > st.latency + st.latency / 4 {
                st.latency = took;
                true
            } else {
                false
            }
        };
        if announce {
            gst::debug!(CAT, imp = self, "latency now {:?}", took);
            let _ = self
                .obj()
                .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
        }
        Ok(bufs)
    }
}

impl State {
    /// The detections of each buffer's frame, converted to packed RGB first unless it is RGB already.
    fn detect_batch(&mut self, bufs: &[gst::Buffer]) -> Result<Vec<Vec<Detection>>, String> {
        let info = self.info.clone().ok_or("no caps")?;
        let (w, h) = (info.width() as usize, info.height() as usize);
        let frames = bufs
            .iter()
            .map(|b| {
                gst_video::VideoFrameRef::from_buffer_ref_readable(b.as_ref(), &info)
                    .map_err(|_| "cannot map a frame".to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let result = match &mut self.convert {
            None => {
                let rgb = frames
                    .iter()
                    .map(|f| {
                        let data = f.plane_data(0).map_err(|e| e.to_string())?;
                        RgbFrame::new(w, h, f.plane_stride()[0] as usize, data)
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.model.detect_batch(&rgb)
            }
            Some(c) => {
                while c.rgb.len() < frames.len() {
                    c.rgb.push(
                        gst::Buffer::with_size(c.rgb_info.size()).map_err(|e| e.to_string())?,
                    );
                }
                for (f, out) in frames.iter().zip(c.rgb.iter_mut()) {
                    let out = out.get_mut().ok_or("RGB buffer is shared")?;
                    let mut dest =
                        gst_video::VideoFrameRef::from_buffer_ref_writable(out, &c.rgb_info)
                            .map_err(|_| "cannot map the RGB buffer".to_string())?;
                    c.converter.frame_ref(f, &mut dest);
                }
                let stride = c.rgb_info.stride()[0] as usize;
                let maps = c.rgb[..frames.len()]
                    .iter()
                    .map(|b| b.map_readable().map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                let rgb = maps
                    .iter()
                    .map(|m| RgbFrame::new(w, h, stride, m.as_slice()).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                self.model.detect_batch(&rgb)
            }
        };
        result
            .map(|v| v.into_iter().map(|r| r.detections).collect())
            .map_err(|e| e.to_string())
    }
}
