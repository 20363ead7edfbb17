//! Sees every error an element posts, before any bin can filter it.
//!
//! decodebin drops errors that the element it is trying posts while that element is still changing
//! state (it wants to try the next candidate instead). A demuxer working in pull mode starts its
//! thread inside that state change, so on a damaged file (an MP4 cut before its index) its error can
//! land in that window: the error is dropped, the state change succeeds, and the pipeline waits for a
//! stream that never comes. A GStreamer tracer hook runs for every posted message, inside any bin, so
//! the source can still report the error when the bus stays silent.

use std::collections::HashMap;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use glib::subclass::prelude::*;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer::subclass::prelude::*;

/// An error posted inside a watched pipeline.
struct Seen {
    element: glib::WeakRef<gst::Element>,
    message: String,
    debug: String,
    at: Instant,
}

/// Pipelines being watched (by name) and the errors seen in each.
static WATCHED: Mutex<Option<HashMap<String, Vec<Seen>>>> = Mutex::new(None);

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct ErrorWitness;

    #[glib::object_subclass]
    impl ObjectSubclass for ErrorWitness {
        const NAME: &'static str = "MaskstreamErrorWitness";
        type Type = super::ErrorWitness;
        type ParentType = gst::Tracer;
    }

    impl ObjectImpl for ErrorWitness {
        fn constructed(&self) {
            self.parent_constructed();
            self.register_hook(TracerHook::ElementPostMessagePre);
        }
    }

    impl GstObjectImpl for ErrorWitness {}

    impl TracerImpl for ErrorWitness {
        fn element_post_message_pre(
            &self,
            _ts: u64,
            element: &gst::Element,
            message: &gst::Message,
        ) {
            let gst::MessageView::Error(e) = message.view() else {
                return;
            };
            // bins post their children's messages again on their way up: keep the original only
            if message.src() != Some(element.upcast_ref::<gst::Object>()) {
                return;
            }
            let Some(top) = top_level_name(element) else {
                return;
            };
            let Ok(mut guard) = WATCHED.lock() else {
                return;
            };
            if let Some(seen) = guard.as_mut().and_then(|m| m.get_mut(&top)) {
                seen.push(Seen {
                    element: element.downgrade(),
                    message: e.error().to_string(),
                    debug: e.debug().map(|d| d.to_string()).unwrap_or_default(),
                    at: Instant::now(),
                });
            }
        }
    }
}

glib::wrapper! {
    pub struct ErrorWitness(ObjectSubclass<imp::ErrorWitness>) @extends gst::Tracer, gst::Object;
}

/// The watched pipeline's name, for an element inside one of the bins known to swallow errors
/// (decodebin and its parsebin). Other bins that drop errors do so on purpose (rtspsrc ignores
/// its RTCP and spare UDP sources, for one) and are left alone.
fn top_level_name(element: &gst::Element) -> Option<String> {
    let mut top: gst::Object = element.clone().upcast();
    let mut in_decodebin = false;
    while let Some(parent) = top.parent() {
        let factory = parent
            .downcast_ref::<gst::Element>()
            .and_then(|e| e.factory())
            .map(|f| f.name());
        in_decodebin |= matches!(
            factory.as_deref(),
            Some("decodebin" | "decodebin3" | "parsebin")
        );
        top = parent;
    }
    (in_decodebin && top.is::<gst::Pipeline>()).then(|| top.name().to_string())
}

/// Installs the witness once per process, after `gst::init` and before any pipeline starts (GStreamer
/// asks that tracers be created before any state change).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // the hook registration holds a reference: the tracer lives as long as GStreamer
        let _ = glib::Object::new::<ErrorWitness>();
    });
}

/// Records errors posted inside `pipeline`'s decodebins from now on (see [`top_level_name`]).
pub fn watch(pipeline: &gst::Pipeline) {
    if let Ok(mut guard) = WATCHED.lock() {
        guard
            .get_or_insert_with(HashMap::new)
            .insert(pipeline.name().to_string(), Vec::new());
    }
}

/// Stops recording for `pipeline` and forgets what was seen.
pub fn unwatch(pipeline: &gst::Pipeline) {
    if let Ok(mut guard) = WATCHED.lock() {
        if let Some(m) = guard.as_mut() {
            m.remove(pipeline.name().as_str());
        }
    }
}

/// An error (message, debug text) posted inside `pipeline` at least `grace` ago by an element that
/// is still part of it: one the bus never delivered. Errors of candidates that decodebin tried and
/// removed again do not count; those are the ones it is right to drop.
pub fn lost_error(pipeline: &gst::Pipeline, grace: Duration) -> Option<(String, String)> {
    let guard = WATCHED.lock().ok()?;
    let seen = guard.as_ref()?.get(pipeline.name().as_str())?;
    seen.iter()
        .filter(|s| s.at.elapsed() >= grace)
        .find(|s| s.element.upgrade().is_some_and(|el| el.parent().is_some()))
        .map(|s| (s.message.clone(), s.debug.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_errors_inside_decodebin_of_watched_pipelines() {
        gst::init().unwrap();
        install();
        let pipeline = gst::Pipeline::new();
        let decodebin = gst::ElementFactory::make("decodebin").build().unwrap();
        let bin = decodebin.downcast_ref::<gst::Bin>().unwrap();
        let inner = gst::ElementFactory::make("identity").build().unwrap();
        bin.add(&inner).unwrap();
        let plain = gst::Bin::new();
        let elsewhere = gst::ElementFactory::make("identity").build().unwrap();
        plain.add(&elsewhere).unwrap();
        pipeline.add_many([&decodebin, plain.upcast_ref()]).unwrap();
        let post = |el: &gst::Element, text: &str| {
            let err = glib::Error::new(gst::StreamError::Demux, text);
            let msg = gst::message::Error::builder_from_error(err)
                .src(el)
                .debug("why")
                .build();
            let _ = el.post_message(msg);
        };
        post(&inner, "before watching");
        assert!(lost_error(&pipeline, Duration::ZERO).is_none());
        watch(&pipeline);
        // outside decodebin: a bin that drops an error means it
        post(&elsewhere, "not decodebin's");
        assert!(lost_error(&pipeline, Duration::ZERO).is_none());
        post(&inner, "seen");
        let (message, debug) = lost_error(&pipeline, Duration::ZERO).unwrap();
        assert_eq!((message.as_str(), debug.as_str()), ("seen", "why"));
        assert!(lost_error(&pipeline, Duration::from_secs(60)).is_none());
        // an element removed again (a candidate decodebin gave up on) no longer counts
        bin.remove(&inner).unwrap();
        assert!(lost_error(&pipeline, Duration::ZERO).is_none());
        unwatch(&pipeline);
    }
}
