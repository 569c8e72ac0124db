//! The timing protocol every resnetc measurement shares (`resnetc bench`, a compiled
//! model's `--bench`): warm-up runs, then timed runs until both a count and a duration are
//! reached, summarized by their median. The duration matters on shared machines: a run of
//! a few hundred milliseconds can fall entirely in a slow phase of the host (measured on a
//! 2-vCPU VM: a 2-thread ResNet-18 executable timed over 30 runs, 120 ms, took 4.1 or
//! 4.9 ms by phase), which a median over seconds, as the peers' are taken, rides out.

use std::time::Instant;

/// Summary of repeated timings, milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

/// Seconds a measurement lasts at least (`measure`'s `min_secs` for whole models): the
/// peers in `bench/` are timed for as long.
pub const MIN_SECONDS: f64 = 2.0;

/// Runs `f` `warmup` times, then until both `min_runs` runs and `min_secs` seconds have
/// passed (capped at `max_runs`), and summarizes the timed runs.
pub fn measure(warmup: usize, min_runs: usize, max_runs: usize, min_secs: f64, mut f: impl FnMut()) -> Stats {
    for _ in 0..warmup {
        f();
    }
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < max_runs.max(1) && (times.len() < min_runs || start.elapsed().as_secs_f64() < min_secs) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    summarize(&mut times)
}

/// Median, minimum and maximum of `times` (sorted in place; at least one).
pub fn summarize(times: &mut [f64]) -> Stats {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 { times[n / 2] } else { (times[n / 2 - 1] + times[n / 2]) / 2.0 };
    Stats { median, min: times[0], max: times[n - 1], runs: n }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_warm_up_and_at_least_the_count() {
        let mut calls = 0;
        let s = measure(2, 5, 100, 0.0, || calls += 1);
        assert_eq!((calls, s.runs), (7, 5));
    }

    #[test]
    fn the_cap_ends_a_measurement_before_its_duration() {
        let s = measure(0, 1, 3, 60.0, || {});
        assert_eq!(s.runs, 3);
    }

    #[test]
    fn the_duration_adds_runs_past_the_count() {
        let s = measure(0, 1, 1000, 0.02, || std::thread::sleep(std::time::Duration::from_millis(5)));
        assert!(s.runs >= 4, "{} runs in 20 ms of 5 ms calls", s.runs);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        let s = summarize(&mut [3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        assert_eq!(summarize(&mut [4.0, 1.0, 3.0, 2.0]).median, 2.5);
    }
}
