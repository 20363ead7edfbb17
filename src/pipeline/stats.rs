//! Per-stage timings of a run and the summary printed at its end (frames, fps, p50/p99, drops).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Default, Clone)]
pub struct StageStats {
    samples: BTreeMap<&'static str, Vec<f64>>,
    order: Vec<&'static str>,
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
}
