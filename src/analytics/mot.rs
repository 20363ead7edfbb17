//! Multi-object tracking measures against ground truth with track ids: CLEAR-MOT (MOTA, ID switches;
//! Bernardin & Stiefelhagen 2008, as py-motmetrics computes it) and the ID measures (IDF1; Ristani et
//! al. 2016), matching objects by mask IoU.

use std::collections::HashMap;
use std::path::Path;

use crate::coco::CocoFile;
use crate::error::{Error, Result};
use crate::eval::rle_iou;
use crate::output::FrameRecord;
use crate::rle;
use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;

/// One frame: ground-truth ids, hypothesis (tracker) ids, and IoU[g][h].
#[derive(Debug, Clone, Default)]
pub struct FrameMatch {
    pub gt: Vec<u64>,
    pub hyp: Vec<u64>,
    pub iou: Vec<Vec<f64>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MotMetrics {
    pub frames: usize,
    /// Ground-truth objects over all frames, and hypotheses.
    pub gt: usize,
    pub hyp: usize,
    pub matches: usize,
    pub false_negatives: usize,
    pub false_positives: usize,
    pub id_switches: usize,
    /// Distinct ground-truth tracks.
    pub gt_tracks: usize,
    pub mota: f64,
    pub idf1: f64,
    pub idtp: usize,
}

impl MotMetrics {
    pub fn switches_per_track(&self) -> f64 {
        self.id_switches as f64 / self.gt_tracks.max(1) as f64
    }
}

/// Optimal assignment maximising `w` (non-negative integer weights; 0 = no match); (row, col) pairs.
fn max_assign(rows: usize, cols: usize, w: impl Fn(usize, usize) -> i64) -> Vec<(usize, usize)> {
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    if rows <= cols {
        let m = Matrix::from_fn(rows, cols, |(r, c)| w(r, c));
        let (_, a) = kuhn_munkres(&m);
        a.into_iter()
            .enumerate()
            .filter(|&(r, c)| m[(r, c)] > 0)
            .collect()
    } else {
        let m = Matrix::from_fn(cols, rows, |(c, r)| w(r, c));
        let (_, a) = kuhn_munkres(&m);
        a.into_iter()
            .enumerate()
            .filter(|&(c, r)| m[(c, r)] > 0)
            .map(|(c, r)| (r, c))
            .collect()
    }
}

/// Scores a whole sequence; a pair matches when its IoU reaches `threshold`.
pub fn evaluate(frames: &[FrameMatch], threshold: f64) -> MotMetrics {
    let mut m = MotMetrics {
        frames: frames.len(),
        ..Default::default()
    };
    // CLEAR-MOT: keep last frame's pairs that still match, assign the rest by IoU; a ground-truth
    // object matched to another hypothesis than last time it was matched is an ID switch
    let mut current: HashMap<u64, u64> = HashMap::new();
    let mut last_match: HashMap<u64, u64> = HashMap::new();
    let mut counts = IdCounts::default();
    for f in frames {
        m.gt += f.gt.len();
        m.hyp += f.hyp.len();
        counts.add(f, threshold);
        m.id_switches += match_frame(f, threshold, &mut current, &mut last_match);
        m.matches += current.len();
        m.false_negatives += f.gt.len() - current.len();
        m.false_positives += f.hyp.len() - current.len();
    }
    m.gt_tracks = counts.gt.len();
    m.mota = if m.gt == 0 {
        0.0
    } else {
        1.0 - (m.false_negatives + m.false_positives + m.id_switches) as f64 / m.gt as f64
    };
    m.idtp = counts.idtp();
    m.idf1 = if m.gt + m.hyp == 0 {
        0.0
    } else {
        2.0 * m.idtp as f64 / (m.gt + m.hyp) as f64
    };
    m
}

/// Per-track frame counts over the whole sequence, for IDF1.
#[derive(Default)]
struct IdCounts {
    /// Frames in which ground-truth track and hypothesis track overlap above the threshold.
    co: HashMap<(u64, u64), i64>,
    gt: HashMap<u64, i64>,
    hyp: HashMap<u64, i64>,
}

impl IdCounts {
    fn add(&mut self, f: &FrameMatch, threshold: f64) {
        for &g in &f.gt {
            *self.gt.entry(g).or_default() += 1;
        }
        for &h in &f.hyp {
            *self.hyp.entry(h).or_default() += 1;
        }
        for (g, &gid) in f.gt.iter().enumerate() {
            for (h, &hid) in f.hyp.iter().enumerate() {
                if f.iou[g][h] >= threshold {
                    *self.co.entry((gid, hid)).or_default() += 1;
                }
            }
        }
    }

    /// IDF1: one global one-to-one match of ground-truth tracks with hypothesis tracks maximising
    /// the frames they agree on (IDTP).
    fn idtp(&self) -> usize {
        let co = &self.co;
        let gids: Vec<u64> = self.gt.keys().copied().collect();
        let hids: Vec<u64> = self.hyp.keys().copied().collect();
        let pairs = max_assign(gids.len(), hids.len(), |r, c| {
            co.get(&(gids[r], hids[c])).copied().unwrap_or(0)
        });
        pairs
            .iter()
            .map(|&(r, c)| co.get(&(gids[r], hids[c])).copied().unwrap_or(0) as usize)
            .sum()
    }
}

/// One frame of CLEAR-MOT matching: `current` becomes this frame's (ground truth → hypothesis)
/// pairs, `last_match` remembers each object's latest; returns the ID switches.
fn match_frame(
    f: &FrameMatch,
    threshold: f64,
    current: &mut HashMap<u64, u64>,
    last_match: &mut HashMap<u64, u64>,
) -> usize {
    let mut id_switches = 0;
    let ok = |g: usize, h: usize| f.iou[g][h] >= threshold;
    let mut g_used = vec![false; f.gt.len()];
    let mut h_used = vec![false; f.hyp.len()];
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for (g, gid) in f.gt.iter().enumerate() {
        let Some(hid) = current.get(gid) else {
            continue;
        };
        if let Some(h) = f.hyp.iter().position(|x| x == hid) {
            if !h_used[h] && ok(g, h) {
                g_used[g] = true;
                h_used[h] = true;
                pairs.push((g, h));
            }
        }
    }
    let gs: Vec<usize> = (0..f.gt.len()).filter(|&g| !g_used[g]).collect();
    let hs: Vec<usize> = (0..f.hyp.len()).filter(|&h| !h_used[h]).collect();
    let new = max_assign(gs.len(), hs.len(), |r, c| {
        let v = f.iou[gs[r]][hs[c]];
        if v >= threshold {
            // +1: an IoU of exactly the threshold still weighs more than no match
            (v * 1e6) as i64 + 1
        } else {
            0
        }
    });
    current.clear();
    for &(g, h) in &pairs {
        current.insert(f.gt[g], f.hyp[h]);
    }
    for (r, c) in new {
        let (gid, hid) = (f.gt[gs[r]], f.hyp[hs[c]]);
        if last_match.get(&gid).is_some_and(|&prev| prev != hid) {
            id_switches += 1;
        }
        current.insert(gid, hid);
    }
    for (&g, &h) in current.iter() {
        last_match.insert(g, h);
    }
    id_switches
}

/// The most frames a tracking ground truth may index (six days of video at 30 frames/s).
const MAX_FRAMES: u64 = 1 << 24;

/// Ground truth with track ids: per frame (image id = frame index), (track id, RLE counts).
pub struct TrackGroundTruth {
    pub frames: Vec<Vec<(u64, Vec<u32>)>>,
}

impl TrackGroundTruth {
    pub fn load(path: &Path) -> Result<Self> {
        let file = CocoFile::read(path)?;
        // image ids are frame indices: one slot each, so an absurd id is refused, not allocated
        let n = file
            .images
            .iter()
            .map(|i| i.id.saturating_add(1))
            .max()
            .unwrap_or(0);
        if n > MAX_FRAMES {
            return Err(Error::Input(format!(
                "{}: image id {} is not a frame index (at most {MAX_FRAMES} frames)",
                path.display(),
                n - 1
            )));
        }
        let mut frames = vec![Vec::new(); n as usize];
        for a in file.annotations {
            let id = a.track_id.ok_or_else(|| {
                Error::Input(format!("{}: an annotation has no track_id", path.display()))
            })?;
            let slot = frames.get_mut(a.image_id as usize).ok_or_else(|| {
                Error::Input(format!(
                    "{}: image_id {} has no image",
                    path.display(),
                    a.image_id
                ))
            })?;
            slot.push((id, a.runs(path)?));
        }
        Ok(TrackGroundTruth { frames })
    }

    /// Pairs each frame with the tracker's records (by `frame` index) and computes mask IoUs.
    pub fn match_records(&self, records: &[FrameRecord]) -> Result<Vec<FrameMatch>> {
        let by_frame: HashMap<u64, &FrameRecord> = records
            .iter()
            .filter_map(|r| r.frame.map(|f| (f, r)))
            .collect();
        let mut out = Vec::with_capacity(self.frames.len());
        for (i, gt) in self.frames.iter().enumerate() {
            let mut hyp = Vec::new();
            if let Some(r) = by_frame.get(&(i as u64)) {
                for inst in &r.instances {
                    let id = inst.track_id.ok_or_else(|| {
                        Error::Input(format!("frame {i}: an instance has no track_id"))
                    })?;
                    hyp.push((id, rle::from_string(&inst.mask.counts)?));
                }
            }
            out.push(FrameMatch {
                gt: gt.iter().map(|g| g.0).collect(),
                hyp: hyp.iter().map(|h| h.0).collect(),
                iou: gt
                    .iter()
                    .map(|g| hyp.iter().map(|h| rle_iou(&g.1, &h.1)).collect())
                    .collect(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ground_truth_ids_must_be_frame_indices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gt.json");
        let counts = rle::to_string(&[1, 2, 1]);
        let file = |id: u64| {
            format!(
                r#"{{"images":[{{"id":{id}}}],"annotations":[{{"image_id":{id},"track_id":7,
                "segmentation":{{"size":[2,2],"counts":"{counts}"}}}}]}}"#
            )
        };
        std::fs::write(&path, file(3)).unwrap();
        let gt = TrackGroundTruth::load(&path).unwrap();
        assert_eq!(gt.frames.len(), 4);
        assert_eq!(gt.frames[3], vec![(7, vec![1, 2, 1])]);
        for id in [1u64 << 40, u64::MAX] {
            std::fs::write(&path, file(id)).unwrap();
            let err = TrackGroundTruth::load(&path).err().unwrap().to_string();
            assert!(err.contains("is not a frame index"), "{err}");
        }
    }

    /// A frame where every listed (gt, hyp) pair overlaps with the given IoU, all others 0.
    fn frame(gt: &[u64], hyp: &[u64], pairs: &[(u64, u64, f64)]) -> FrameMatch {
        FrameMatch {
            gt: gt.to_vec(),
            hyp: hyp.to_vec(),
            iou: gt
                .iter()
                .map(|g| {
                    hyp.iter()
                        .map(|h| {
                            pairs
                                .iter()
                                .find(|p| p.0 == *g && p.1 == *h)
                                .map_or(0.0, |p| p.2)
                        })
                        .collect()
                })
                .collect(),
        }
    }

    #[test]
    fn perfect_tracking() {
        let f: Vec<FrameMatch> = (0..10)
            .map(|_| frame(&[1, 2], &[7, 8], &[(1, 7, 0.9), (2, 8, 0.8)]))
            .collect();
        let m = evaluate(&f, 0.5);
        assert_eq!((m.matches, m.id_switches, m.gt_tracks), (20, 0, 2));
        assert_eq!((m.mota, m.idf1), (1.0, 1.0));
    }

    #[test]
    fn one_switch_halfway() {
        // gt 1 is hyp 7 for 4 frames, then hyp 9 for 4 frames
        let mut f: Vec<FrameMatch> = (0..4).map(|_| frame(&[1], &[7], &[(1, 7, 0.9)])).collect();
        f.extend((0..4).map(|_| frame(&[1], &[9], &[(1, 9, 0.9)])));
        let m = evaluate(&f, 0.5);
        assert_eq!(m.id_switches, 1);
        // MOTA = 1 − 1/8; IDF1 = 2·4 / (8 + 8)
        assert!((m.mota - 0.875).abs() < 1e-12);
        assert!((m.idf1 - 0.5).abs() < 1e-12);
    }

    #[test]
    fn misses_false_positives_and_the_iou_threshold() {
        let f = vec![
            frame(&[1, 2], &[7], &[(1, 7, 0.9)]), // gt 2 missed
            frame(&[1], &[7, 8], &[(1, 7, 0.9)]), // hyp 8 false
            frame(&[1], &[7], &[(1, 7, 0.4)]), // under the threshold: a miss and a false positive
            frame(&[1], &[7], &[(1, 7, 0.5)]), // exactly at it: a match
        ];
        let m = evaluate(&f, 0.5);
        assert_eq!((m.matches, m.false_negatives, m.false_positives), (3, 2, 2));
        assert_eq!(m.id_switches, 0);
        // MOTA = 1 − (2 + 2) / 5; IDTP 3 (gt 1 ↔ hyp 7) → IDF1 = 6 / (5 + 5)
        assert!((m.mota - 0.2).abs() < 1e-12);
        assert!((m.idf1 - 0.6).abs() < 1e-12);
    }

    #[test]
    fn kept_pairs_win_over_a_better_newcomer_and_swaps_count_twice() {
        // CLEAR-MOT keeps a still-valid pair even if another hypothesis overlaps more
        let f = vec![
            frame(&[1], &[7], &[(1, 7, 0.6)]),
            frame(&[1], &[7, 8], &[(1, 7, 0.6), (1, 8, 0.9)]),
        ];
        let m = evaluate(&f, 0.5);
        assert_eq!((m.id_switches, m.false_positives), (0, 1));
        // two objects swap identities: two switches
        let f = vec![
            frame(&[1, 2], &[7, 8], &[(1, 7, 0.9), (2, 8, 0.9)]),
            frame(&[1, 2], &[7, 8], &[(1, 8, 0.9), (2, 7, 0.9)]),
        ];
        assert_eq!(evaluate(&f, 0.5).id_switches, 2);
    }
}
