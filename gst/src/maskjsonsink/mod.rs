//! `maskjsonsink`: writes each buffer's instances as one JSON line, the schema of `run --json` and
//! `detect` (`maskstream::output::FrameRecord`).

use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct MaskJsonSink(ObjectSubclass<imp::MaskJsonSink>) @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "maskjsonsink",
        gst::Rank::NONE,
        MaskJsonSink::static_type(),
    )
}
