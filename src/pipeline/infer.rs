//! The inference stage: gathers up to `max_batch` frames across sources (waiting at most
//! `max_wait_ms` after the first, round-robin so no stream starves another), runs the model once,
//! forwards results in order. With several workers (`[inference] workers`) the model calls run on
//! their threads, a batch to whichever is free, and a forwarding thread keeps the order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use super::composite::SourceInfo;
use super::config::InferenceConfig;
use super::control::{Command, ControlError, Spawner};
use super::source::{Frame, SourceEvent};
use super::workers::{Done, Models, Pool};
use crate::error::{Error, Result};
use crate::frame::RgbFrame;
use crate::model::{Detection, FrameResult, MaskRcnn, StageTimes};

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

/// The stage's thread body: returns the models (a batch reuses them) with the outcome; None when
/// they were lost with a worker that could not start or ended abnormally.
pub(super) fn infer_loop(
    models: Models,
    receivers: Vec<Receiver<SourceEvent>>,
    out: Sender<Work>,
    cfg: InferenceConfig,
    max_batch: usize,
    stop: Arc<AtomicBool>,
    controls: Option<Controls>,
) -> (Option<Models>, Result<()>, Option<Spawner>) {
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
    let (models, result) = if models.workers() == 1 {
        let mut models = models;
        let result = infer_batches(&mut models.as_mut_slice()[0], &mut gather, &out);
        (Some(models), result)
    } else {
        infer_pooled(models, &mut gather, out)
    };
    (models, result, gather.controls.map(|c| c.spawner))
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
            let results = model.detect_batch(&views(&batch)?)?;
            if !hand_on(out, inferred(batch.drain(..), results)) {
                return Ok(());
            }
        }
        for (source, error) in ended {
            if out.send(gather.end(source, error)).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The frames of a batch as the model reads them (a `&Vec`: the workers' [`super::workers::ViewFn`]).
#[allow(clippy::ptr_arg)]
fn views(batch: &Vec<Frame>) -> Result<Vec<RgbFrame<'_>>> {
    batch
        .iter()
        .map(|f| RgbFrame::new(f.width, f.height, f.width * 3, &f.data))
        .collect()
}

/// Each frame of a model call with its results.
fn inferred(
    batch: impl ExactSizeIterator<Item = Frame>,
    results: Vec<FrameResult>,
) -> impl Iterator<Item = Inferred> {
    let n = batch.len();
    batch.zip(results).map(move |(frame, r)| Inferred {
        frame,
        detections: r.detections,
        times: r.times,
        batch: n,
    })
}

/// Sends a model call's frames to the compositing thread; false once it is gone (the run ends).
fn hand_on(out: &Sender<Work>, items: impl Iterator<Item = Inferred>) -> bool {
    for item in items {
        if out.send(Work::Frame(Box::new(item))).is_err() {
            return false;
        }
        super::metrics::inferred_queue(out.len());
    }
    true
}

/// What the forwarding thread hands on next: a ready item, or the next results of a worker.
enum Slot {
    Ready(Work),
    From(usize),
}

/// Several workers: this thread gathers a batch whenever one is free (so a live source's newest
/// frames go to it) and notes the order; the forwarding thread hands results and ends on in it.
fn infer_pooled(
    models: Models,
    gather: &mut Gather,
    out: Sender<Work>,
) -> (Option<Models>, Result<()>) {
    let (models, per_worker) = models.into_parts();
    let workers = models.len();
    let mut pool = match Pool::start(models, per_worker, views) {
        Ok(p) => p,
        Err(e) => return (None, Err(e)),
    };
    let finish = |pool: Pool<Vec<Frame>>| {
        pool.finish()
            .map(|models| Models::from_parts(models, per_worker))
    };
    let (order_tx, order) = crossbeam_channel::bounded::<Slot>(2 * workers + 2);
    let results = pool.take_results();
    let forward_out = out.clone();
    let forwarder = std::thread::Builder::new()
        .name("infer-forward".into())
        .spawn(move || forward(order, results, forward_out));
    let forwarder = match forwarder {
        Ok(f) => f,
        Err(e) => {
            let err = Error::Pipeline(format!("starting the inference forwarder: {e}"));
            return (finish(pool).ok(), Err(err));
        }
    };
    'run: while gather.running() {
        if !gather.obey(&out) || pool.free_worker().is_none() {
            break;
        }
        let mut batch = Vec::with_capacity(gather.max_batch);
        let ended = gather.fill(&mut batch);
        if !batch.is_empty() {
            match pool.send(batch) {
                Ok(w) if order_tx.send(Slot::From(w)).is_ok() => {}
                _ => break,
            }
        }
        for (source, error) in ended {
            if order_tx
                .send(Slot::Ready(gather.end(source, error)))
                .is_err()
            {
                break 'run;
            }
        }
    }
    drop(order_tx);
    let forwarded = forwarder
        .join()
        .unwrap_or_else(|_| Err(Error::Pipeline("the inference forwarder panicked".into())));
    match finish(pool) {
        Ok(models) => (Some(models), forwarded),
        Err(e) => (None, forwarded.and(Err(e))),
    }
}

/// Hands results and ends on in the order `order` gives; a failed model call ends the run with its
/// error (the workers then stop: their results have nowhere to go).
fn forward(
    order: Receiver<Slot>,
    results: Vec<Receiver<Done<Vec<Frame>>>>,
    out: Sender<Work>,
) -> Result<()> {
    for slot in order.iter() {
        match slot {
            Slot::Ready(work) => {
                if out.send(work).is_err() {
                    return Ok(());
                }
            }
            Slot::From(w) => {
                let Some(Ok(done)) = results.get(w).map(Receiver::recv) else {
                    return Err(Error::Pipeline(format!("inference worker {w} ended")));
                };
                if !hand_on(&out, inferred(done.batch.into_iter(), done.results?)) {
                    return Ok(());
                }
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
    /// The end of a source, with the reply a removal waits for.
    fn end(&mut self, source: usize, error: Option<String>) -> Work {
        let reply = self.controls.as_mut().and_then(|c| c.spawner.ended(source));
        Work::End {
            source,
            error,
            reply,
        }
    }

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
