use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::VideoFormat;
use maskstream::overlay::{Canvas, Compositor, OverlayStyle};

use crate::meta;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "maskoverlay",
        gst::DebugColorFlags::empty(),
        Some("maskstream instance overlay"),
    )
});

/// Formats drawn in place: packed 8-bit RGB in any channel order, with or without a fourth byte.
const FORMATS: [VideoFormat; 10] = [
    VideoFormat::Rgb,
    VideoFormat::Bgr,
    VideoFormat::Rgbx,
    VideoFormat::Bgrx,
    VideoFormat::Xrgb,
    VideoFormat::Xbgr,
    VideoFormat::Rgba,
    VideoFormat::Bgra,
    VideoFormat::Argb,
    VideoFormat::Abgr,
];

/// Byte offsets of R, G and B in a pixel, and bytes per pixel.
fn layout(f: VideoFormat) -> Option<([usize; 3], usize)> {
    Some(match f {
        VideoFormat::Rgb => ([0, 1, 2], 3),
        VideoFormat::Bgr => ([2, 1, 0], 3),
        VideoFormat::Rgbx | VideoFormat::Rgba => ([0, 1, 2], 4),
        VideoFormat::Bgrx | VideoFormat::Bgra => ([2, 1, 0], 4),
        VideoFormat::Xrgb | VideoFormat::Argb => ([1, 2, 3], 4),
        VideoFormat::Xbgr | VideoFormat::Abgr => ([3, 2, 1], 4),
        _ => return None,
    })
}

pub struct MaskOverlay {
    compositor: Mutex<Compositor>,
    info: Mutex<Option<gst_video::VideoInfo>>,
    /// Packed RGB copy of the frame for formats other than RGB.
    scratch: Mutex<Vec<u8>>,
}

impl Default for MaskOverlay {
    fn default() -> Self {
        MaskOverlay {
            compositor: Mutex::new(Compositor::new(OverlayStyle::default())),
            info: Mutex::new(None),
            scratch: Mutex::new(Vec::new()),
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for MaskOverlay {
    const NAME: &'static str = "GstMaskOverlay";
    type Type = super::MaskOverlay;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for MaskOverlay {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let d = OverlayStyle::default();
            vec![
                glib::ParamSpecFloat::builder("alpha")
                    .nick("Alpha")
                    .blurb("Mask opacity")
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(d.alpha)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("outline")
                    .nick("Outline")
                    .blurb("Draw each mask's outline in full colour")
                    .default_value(d.outline)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("boxes")
                    .nick("Boxes")
                    .blurb("Draw boxes")
                    .default_value(d.boxes)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("labels")
                    .nick("Labels")
                    .blurb("Draw a '#track-id label score' tag per instance")
                    .default_value(d.labels)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("line-width")
                    .nick("Line width")
                    .blurb("Box line width in pixels")
                    .minimum(1)
                    .maximum(64)
                    .default_value(d.line_width as u32)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecFloat::builder("font-size")
                    .nick("Font size")
                    .blurb("Label text size in pixels")
                    .minimum(4.0)
                    .maximum(256.0)
                    .default_value(d.font_size)
                    .mutable_playing()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut c = self.compositor.lock().unwrap();
        let s = &mut c.style;
        match pspec.name() {
            "alpha" => s.alpha = value.get().expect("type checked upstream"),
            "outline" => s.outline = value.get().expect("type checked upstream"),
            "boxes" => s.boxes = value.get().expect("type checked upstream"),
            "labels" => s.labels = value.get().expect("type checked upstream"),
            "line-width" => {
                s.line_width = value.get::<u32>().expect("type checked upstream") as usize
            }
            "font-size" => s.font_size = value.get().expect("type checked upstream"),
            other => unreachable!("no property {other}"),
        }
        gst::debug!(CAT, imp = self, "{} set to {:?}", pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let c = self.compositor.lock().unwrap();
        let s = &c.style;
        match pspec.name() {
            "alpha" => s.alpha.to_value(),
            "outline" => s.outline.to_value(),
            "boxes" => s.boxes.to_value(),
            "labels" => s.labels.to_value(),
            "line-width" => (s.line_width as u32).to_value(),
            "font-size" => s.font_size.to_value(),
            other => unreachable!("no property {other}"),
        }
    }
}

impl GstObjectImpl for MaskOverlay {}

impl ElementImpl for MaskOverlay {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Mask instance overlay",
                "Filter/Effect/Video",
                "Draws the maskstream instances on each frame (masks, outlines, boxes, labels) \
                 with maskstream's compositor",
                "maskstream developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list(FORMATS)
                .build();
            crate::src_and_sink(&caps)
        });
        TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for MaskOverlay {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.info.lock().unwrap() = None;
        *self.scratch.lock().unwrap() = Vec::new();
        Ok(())
    }

    fn set_caps(&self, incaps: &gst::Caps, _outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = gst_video::VideoInfo::from_caps(incaps)
            .map_err(|_| gst::loggable_error!(CAT, "Invalid input caps {}", incaps))?;
        if layout(info.format()).is_none() {
            return Err(gst::loggable_error!(
                CAT,
                "Unsupported format {:?}",
                info.format()
            ));
        }
        *self.info.lock().unwrap() = Some(info);
        Ok(())
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut detections = Vec::new();
        let mut classes: Vec<String> = Vec::new();
        let mut track_ids = Vec::new();
        for inst in meta::instances(buf) {
            match inst {
                Ok(i) => {
                    let c = i.detection.class_id;
                    if classes.len() <= c {
                        classes.resize(c + 1, String::new());
                    }
                    classes[c] = i.label;
                    track_ids.push(i.track_id);
                    detections.push(i.detection);
                }
                Err(e) => gst::warning!(CAT, imp = self, "skipping an instance meta: {}", e),
            }
        }
        if detections.is_empty() {
            return Ok(gst::FlowSuccess::Ok);
        }
        // ids when every instance has one (after masktracker), else plain tags
        let track_ids: Vec<u64> = track_ids.into_iter().flatten().collect();
        let track_ids = if track_ids.len() == detections.len() {
            track_ids
        } else {
            Vec::new()
        };
        let Some(info) = self.info.lock().unwrap().clone() else {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ("No caps negotiated"));
            return Err(gst::FlowError::NotNegotiated);
        };
        let (offsets, bpp) = layout(info.format()).ok_or(gst::FlowError::NotNegotiated)?;
        let mut frame =
            gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &info).map_err(|_| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("Cannot map the video frame")
                );
                gst::FlowError::Error
            })?;
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        let stride = frame.plane_stride()[0] as usize;
        let data = frame.plane_data_mut(0).map_err(|_| gst::FlowError::Error)?;
        let compositor = self.compositor.lock().unwrap();
        if offsets == [0, 1, 2] && bpp == 3 {
            let mut canvas = Canvas {
                data,
                width: w,
                height: h,
                stride,
            };
            compositor.draw_tracked(&mut canvas, &detections, &classes, &track_ids);
        } else {
            let mut scratch = self.scratch.lock().unwrap();
            scratch.resize(w * h * 3, 0);
            for y in 0..h {
                let row = &data[y * stride..y * stride + w * bpp];
                let out = &mut scratch[y * w * 3..(y + 1) * w * 3];
                for (px, o) in row.chunks_exact(bpp).zip(out.chunks_exact_mut(3)) {
                    o[0] = px[offsets[0]];
                    o[1] = px[offsets[1]];
                    o[2] = px[offsets[2]];
                }
            }
            let mut canvas = Canvas {
                data: &mut scratch,
                width: w,
                height: h,
                stride: w * 3,
            };
            compositor.draw_tracked(&mut canvas, &detections, &classes, &track_ids);
            for y in 0..h {
                let row = &mut data[y * stride..y * stride + w * bpp];
                let src = &scratch[y * w * 3..(y + 1) * w * 3];
                for (px, s) in row.chunks_exact_mut(bpp).zip(src.chunks_exact(3)) {
                    px[offsets[0]] = s[0];
                    px[offsets[1]] = s[1];
                    px[offsets[2]] = s[2];
                }
            }
        }
        gst::log!(CAT, imp = self, "drew {} instances", detections.len());
        Ok(gst::FlowSuccess::Ok)
    }
}
