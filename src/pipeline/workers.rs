//! Inference workers: several frames in flight at once, each on its own copy of the model with its
//! share of the threads.
//!
//! One frame at a time leaves cores idle: between ONNX Runtime's parallel operators our own stages
//! (preprocess, proposals, ROIAlign, paste) run on one thread, and every parallel section pays for
//! waking the other threads (90-170 µs a wake on a small VM). Two workers of one thread each on two
//! cores keep both busy with no wake-ups inside a frame: the demo's INT8 model went from ~42 to ~55-62
//! frames/s (BENCHMARKS.md), each frame taking longer (one thread instead of two), so a live stream's
//! latency grows by about that; `workers = 1` runs one frame at a time, on all the threads.

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::backend::BackendOptions;
use crate::error::{Error, Result};
use crate::frame::RgbFrame;
use crate::model::{FrameResult, MaskRcnn};

/// The threads this machine offers (what `threads = 0` means).
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How many workers and threads each: `workers` 0 is automatic (2 on the CPU with 2 threads or
/// more, 1 on a GPU, whose kernels a second worker would only queue behind the first's); each worker
/// gets an equal share of `threads` (0: every core), at least one.
pub fn plan(workers: usize, threads: usize, on_cpu: bool) -> (usize, usize) {
    let total = if threads == 0 {
        available_threads()
    } else {
        threads
    };
    let workers = match workers {
        0 if on_cpu && total >= 2 => 2,
        0 => 1,
        w => w,
    };
    (workers, (total / workers).max(1))
}

/// The copies of the model inference runs on, one per worker.
pub struct Models {
    models: Vec<MaskRcnn>,
    /// Threads of each worker (its ONNX Runtime sessions' and its rayon pool's).
    threads: usize,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("workers", &self.models.len())
            .field("threads", &self.threads)
            .finish()
    }
}

impl Models {
    /// Loads `workers` copies (0: automatic, see [`plan`]) of the engine in `dir`, at once.
    pub fn load(dir: &std::path::Path, opts: &BackendOptions, workers: usize) -> Result<Self> {
        let (workers, threads) = plan(workers, opts.threads, opts.runs_on_cpu());
        let opts = BackendOptions {
            // one worker keeps the caller's setting (0: ONNX Runtime's own choice of every core)
            threads: if workers == 1 { opts.threads } else { threads },
            ..opts.clone()
        };
        let models = std::thread::scope(|s| {
            let loads: Vec<_> = (0..workers)
                .map(|_| s.spawn(|| MaskRcnn::load(dir, &opts)))
                .collect();
            loads
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Pipeline("loading the engine panicked".into()))
                    })
                })
                .collect::<Result<Vec<_>>>()
        })?;
        tracing::info!(workers, threads, "inference workers");
        Ok(Models { models, threads })
    }

    /// The first copy: what every copy shares (classes, manifest, provider, precision).
    pub fn first(&self) -> &MaskRcnn {
        &self.models[0]
    }

    pub fn workers(&self) -> usize {
        self.models.len()
    }

    /// Threads of each worker.
    pub fn threads_per_worker(&self) -> usize {
        self.threads
    }

    /// See [`MaskRcnn::set_min_score`]; applies to every copy.
    pub fn set_min_score(&mut self, score: f32) {
        self.models.iter_mut().for_each(|m| m.set_min_score(score));
    }

    pub fn as_mut_slice(&mut self) -> &mut [MaskRcnn] {
        &mut self.models
    }

    /// Splits off the copies (for threads that each own one) and the threads each should use.
    pub(crate) fn into_parts(self) -> (Vec<MaskRcnn>, usize) {
        (self.models, self.threads)
    }

    /// The copies back from [`Models::into_parts`] (never none: a pool hands back every one).
    pub(crate) fn from_parts(models: Vec<MaskRcnn>, threads: usize) -> Self {
        Models { models, threads }
    }
}

/// Runs `f` on a rayon pool of `threads` threads (0: rayon's global pool), so that a worker's own
/// parallel stages stay on its share of the cores: with one thread they run inline, waking nobody.
pub fn on_pool<R: Send>(threads: usize, name: &str, f: impl FnOnce() -> R + Send) -> R {
    if threads == 0 {
        return f();
    }
    let prefix = name.to_string();
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{prefix}-{i}"))
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(e) => {
            tracing::warn!(error = %e, "no thread pool of its own for {name}; using rayon's global one");
            f()
        }
    }
}

/// A batch of frames and what the model made of them.
pub struct Done<B> {
    pub batch: B,
    pub results: Result<Vec<FrameResult>>,
}

/// What a worker runs: the model (or, in tests, a stand-in).
pub trait Detector: Send + 'static {
    fn detect_batch(&mut self, frames: &[RgbFrame<'_>]) -> Result<Vec<FrameResult>>;
}

impl Detector for MaskRcnn {
    fn detect_batch(&mut self, frames: &[RgbFrame<'_>]) -> Result<Vec<FrameResult>> {
        MaskRcnn::detect_batch(self, frames)
    }
}

/// Batches go to whichever worker is free; each worker gives its results back in the order it was
/// sent its batches (the caller notes which worker got which batch to keep the overall order).
pub struct Pool<B: Send + 'static, M: Detector = MaskRcnn> {
    jobs: Vec<Sender<B>>,
    done: Vec<Receiver<Done<B>>>,
    idle: Receiver<usize>,
    /// A worker that said it was free and has not been given a batch yet.
    free: Option<usize>,
    threads: Vec<JoinHandle<M>>,
}

/// How a worker reads a batch's frames.
pub type ViewFn<B> = fn(&B) -> Result<Vec<RgbFrame<'_>>>;

impl<B: Send + 'static, M: Detector> Pool<B, M> {
    /// Starts one thread per model, each on a rayon pool of `per_worker` threads (0: the global
    /// one); `view` gives a batch's frames to the model.
    pub fn start(models: Vec<M>, per_worker: usize, view: ViewFn<B>) -> Result<Self> {
        let (idle_tx, idle) = crossbeam_channel::unbounded();
        let mut pool = Pool {
            jobs: Vec::new(),
            done: Vec::new(),
            idle,
            free: None,
            threads: Vec::new(),
        };
        let mut models = models.into_iter();
        for (id, model) in models.by_ref().enumerate() {
            // a batch handed over waits for nothing: the worker took it when it said it was free
            let (job_tx, job_rx) = crossbeam_channel::bounded::<B>(1);
            let (done_tx, done_rx) = crossbeam_channel::bounded::<Done<B>>(1);
            let idle_tx = idle_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("infer-{id}"))
                .spawn(move || {
                    on_pool(per_worker, &format!("infer-{id}"), || {
                        work(model, id, view, job_rx, done_tx, idle_tx)
                    })
                });
            match spawned {
                Ok(handle) => {
                    pool.jobs.push(job_tx);
                    pool.done.push(done_rx);
                    pool.threads.push(handle);
                }
                Err(e) => {
                    // the models not started are dropped; the started ones end with their channels
                    drop(pool);
                    return Err(Error::Pipeline(format!(
                        "starting inference worker {id}: {e}"
                    )));
                }
            }
        }
        Ok(pool)
    }

    /// Waits for a free worker (each finishes its batch in its own time); its index, or None when
    /// every worker has ended.
    pub fn free_worker(&mut self) -> Option<usize> {
        if self.free.is_none() {
            self.free = self.idle.recv().ok();
        }
        self.free
    }

    /// Hands `batch` to the free worker (from [`Pool::free_worker`]); its index, whose results come
    /// from that worker's receiver (see [`Pool::take_results`]). Err(batch) when it has ended.
    pub fn send(&mut self, batch: B) -> std::result::Result<usize, B> {
        let Some(w) = self.free.take() else {
            return Err(batch);
        };
        self.jobs[w]
            .send(batch)
            .map(|()| w)
            .map_err(|e| e.into_inner())
    }

    /// Each worker's results, in the order its batches were sent, for the thread that forwards
    /// them; taken once. Only that thread holds them: when it ends, a worker with results to give
    /// ends too, and so does [`Pool::free_worker`]'s wait.
    pub fn take_results(&mut self) -> Vec<Receiver<Done<B>>> {
        std::mem::take(&mut self.done)
    }

    /// Ends the workers (after their current batch) and hands their models back.
    pub fn finish(self) -> Result<Vec<M>> {
        let Pool {
            jobs,
            done,
            threads,
            ..
        } = self;
        drop((jobs, done));
        let mut models = Vec::with_capacity(threads.len());
        for t in threads {
            models.push(
                t.join()
                    .map_err(|_| Error::Pipeline("an inference worker panicked".into()))?,
            );
        }
        Ok(models)
    }
}

/// A worker's loop: says it is free, runs the batch it is given, sends the results, again.
fn work<B, M: Detector>(
    mut model: M,
    id: usize,
    view: ViewFn<B>,
    jobs: Receiver<B>,
    done: Sender<Done<B>>,
    idle: Sender<usize>,
) -> M {
    let _span = tracing::info_span!("worker", id).entered();
    loop {
        if idle.send(id).is_err() {
            break;
        }
        let Ok(batch) = jobs.recv() else { break };
        let results = view(&batch).and_then(|frames| model.detect_batch(&frames));
        if done.send(Done { batch, results }).is_err() {
            break;
        }
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn plan_shares_the_threads() {
        assert_eq!(plan(0, 2, true), (2, 1));
        assert_eq!(plan(0, 8, true), (2, 4));
        assert_eq!(plan(0, 1, true), (1, 1));
        assert_eq!(plan(0, 8, false), (1, 8));
        assert_eq!(plan(3, 2, true), (3, 1));
        assert_eq!(plan(1, 2, true), (1, 2));
        assert!(plan(0, 0, true).1 >= 1);
    }

    /// Takes as long as its batch says; tags each result with the batch; fails on `fail_at`.
    struct Fake {
        fail_at: Option<usize>,
    }

    impl Detector for Fake {
        fn detect_batch(&mut self, frames: &[RgbFrame<'_>]) -> Result<Vec<FrameResult>> {
            let k = frames[0].width;
            std::thread::sleep(Duration::from_millis((k % 4) as u64 * 3));
            if self.fail_at == Some(k) {
                return Err(Error::Input(format!("batch {k} failed")));
            }
            Ok(vec![FrameResult {
                resized: (k, 0),
                ..Default::default()
            }])
        }
    }

    /// A batch is its number; its one frame is 1 pixel high and that many wide.
    fn view(batch: &(usize, Vec<u8>)) -> Result<Vec<RgbFrame<'_>>> {
        Ok(vec![RgbFrame::new(batch.0, 1, batch.0 * 3, &batch.1)?])
    }

    fn batch(k: usize) -> (usize, Vec<u8>) {
        (k, vec![0; k * 3])
    }

    fn fakes(n: usize, fail_at: Option<usize>) -> Vec<Fake> {
        (0..n).map(|_| Fake { fail_at }).collect()
    }

    #[test]
    fn results_come_back_in_the_order_sent() {
        let mut pool = Pool::start(fakes(3, None), 1, view).unwrap();
        let results = pool.take_results();
        // as the forwarding thread: the results of the worker each batch went to, in turn
        let (order_tx, order) = crossbeam_channel::unbounded::<usize>();
        let reader = std::thread::spawn(move || {
            let (mut got, mut workers) = (Vec::new(), Vec::new());
            for w in order.iter() {
                let done = results[w].recv().unwrap();
                let r = done.results.unwrap();
                assert_eq!(r[0].resized.0, done.batch.0);
                got.push(done.batch.0);
                workers.push(w);
            }
            (got, workers)
        });
        for k in 1..=40 {
            assert!(pool.free_worker().is_some());
            order_tx
                .send(pool.send(batch(k)).map_err(|_| "worker ended").unwrap())
                .unwrap();
        }
        drop(order_tx);
        let (got, workers) = reader.join().unwrap();
        assert_eq!(got, (1..=40).collect::<Vec<_>>());
        // every worker ran batches (their times differ, so they finished out of turn)
        assert!((0..3).all(|w| workers.contains(&w)), "{workers:?}");
        assert_eq!(pool.finish().unwrap().len(), 3);
    }

    #[test]
    fn a_failed_batch_comes_back_as_its_error_and_nothing_hangs_after() {
        let mut pool = Pool::start(fakes(2, Some(3)), 1, view).unwrap();
        let results = pool.take_results();
        let mut order = Vec::new();
        for k in 1..=4 {
            pool.free_worker().unwrap();
            order.push(pool.send(batch(k)).map_err(|_| "worker ended").unwrap());
        }
        let mut errors = Vec::new();
        for &w in &order[..3] {
            if let Err(e) = results[w].recv().unwrap().results {
                errors.push(e.to_string());
            }
        }
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("batch 3 failed"), "{errors:?}");
        // the forwarder stops reading (as on an error): the workers end after their batch, and the
        // wait for a free worker ends with them instead of blocking for ever
        drop(results);
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            while pool.free_worker().is_some() {
                if pool.send(batch(1)).is_err() {
                    break;
                }
            }
            let _ = tx.send(pool.finish().map(|m| m.len()));
        });
        let finished = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(finished.ok().and_then(|r| r.ok()), Some(2));
    }
}
