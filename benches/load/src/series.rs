//! Throughput per second of the measured window: how the tasks count it, and how a report
//! summarises it for people.
//!
//! A request counts in the second in which it *completed*, counted from the start of the
//! measured window (so second 0 is the first second after the warmup). A stall therefore
//! shows as seconds with few or no completions, which is what a failover looks like from a
//! client.
//!
//! Counting costs the request path an increment: each task keeps a tally of the second its
//! answers are arriving in and adds it to the run's shared series only when its answers move
//! on to the next second (and once when it ends). The series' lock is taken about `conns`
//! times a second in all, never per request, and the series holds one entry per second of
//! the run, however many tasks there are.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::report::group;

/// What completed in one second of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondSample {
    /// Whole seconds since the measured window opened: this sample covers
    /// `[second, second + 1)`.
    pub second: u64,
    /// Measured requests that completed without error in that second.
    pub ops: u64,
    /// Measured requests that failed in that second.
    pub errors: u64,
}

/// The run's series, shared by its tasks: entry `i` is second `i`, without gaps.
#[derive(Debug, Default)]
pub(crate) struct Seconds(Mutex<Vec<SecondSample>>);

impl Seconds {
    fn add(&self, sample: SecondSample) {
        // Seconds since the window opened, so far below usize::MAX; the check only keeps a
        // wild value from becoming a huge allocation.
        let Ok(index) = usize::try_from(sample.second) else {
            return;
        };
        // A poisoned lock only means another task panicked while adding; the counts it
        // left are whole numbers still, and that panic is re-raised by the run anyway.
        let mut series = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if series.len() <= index {
            let from = series.len() as u64;
            series.extend((from..=sample.second).map(|second| SecondSample {
                second,
                ..SecondSample::default()
            }));
        }
        series[index].ops += sample.ops;
        series[index].errors += sample.errors;
    }

    /// The series so far (every task has flushed once the run has joined them).
    pub(crate) fn take(&self) -> Vec<SecondSample> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// One task's count for the second its answers are arriving in.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    current: SecondSample,
}

impl Tally {
    /// Count one measured request that finished at `finished`.
    pub(crate) fn count(&mut self, series: &Seconds, from: Instant, finished: Instant, ok: bool) {
        let second = finished.saturating_duration_since(from).as_secs();
        if second != self.current.second {
            // Answers arrive in about the order they finish; one that finished just
            // before the boundary but is handled after it only costs an extra add.
            self.flush(series);
            self.current.second = second;
        }
        if ok {
            self.current.ops += 1;
        } else {
            self.current.errors += 1;
        }
    }

    /// Add what has been counted to the run's series.
    pub(crate) fn flush(&mut self, series: &Seconds) {
        if self.current.ops > 0 || self.current.errors > 0 {
            series.add(self.current);
        }
        self.current.ops = 0;
        self.current.errors = 0;
    }
}

/// The samples that cover a whole second of a window `window_secs` long: all but a last,
/// partial one (the last answers of a duration-bounded run arrive in a few milliseconds
/// after its last full second, and would read as a dip).
pub fn full_seconds(samples: &[SecondSample], window_secs: f64) -> &[SecondSample] {
    let full = samples
        .iter()
        .take_while(|s| (s.second + 1) as f64 <= window_secs + 1e-9)
        .count();
    &samples[..full]
}

/// Widest sparkline the table prints; longer runs put several seconds under one mark.
const SPARK_WIDTH: usize = 60;

/// `0` is a blank, anything above it at least the lowest block.
const BLOCKS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The table's per-second rows: the lowest, median and highest full second (and when
/// errors occurred, the second with the most), then a sparkline of the run. Empty when the
/// window holds fewer than two full seconds, where a series says nothing the totals do not.
pub(crate) fn summary_rows(samples: &[SecondSample]) -> Vec<(&'static str, String)> {
    if samples.len() < 2 {
        return Vec::new();
    }
    let mut ops: Vec<u64> = samples.iter().map(|s| s.ops).collect();
    ops.sort_unstable();
    let median = ops[ops.len() / 2];
    let max = ops[ops.len() - 1];
    // The first lowest second: where a stall began.
    let lowest = samples
        .iter()
        .min_by_key(|s| s.ops)
        .expect("at least two samples");
    let mut stats = format!(
        "min {} (second {})  median {}  max {}",
        group(lowest.ops),
        lowest.second,
        group(median),
        group(max)
    );
    if let Some(worst) = samples
        .iter()
        .filter(|s| s.errors > 0)
        .max_by_key(|s| s.errors)
    {
        stats.push_str(&format!(
            "  most errors {} (second {})",
            group(worst.errors),
            worst.second
        ));
    }
    let (line, per_mark) = sparkline(samples, max);
    let scale = if per_mark == 1 {
        format!("{} s, one mark a second", samples.len())
    } else {
        format!(
            "{} s, one mark per {per_mark} s: the lowest of them",
            samples.len()
        )
    };
    vec![("per second", stats), ("", format!("[{line}] {scale}"))]
}

/// One block per second (or per group of seconds, the group's lowest, so a dip never
/// averages away), scaled to `max`; and how many seconds a mark stands for.
fn sparkline(samples: &[SecondSample], max: u64) -> (String, usize) {
    let per_mark = samples.len().div_ceil(SPARK_WIDTH).max(1);
    let line = samples
        .chunks(per_mark)
        .map(|chunk| {
            let low = chunk.iter().map(|s| s.ops).min().unwrap_or(0);
            if low == 0 || max == 0 {
                BLOCKS[0]
            } else {
                // 1..=8: the share of the maximum, rounded up so a low second is visible.
                let level = (low * 8).div_ceil(max).clamp(1, 8);
                BLOCKS[level as usize]
            }
        })
        .collect();
    (line, per_mark)
}

/// Every sample as an aligned table: second, ops and errors, a line each.
pub(crate) fn table(samples: &[SecondSample], window_secs: f64) -> String {
    let full = full_seconds(samples, window_secs).len();
    let mut out = String::from("  second         ops   errors\n");
    for (i, s) in samples.iter().enumerate() {
        let note = if i >= full {
            format!(
                "  (partial: {:.0} ms)",
                ((window_secs - s.second as f64) * 1e3).max(0.0)
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  {:>6} {:>11} {:>8}{note}\n",
            s.second,
            group(s.ops),
            group(s.errors)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(second: u64, ops: u64) -> SecondSample {
        SecondSample {
            second,
            ops,
            errors: 0,
        }
    }

    #[test]
    fn tallies_add_up_across_tasks_and_seconds() {
        let series = Seconds::default();
        let from = Instant::now();
        let at = |ms: u64| from + Duration::from_millis(ms);
        let (mut a, mut b) = (Tally::default(), Tally::default());
        a.count(&series, from, at(10), true);
        a.count(&series, from, at(999), false);
        a.count(&series, from, at(2500), true);
        // Out of order across a boundary: still counted where it finished.
        a.count(&series, from, at(1999), true);
        b.count(&series, from, at(500), true);
        a.flush(&series);
        b.flush(&series);
        let got = series.take();
        assert_eq!(
            got,
            vec![
                SecondSample {
                    second: 0,
                    ops: 2,
                    errors: 1
                },
                sample(1, 1),
                sample(2, 1),
            ]
        );
    }

    #[test]
    fn a_gap_is_a_second_with_nothing() {
        let series = Seconds::default();
        let from = Instant::now();
        let mut t = Tally::default();
        t.count(&series, from, from + Duration::from_millis(3200), true);
        t.flush(&series);
        let got = series.take();
        assert_eq!(got.len(), 4);
        assert_eq!(got[1], sample(1, 0));
        assert_eq!(got[3], sample(3, 1));
    }

    #[test]
    fn the_partial_last_second_is_not_full() {
        let s = [sample(0, 5), sample(1, 5), sample(2, 1)];
        assert_eq!(full_seconds(&s, 2.004).len(), 2);
        assert_eq!(full_seconds(&s, 3.0).len(), 3);
        assert_eq!(full_seconds(&s, 0.5).len(), 0);
    }

    #[test]
    fn the_summary_names_the_dip() {
        let s: Vec<_> = [100, 100, 3, 0, 90, 100]
            .iter()
            .enumerate()
            .map(|(i, &ops)| sample(i as u64, ops))
            .collect();
        let rows = summary_rows(&s);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].1, "min 0 (second 3)  median 100  max 100");
        assert_eq!(rows[1].1, "[██▁ ██] 6 s, one mark a second");
        assert!(summary_rows(&s[..1]).is_empty());
    }

    #[test]
    fn a_long_run_keeps_the_lowest_of_each_mark() {
        let mut s: Vec<_> = (0..600).map(|i| sample(i, 1000)).collect();
        s[301].ops = 10;
        let (line, per_mark) = sparkline(&s, 1000);
        assert_eq!(per_mark, 10);
        assert_eq!(line.chars().count(), 60);
        assert_eq!(line.chars().nth(30), Some('▁'));
        assert_eq!(line.chars().filter(|c| *c == '█').count(), 59);
    }

    #[test]
    fn the_full_table_marks_the_partial_second() {
        let text = table(&[sample(0, 1234), sample(1, 7)], 1.25);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].ends_with("1,234        0"), "{text}");
        assert!(lines[2].ends_with("(partial: 250 ms)"), "{text}");
    }
}
