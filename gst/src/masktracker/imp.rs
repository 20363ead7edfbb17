use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use maskstream::analytics::config::{Settings, TrackerConfig};
use maskstream::analytics::Analytics;

use crate::meta;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "masktracker",
        gst::DebugColorFlags::empty(),
        Some("maskstream instance tracker"),
    )
});

const DEFAULT_SCORE_THRESHOLD: f32 = 0.5;

#[derive(Debug, Clone)]
struct Config {
    tracker: TrackerConfig,
    score_threshold: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tracker: TrackerConfig::default(),
            score_threshold: DEFAULT_SCORE_THRESHOLD,
        }
    }
}

/// One stream's tracking: reset on start, flush and stop.
struct State {
    analytics: Analytics,
    frame: u64,
    /// Labels by class id, as the metas named them (the tracker may change an instance's class by vote).
    labels: BTreeMap<usize, String>,
}

impl State {
    fn new(cfg: &Config) -> Self {
        let settings = Settings {
            tracker: cfg.tracker.clone(),
            ..Default::default()
        };
        State {
            analytics: Analytics::new("gst", "gst", &[], settings),
            frame: 0,
            labels: BTreeMap::new(),
        }
    }
}

#[derive(Default)]
pub struct MaskTracker {
    config: Mutex<Config>,
    state: Mutex<Option<State>>,
}

#[glib::object_subclass]
impl ObjectSubclass for MaskTracker {
    const NAME: &'static str = "GstMaskTracker";
    type Type = super::MaskTracker;
    type ParentType = gst_base::BaseTransform;
}

fn threshold(name: &str, nick: &str, blurb: &str, default: f32) -> glib::ParamSpec {
    glib::ParamSpecFloat::builder(name)
        .nick(nick)
        .blurb(blurb)
        .minimum(0.0)
        .maximum(1.0)
        .default_value(default)
        .mutable_ready()
        .build()
}

impl ObjectImpl for MaskTracker {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let d = TrackerConfig::default();
            vec![
                threshold(
                    "score-threshold",
                    "Score threshold",
                    "Instances scoring below this are dropped after tracking (the output threshold)",
                    DEFAULT_SCORE_THRESHOLD,
                ),
                threshold(
                    "high-threshold",
                    "High threshold",
                    "Instances at or above this take part in the first association stage",
                    d.high_threshold,
                ),
                threshold(
                    "low-threshold",
                    "Low threshold",
                    "Instances between this and high-threshold only keep existing tracks alive",
                    d.low_threshold,
                ),
                threshold(
                    "new-track-threshold",
                    "New track threshold",
                    "An unmatched instance at or above this starts a track",
                    d.new_track_threshold,
                ),
                threshold(
                    "match-iou",
                    "Match IoU",
                    "Least similarity (IoU) for a match in the first stage",
                    d.match_iou,
                ),
                threshold(
                    "low-match-iou",
                    "Low match IoU",
                    "Least similarity for a match of a low-score instance (second stage)",
                    d.low_match_iou,
                ),
                glib::ParamSpecBoolean::builder("mask-iou")
                    .nick("Mask IoU")
                    .blurb("Blend mask IoU (last mask moved by the predicted motion) into box IoU")
                    .default_value(d.mask_iou)
                    .mutable_ready()
                    .build(),
                threshold(
                    "other-class-weight",
                    "Other class weight",
                    "Share of the similarity a detection of another class than the track's label \
                     counts (1 = class-blind)",
                    d.other_class_weight,
                ),
                glib::ParamSpecFloat::builder("recovery-buffer")
                    .nick("Recovery buffer")
                    .blurb(
                        "Lost tracks look again for their class with boxes widened by this many \
                         standard deviations of the predicted centre (0 = off)",
                    )
                    .minimum(0.0)
                    .maximum(10.0)
                    .default_value(d.recovery_buffer)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("min-hits")
                    .nick("Minimum hits")
                    .blurb("Matched frames before a track is confirmed")
                    .minimum(1)
                    .maximum(1000)
                    .default_value(d.min_hits)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("output-tentative")
                    .nick("Output tentative")
                    .blurb("Also keep instances whose track is not confirmed yet")
                    .default_value(d.output_tentative)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-lost-frames")
                    .nick("Maximum lost frames")
                    .blurb("Frames a track survives unmatched before it is removed")
                    .minimum(0)
                    .maximum(100_000)
                    .default_value(d.max_lost_frames)
                    .mutable_ready()
                    .build(),
                threshold(
                    "merge-iou",
                    "Merge IoU",
                    "Cross-class duplicates whose mask IoU reaches this are merged (1 = off)",
                    d.merge_iou,
                ),
                threshold(
                    "merge-containment",
                    "Merge containment",
                    "Instances with this share of the smaller mask inside the larger are merged \
                     (1 = off)",
                    d.merge_containment,
                ),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut c = self.config.lock().unwrap();
        let t = &mut c.tracker;
        let f = || value.get::<f32>().expect("type checked upstream");
        let u = || value.get::<u32>().expect("type checked upstream");
        let b = || value.get::<bool>().expect("type checked upstream");
        match pspec.name() {
            "high-threshold" => t.high_threshold = f(),
            "low-threshold" => t.low_threshold = f(),
            "new-track-threshold" => t.new_track_threshold = f(),
            "match-iou" => t.match_iou = f(),
            "low-match-iou" => t.low_match_iou = f(),
            "mask-iou" => t.mask_iou = b(),
            "recovery-buffer" => t.recovery_buffer = f(),
            "other-class-weight" => t.other_class_weight = f(),
            "min-hits" => t.min_hits = u(),
            "output-tentative" => t.output_tentative = b(),
            "max-lost-frames" => t.max_lost_frames = u(),
            "merge-iou" => t.merge_iou = f(),
            "merge-containment" => t.merge_containment = f(),
            "score-threshold" => c.score_threshold = f(),
            other => unreachable!("no property {other}"),
        }
        gst::debug!(CAT, imp = self, "{} set to {:?}", pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let c = self.config.lock().unwrap();
        let t = &c.tracker;
        match pspec.name() {
            "high-threshold" => t.high_threshold.to_value(),
            "low-threshold" => t.low_threshold.to_value(),
            "new-track-threshold" => t.new_track_threshold.to_value(),
            "match-iou" => t.match_iou.to_value(),
            "low-match-iou" => t.low_match_iou.to_value(),
            "mask-iou" => t.mask_iou.to_value(),
            "recovery-buffer" => t.recovery_buffer.to_value(),
            "other-class-weight" => t.other_class_weight.to_value(),
            "min-hits" => t.min_hits.to_value(),
            "output-tentative" => t.output_tentative.to_value(),
            "max-lost-frames" => t.max_lost_frames.to_value(),
            "merge-iou" => t.merge_iou.to_value(),
            "merge-containment" => t.merge_containment.to_value(),
            "score-threshold" => c.score_threshold.to_value(),
            other => unreachable!("no property {other}"),
        }
    }
}

impl GstObjectImpl for MaskTracker {}

impl ElementImpl for MaskTracker {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Mask instance tracker",
                "Filter/Analyzer/Video",
                "Assigns track ids (track-id in each maskstream/instance structure) to the \
                 instances maskrcnn attached, with maskstream's tracker; keeps only tracked \
                 instances at the score threshold",
                "maskstream developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst::Caps::builder("video/x-raw").build();
            crate::src_and_sink(&caps)
        });
        TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for MaskTracker {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let cfg = self.config.lock().unwrap().clone();
        *self.state.lock().unwrap() = Some(State::new(&cfg));
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.state.lock().unwrap() = None;
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::FlushStop(_) = event.view() {
            // after a flushing seek the objects are elsewhere: tracks start afresh
            let cfg = self.config.lock().unwrap().clone();
            let mut state = self.state.lock().unwrap();
            if state.is_some() {
                gst::debug!(CAT, imp = self, "flush: tracks reset");
                *state = Some(State::new(&cfg));
            }
        }
        self.parent_sink_event(event)
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let threshold = self.config.lock().unwrap().score_threshold;
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ("Not started"));
            return Err(gst::FlowError::NotNegotiated);
        };
        let mut detections = Vec::new();
        for inst in meta::instances(buf) {
            match inst {
                Ok(i) => {
                    state
                        .labels
                        .entry(i.detection.class_id)
                        .or_insert_with(|| i.label.clone());
                    detections.push(i.detection);
                }
                Err(e) => gst::warning!(CAT, imp = self, "skipping an instance meta: {}", e),
            }
        }
        let pts = buf.pts().map_or(0, gst::ClockTime::nseconds);
        let n = detections.len();
        let out = state
            .analytics
            .process(detections, threshold, state.frame, pts, "");
        state.frame += 1;
        meta::remove_all(buf);
        for (d, &id) in out.instances.iter().zip(&out.track_ids) {
            let label = state.labels.get(&d.class_id).map_or("", String::as_str);
            meta::attach(buf, d, label, Some(id));
        }
        gst::log!(
            CAT,
            imp = self,
            "{:?}: {} instances in, {} tracked out",
            buf.pts(),
            n,
            out.instances.len()
        );
        Ok(gst::FlowSuccess::Ok)
    }
}
