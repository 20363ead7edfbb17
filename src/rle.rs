//! COCO run-length encoding: column-major runs starting with zeros, and the compressed string form that
//! pycocotools reads (rleToString / rleFrString).

use crate::error::{Error, Result};
use crate::model::paste::InstanceMask;

/// Run lengths of a mask, column-major, the first run counting zeros.
pub fn encode_mask(m: &InstanceMask) -> Vec<u32> {
    let (h, w) = (m.frame_height, m.frame_width);
    let mut runs = RunBuilder::default();
    runs.push(false, (m.x0 * h) as u32);
    for x in 0..m.width {
        runs.push(false, m.y0 as u32);
        for y in 0..m.height {
            runs.push(m.data[y * m.width + x] != 0, 1);
        }
        runs.push(false, (h - m.y0 - m.height) as u32);
    }
    runs.push(false, ((w - m.x0 - m.width) * h) as u32);
    runs.finish()
}

/// Run lengths of a row-major bitmap of `height x width`.
pub fn encode_bitmap(bits: &[u8], height: usize, width: usize) -> Vec<u32> {
    let mut runs = RunBuilder::default();
    for x in 0..width {
        for y in 0..height {
            runs.push(bits[y * width + x] != 0, 1);
        }
    }
    runs.finish()
}

/// Row-major bitmap from run lengths.
pub fn decode_counts(counts: &[u32], height: usize, width: usize) -> Result<Vec<u8>> {
    let total: u64 = counts.iter().map(|&c| c as u64).sum();
    if total != (height * width) as u64 {
        return Err(Error::Input(format!(
            "RLE covers {total} pixels, size {height}x{width} has {}",
            height * width
        )));
    }
    let mut bits = vec![0u8; height * width];
    let mut i = 0usize;
    for (k, &c) in counts.iter().enumerate() {
        if k % 2 == 1 {
            for p in i..i + c as usize {
                bits[(p % height) * width + p / height] = 1;
            }
        }
        i += c as usize;
    }
    Ok(bits)
}

#[derive(Default)]
struct RunBuilder {
    counts: Vec<u32>,
    current: bool,
    len: u32,
}

impl RunBuilder {
    fn push(&mut self, value: bool, n: u32) {
        if n == 0 {
            return;
        }
        if value != self.current {
            self.counts.push(self.len);
            self.current = value;
            self.len = 0;
        }
        self.len += n;
    }

    fn finish(mut self) -> Vec<u32> {
        self.counts.push(self.len);
        self.counts
    }
}

/// pycocotools' rleToString: LEB128-like 5-bit groups offset by 48, deltas against the count two back.
pub fn to_string(counts: &[u32]) -> String {
    let mut s = String::with_capacity(counts.len() * 2);
    for (i, &c) in counts.iter().enumerate() {
        let mut x = c as i64;
        if i > 2 {
            x -= counts[i - 2] as i64;
        }
        loop {
            let mut ch = (x & 0x1f) as u8;
            x >>= 5;
            let more = if ch & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                ch |= 0x20;
            }
            s.push((ch + 48) as char);
            if !more {
                break;
            }
        }
    }
    s
}

/// pycocotools' rleFrString.
pub fn from_string(s: &str) -> Result<Vec<u32>> {
    let bytes = s.as_bytes();
    let mut counts: Vec<u32> = Vec::new();
    let mut p = 0;
    while p < bytes.len() {
        let mut x: i64 = 0;
        let mut k = 0;
        loop {
            let Some(&b) = bytes.get(p) else {
                return Err(Error::Input(format!(
                    "RLE string ends inside a count at byte {p}"
                )));
            };
            if !(48..48 + 64).contains(&b) || k > 12 {
                return Err(Error::Input(format!(
                    "RLE string has an invalid byte {b:#x} at {p}"
                )));
            }
            let c = (b - 48) as i64;
            x |= (c & 0x1f) << (5 * k);
            let more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        let m = counts.len();
        if m > 2 {
            x += counts[m - 2] as i64;
        }
        counts.push(
            u32::try_from(x).map_err(|_| Error::Input(format!("RLE count {x} out of range")))?,
        );
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_pycocotools_string() {
        // pycocotools.mask.encode of a 4x4 mask with a 2x2 square at rows 1-2, cols 1-2:
        // column-major runs 5,2,2,2,5 -> "52203"
        let mut bits = vec![0u8; 16];
        for (y, x) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
            bits[y * 4 + x] = 1;
        }
        let counts = encode_bitmap(&bits, 4, 4);
        assert_eq!(counts, vec![5, 2, 2, 2, 5]);
        assert_eq!(to_string(&counts), "52203");
        assert_eq!(from_string("52203").unwrap(), counts);
        assert_eq!(decode_counts(&counts, 4, 4).unwrap(), bits);
    }

    #[test]
    fn round_trip_large_and_negative_deltas() {
        let counts = vec![0, 100_000, 3, 7, 250_000, 1, 1, 40];
        assert_eq!(from_string(&to_string(&counts)).unwrap(), counts);
    }

    #[test]
    fn instance_mask_encodes_like_full_bitmap() {
        let m = InstanceMask {
            frame_height: 5,
            frame_width: 6,
            x0: 2,
            y0: 1,
            width: 3,
            height: 2,
            data: vec![1, 0, 1, 1, 1, 0],
        };
        assert_eq!(encode_mask(&m), encode_bitmap(&m.to_full(), 5, 6));
        let empty = InstanceMask {
            frame_height: 3,
            frame_width: 3,
            ..Default::default()
        };
        assert_eq!(encode_mask(&empty), vec![9]);
    }

    #[test]
    fn bad_strings_are_errors() {
        assert!(from_string("5\u{7f}").is_err());
        assert!(from_string("p").is_err()); // continuation bit set, then end of string
        assert!(decode_counts(&[3, 3], 2, 2).is_err());
    }
}
