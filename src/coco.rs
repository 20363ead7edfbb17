//! The part of a COCO annotation file that mask AP (`eval`) and tracking measures (`analytics::mot`)
//! read: images and RLE instance annotations, with the optional `track_id` of video ground truth.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::rle;

#[derive(Debug, Deserialize)]
pub(crate) struct CocoFile {
    pub images: Vec<CocoImage>,
    pub annotations: Vec<CocoAnnotation>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CocoImage {
    pub id: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CocoAnnotation {
    pub image_id: u64,
    /// Absent in tracking ground truth, which matches by identity only.
    #[serde(default)]
    pub category_id: usize,
    pub segmentation: CocoRle,
    #[serde(default)]
    pub iscrowd: u8,
    pub track_id: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CocoRle {
    /// (height, width)
    pub size: [usize; 2],
    pub counts: String,
}

impl CocoFile {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Input(format!("{}: {e}", path.display())))
    }
}

impl CocoAnnotation {
    /// The run lengths, checked to cover exactly the `size` the annotation declares.
    pub fn runs(&self, path: &Path) -> Result<Vec<u32>> {
        let counts = rle::from_string(&self.segmentation.counts)?;
        let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        let [h, w] = self.segmentation.size;
        if (h as u64).checked_mul(w as u64) != Some(total) {
            return Err(Error::Input(format!(
                "{}: the RLE of an annotation of image {} covers {total} pixels, not its size {h}x{w}",
                path.display(),
                self.image_id
            )));
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gt.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn runs_must_cover_the_declared_size() {
        let counts = rle::to_string(&[2, 3, 1]);
        let ok = format!(
            r#"{{"images":[{{"id":0}}],"annotations":[{{"image_id":0,"category_id":1,
            "segmentation":{{"size":[2,3],"counts":"{counts}"}}}}]}}"#
        );
        let (_d, path) = write(&ok);
        let file = CocoFile::read(&path).unwrap();
        assert_eq!(file.annotations[0].runs(&path).unwrap(), vec![2, 3, 1]);
        for size in ["[2,4]", "[18446744073709551615,2]"] {
            let bad = ok.replace("[2,3]", size);
            let (_d, path) = write(&bad);
            let err = CocoFile::read(&path).unwrap().annotations[0]
                .runs(&path)
                .unwrap_err()
                .to_string();
            assert!(err.contains("covers 6 pixels"), "{err}");
        }
    }

    #[test]
    fn a_broken_file_names_itself() {
        let (_d, path) = write(r#"{"images":[]"#);
        let err = CocoFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("gt.json"), "{err}");
    }
}
