use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use maskstream::output::FrameRecord;

use crate::meta;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "maskjsonsink",
        gst::DebugColorFlags::empty(),
        Some("maskstream JSON Lines sink"),
    )
});

const DEFAULT_SOURCE: &str = "gst";

#[derive(Debug, Clone)]
struct Settings {
    location: Option<String>,
    source: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            location: None,
            source: DEFAULT_SOURCE.to_string(),
        }
    }
}

struct State {
    out: BufWriter<File>,
    frame: u64,
    size: Option<(usize, usize)>,
}

#[derive(Default)]
pub struct MaskJsonSink {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
}

#[glib::object_subclass]
impl ObjectSubclass for MaskJsonSink {
    const NAME: &'static str = "GstMaskJsonSink";
    type Type = super::MaskJsonSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for MaskJsonSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("location")
                    .nick("Location")
                    .blurb("JSON Lines file to write (replaced if it exists)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("source")
                    .nick("Source")
                    .blurb("The \"source\" field of every line")
                    .default_value(Some(DEFAULT_SOURCE))
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        match pspec.name() {
            "location" => s.location = value.get().expect("type checked upstream"),
            "source" => {
                s.source = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| DEFAULT_SOURCE.to_string())
            }
            other => unreachable!("no property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "location" => s.location.to_value(),
            "source" => s.source.to_value(),
            other => unreachable!("no property {other}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // a file: written as fast as frames come, like filesink
        self.obj().set_sync(false);
    }
}

impl GstObjectImpl for MaskJsonSink {}

impl ElementImpl for MaskJsonSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Mask instances JSON Lines sink",
                "Sink/File",
                "Writes the maskstream instances of each frame as one JSON line (the schema of \
                 maskstream run --json: label, score, box, track_id, COCO RLE mask)",
                "maskstream developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![gst::PadTemplate::new(
                "sink",
                gst::PadDirection::Sink,
                gst::PadPresence::Always,
                &gst::Caps::builder("video/x-raw").build(),
            )
            .unwrap()]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for MaskJsonSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let Some(location) = self.settings.lock().unwrap().location.clone() else {
            return Err(gst::error_msg!(
                gst::ResourceError::NotFound,
                ("No location set")
            ));
        };
        let file = File::create(&location).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenWrite,
                ("Could not create {}: {}", location, e)
            )
        })?;
        gst::debug!(CAT, imp = self, "writing {}", location);
        *self.state.lock().unwrap() = Some(State {
            out: BufWriter::new(file),
            frame: 0,
            size: None,
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(mut s) = self.state.lock().unwrap().take() {
            s.out.flush().map_err(|e| {
                gst::error_msg!(gst::ResourceError::Write, ("Could not write: {}", e))
            })?;
        }
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = gst_video::VideoInfo::from_caps(caps)
            .map_err(|_| gst::loggable_error!(CAT, "Invalid caps {}", caps))?;
        if let Some(s) = self.state.lock().unwrap().as_mut() {
            s.size = Some((info.width() as usize, info.height() as usize));
        }
        Ok(())
    }

    fn render(&self, buf: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let source = self.settings.lock().unwrap().source.clone();
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else {
            return Err(gst::FlowError::Flushing);
        };
        let (width, height) = state.size.ok_or(gst::FlowError::NotNegotiated)?;
        let instances = meta::records(buf)
            .into_iter()
            .filter_map(|r| {
                r.map_err(|e| gst::warning!(CAT, imp = self, "skipping an instance meta: {}", e))
                    .ok()
            })
            .collect();
        let record = FrameRecord {
            source,
            frame: Some(state.frame),
            pts_ns: buf.pts().map(gst::ClockTime::nseconds),
            ts: None,
            width,
            height,
            instances,
            analytics: None,
        };
        state.frame += 1;
        let write = serde_json::to_writer(&mut state.out, &record)
            .map_err(std::io::Error::from)
            .and_then(|_| state.out.write_all(b"\n"))
            .and_then(|_| state.out.flush());
        if let Err(e) = write {
            gst::element_imp_error!(self, gst::ResourceError::Write, ("Could not write: {}", e));
            return Err(gst::FlowError::Error);
        }
        Ok(gst::FlowSuccess::Ok)
    }
}
