//! A ByteTrack-class multi-object tracker (Zhang et al., 2022): a Kalman filter per track predicts its
//! box; high-score detections are matched first (to confirmed and lost tracks), then low-score ones keep
//! the remaining confirmed tracks alive through occlusion, then tentative tracks take what high-score
//! detections are left; the rest start tracks. Between the first and the last round, lost tracks left
//! over look once more, with buffered boxes, for a detection of their class (recovery after
//! occlusion). Matching is an optimal linear assignment (Kuhn–Munkres) on IoU, optionally blended with
//! mask IoU; a detection of another class than a track's label counts only part of its similarity, so
//! where objects of different classes cross, each keeps its own.
//!
//! Occlusion: a detection of a partly covered object is only its visible part, whose box shrinks from
//! the covered side, so its centre lags and the filter would learn a slower motion, just when the
//! track's prediction must stay on the object. Each track keeps the largest mask area seen recently;
//! a detection that shows less of it counts less in the filter (measurement noise scaled by the
//! inverse of the visible share), and the mask compared with new detections is the last one seen
//! (nearly) whole, so a covered object is still matched by its full shape.
//!
//! Lifecycle: tentative → confirmed (after `min_hits` matches) → lost (unmatched) → removed (lost for
//! longer than `max_lost_*`, or a tentative track missed once). Ids are unique for the tracker's life.

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;

use super::config::TrackerConfig;
use super::kalman::KalmanBox;
use crate::model::boxes::{self, BoxF};
use crate::model::mask_iou::mask_iou_shifted;
use crate::model::paste::InstanceMask;
use crate::model::Detection;

/// Per match, the remembered whole-object area shrinks by this factor (at 30 frames/s it halves in
/// about a second without a larger view): slow enough to outlast a covering object passing by.
const WHOLE_AREA_DECAY: f32 = 0.98;
/// A view showing at least this share of the whole area replaces the track's template mask.
const WHOLE_SHARE: f32 = 0.8;
/// The most a partial view's measurement noise is scaled up (at a tenth of the object in view).
const MAX_NOISE_SCALE: f32 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackState {
    Tentative,
    Confirmed,
    Lost,
}

#[derive(Debug, Clone)]
pub struct Track {
    pub id: u64,
    pub state: TrackState,
    /// Matched frames in all.
    pub hits: u32,
    /// Frames since the last match.
    pub missed: u32,
    /// Ever confirmed (a lost track that was confirmed before ends with `track_end`).
    pub confirmed: bool,
    kf: KalmanBox,
    /// The last matched detection's box and score.
    pub bbox: BoxF,
    pub score: f32,
    pub best_score: f32,
    /// The object's mask area when whole: the largest area matched recently, decaying by
    /// `WHOLE_AREA_DECAY` a match so that an object moving away (shrinking) is followed.
    whole_area: f32,
    /// The last mask matched with at least `WHOLE_SHARE` of `whole_area` in view, and its box.
    template: InstanceMask,
    template_area: usize,
    template_box: BoxF,
    /// Score-weighted class votes over the track's history, by class id.
    votes: Vec<f32>,
    pub first_frame: u64,
    pub first_pts_ns: u64,
    pub last_frame: u64,
    pub last_pts_ns: u64,
}

impl Track {
    /// The class with the most score-weighted votes so far: one object keeps one label even when
    /// single frames disagree.
    pub fn class_id(&self) -> usize {
        self.votes
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(c, _)| c)
    }

    /// The Kalman estimate of the box now.
    pub fn predicted(&self) -> BoxF {
        self.kf.bbox()
    }

    fn vote(&mut self, class_id: usize, score: f32) {
        if self.votes.len() <= class_id {
            self.votes.resize(class_id + 1, 0.0);
        }
        self.votes[class_id] += score;
    }

    /// How well detection `d` (with mask area `area`) continues this track: IoU of the predicted box,
    /// averaged with the IoU of the template mask moved to the predicted place when `use_mask`.
    fn similarity(&self, d: &Detection, area: usize, use_mask: bool) -> f32 {
        let pred = self.kf.bbox();
        let box_iou = boxes::iou(&pred, &d.bbox);
        if box_iou <= 0.0 || !use_mask || self.template_area == 0 || area == 0 {
            return box_iou;
        }
        let centre = |b: &BoxF| ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
        let (px, py) = centre(&pred);
        let (lx, ly) = centre(&self.template_box);
        let (dx, dy) = ((px - lx).round() as i64, (py - ly).round() as i64);
        let m = mask_iou_shifted(&self.template, self.template_area, dx, dy, &d.mask, area);
        0.5 * (box_iou + m)
    }

    /// Takes in a matched detection's box and mask: the filter weighs the box by the share of the
    /// object in view, and the template follows only a (nearly) whole view.
    fn observe(&mut self, det: &Detection, area: usize) {
        let area_f = area as f32;
        self.whole_area = (self.whole_area * WHOLE_AREA_DECAY).max(area_f);
        let visible = if self.whole_area > 0.0 {
            area_f / self.whole_area
        } else {
            1.0
        };
        self.kf
            .update(&det.bbox, (1.0 / visible.max(1e-3)).min(MAX_NOISE_SCALE));
        if area_f >= WHOLE_SHARE * self.whole_area {
            self.template.clone_from(&det.mask);
            self.template_area = area;
            self.template_box = det.bbox;
        }
        self.bbox = det.bbox;
    }

    /// Similarity for recovering this (lost) track with detection `d`: 0 for another class, else the
    /// IoU of the predicted box and the detection's, both widened on every side by `sigmas` standard
    /// deviations of the predicted centre (as a share of the predicted size, at most 2).
    fn recovery_similarity(&self, d: &Detection, sigmas: f32) -> f32 {
        if d.class_id != self.class_id() {
            return 0.0;
        }
        let pred = self.kf.bbox();
        let size = ((pred[2] - pred[0]).max(pred[3] - pred[1])).max(1.0);
        let b = (sigmas * self.kf.centre_std() / size).min(2.0);
        let widen = |r: &BoxF| {
            let (w, h) = (r[2] - r[0], r[3] - r[1]);
            [r[0] - b * w, r[1] - b * h, r[2] + b * w, r[3] + b * h]
        };
        boxes::iou(&widen(&pred), &widen(&d.bbox))
    }
}

/// What one frame did to the tracks.
#[derive(Debug, Default)]
pub struct Step {
    /// Per input detection: the id of the track it belongs to (None below the tracker's thresholds).
    pub assigned: Vec<Option<u64>>,
    /// Tracks confirmed in this frame.
    pub confirmed: Vec<u64>,
    /// Tracks removed in this frame that had been confirmed (their last state).
    pub ended: Vec<Track>,
}

/// One frame's detections, their mask areas and its position in the stream.
struct FrameInput<'a> {
    detections: &'a [Detection],
    areas: &'a [usize],
    frame: u64,
    pts_ns: u64,
}

#[derive(Debug)]
pub struct Tracker {
    cfg: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
    frames: u64,
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        Tracker {
            cfg,
            tracks: Vec::new(),
            next_id: 1,
            frames: 0,
        }
    }

    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    pub fn track(&self, id: u64) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// Ids handed out so far.
    pub fn ids_issued(&self) -> u64 {
        self.next_id - 1
    }

    /// Tracks one frame. `floor` caps the high and new-track thresholds (the output threshold: every
    /// instance written must be tracked).
    pub fn update(
        &mut self,
        detections: &[Detection],
        floor: f32,
        frame: u64,
        pts_ns: u64,
    ) -> Step {
        let _span = tracing::trace_span!("tracker", frame).entered();
        let c = &self.cfg;
        let high = c.high_threshold.min(floor);
        let low = c.low_threshold.min(high);
        let start = c.new_track_threshold.min(floor);
        let areas: Vec<usize> = detections.iter().map(|d| d.mask.area()).collect();
        let input = FrameInput {
            detections,
            areas: &areas,
            frame,
            pts_ns,
        };
        let first_frame = self.frames == 0;
        self.frames += 1;
        let mut step = Step {
            assigned: vec![None; detections.len()],
            ..Default::default()
        };
        self.predict();
        let (matches, high_left) = self.associate(&input, high, low);
        let matched_track = self.apply_matches(&input, &matches, &mut step);
        self.retire_unmatched(&matched_track, pts_ns, &mut step);
        self.start_tracks(&input, &high_left, start, first_frame, &mut step);
        step
    }

    /// Moves every track's Kalman filter one frame on.
    fn predict(&mut self) {
        for t in &mut self.tracks {
            t.kf.predict(t.state == TrackState::Lost);
        }
    }

    /// The three association rounds; returns the (track, detection) matches in round order and the
    /// high-score detections the first round left.
    fn associate(
        &self,
        input: &FrameInput,
        high: f32,
        low: f32,
    ) -> (Vec<(usize, usize)>, Vec<usize>) {
        let c = &self.cfg;
        let (detections, areas) = (input.detections, input.areas);
        let high_dets: Vec<usize> = (0..detections.len())
            .filter(|&i| detections[i].score >= high)
            .collect();
        let low_dets: Vec<usize> = (0..detections.len())
            .filter(|&i| detections[i].score >= low && detections[i].score < high)
            .collect();

        // 1: confirmed and lost tracks ↔ high-score detections
        let pool: Vec<usize> = (0..self.tracks.len())
            .filter(|&t| self.tracks[t].state != TrackState::Tentative)
            .collect();
        let m1 = self.assign(&pool, &high_dets, detections, areas, c.match_iou);
        // 2: confirmed tracks still unmatched ↔ low-score detections
        let left: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|t| {
                !m1.iter().any(|m| m.0 == *t) && self.tracks[*t].state == TrackState::Confirmed
            })
            .collect();
        let m2 = self.assign(&left, &low_dets, detections, areas, c.low_match_iou);
        let mut high_left: Vec<usize> = high_dets
            .iter()
            .copied()
            .filter(|d| !m1.iter().any(|m| m.1 == *d))
            .collect();
        // recovery: lost tracks still unmatched ↔ high-score detections left, by buffered IoU
        let mr = if c.recovery_buffer > 0.0 {
            let lost: Vec<usize> = pool
                .iter()
                .copied()
                .filter(|t| {
                    !m1.iter().any(|m| m.0 == *t) && self.tracks[*t].state == TrackState::Lost
                })
                .collect();
            self.assign_by(&lost, &high_left, c.match_iou, |t, d| {
                self.tracks[t].recovery_similarity(&detections[d], c.recovery_buffer)
            })
        } else {
            Vec::new()
        };
        high_left.retain(|d| !mr.iter().any(|m| m.1 == *d));
        // 3: tentative tracks ↔ high-score detections left
        let tentative: Vec<usize> = (0..self.tracks.len())
            .filter(|&t| self.tracks[t].state == TrackState::Tentative)
            .collect();
        let m3 = self.assign(&tentative, &high_left, detections, areas, c.match_iou);
        let matches = m1.into_iter().chain(m2).chain(mr).chain(m3).collect();
        (matches, high_left)
    }

    /// Updates each matched track with its detection; returns which tracks were matched.
    fn apply_matches(
        &mut self,
        input: &FrameInput,
        matches: &[(usize, usize)],
        step: &mut Step,
    ) -> Vec<bool> {
        let min_hits = self.cfg.min_hits;
        let mut matched_track = vec![false; self.tracks.len()];
        for &(t, d) in matches {
            matched_track[t] = true;
            let track = &mut self.tracks[t];
            let det = &input.detections[d];
            track.observe(det, input.areas[d]);
            track.score = det.score;
            track.best_score = track.best_score.max(det.score);
            track.vote(det.class_id, det.score);
            track.hits += 1;
            track.missed = 0;
            track.last_frame = input.frame;
            track.last_pts_ns = input.pts_ns;
            if track.state == TrackState::Lost || track.hits >= min_hits {
                if !track.confirmed {
                    step.confirmed.push(track.id);
                }
                track.state = TrackState::Confirmed;
                track.confirmed = true;
            }
            step.assigned[d] = Some(track.id);
        }
        matched_track
    }

    /// Unmatched: tentative tracks die at once, confirmed ones become lost, lost ones age out.
    fn retire_unmatched(&mut self, matched_track: &[bool], pts_ns: u64, step: &mut Step) {
        let max_lost_ms = self.cfg.max_lost_ms;
        let max_lost_frames = self.cfg.max_lost_frames;
        let mut kept = Vec::with_capacity(self.tracks.len());
        for (t, mut track) in std::mem::take(&mut self.tracks).into_iter().enumerate() {
            if matched_track[t] {
                kept.push(track);
                continue;
            }
            track.missed += 1;
            let expired = match max_lost_ms {
                Some(ms) => pts_ns.saturating_sub(track.last_pts_ns) > ms * 1_000_000,
                None => track.missed > max_lost_frames,
            };
            if track.state == TrackState::Tentative || expired {
                if track.confirmed {
                    step.ended.push(track);
                }
                continue;
            }
            track.state = TrackState::Lost;
            kept.push(track);
        }
        self.tracks = kept;
    }

    /// New tracks from the high-score detections nobody took.
    fn start_tracks(
        &mut self,
        input: &FrameInput,
        high_left: &[usize],
        start: f32,
        first_frame: bool,
        step: &mut Step,
    ) {
        let (detections, frame, pts_ns) = (input.detections, input.frame, input.pts_ns);
        for &d in high_left {
            if step.assigned[d].is_some() || detections[d].score < start {
                continue;
            }
            let det = &detections[d];
            let mut track = Track {
                id: self.next_id,
                state: TrackState::Tentative,
                hits: 1,
                missed: 0,
                confirmed: false,
                kf: KalmanBox::new(&det.bbox),
                bbox: det.bbox,
                score: det.score,
                best_score: det.score,
                whole_area: input.areas[d] as f32,
                template: det.mask.clone(),
                template_area: input.areas[d],
                template_box: det.bbox,
                votes: Vec::new(),
                first_frame: frame,
                first_pts_ns: pts_ns,
                last_frame: frame,
                last_pts_ns: pts_ns,
            };
            track.vote(det.class_id, det.score);
            if self.cfg.min_hits <= 1 || first_frame {
                track.state = TrackState::Confirmed;
                track.confirmed = true;
                step.confirmed.push(track.id);
            }
            self.next_id += 1;
            step.assigned[d] = Some(track.id);
            self.tracks.push(track);
        }
    }

    /// Ends every track (end of stream): the confirmed ones come back for their `track_end`.
    pub fn finish(&mut self) -> Vec<Track> {
        std::mem::take(&mut self.tracks)
            .into_iter()
            .filter(|t| t.confirmed)
            .collect()
    }

    /// Optimal one-to-one matching of `tracks` with `dets` (indices) maximising total similarity;
    /// pairs below `min_sim` are never matched. Returns (track index, detection index) pairs.
    fn assign(
        &self,
        tracks: &[usize],
        dets: &[usize],
        detections: &[Detection],
        areas: &[usize],
        min_sim: f32,
    ) -> Vec<(usize, usize)> {
        self.assign_by(tracks, dets, min_sim, |t, d| {
            let track = &self.tracks[t];
            let s = track.similarity(&detections[d], areas[d], self.cfg.mask_iou);
            if detections[d].class_id == track.class_id() {
                s
            } else {
                s * self.cfg.other_class_weight
            }
        })
    }

    /// `assign` with the similarity `sim(track index, detection index)`.
    fn assign_by(
        &self,
        tracks: &[usize],
        dets: &[usize],
        min_sim: f32,
        sim: impl Fn(usize, usize) -> f32,
    ) -> Vec<(usize, usize)> {
        if tracks.is_empty() || dets.is_empty() {
            return Vec::new();
        }
        // integer weights for Kuhn–Munkres; a pair under the gate weighs 0, the same as no match
        const SCALE: f32 = 1e6;
        let weight = |t: usize, d: usize| {
            let s = sim(t, d);
            if s >= min_sim {
                (s * SCALE) as i64
            } else {
                0
            }
        };
        let mut pairs = Vec::new();
        // kuhn_munkres wants rows <= columns
        if tracks.len() <= dets.len() {
            let w = Matrix::from_fn(tracks.len(), dets.len(), |(r, k)| {
                weight(tracks[r], dets[k])
            });
            let (_, cols) = kuhn_munkres(&w);
            for (r, &k) in cols.iter().enumerate() {
                if w[(r, k)] > 0 {
                    pairs.push((tracks[r], dets[k]));
                }
            }
        } else {
            let w = Matrix::from_fn(dets.len(), tracks.len(), |(r, k)| {
                weight(tracks[k], dets[r])
            });
            let (_, cols) = kuhn_munkres(&w);
            for (r, &k) in cols.iter().enumerate() {
                if w[(r, k)] > 0 {
                    pairs.push((tracks[k], dets[r]));
                }
            }
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::merge::tests::det;

    fn cfg() -> TrackerConfig {
        TrackerConfig {
            min_hits: 2,
            max_lost_frames: 3,
            ..Default::default()
        }
    }

    #[test]
    fn follows_objects_with_stable_unique_ids() {
        let mut t = Tracker::new(cfg());
        let mut ids = Vec::new();
        for f in 0..20u64 {
            let x = 2 * f as usize;
            let dets = vec![det(1, 0.9, x, 10, 12, 12), det(2, 0.8, 80 - x, 50, 12, 12)];
            let s = t.update(&dets, 0.5, f, f * 33_000_000);
            let a: Vec<u64> = s.assigned.iter().map(|a| a.unwrap()).collect();
            assert_ne!(a[0], a[1]);
            if f == 0 {
                assert_eq!(
                    s.confirmed.len(),
                    2,
                    "the first frame's tracks start at once"
                );
            }
            ids.push(a);
        }
        assert!(ids.iter().all(|a| a == &ids[0]), "{ids:?}");
        assert_eq!(t.ids_issued(), 2);
    }

    #[test]
    fn low_score_detections_keep_a_track_alive() {
        let mut t = Tracker::new(cfg());
        for f in 0..5u64 {
            t.update(&[det(1, 0.9, 10 + f as usize, 10, 20, 20)], 0.5, f, f);
        }
        // an occluded frame: the model is unsure (0.2), the track holds on, no new id
        let s = t.update(&[det(1, 0.2, 15, 10, 20, 20)], 0.5, 5, 5);
        assert_eq!(s.assigned, vec![Some(1)]);
        let s = t.update(&[det(1, 0.9, 16, 10, 20, 20)], 0.5, 6, 6);
        assert_eq!(s.assigned, vec![Some(1)]);
        // below the low threshold the tracker never sees it
        let s = t.update(&[det(1, 0.05, 17, 10, 20, 20)], 0.5, 7, 7);
        assert_eq!(s.assigned, vec![None]);
    }

    #[test]
    fn lost_tracks_are_recovered_then_removed() {
        let mut t = Tracker::new(cfg());
        for f in 0..5u64 {
            t.update(&[det(1, 0.9, 10, 10, 20, 20)], 0.5, f, f);
        }
        for f in 5..7u64 {
            let s = t.update(&[], 0.5, f, f);
            assert!(s.ended.is_empty());
        }
        assert_eq!(t.tracks()[0].state, TrackState::Lost);
        let s = t.update(&[det(1, 0.9, 10, 10, 20, 20)], 0.5, 7, 7);
        assert_eq!(s.assigned, vec![Some(1)]);
        let mut ended = Vec::new();
        for f in 8..13u64 {
            ended.extend(t.update(&[], 0.5, f, f).ended);
        }
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].id, 1);
        assert!(t.tracks().is_empty(), "removed tracks are freed");
    }

    #[test]
    fn tentative_tracks_die_unconfirmed_and_labels_vote() {
        let mut t = Tracker::new(cfg());
        t.update(&[], 0.5, 0, 0);
        t.update(&[det(1, 0.9, 10, 10, 20, 20)], 0.5, 1, 1);
        assert!(!t.tracks()[0].confirmed);
        let s = t.update(&[], 0.5, 2, 2);
        assert!(
            s.ended.is_empty(),
            "a tentative track never started, so never ends"
        );
        assert!(t.tracks().is_empty());
        for (f, (c, s)) in [(1, 0.9), (2, 0.6), (1, 0.8), (2, 0.7), (1, 0.9)]
            .into_iter()
            .enumerate()
        {
            t.update(&[det(c, s, 40, 40, 20, 20)], 0.5, f as u64 + 3, 0);
        }
        assert_eq!(t.tracks()[0].class_id(), 1);
    }

    #[test]
    fn crossing_objects_keep_their_ids_by_motion() {
        // two objects pass each other horizontally; boxes overlap for a few frames
        let mut t = Tracker::new(cfg());
        let mut first = None;
        for f in 0..40u64 {
            let a = det(1, 0.9, 4 + 2 * f as usize, 30, 14, 14);
            let b = det(1, 0.9, 82 - 2 * f as usize, 34, 14, 14);
            let s = t.update(&[a, b], 0.5, f, f);
            let ids = (s.assigned[0].unwrap(), s.assigned[1].unwrap());
            assert_eq!(*first.get_or_insert(ids), ids, "frame {f}");
        }
    }

    /// A small object walks right, is cut by an occluder for its last frames in view (its box shrinks,
    /// so the filter learns a slower motion), is hidden for 20 frames and comes out where it really
    /// is: far from the plain prediction, inside the buffered one. Returns its id while whole and
    /// the id given to it when it is back. (The last sliver, a seventh of it, may not continue the
    /// track: that only makes it lost a frame earlier.)
    fn occluded_walk(t: &mut Tracker, class_after: usize) -> (u64, Option<u64>) {
        let mut id = 0;
        for f in 0..20u64 {
            let x = 10 + 3 * f as usize;
            let w = if f < 16 {
                14
            } else {
                14 - 3 * (f as usize - 15)
            };
            let s = t.update(&[det(1, 0.9, x, 40, w, 14)], 0.5, f, f);
            if f < 16 {
                id = s.assigned[0].unwrap();
            }
        }
        for f in 20..40u64 {
            t.update(&[], 0.5, f, f);
        }
        let back = det(class_after, 0.9, 10 + 3 * 40, 40, 14, 14);
        (id, t.update(&[back], 0.5, 40, 40).assigned[0])
    }

    #[test]
    fn lost_tracks_are_recovered_after_occlusion_by_buffered_iou() {
        let cfg = TrackerConfig {
            max_lost_frames: 30,
            ..Default::default()
        };
        let mut t = Tracker::new(cfg.clone());
        let (id, back) = occluded_walk(&mut t, 1);
        assert_eq!(back, Some(id), "the same object keeps its id");
        // without recovery the plain IoU misses it: a new track
        let mut t = Tracker::new(TrackerConfig {
            recovery_buffer: 0.0,
            ..cfg.clone()
        });
        let (id, back) = occluded_walk(&mut t, 1);
        assert_ne!(back, Some(id));
        // another class is another object
        let mut t = Tracker::new(cfg);
        let (id, back) = occluded_walk(&mut t, 2);
        assert_ne!(back, Some(id));
    }

    /// Two objects of different classes stand still, then jump towards each other so that each one's
    /// box lies closer to the other's track: class-blind matching swaps them, the class weight does not.
    fn swap_frame(weight: f32) -> (Vec<Option<u64>>, Vec<Option<u64>>) {
        let mut t = Tracker::new(TrackerConfig {
            other_class_weight: weight,
            mask_iou: false,
            ..cfg()
        });
        let mut first = Vec::new();
        for f in 0..5u64 {
            let s = t.update(
                &[det(1, 0.9, 10, 10, 14, 14), det(2, 0.9, 20, 10, 14, 14)],
                0.5,
                f,
                f,
            );
            first = s.assigned;
        }
        let s = t.update(
            &[det(1, 0.9, 16, 10, 14, 14), det(2, 0.9, 14, 10, 14, 14)],
            0.5,
            5,
            5,
        );
        (first, s.assigned)
    }

    #[test]
    fn crossing_objects_of_other_classes_keep_their_ids_by_class() {
        let (before, after) = swap_frame(TrackerConfig::default().other_class_weight);
        assert_eq!(before, after);
        let (before, after) = swap_frame(1.0);
        assert_eq!(
            before,
            vec![after[1], after[0]],
            "class-blind matching swaps them"
        );
    }

    /// A square (class 1) walks right and a taller box (class 3) walks left in front of it. While the
    /// box covers the square from the right, the square's detections shrink to the part still in view;
    /// at the crossing the detector misses the box and reports the square whole for three frames;
    /// then the box comes out on the left of the square, which comes out from behind it. Returns the
    /// track ids of (square, box) before the crossing and after it.
    fn covered_crossing() -> ((u64, u64), (Option<u64>, Option<u64>)) {
        let mut t = Tracker::new(TrackerConfig::default());
        let (mut before, mut after) = ((0, 0), (None, None));
        for f in 0..56u64 {
            let (ax, bx) = (3 * f as i64, 200 - 3 * f as i64); // square [ax, ax+30], box [bx, bx+32]
            let square = |x0: i64, x1: i64| det(1, 0.95, x0 as usize, 100, (x1 - x0) as usize, 30);
            let boxed = det(3, 0.95, bx.max(0) as usize, 97, 32, 36);
            let (visible_from, visible_to) = if bx >= ax + 30 || bx + 32 <= ax {
                (ax, ax + 30) // apart
            } else if bx > ax {
                (ax, bx) // covered from the right
            } else {
                (bx + 32, ax + 30) // coming out on the right
            };
            let dets = if (34..37).contains(&f) {
                vec![square(ax, ax + 30)] // the box missed, the square seen through it
            } else if visible_to - visible_from >= 6 {
                vec![square(visible_from, visible_to), boxed]
            } else {
                vec![boxed]
            };
            let s = t.update(&dets, 0.5, f, f * 33_333_333);
            if f == 25 {
                before = (s.assigned[0].unwrap(), s.assigned[1].unwrap());
            }
            if f == 55 {
                after = (s.assigned[0], s.assigned[1]);
            }
        }
        (before, after)
    }

    #[test]
    fn an_object_covered_by_another_of_another_class_keeps_its_id() {
        let (before, after) = covered_crossing();
        assert_eq!((Some(before.0), Some(before.1)), after);
    }

    #[test]
    fn time_based_expiry() {
        let mut t = Tracker::new(TrackerConfig {
            min_hits: 1,
            max_lost_ms: Some(100),
            ..Default::default()
        });
        t.update(&[det(1, 0.9, 10, 10, 20, 20)], 0.5, 0, 0);
        assert!(t.update(&[], 0.5, 1, 90_000_000).ended.is_empty());
        assert_eq!(t.update(&[], 0.5, 2, 110_000_000).ended.len(), 1);
    }
}
