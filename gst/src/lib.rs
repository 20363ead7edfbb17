//! maskstream as GStreamer elements: the same model, tracker and compositor as `maskstream run`, as a
//! plugin (`maskstream`) for gst-launch-1.0 and any GStreamer application.
//!
//! - `maskrcnn` infers each frame and attaches one `GstVideoRegionOfInterestMeta` per instance
//!   (roi type = label, x/y/w/h = box) carrying a `maskstream/instance` structure ([`meta`]);
//! - `masktracker` gives those instances track ids (the `run` tracker);
//! - `maskoverlay` draws them (the `run` compositor);
//! - `maskjsonsink` writes them as `run`'s JSON Lines.
//!
//! Layout as in gst-plugins-rs: one module per element, its subclass in `imp.rs`.

use gst::glib;

mod maskjsonsink;
mod maskoverlay;
mod maskrcnn;
mod masktracker;
pub mod meta;

pub use maskrcnn::Backend;

/// The always-present `src` and `sink` pads of an in-place transform, both with `caps` (static caps,
/// so the templates cannot fail to build).
fn src_and_sink(caps: &gst::Caps) -> Vec<gst::PadTemplate> {
    [
        ("src", gst::PadDirection::Src),
        ("sink", gst::PadDirection::Sink),
    ]
    .into_iter()
    .filter_map(|(name, dir)| gst::PadTemplate::new(name, dir, gst::PadPresence::Always, caps).ok())
    .collect()
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    maskrcnn::register(plugin)?;
    masktracker::register(plugin)?;
    maskoverlay::register(plugin)?;
    maskjsonsink::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    maskstream,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    env!("CARGO_PKG_VERSION"),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    "maskstream"
);
