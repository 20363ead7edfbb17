//! `masktracker`: gives the instances on each buffer track ids with `run`'s tracker (ByteTrack-class,
//! Kalman-predicted boxes blended with mask IoU, cross-class duplicates merged, class by vote).

use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct MaskTracker(ObjectSubclass<imp::MaskTracker>) @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "masktracker",
        gst::Rank::NONE,
        MaskTracker::static_type(),
    )
}
