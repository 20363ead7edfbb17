//! `maskoverlay`: draws the instances on each buffer (masks, outlines, boxes, `#id label score` tags)
//! with `run`'s compositor.

use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct MaskOverlay(ObjectSubclass<imp::MaskOverlay>) @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "maskoverlay",
        gst::Rank::NONE,
        MaskOverlay::static_type(),
    )
}
