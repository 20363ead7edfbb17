//! indicatif progress bars: one per source (frames, fps, ETA) and, for batch, one overall.

use std::collections::HashMap;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use maskstream::pipeline::Progress;

pub struct Bars {
    multi: MultiProgress,
    bars: HashMap<usize, ProgressBar>,
    overall: Option<ProgressBar>,
}

impl Bars {
    pub fn new(multi: MultiProgress, overall: Option<ProgressBar>) -> Self {
        Bars {
            multi,
            bars: HashMap::new(),
            overall,
        }
    }
}

fn style(known: bool) -> ProgressStyle {
    let t = if known {
        "{prefix:>12} [{bar:30}] {pos}/{len} frames {per_sec} eta {eta}"
    } else {
        "{prefix:>12} {spinner} {pos} frames {per_sec}"
    };
    ProgressStyle::with_template(t)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Progress for Bars {
    fn source_started(&mut self, source: usize, name: &str, expected: Option<u64>) {
        let bar = match expected {
            Some(n) => self.multi.add(ProgressBar::new(n)).with_style(style(true)),
            None => self
                .multi
                .add(ProgressBar::no_length())
                .with_style(style(false)),
        };
        bar.set_prefix(name.to_string());
        self.bars.insert(source, bar);
    }

    fn frame_done(&mut self, source: usize) {
        if let Some(b) = self.bars.get(&source) {
            b.inc(1);
        }
    }

    fn source_ended(&mut self, source: usize, error: Option<&str>) {
        if let Some(b) = self.bars.remove(&source) {
            match error {
                Some(e) => b.abandon_with_message(format!("failed: {e}")),
                None => b.finish(),
            }
        }
        if let Some(o) = &self.overall {
            o.inc(0);
        }
    }
}

pub fn overall_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} files eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
