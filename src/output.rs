//! The output schema shared by `detect` and the pipeline's JSON Lines sink: one object per image or
//! frame, boxes in original pixels, masks as COCO compressed RLE (column-major).

use serde::{Deserialize, Serialize};

use crate::model::Detection;
use crate::rle;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FrameRecord {
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub frame: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pts_ns: Option<u64>,
    /// UTC wall-clock time of capture, RFC 3339 with milliseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ts: Option<String>,
    pub width: usize,
    pub height: usize,
    pub instances: Vec<InstanceRecord>,
    /// Zones (objects inside per label) and lines (cumulative crossings per direction) of the
    /// source's analytics; absent when tracking is off.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub analytics: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceRecord {
    pub class_id: usize,
    pub label: String,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Unique within the source for the run; absent when tracking is off.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub track_id: Option<u64>,
    pub mask: RleRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RleRecord {
    /// [height, width], as COCO.
    pub size: [usize; 2],
    pub counts: String,
}

impl RleRecord {
    /// Row-major 0/1 bitmap of the full frame.
    pub fn decode(&self) -> crate::Result<Vec<u8>> {
        let counts = rle::from_string(&self.counts)?;
        rle::decode_counts(&counts, self.size[0], self.size[1])
    }
}

impl FrameRecord {
    pub fn new(
        source: &str,
        width: usize,
        height: usize,
        detections: &[Detection],
        classes: &[String],
    ) -> Self {
        FrameRecord {
            source: source.to_string(),
            frame: None,
            pts_ns: None,
            ts: None,
            width,
            height,
            instances: detections
                .iter()
                .map(|d| InstanceRecord {
                    class_id: d.class_id,
                    label: classes.get(d.class_id).cloned().unwrap_or_default(),
                    score: d.score,
                    bbox: d.bbox,
                    track_id: None,
                    mask: RleRecord {
                        size: [height, width],
                        counts: rle::to_string(&rle::encode_mask(&d.mask)),
                    },
                })
                .collect(),
            analytics: None,
        }
    }

    /// Adds the tracker's ids (one per instance, in order) and the frame's analytics object.
    pub fn with_tracking(mut self, track_ids: &[u64], analytics: serde_json::Value) -> Self {
        for (inst, &id) in self.instances.iter_mut().zip(track_ids) {
            inst.track_id = Some(id);
        }
        self.analytics = Some(analytics);
        self
    }

    pub fn with_frame(mut self, frame: u64, pts_ns: Option<u64>) -> Self {
        self.frame = Some(frame);
        self.pts_ns = pts_ns;
        self
    }

    pub fn with_ts(mut self, ts: String) -> Self {
        self.ts = Some(ts);
        self
    }
}
