//! The timing protocol every resnetc measurement shares (`resnetc bench`, a compiled
//! model's `--bench`): warm-up runs, then timed runs until both a count and a duration are
//! reached, summarized by their median. The duration matters on shared machines: a run of
//! a few hundred milliseconds can fall entirely in a slow phase of the host (measured on a
//! 2-vCPU VM: a 2-thread ResNet-18 executable timed over 30 runs, 120 ms, took 4.1 or
//! 4.9 ms by phase), which a median over seconds, as the peers' in `bench/` are taken
//! (`--min-seconds`, 2 to 3 s), rides out.

use std::time::Instant;

/// Summary of repeated timings, milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

/// Untimed runs before a whole model's timed ones.
pub const WARMUP: usize = 3;

/// Seconds a whole model's measurement lasts at least.
pub const MIN_SECONDS: f64 = 2.0;

/// Most timed runs of one measurement; more are not asked for (`--bench`, `--runs`).
pub const MAX_RUNS: usize = 100_000;

/// Runs `f` `warmup` times, then until both `min_runs` runs and `min_secs` seconds have
/// passed (capped at `max_runs`, and at least one run), and summarizes the timed runs.
/// The first error of `f` ends the measurement and is returned.
pub fn measure<E>(
    warmup: usize,
    min_runs: usize,
    max_runs: usize,
    min_secs: f64,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<Stats, E> {
    for _ in 0..warmup {
        f()?;
    }
    let start = Instant::now();
    let mut times = Vec::new();
    while times.is_empty()
        || (times.len() < max_runs && (times.len() < min_runs || start.elapsed().as_secs_f64() < min_secs))
    {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(summarize(&mut times))
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

    fn count(calls: &mut usize) -> Result<(), ()> {
        *calls += 1;
        Ok(())
    }

    #[test]
    fn runs_the_warm_up_and_at_least_the_count() {
        let mut calls = 0;
        let s = measure(2, 5, 100, 0.0, || count(&mut calls)).unwrap();
        assert_eq!((calls, s.runs), (7, 5));
    }

    #[test]
    fn the_cap_ends_a_measurement_before_its_duration() {
        let s = measure(0, 1, 3, 60.0, || Ok::<(), ()>(())).unwrap();
        assert_eq!(s.runs, 3);
    }

    #[test]
    fn a_measurement_lasts_its_duration() {
        let t = Instant::now();
        let s = measure(0, 1, usize::MAX, 0.02, || Ok::<(), ()>(())).unwrap();
        assert!(t.elapsed().as_secs_f64() >= 0.02 && s.runs > 1, "{} runs in {:?}", s.runs, t.elapsed());
    }

    #[test]
    fn at_least_one_run_and_the_first_error_ends_it() {
        assert_eq!(measure(0, 0, 10, 0.0, || Ok::<(), ()>(())).unwrap().runs, 1);
        let mut calls = 0;
        let failing = measure(1, 5, 10, 0.0, || {
            calls += 1;
            if calls == 3 {
                Err("third call")
            } else {
                Ok(())
            }
        });
        assert_eq!((failing.unwrap_err(), calls), ("third call", 3));
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        let s = summarize(&mut [3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        assert_eq!(summarize(&mut [4.0, 1.0, 3.0, 2.0]).median, 2.5);
    }
}
