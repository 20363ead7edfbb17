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

use super::Backend;
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
    score_threshold: f32,
    threads: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            engine: None,
            backend: Backend::Auto,
            score_threshold: DEFAULT_SCORE_THRESHOLD,
            threads: DEFAULT_THREADS,
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
    rgb: gst::Buffer,
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
            "score-threshold" => s.score_threshold = value.get().expect("type checked upstream"),
            "threads" => s.threads = value.get().expect("type checked upstream"),
            other => unreachable!("no writable property {other}"),
        }
        gst::debug!(CAT, imp = self, "{} set to {:?}", pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "engine" => s.engine.to_value(),
            "backend" => s.backend.to_value(),
            "score-threshold" => s.score_threshold.to_value(),
            "threads" => s.threads.to_value(),
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
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
            ]
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
            let rgb = gst::Buffer::with_size(rgb_info.size())
                .map_err(|e| gst::loggable_error!(CAT, "RGB buffer: {}", e))?;
            Some(Convert {
                converter,
                rgb_info,
                rgb,
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

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let threshold = self.settings.lock().unwrap().score_threshold;
        let t0 = Instant::now();
        let (detections, classes) = {
            let mut guard = self.state.lock().unwrap();
            let Some(state) = guard.as_mut() else {
                gst::element_imp_error!(self, gst::CoreError::Negotiation, ("Not started"));
                return Err(gst::FlowError::NotNegotiated);
            };
            let Some(info) = state.info.clone() else {
                gst::element_imp_error!(self, gst::CoreError::Negotiation, ("No caps negotiated"));
                return Err(gst::FlowError::NotNegotiated);
            };
            let frame =
                gst_video::VideoFrameRef::from_buffer_ref_readable(&*buf, &info).map_err(|_| {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Failed,
                        ("Cannot map the video frame")
                    );
                    gst::FlowError::Error
                })?;
            let detections = state.detect(&frame).map_err(|e| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("Inference failed: {}", e)
                );
                gst::FlowError::Error
            })?;
            (detections, state.classes.clone())
        };
        let took = t0.elapsed();
        let mut kept = 0;
        for d in detections.iter().filter(|d| d.score >= threshold) {
            let label = classes.get(d.class_id).map_or("", String::as_str);
            meta::attach(buf, d, label, None);
            kept += 1;
        }
        gst::log!(
            CAT,
            imp = self,
            "{:?}: {} instances in {:?}",
            buf.pts(),
            kept,
            took
        );
        let announce = {
            let mut st = self.stats.lock().unwrap();
            st.frames += 1;
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
        Ok(gst::FlowSuccess::Ok)
    }
}

impl State {
    /// The detections of one frame, converted to packed RGB first unless it is RGB already.
    fn detect(
        &mut self,
        frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
    ) -> Result<Vec<Detection>, String> {
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        let result = match &mut self.convert {
            None => {
                let data = frame.plane_data(0).map_err(|e| e.to_string())?;
                let stride = frame.plane_stride()[0] as usize;
                let rgb = RgbFrame::new(w, h, stride, data).map_err(|e| e.to_string())?;
                self.model.detect(&rgb)
            }
            Some(c) => {
                {
                    let out = c.rgb.get_mut().ok_or("RGB buffer is shared")?;
                    let mut dest =
                        gst_video::VideoFrameRef::from_buffer_ref_writable(out, &c.rgb_info)
                            .map_err(|_| "cannot map the RGB buffer".to_string())?;
                    c.converter.frame_ref(frame, &mut dest);
                }
                let map = c.rgb.map_readable().map_err(|e| e.to_string())?;
                let stride = c.rgb_info.stride()[0] as usize;
                let rgb = RgbFrame::new(w, h, stride, map.as_slice()).map_err(|e| e.to_string())?;
                self.model.detect(&rgb)
            }
        };
        result.map(|r| r.detections).map_err(|e| e.to_string())
    }
}
