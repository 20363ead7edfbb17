//! The model's stages by name, and their wall times. The list below is the only place the stages are
//! named: the enum, its order and the names printed in summaries all come from it.

use std::time::{Duration, Instant};

macro_rules! stages {
    ($($variant:ident => $name:literal),+ $(,)?) => {
        /// One stage of the forward pass, in the order it runs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Stage {
            $($variant),+
        }

        impl Stage {
            /// Every stage, in the order the forward pass runs them.
            pub const ALL: &'static [Stage] = &[$(Stage::$variant),+];

            /// The name used in summaries, benchmarks and traces.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Stage::$variant => $name),+
                }
            }
        }
    };
}

stages! {
    Preprocess => "preprocess",
    Backbone => "backbone",
    Proposals => "proposals",
    RoiAlignBox => "roi_align_box",
    BoxHead => "box_head",
    Detections => "detections",
    RoiAlignMask => "roi_align_mask",
    MaskHead => "mask_head",
    Paste => "paste",
}

/// Wall time of each stage for one call (a batch shares the model stages).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes([Duration; Stage::ALL.len()]);

impl StageTimes {
    /// Runs `f` as `stage`: its wall time is added to the stage (a stage may run in several parts).
    pub fn time<T>(&mut self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let _span = tracing::debug_span!("stage", name = stage.name()).entered();
        let start = Instant::now();
        let out = f();
        self.0[stage as usize] += start.elapsed();
        out
    }

    pub fn get(&self, stage: Stage) -> Duration {
        self.0[stage as usize]
    }

    /// (name, time) of every stage, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, Duration)> + '_ {
        Stage::ALL.iter().map(|&s| (s.name(), self.get(s)))
    }

    pub fn total(&self) -> Duration {
        self.0.iter().sum()
    }
}

impl std::ops::AddAssign for StageTimes {
    fn add_assign(&mut self, other: Self) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_named_in_order_and_timed_where_they_ran() {
        let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.first(), Some(&"preprocess"));
        assert_eq!(names.last(), Some(&"paste"));
        assert!(Stage::ALL.iter().enumerate().all(|(i, &s)| s as usize == i));
        let mut t = StageTimes::default();
        let v = t.time(Stage::BoxHead, || {
            std::thread::sleep(Duration::from_millis(2));
            7
        });
        assert_eq!(v, 7);
        assert!(t.get(Stage::BoxHead) >= Duration::from_millis(2));
        assert_eq!(t.total(), t.get(Stage::BoxHead));
        let mut sum = t;
        sum += t;
        assert_eq!(sum.get(Stage::BoxHead), 2 * t.get(Stage::BoxHead));
    }
}
