//! Streams added and removed while the pipeline runs (the HTTP API's POST/DELETE /api/streams). The
//! API holds a `Control`; the inference thread, which owns the sources' queues, carries the commands
//! out between batches (see `infer::Gather`), so a new source joins the cross-stream batching like the
//! others and a removed one ends through the same path as a source whose input ended.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::composite::SourceInfo;
use super::config::{PipelineConfig, SourceConfig, SourceKind};
use super::observe::{Observer, Observers};
use super::outputs::OutputPlan;
use super::rtsp::{Credentials, RtspServer};
use super::source::{self, SourceEvent, SourceSpec};
use crate::error::Error;

/// What the API asks of the running pipeline.
pub enum Command {
    Add {
        source: SourceConfig,
        reply: Sender<std::result::Result<String, ControlError>>,
    },
    Remove {
        name: String,
        reply: Sender<std::result::Result<(), ControlError>>,
    },
}

/// Why a command was refused, sorted the way an HTTP client needs it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    /// The request itself is wrong (bad uri or name, a file that cannot be read).
    #[error("{0}")]
    Invalid(String),
    /// It clashes with what runs (name in use, outputs that exist).
    #[error("{0}")]
    Conflict(String),
    #[error("no running stream is named {0}")]
    NotFound(String),
    /// The pipeline has not started yet, or has ended.
    #[error("{0}")]
    Unavailable(String),
}

/// The API's handle on the pipeline.
#[derive(Clone)]
pub struct Control {
    tx: Sender<Command>,
}

/// How long an API call waits for the pipeline to act (it acts between model calls).
const REPLY_WAIT: Duration = Duration::from_secs(30);

impl Control {
    /// The handle and the end the pipeline reads (`RunContext::control`).
    pub fn channel() -> (Control, Receiver<Command>) {
        let (tx, rx) = crossbeam_channel::bounded(16);
        (Control { tx }, rx)
    }

    /// Adds a source; returns its name once it is started.
    pub fn add(&self, source: SourceConfig) -> std::result::Result<String, ControlError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Add { source, reply })?;
        Self::wait(rx)
    }

    /// Removes a source; returns once its outputs are finalized.
    pub fn remove(&self, name: &str) -> std::result::Result<(), ControlError> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Remove {
            name: name.to_string(),
            reply,
        })?;
        Self::wait(rx)
    }

    fn send(&self, c: Command) -> std::result::Result<(), ControlError> {
        self.tx
            .send_timeout(c, REPLY_WAIT)
            .map_err(|_| ControlError::Unavailable("the pipeline is not running".into()))
    }

    fn wait<T>(
        rx: Receiver<std::result::Result<T, ControlError>>,
    ) -> std::result::Result<T, ControlError> {
        match rx.recv_timeout(REPLY_WAIT) {
            Ok(r) => r,
            Err(_) => Err(ControlError::Unavailable(
                "the pipeline did not answer (not started yet, or ending)".into(),
            )),
        }
    }
}

/// A stream name usable in URLs, file names and metric labels.
pub fn check_name(name: &str) -> std::result::Result<(), ControlError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "stream name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.' (not first)"
        )))
    }
}

/// One source the pipeline runs (or ran), by source id.
struct Entry {
    config: SourceConfig,
    name: String,
    cancel: Arc<AtomicBool>,
    ended: bool,
}

/// What the inference thread needs to start sources at run time.
pub(super) struct Spawner {
    cfg: PipelineConfig,
    credentials: Option<Credentials>,
    server: Option<Arc<RtspServer>>,
    stop: Arc<AtomicBool>,
    observers: Observers,
    entries: Vec<Entry>,
    /// Threads of sources started here, joined at the end of the run.
    pub threads: Vec<std::thread::JoinHandle<()>>,
    /// Removals waiting for their source to be finalized, by source id.
    pending: Vec<(usize, Sender<std::result::Result<(), ControlError>>)>,
}

/// A source started at run time, for the inference and composite stages.
pub(super) struct Added {
    pub rx: Receiver<SourceEvent>,
    pub info: SourceInfo,
}

impl Spawner {
    pub fn new(
        cfg: &PipelineConfig,
        credentials: Option<Credentials>,
        server: Option<Arc<RtspServer>>,
        stop: Arc<AtomicBool>,
        observers: Observers,
    ) -> Self {
        Spawner {
            cfg: cfg.clone(),
            credentials,
            server,
            stop,
            observers,
            entries: Vec::new(),
            threads: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Registers a source started with the pipeline (so it can be removed too).
    pub fn started(&mut self, config: &SourceConfig, name: &str, cancel: Arc<AtomicBool>) {
        self.entries.push(Entry {
            config: config.clone(),
            name: name.to_string(),
            cancel,
            ended: false,
        });
    }

    /// Starts a source at run time; `id` is the index it gets.
    pub fn add(&mut self, source: SourceConfig) -> std::result::Result<Added, ControlError> {
        let invalid = |e: Error| ControlError::Invalid(e.to_string());
        let kind: SourceKind = source
            .uri
            .parse()
            .map_err(|e: Error| ControlError::Invalid(format!("uri: {e}")))?;
        let name = source.resolved_name();
        check_name(&name)?;
        if self.entries.iter().any(|e| !e.ended && e.name == name) {
            return Err(ControlError::Conflict(format!(
                "a stream named {name} is running: remove it first or choose another name"
            )));
        }
        // the whole set as a pipeline file would have it: {name} in output paths, valid names
        let mut all = self.cfg.clone();
        all.sources = self
            .entries
            .iter()
            .filter(|e| !e.ended)
            .map(|e| e.config.clone())
            .chain(std::iter::once(source.clone()))
            .collect();
        all.validate()
            .map_err(|e| ControlError::Conflict(e.to_string()))?;
        // against every input and output the run has had, not only the new stream's own: its
        // {name} may spell another stream's input, or the recording of a stream removed before
        let mut plan = OutputPlan::default();
        let mut earlier = self.cfg.clone();
        earlier.sources = self.entries.iter().map(|e| e.config.clone()).collect();
        super::plan_outputs(&earlier, &mut plan).map_err(invalid)?;
        plan.mark_written();
        let mut one = self.cfg.clone();
        one.sources = vec![source.clone()];
        super::plan_outputs(&one, &mut plan).map_err(invalid)?;
        plan.check(self.cfg.output.overwrite)
            .map_err(|e| ControlError::Conflict(e.to_string()))?;
        let id = self.entries.len();
        let spec = SourceSpec {
            capacity: self.cfg.queue.capacity_for(kind.is_live()),
            background_nice: self.cfg.queue.background_nice,
            rtsp: self.cfg.rtsp_input.clone(),
            credentials: self.credentials.clone(),
            ..SourceSpec::new(id, name.clone(), kind.clone(), &source)
        };
        let handle = source::spawn(spec, self.stop.clone()).map_err(invalid)?;
        let mount = match &self.server {
            Some(server) => {
                match server.mount_source(&name) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        // the source is running already: end it, joined with the others at the end
                        handle.cancel.store(true, Ordering::Relaxed);
                        self.threads.push(handle.thread);
                        return Err(invalid(e));
                    }
                }
            }
            None => None,
        };
        self.observers
            .source_added(&name, &kind.describe(), &handle.stats);
        self.threads.push(handle.thread);
        self.entries.push(Entry {
            config: source,
            name: name.clone(),
            cancel: handle.cancel,
            ended: false,
        });
        tracing::info!(source = %name, input = %kind.describe(), "stream added");
        Ok(Added {
            rx: handle.rx,
            info: SourceInfo {
                name,
                kind,
                stats: handle.stats,
                mount,
            },
        })
    }

    /// Every source's own stop flag, started ones and those added at run time.
    pub fn cancels(&self) -> impl Iterator<Item = &Arc<AtomicBool>> {
        self.entries.iter().map(|e| &e.cancel)
    }

    /// Asks a running source to end; the reply goes out once the composite stage finalized it.
    pub fn remove(&mut self, name: &str, reply: Sender<std::result::Result<(), ControlError>>) {
        match self.entries.iter().position(|e| !e.ended && e.name == name) {
            Some(id) => {
                self.entries[id].cancel.store(true, Ordering::Relaxed);
                self.pending.push((id, reply));
                tracing::info!(source = %name, "stream removal asked");
            }
            None => {
                let _ = reply.send(Err(ControlError::NotFound(name.to_string())));
            }
        }
    }

    /// A source ended: hands back the reply of a removal waiting for it, if any.
    pub fn ended(&mut self, id: usize) -> Option<Sender<std::result::Result<(), ControlError>>> {
        if let Some(e) = self.entries.get_mut(id) {
            e.ended = true;
        }
        let at = self.pending.iter().position(|(i, _)| *i == id)?;
        Some(self.pending.swap_remove(at).1)
    }

    /// Whether the run goes on with no source left (commands may still add some).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_urls_files_and_labels() {
        for ok in ["cam1", "door-2", "lot_b.east"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "x\"y", &"a".repeat(65)] {
            assert!(
                matches!(check_name(bad), Err(ControlError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_pipeline_that_never_answers_is_reported_not_waited_on_forever() {
        let (control, rx) = Control::channel();
        drop(rx);
        let e = control.remove("cam").unwrap_err();
        assert!(matches!(e, ControlError::Unavailable(_)), "{e}");
    }
}
