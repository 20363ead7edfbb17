//! Per-stage timings of a run and the summary printed at its end (frames, fps, p50/p99, drops).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Default, Clone)]
pub struct StageStats {
    samples: BTreeMap<&'static str, Vec<f64>>,
    order: Vec<&'static str>,
    /// Batch size -> model calls of that size.
    batch_calls: BTreeMap<usize, u64>,
    /// Model calls whose frames came from more than one source.
    cross_source_calls: u64,
    /// The call whose frames are arriving: (frames still to come, its first frame's source, mixed).
    open_batch: Option<(usize, usize, bool)>,
}

impl StageStats {
    pub fn record(&mut self, stage: &'static str, d: Duration) {
        if !self.samples.contains_key(stage) {
            self.order.push(stage);
        }
        self.samples
            .entry(stage)
            .or_default()
            .push(d.as_secs_f64() * 1e3);
    }

    /// (p50, p99) in milliseconds.
    pub fn percentiles(&self, stage: &str) -> Option<(f64, f64)> {
        let mut v = self.samples.get(stage)?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some((at(0.5), at(0.99)))
    }

    pub fn stages(&self) -> &[&'static str] {
        &self.order
    }

    /// Counts one frame of `source` inferred in a model call of `batch` frames. The frames of one call
    /// arrive one after another (the inference thread sends them together, in order).
    pub fn record_batch(&mut self, batch: usize, source: usize) {
        let (left, first, mixed) = match self.open_batch.take() {
            Some((left, first, mixed)) => (left, first, mixed || source != first),
            None => {
                *self.batch_calls.entry(batch).or_default() += 1;
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
    /// Per source: (name, frames, dropped, reconnects, error).
    pub sources: Vec<SourceSummary>,
    pub provider: String,
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
            "{} frames in {:.2} s: {:.1} frames/s ({} backend; engine loaded in {:.2} s before)",
            self.frames,
            self.elapsed.as_secs_f64(),
            self.fps(),
            self.provider,
            self.load.as_secs_f64()
        )?;
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
