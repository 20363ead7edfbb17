//! What the HTTP API shows, kept up to date by the pipeline as an `Observer`: each stream's state and
//! counters, its latest annotated frame (JPEG-encoded once, on demand, however many viewers), and the
//! recent events. Every lock is held for a copy only: the composite thread never waits on a viewer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::analytics::Event;
use crate::output::FrameRecord;
use crate::pipeline::observe::Observer;
use crate::pipeline::source::SourceStats;

/// Events kept for `GET /api/events`.
pub const RECENT_EVENTS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    /// Started, no frame through yet (connecting, decoding the first frame, or waiting for inference).
    Starting,
    Running,
    /// Its input ended (a file's end, a camera that gave up after its retries: see `error`).
    Ended,
    Failed,
    /// Removing (DELETE asked), then removed.
    Removing,
    Removed,
}

/// One frame as drawn, JPEG-encoded by the first viewer that needs it.
pub struct Snapshot {
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
    pub seq: u64,
    jpeg: OnceLock<Option<Bytes>>,
}

impl Snapshot {
    /// The JPEG (quality 80); None when encoding failed (never expected for RGB8 of this size).
    pub fn jpeg(&self) -> Option<Bytes> {
        self.jpeg
            .get_or_init(|| {
                let mut out = Vec::with_capacity(self.rgb.len() / 8);
                let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
                enc.write_image(
                    &self.rgb,
                    self.width as u32,
                    self.height as u32,
                    image::ExtendedColorType::Rgb8,
                )
                .ok()?;
                Some(Bytes::from(out))
            })
            .clone()
    }
}

use image::ImageEncoder;

struct Stream {
    input: String,
    stats: Arc<SourceStats>,
    state: StreamState,
    error: Option<String>,
    frames: u64,
    /// Frames per second, exponentially smoothed over ~1 s.
    fps: f64,
    last_frame: Option<Instant>,
    size: Option<(usize, usize)>,
    counts: Option<Value>,
    tracks: usize,
    events: u64,
    pixels: watch::Sender<Option<Arc<Snapshot>>>,
}

#[derive(Default)]
struct State {
    /// In the order they were added.
    order: Vec<String>,
    streams: HashMap<String, Stream>,
    events: VecDeque<Event>,
}

/// Streams that ended (or failed, or were removed) still listed: a service that adds and removes
/// cameras for months keeps only the newest of them.
pub const ENDED_KEPT: usize = 64;

impl State {
    fn forget_oldest_ended(&mut self) {
        let over = |st: &State| st.streams.values().filter(|s| s.has_ended()).count() > ENDED_KEPT;
        while over(self) {
            let Some(at) = self
                .order
                .iter()
                .position(|n| self.streams.get(n).is_some_and(Stream::has_ended))
            else {
                break;
            };
            let name = self.order.remove(at);
            self.streams.remove(&name);
        }
    }
}

impl Stream {
    fn has_ended(&self) -> bool {
        matches!(
            self.state,
            StreamState::Ended | StreamState::Failed | StreamState::Removed
        )
    }
}

/// A stream as `GET /api/streams` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    pub name: String,
    pub input: String,
    pub state: StreamState,
    pub fps: f64,
    /// Frames through the pipeline (inferred and written).
    pub frames: u64,
    pub decoded: u64,
    pub dropped: u64,
    pub reconnects: u64,
    pub queued: u64,
    pub tracks: usize,
    pub events: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<usize>,
    /// Seconds since its last frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_frame_s: Option<f64>,
    /// Zone occupancy and line totals (when tracking is on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub struct Hub {
    state: Mutex<State>,
    engine_loaded: AtomicBool,
    /// `/readyz` needs a frame from each running stream within this.
    pub ready_within: Duration,
}

impl Hub {
    pub fn new(ready_within: Duration) -> Self {
        Hub {
            state: Mutex::new(State::default()),
            engine_loaded: AtomicBool::new(false),
            ready_within,
        }
    }

    // a poisoned lock only means a viewer thread panicked mid-copy: the data is still usable
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn streams(&self) -> Vec<StreamView> {
        let st = self.lock();
        st.order
            .iter()
            .filter_map(|n| st.streams.get(n).map(|s| view(n, s)))
            .collect()
    }

    pub fn stream(&self, name: &str) -> Option<StreamView> {
        self.lock().streams.get(name).map(|s| view(name, s))
    }

    /// The newest `limit` events, oldest first.
    pub fn events(&self, limit: usize) -> Vec<Event> {
        let st = self.lock();
        let skip = st.events.len().saturating_sub(limit);
        st.events.iter().skip(skip).cloned().collect()
    }

    /// The stream is gone or will send no more frames.
    pub fn has_ended(&self, name: &str) -> bool {
        self.lock().streams.get(name).is_none_or(Stream::has_ended)
    }

    /// The stream's annotated frames: the latest now and each next one.
    pub fn pixels(&self, name: &str) -> Option<watch::Receiver<Option<Arc<Snapshot>>>> {
        self.lock().streams.get(name).map(|s| s.pixels.subscribe())
    }

    pub fn removing(&self, name: &str) {
        if let Some(s) = self.lock().streams.get_mut(name) {
            s.state = StreamState::Removing;
        }
    }

    /// Ready: the engine is loaded and every running stream delivered a frame within `ready_within`.
    /// Err says what is not ready.
    pub fn ready(&self) -> Result<(), String> {
        if !self.engine_loaded.load(Ordering::Relaxed) {
            return Err("engine not loaded yet".into());
        }
        let st = self.lock();
        let late: Vec<&str> = st
            .order
            .iter()
            .filter(|n| {
                st.streams.get(*n).is_some_and(|s| {
                    matches!(s.state, StreamState::Starting | StreamState::Running)
                        && s.last_frame.is_none_or(|t| t.elapsed() > self.ready_within)
                })
            })
            .map(String::as_str)
            .collect();
        if late.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "no frame within {:?} from: {}",
                self.ready_within,
                late.join(", ")
            ))
        }
    }
}

fn view(name: &str, s: &Stream) -> StreamView {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    StreamView {
        name: name.to_string(),
        input: s.input.clone(),
        state: s.state,
        fps: (s.fps * 10.0).round() / 10.0,
        frames: s.frames,
        decoded: load(&s.stats.decoded),
        dropped: load(&s.stats.dropped),
        reconnects: load(&s.stats.reconnects),
        queued: load(&s.stats.queued),
        tracks: s.tracks,
        events: s.events,
        width: s.size.map(|z| z.0),
        height: s.size.map(|z| z.1),
        last_frame_s: s.last_frame.map(|t| t.elapsed().as_secs_f64()),
        counts: s.counts.clone(),
        last_error: s.error.clone(),
    }
}

impl Observer for Hub {
    fn pipeline_started(&self) {
        self.engine_loaded.store(true, Ordering::Relaxed);
    }

    fn source_added(&self, source: &str, input: &str, stats: &Arc<SourceStats>) {
        let mut st = self.lock();
        // a name used again (re-added camera) takes over the old entry and its viewers
        let pixels = match st.streams.remove(source) {
            Some(old) => old.pixels,
            None => {
                st.order.push(source.to_string());
                watch::channel(None).0
            }
        };
        st.streams.insert(
            source.to_string(),
            Stream {
                input: input.to_string(),
                stats: stats.clone(),
                state: StreamState::Starting,
                error: None,
                frames: 0,
                fps: 0.0,
                last_frame: None,
                size: None,
                counts: None,
                tracks: 0,
                events: 0,
                pixels,
            },
        );
    }

    fn source_started(&self, source: &str, width: usize, height: usize) {
        if let Some(s) = self.lock().streams.get_mut(source) {
            s.size = Some((width, height));
            if s.state == StreamState::Starting {
                s.state = StreamState::Running;
            }
        }
    }

    fn event(&self, source: &str, event: &Event) {
        let mut st = self.lock();
        if let Some(s) = st.streams.get_mut(source) {
            s.events += 1;
        }
        if st.events.len() >= RECENT_EVENTS {
            st.events.pop_front();
        }
        st.events.push_back(event.clone());
    }

    fn frame(&self, source: &str, record: &FrameRecord) {
        let now = Instant::now();
        if let Some(s) = self.lock().streams.get_mut(source) {
            if let Some(t) = s.last_frame {
                let dt = now.duration_since(t).as_secs_f64().max(1e-6);
                // smoothing weight grows with the gap: ~1 s time constant whatever the rate
                let a = (dt / 1.0).min(1.0);
                s.fps = s.fps * (1.0 - a) + a / dt;
            }
            s.last_frame = Some(now);
            s.frames += 1;
            s.tracks = record
                .instances
                .iter()
                .filter(|i| i.track_id.is_some())
                .count();
            if record.analytics.is_some() {
                s.counts = record.analytics.clone();
            }
        }
    }

    fn wants_pixels(&self, source: &str) -> bool {
        // snapshots may be asked at any time: keep the latest frame of every stream
        self.lock().streams.contains_key(source)
    }

    fn annotated(&self, source: &str, rgb: &[u8], width: usize, height: usize) {
        let mut st = self.lock();
        let Some(s) = st.streams.get_mut(source) else {
            return;
        };
        let snap = Snapshot {
            rgb: rgb.to_vec(),
            width,
            height,
            seq: s.frames,
            jpeg: OnceLock::new(),
        };
        s.pixels.send_replace(Some(Arc::new(snap)));
    }

    fn source_ended(&self, source: &str, error: Option<&str>) {
        let mut st = self.lock();
        if let Some(s) = st.streams.get_mut(source) {
            s.state = match (s.state, error) {
                (StreamState::Removing, _) => StreamState::Removed,
                (_, Some(_)) => StreamState::Failed,
                _ => StreamState::Ended,
            };
            s.error = error.map(str::to_string);
            if s.state == StreamState::Removed {
                // nobody asks a removed stream for pictures: its last frame's memory goes
                s.pixels.send_replace(None);
            }
        }
        st.forget_oldest_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tracked: usize) -> FrameRecord {
        let mut r = FrameRecord::new("cam", 4, 2, &[], &[]);
        for k in 0..tracked {
            r.instances.push(crate::output::InstanceRecord {
                class_id: 1,
                label: "circle".into(),
                score: 0.9,
                bbox: [0.0, 0.0, 1.0, 1.0],
                track_id: Some(k as u64 + 1),
                mask: crate::output::RleRecord {
                    size: [2, 4],
                    counts: "8".into(),
                },
            });
        }
        r
    }

    #[test]
    fn readiness_follows_the_engine_and_each_running_stream() {
        let hub = Hub::new(Duration::from_millis(200));
        assert!(hub.ready().unwrap_err().contains("engine"));
        hub.pipeline_started();
        assert!(hub.ready().is_ok(), "no stream yet: nothing to wait for");
        let stats = Arc::new(SourceStats::default());
        hub.source_added("cam", "rtsp://x/cam", &stats);
        assert!(hub.ready().unwrap_err().contains("cam"));
        hub.frame("cam", &record(2));
        assert!(hub.ready().is_ok());
        assert_eq!(hub.stream("cam").unwrap().tracks, 2);
        std::thread::sleep(Duration::from_millis(250));
        assert!(hub.ready().is_err(), "a stream that stopped delivering");
        hub.source_ended("cam", Some("gave up"));
        assert!(hub.ready().is_ok(), "an ended stream is not waited for");
        let v = hub.stream("cam").unwrap();
        assert_eq!(
            (v.state, v.last_error.as_deref()),
            (StreamState::Failed, Some("gave up"))
        );
    }

    #[test]
    fn removed_and_ended_streams_do_not_pile_up() {
        let hub = Hub::new(Duration::from_secs(1));
        let stats = Arc::new(SourceStats::default());
        hub.source_added("live", "x", &stats);
        // a removed stream lets go of its last frame
        hub.source_added("gone", "x", &stats);
        hub.annotated("gone", &[9u8; 16 * 16 * 3], 16, 16);
        let rx = hub.pixels("gone").unwrap();
        assert!(rx.borrow().is_some());
        hub.removing("gone");
        hub.source_ended("gone", None);
        assert!(rx.borrow().is_none());
        assert!(hub.has_ended("gone") && !hub.has_ended("live") && hub.has_ended("nope"));
        // cameras added and removed for months: only the newest ended ones stay listed
        for i in 0..ENDED_KEPT + 10 {
            let name = format!("cam{i}");
            hub.source_added(&name, "x", &stats);
            hub.source_ended(&name, None);
        }
        let names: Vec<String> = hub.streams().into_iter().map(|v| v.name).collect();
        assert_eq!(names.len(), ENDED_KEPT + 1);
        assert_eq!(names[0], "live", "running streams are never forgotten");
        assert_eq!(names[1], "cam10");
        assert_eq!(names.last().unwrap(), &format!("cam{}", ENDED_KEPT + 9));
    }

    #[test]
    fn snapshots_encode_once_and_viewers_see_the_latest() {
        let hub = Hub::new(Duration::from_secs(1));
        hub.source_added("cam", "x", &Arc::new(SourceStats::default()));
        let mut rx = hub.pixels("cam").unwrap();
        assert!(rx.borrow().is_none());
        hub.frame("cam", &record(0));
        hub.annotated("cam", &[200u8; 8 * 8 * 3], 8, 8);
        assert!(rx.has_changed().unwrap());
        let snap = rx.borrow_and_update().clone().unwrap();
        let jpeg = snap.jpeg().unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "a JPEG");
        // encoded once: the second viewer gets the same bytes (same buffer)
        assert_eq!(jpeg.as_ptr(), snap.jpeg().unwrap().as_ptr());
        let img = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (8, 8));
    }

    #[test]
    fn recent_events_are_bounded() {
        let hub = Hub::new(Duration::from_secs(1));
        let e: Event = serde_json::from_value(serde_json::json!({
            "id": "r/cam/0", "type": "track_start", "source": "cam", "frame": 0, "pts_ns": 0,
            "ts": "2026-01-01T00:00:00.000Z", "track_id": 1, "label": "circle", "score": 0.9,
            "box": [0.0, 0.0, 1.0, 1.0]
        }))
        .unwrap();
        for k in 0..RECENT_EVENTS + 5 {
            let mut e = e.clone();
            e.id = format!("r/cam/{k}");
            hub.event("cam", &e);
        }
        let last = hub.events(3);
        assert_eq!(last.len(), 3);
        assert_eq!(last[2].id, format!("r/cam/{}", RECENT_EVENTS + 4));
        assert_eq!(hub.events(usize::MAX).len(), RECENT_EVENTS);
    }
}
