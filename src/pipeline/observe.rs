//! Live consumers of what the composite stage produces (MQTT, the HTTP API). They run on the composite
//! thread, between inference and the next frame, so an observer never blocks: it copies what it needs
//! into its own bounded queue and returns.

use std::sync::Arc;

use super::source::SourceStats;
use crate::analytics::Event;
use crate::output::FrameRecord;

pub trait Observer: Send + Sync {
    /// The engine is loaded and the pipeline starts its sources.
    fn pipeline_started(&self) {}
    /// A source was started (with the pipeline, or added at run time); `stats` are its live counters.
    fn source_added(&self, _source: &str, _input: &str, _stats: &Arc<SourceStats>) {}
    /// A source's first frame reached the composite stage (its outputs are open).
    fn source_started(&self, _source: &str, _width: usize, _height: usize) {}
    /// Each event, in the order it is written to the events file.
    fn event(&self, _source: &str, _event: &Event) {}
    /// Each frame's record (its `analytics` holds zone occupancy and line totals when tracking is on).
    fn frame(&self, _source: &str, _record: &FrameRecord) {}
    /// Whether `annotated` is wanted now for this source (drawing and copying pixels cost).
    fn wants_pixels(&self, _source: &str) -> bool {
        false
    }
    /// The frame as drawn (RGB, tightly packed), when `wants_pixels` said so.
    fn annotated(&self, _source: &str, _rgb: &[u8], _width: usize, _height: usize) {}
    /// The source ended (`error` when it failed); its outputs are finalized.
    fn source_ended(&self, _source: &str, _error: Option<&str>) {}
}

/// Every observer of a run.
#[derive(Clone, Default)]
pub struct Observers(pub Vec<Arc<dyn Observer>>);

impl Observers {
    pub fn push(&mut self, o: Arc<dyn Observer>) {
        self.0.push(o);
    }
}

/// All of them, in order.
impl Observer for Observers {
    fn pipeline_started(&self) {
        self.0.iter().for_each(|o| o.pipeline_started());
    }
    fn source_added(&self, source: &str, input: &str, stats: &Arc<SourceStats>) {
        self.0
            .iter()
            .for_each(|o| o.source_added(source, input, stats));
    }
    fn source_started(&self, source: &str, width: usize, height: usize) {
        self.0
            .iter()
            .for_each(|o| o.source_started(source, width, height));
    }
    fn event(&self, source: &str, event: &Event) {
        self.0.iter().for_each(|o| o.event(source, event));
    }
    fn frame(&self, source: &str, record: &FrameRecord) {
        self.0.iter().for_each(|o| o.frame(source, record));
    }
    fn wants_pixels(&self, source: &str) -> bool {
        self.0.iter().any(|o| o.wants_pixels(source))
    }
    fn annotated(&self, source: &str, rgb: &[u8], width: usize, height: usize) {
        self.0
            .iter()
            .for_each(|o| o.annotated(source, rgb, width, height));
    }
    fn source_ended(&self, source: &str, error: Option<&str>) {
        self.0.iter().for_each(|o| o.source_ended(source, error));
    }
}
