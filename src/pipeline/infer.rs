//! The inference stage: gathers up to `max_batch` frames across sources (waiting at most
//! `max_wait_ms` after the first, round-robin so no stream starves another), runs the model once,
//! forwards results in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use super::composite::SourceInfo;
use super::config::InferenceConfig;
use super::control::{Command, ControlError, Spawner};
use super::source::{Frame, SourceEvent};
use crate::error::Result;
use crate::frame::RgbFrame;
use crate::model::{Detection, MaskRcnn, StageTimes};

/// One frame with the model's detections.
pub(super) struct Inferred {
    pub frame: Frame,
    pub detections: Vec<Detection>,
    pub times: StageTimes,
    /// Frames in the model call this one was part of.
    pub batch: usize,
}

/// What the inference stage hands the composite stage.
pub(super) enum Work {
    Frame(Box<Inferred>),
    /// A source added at run time, before any of its frames.
    Added(Box<SourceInfo>),
    End {
        source: usize,
        error: Option<String>,
        /// A removal waiting for the source's outputs to be finalized.
        reply: Option<Sender<std::result::Result<(), ControlError>>>,
    },
}

/// Commands from the API and what carries them out; absent when nothing can change the sources.
pub(super) struct Controls {
    pub commands: Receiver<Command>,
    pub spawner: Spawner,
    /// Go on with no source left (until stopped), waiting for streams to be added.
    pub keep_running: bool,
}

/// The stage's thread body: returns the model (a batch reuses it) with the outcome.
pub(super) fn infer_loop(
    mut model: MaskRcnn,
    receivers: Vec<Receiver<SourceEvent>>,
    out: Sender<Work>,
    cfg: InferenceConfig,
    max_batch: usize,
    stop: Arc<AtomicBool>,
    controls: Option<Controls>,
) -> (MaskRcnn, Result<()>, Option<Spawner>) {
    let _span = tracing::info_span!("infer").entered();
    let mut gather = Gather {
        open: vec![true; receivers.len()],
        receivers,
        next: 0,
        max_batch,
        max_wait: Duration::from_millis(cfg.max_wait_ms),
        stop,
        controls,
    };
    let result = infer_batches(&mut model, &mut gather, &out);
    (model, result, gather.controls.map(|c| c.spawner))
}

fn infer_batches(model: &mut MaskRcnn, gather: &mut Gather, out: &Sender<Work>) -> Result<()> {
    let mut batch: Vec<Frame> = Vec::with_capacity(gather.max_batch);
    while gather.running() {
        batch.clear();
        if !gather.obey(out) {
            return Ok(());
        }
        let ended = gather.fill(&mut batch);
        if !batch.is_empty() {
            let views: Result<Vec<RgbFrame<'_>>> = batch
                .iter()
                .map(|f| RgbFrame::new(f.width, f.height, f.width * 3, &f.data))
                .collect();
            let results = model.detect_batch(&views?)?;
            let n = batch.len();
            for (frame, r) in batch.drain(..).zip(results) {
                let item = Inferred {
                    frame,
                    detections: r.detections,
                    times: r.times,
                    batch: n,
                };
                if out.send(Work::Frame(Box::new(item))).is_err() {
                    return Ok(());
                }
                super::metrics::inferred_queue(out.len());
            }
        }
        for (source, error) in ended {
            let reply = gather
                .controls
                .as_mut()
                .and_then(|c| c.spawner.ended(source));
            let end = Work::End {
                source,
                error,
                reply,
            };
            if out.send(end).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Collects the frames of one model call from the sources' queues.
struct Gather {
    receivers: Vec<Receiver<SourceEvent>>,
    open: Vec<bool>,
    /// Round-robin start, so no stream starves another.
    next: usize,
    max_batch: usize,
    max_wait: Duration,
    stop: Arc<AtomicBool>,
    controls: Option<Controls>,
}

impl Gather {
    /// Some source is open, or the API may still add one (until the run is stopped).
    fn running(&self) -> bool {
        self.open.iter().any(|&o| o)
            || self
                .controls
                .as_ref()
                .is_some_and(|c| c.keep_running && !c.spawner.stopping())
    }

    fn commands_waiting(&self) -> bool {
        self.controls
            .as_ref()
            .is_some_and(|c| !c.commands.is_empty())
    }

    /// Carries out the API's commands; false when the composite stage is gone.
    fn obey(&mut self, out: &Sender<Work>) -> bool {
        let Some(c) = self.controls.as_mut() else {
            return true;
        };
        while let Ok(cmd) = c.commands.try_recv() {
            match cmd {
                Command::Add { source, reply } => match c.spawner.add(source) {
                    Ok(added) => {
                        let name = added.info.name.clone();
                        // the composite stage learns of the source before any of its frames
                        if out.send(Work::Added(Box::new(added.info))).is_err() {
                            return false;
                        }
                        self.receivers.push(added.rx);
                        self.open.push(true);
                        let _ = reply.send(Ok(name));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::Remove { name, reply } => c.spawner.remove(&name, reply),
            }
        }
        true
    }

    /// Fills `batch` (up to max_batch frames, waiting at most max_wait after the first); returns
    /// the sources that ended meanwhile.
    fn fill(&mut self, batch: &mut Vec<Frame>) -> Vec<(usize, Option<String>)> {
        let deadline = Instant::now() + Duration::from_millis(100);
        let mut first_at: Option<Instant> = None;
        let mut ended = Vec::new();
        loop {
            let got = self.take_ready(batch, &mut first_at, &mut ended);
            self.next = (self.next + 1) % self.receivers.len().max(1);
            if batch.len() >= self.max_batch || !ended.is_empty() {
                break;
            }
            let waited_enough = first_at.is_some_and(|t| t.elapsed() >= self.max_wait);
            if waited_enough
                || (first_at.is_none() && Instant::now() >= deadline)
                || self.stop.load(Ordering::Relaxed) && batch.is_empty()
                || batch.is_empty() && self.commands_waiting()
            {
                break;
            }
            if !got {
                let wait = match first_at {
                    Some(t) => self.max_wait.saturating_sub(t.elapsed()),
                    None => deadline.saturating_duration_since(Instant::now()),
                };
                if !self.wait_any(wait) {
                    break;
                }
            }
        }
        ended
    }

    /// Takes what is ready now, one frame per source per round.
    fn take_ready(
        &mut self,
        batch: &mut Vec<Frame>,
        first_at: &mut Option<Instant>,
        ended: &mut Vec<(usize, Option<String>)>,
    ) -> bool {
        let mut got = false;
        for k in 0..self.receivers.len() {
            let i = (self.next + k) % self.receivers.len();
            if !self.open[i] || batch.len() >= self.max_batch {
                continue;
            }
            match self.receivers[i].try_recv() {
                Ok(SourceEvent::Frame(f)) => {
                    batch.push(f);
                    first_at.get_or_insert_with(Instant::now);
                    got = true;
                }
                Ok(SourceEvent::End { source, error }) => {
                    self.open[i] = false;
                    ended.push((source, error));
                    got = true;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => {}
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    self.open[i] = false;
                    ended.push((i, Some("source thread ended unexpectedly".into())));
                }
            }
        }
        got
    }

    /// Blocks until any open source (or the API) has something, for at most `wait`; false when
    /// nothing is left to wait on.
    fn wait_any(&self, wait: Duration) -> bool {
        let mut sel = Select::new();
        let mut any = false;
        for (i, rx) in self.receivers.iter().enumerate() {
            if self.open[i] {
                sel.recv(rx);
                any = true;
            }
        }
        if let Some(c) = &self.controls {
            sel.recv(&c.commands);
            any = true;
        }
        if any {
            let _ = sel.ready_timeout(wait);
        }
        any
    }
}
