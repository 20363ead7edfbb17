//! Per-stage timings of a run and the summary printed at its end (frames, fps, p50/p99, drops).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Per-stage timings in fixed-size histograms (microseconds, 3 significant digits, up to an hour):
/// memory stays the same whether a run lasts a minute or a month.
#[derive(Debug, Default, Clone)]
pub struct StageStats {
    samples: BTreeMap<&'static str, Histogram<u64>>,
    order: Vec<&'static str>,
    /// Batch size -> model calls of that size.
    batch_calls: BTreeMap<usize, u64>,
    /// Model calls whose frames came from more than one source.
    cross_source_calls: u64,
    /// The call whose frames are arriving: (frames still to come, its first frame's source, mixed).
    open_batch: Option<(usize, usize, bool)>,
}

const MAX_US: u64 = 3_600_000_000;

impl StageStats {
    pub fn record(&mut self, stage: &'static str, d: Duration) {
        if !self.samples.contains_key(stage) {
            // bounds are constants that are valid, so creation cannot fail; skip the stage if it did
            let Ok(h) = Histogram::new_with_bounds(1, MAX_US, 3) else {
                return;
            };
            self.samples.insert(stage, h);
            self.order.push(stage);
        }
        if let Some(h) = self.samples.get_mut(stage) {
            h.saturating_record((d.as_micros() as u64).clamp(1, MAX_US));
            super::metrics::stage(stage, d);
        }
    }

    /// (p50, p99) in milliseconds.
    pub fn percentiles(&self, stage: &str) -> Option<(f64, f64)> {
        let h = self.samples.get(stage)?;
        if h.is_empty() {
            return None;
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Some((ms(0.5), ms(0.99)))
    }

    /// Samples recorded for a stage.
    pub fn count(&self, stage: &str) -> u64 {
        self.samples.get(stage).map_or(0, |h| h.len())
    }

    pub fn stages(&self) -> &[&'static str] {
        &self.order
    }

    /// Bytes the histograms hold: fixed per stage, whatever the number of samples.
    pub fn footprint_bytes(&self) -> usize {
        self.samples
            .values()
            .map(|h| h.distinct_values() * std::mem::size_of::<u64>())
            .sum()
    }

    /// Counts one frame of `source` inferred in a model call of `batch` frames. The frames of one call
    /// arrive one after another (the inference thread sends them together, in order).
    pub fn record_batch(&mut self, batch: usize, source: usize) {
        let (left, first, mixed) = match self.open_batch.take() {
            Some((left, first, mixed)) => (left, first, mixed || source != first),
            None => {
                *self.batch_calls.entry(batch).or_default() += 1;
                super::metrics::batch(batch);
                (batch, source, false)
            }
        };
        if left > 1 {
            self.open_batch = Some((left - 1, first, mixed));
        } else if mixed {
            self.cross_source_calls += 1;
        }
    }

    /// Batch size -> model calls of that size.
    pub fn batch_calls(&self) -> &BTreeMap<usize, u64> {
        &self.batch_calls
    }

    /// Model calls that batched frames of more than one source.
    pub fn cross_source_calls(&self) -> u64 {
        self.cross_source_calls
    }
}

/// What a finished run reports.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub frames: u64,
    /// Engine load (sessions, head warm-up) before streaming starts.
    pub load: Duration,
    /// Streaming: from the sources' start to the last output.
    pub elapsed: Duration,
    pub stages: StageStats,
    /// After the model's warm-up calls: frames and time from the last warm-up frame's completion to
    /// the last frame's (no start-up, no closing of the outputs). None for shorter runs.
    pub steady: Option<Steady>,
    /// Per source: (name, frames, dropped, reconnects, error).
    pub sources: Vec<SourceSummary>,
    pub provider: String,
    /// Inference workers: model calls in flight at once.
    pub workers: usize,
}

/// Steady-state throughput: see [`Summary::steady`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Steady {
    pub frames: u64,
    pub elapsed: Duration,
    /// CPU time of the whole process (every thread: decoding, inference, encoding) over the same
    /// span; unlike wall time it does not count what other work on the machine takes.
    pub cpu: Option<Duration>,
}

/// User + system CPU time of this process so far (all threads).
pub fn process_cpu() -> Option<Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let d = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    Some(d(u.user_time()) + d(u.system_time()))
}

impl Steady {
    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Default, Clone)]
pub struct SourceSummary {
    pub name: String,
    /// What the source reads: the file path or the URI (credentials redacted).
    pub input: String,
    pub frames: u64,
    pub dropped: u64,
    pub reconnects: u64,
    pub error: Option<String>,
    /// Tracks, events and line counts (absent when tracking is off).
    pub analytics: Option<crate::analytics::AnalyticsStats>,
}

impl Summary {
    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn failed(&self) -> Vec<&SourceSummary> {
        self.sources.iter().filter(|s| s.error.is_some()).collect()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} frames in {:.2} s: {:.1} frames/s ({} backend, {} inference worker{}; engine loaded in {:.2} s before)",
            self.frames,
            self.elapsed.as_secs_f64(),
            self.fps(),
            self.provider,
            self.workers,
            if self.workers == 1 { "" } else { "s" },
            self.load.as_secs_f64()
        )?;
        if let Some(st) = &self.steady {
            writeln!(
                f,
                "steady state (after the first model calls): {} frames in {:.2} s: {:.1} frames/s",
                st.frames,
                st.elapsed.as_secs_f64(),
                st.fps()
            )?;
        }
        writeln!(f, "{:<16} {:>9} {:>9}", "stage", "p50 ms", "p99 ms")?;
        for s in self.stages.stages() {
            if let Some((p50, p99)) = self.stages.percentiles(s) {
                writeln!(f, "{s:<16} {p50:>9.2} {p99:>9.2}")?;
            }
        }
        let calls = self.stages.batch_calls();
        if calls.keys().any(|&b| b > 1) {
            let sizes: Vec<String> = calls.iter().map(|(b, n)| format!("{n} of {b}")).collect();
            writeln!(
                f,
                "model calls by frames per call: {} ({} across sources)",
                sizes.join(", "),
                self.stages.cross_source_calls()
            )?;
        }
        for s in &self.sources {
            write!(
                f,
                "source {}: {} frames, {} dropped",
                s.name, s.frames, s.dropped
            )?;
            if s.reconnects > 0 {
                write!(f, ", {} reconnects", s.reconnects)?;
            }
            if let Some(e) = &s.error {
                write!(f, ", FAILED: {e}")?;
            }
            writeln!(f)?;
            if let Some(a) = &s.analytics {
                writeln!(f, "  {a}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s = StageStats::default();
        for ms in 1..=100 {
            s.record("backbone", Duration::from_millis(ms));
        }
        let (p50, p99) = s.percentiles("backbone").unwrap();
        assert!((p50 - 50.0).abs() <= 1.0 && (p99 - 99.0).abs() <= 1.0);
        assert!(s.percentiles("nothing").is_none());
    }

    #[test]
    fn memory_does_not_grow_with_the_run() {
        let mut s = StageStats::default();
        s.record("latency", Duration::from_micros(10));
        let before = s.footprint_bytes();
        for i in 0..1_000_000u64 {
            s.record("latency", Duration::from_micros(1 + i % 500_000));
        }
        assert_eq!(s.count("latency"), 1_000_001);
        assert_eq!(s.footprint_bytes(), before);
        let (p50, _) = s.percentiles("latency").unwrap();
        assert!((p50 - 250.0).abs() < 2.0, "{p50}");
    }

    #[test]
    fn batch_calls_from_frames() {
        let mut s = StageStats::default();
        for (batch, source) in [(1, 0), (2, 0), (2, 0), (2, 1), (2, 0), (1, 1)] {
            s.record_batch(batch, source);
        }
        let calls: Vec<(usize, u64)> = s.batch_calls().iter().map(|(&b, &n)| (b, n)).collect();
        assert_eq!(calls, [(1, 2), (2, 2)]);
        assert_eq!(s.cross_source_calls(), 1);
    }
}
