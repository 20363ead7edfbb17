//! Frames as the model sees them: packed 8-bit RGB, borrowed from a decoder buffer or an image.

use crate::error::{Error, Result};

/// A borrowed RGB8 frame; `stride` is bytes per row (>= 3 * width, decoders pad rows).
#[derive(Debug, Clone, Copy)]
pub struct RgbFrame<'a> {
    pub width: usize,
    pub height: usize,
    pub stride: usize,
    pub data: &'a [u8],
}

impl<'a> RgbFrame<'a> {
    pub fn new(width: usize, height: usize, stride: usize, data: &'a [u8]) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::Input(format!("frame of size {width}x{height}")));
        }
        if stride < width * 3 || data.len() < stride * (height - 1) + width * 3 {
            return Err(Error::Input(format!(
                "frame {width}x{height} with stride {stride} needs {} bytes, got {}",
                stride * (height - 1) + width * 3,
                data.len()
            )));
        }
        Ok(RgbFrame {
            width,
            height,
            stride,
            data,
        })
    }

    pub fn from_image(img: &'a image::RgbImage) -> Result<Self> {
        let (w, h) = img.dimensions();
        Self::new(w as usize, h as usize, w as usize * 3, img.as_raw())
    }

    #[inline]
    pub fn row(&self, y: usize) -> &'a [u8] {
        &self.data[y * self.stride..y * self.stride + self.width * 3]
    }
}
