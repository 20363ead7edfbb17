//! Background priority for the GStreamer threads that can wait for inference.
//!
//! On a CPU box inference keeps every core busy only part of each frame: between ONNX Runtime's
//! parallel calls its own stages run on one thread. Encoding the output video and decoding an input
//! file can do their work in those idle moments instead of taking turns with inference's parallel
//! parts, if their threads yield to it: they run at a higher nice value. Only a large one works:
//! at +10 a thread still gets ~10% of a contended core, about what x264 needs, so it keeps taking
//! turns (BENCHMARKS.md: demo INT8 with MP4, +12% over the model alone at nice +0 and +10, +8% at
//! +19). Queues are bounded, so a starved encoder or decoder holds inference back instead of
//! piling up frames. Live sources keep their priority: a camera's packets are read when they come.
//!
//! Every task of such a pipeline (a pad's streaming thread) is started on its own thread at that
//! nice value: not on GStreamer's shared thread pool, whose threads would carry the nice value on
//! into other pipelines. Threads started from those (x264's and libav's workers) inherit it.

use std::sync::atomic::{AtomicI32, Ordering};

use glib::subclass::prelude::*;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer::subclass::prelude::*;

mod imp {
    use super::*;

    /// A task pool whose tasks each get a new thread at `nice` (absolute).
    #[derive(Default)]
    pub struct NicePool {
        pub nice: AtomicI32,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for NicePool {
        const NAME: &'static str = "MaskstreamNicePool";
        type Type = super::NicePool;
        type ParentType = gst::TaskPool;
    }

    impl ObjectImpl for NicePool {}
    impl GstObjectImpl for NicePool {}

    impl TaskPoolImpl for NicePool {
        type Handle = Joined;

        fn push(
            &self,
            func: gst::subclass::TaskPoolFunction,
        ) -> Result<Option<Joined>, glib::Error> {
            let nice = self.nice.load(Ordering::Relaxed);
            std::thread::Builder::new()
                .name("gst-background".into())
                .spawn(move || {
                    set_thread_nice(nice);
                    func.call();
                })
                .map(|t| Some(Joined(t)))
                .map_err(|e| {
                    glib::Error::new(
                        gst::CoreError::Failed,
                        &format!("cannot start a streaming thread: {e}"),
                    )
                })
        }
    }

    /// The thread of one task, joined when GStreamer joins the task.
    pub struct Joined(std::thread::JoinHandle<()>);

    impl gst::TaskHandle for Joined {
        fn join(self) {
            let _ = self.0.join();
        }
    }
}

glib::wrapper! {
    pub struct NicePool(ObjectSubclass<imp::NicePool>) @extends gst::TaskPool, gst::Object;
}

/// Runs every task `pipeline` starts on a thread `by` nice levels below the process's main thread
/// (0: leaves the pipeline alone). Installs the bus's sync handler: call before the pipeline starts.
pub fn lower(pipeline: &gst::Pipeline, by: u8) {
    if by == 0 {
        return;
    }
    let Some(bus) = pipeline.bus() else { return };
    let pool: NicePool = glib::Object::new();
    pool.imp()
        .nice
        .store((process_nice() + i32::from(by)).min(19), Ordering::Relaxed);
    bus.set_sync_handler(move |_, msg| {
        // posted synchronously by the thread creating the task, before it starts: the moment a
        // task's pool can be chosen
        if let gst::MessageView::StreamStatus(s) = msg.view() {
            if s.get().0 == gst::StreamStatusType::Create {
                if let Some(task) = s
                    .stream_status_object()
                    .and_then(|v| v.get::<gst::Task>().ok())
                {
                    task.set_pool(&pool);
                }
            }
        }
        gst::BusSyncReply::Pass
    });
}

/// The nice value of thread `tid` (on Linux the nice value is per thread; a process id names its
/// main thread). getpriority may return -1 as a value; a failure (never expected for our own
/// threads) reads as -1 too, which only makes a target one level higher.
#[cfg(target_os = "linux")]
pub(crate) fn nice_of(tid: libc::id_t) -> i32 {
    // SAFETY: a plain system call on integers.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) }
}

/// The calling thread's id.
#[cfg(target_os = "linux")]
fn this_thread() -> libc::id_t {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::id_t }
}

/// The main thread's nice value (what the process was started with).
#[cfg(target_os = "linux")]
pub(crate) fn process_nice() -> i32 {
    nice_of(std::process::id())
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn process_nice() -> i32 {
    0
}

/// Raises the calling thread's nice value to `nice` (never lowers it: that needs privileges).
/// Threads started from this one inherit it.
#[cfg(target_os = "linux")]
fn set_thread_nice(nice: i32) {
    let tid = this_thread();
    // SAFETY: a plain system call on integers about the calling thread.
    if nice_of(tid) < nice && unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
        tracing::debug!(nice, "could not lower a streaming thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn set_thread_nice(_nice: i32) {}

/// The calling thread's nice value.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn thread_nice() -> i32 {
    nice_of(this_thread())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Nice values seen by an identity element's streaming thread (the handoff runs on it).
    fn nice_in_streaming_thread(by: u8) -> i32 {
        gst::init().unwrap();
        let pipeline = gst::parse::launch(
            "videotestsrc num-buffers=3 ! identity name=probe signal-handoffs=true ! fakesink",
        )
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let probe = pipeline.by_name("probe").unwrap();
        let s = seen.clone();
        probe.connect("handoff", false, move |_| {
            s.lock().unwrap().push(thread_nice());
            None
        });
        lower(&pipeline, by);
        pipeline.set_state(gst::State::Playing).unwrap();
        let bus = pipeline.bus().unwrap();
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(10),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("the pipeline ends");
        assert!(matches!(msg.view(), gst::MessageView::Eos(_)));
        pipeline.set_state(gst::State::Null).unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
        seen[0]
    }

    #[test]
    fn streaming_threads_run_nicer_and_this_thread_keeps_its_priority() {
        let before = thread_nice();
        let lowered = nice_in_streaming_thread(7);
        assert_eq!(lowered, (before + 7).min(19));
        assert_eq!(thread_nice(), before, "the calling thread is left alone");
        // 0 leaves GStreamer's own pool, at the process's priority
        assert_eq!(nice_in_streaming_thread(0), process_nice());
    }
}
