//! A persistent thread pool for splitting one kernel's tasks across cores.
//!
//! Workers spin briefly on a generation counter before sleeping on a condvar, so the
//! hand-off between consecutive kernels (tens of microseconds apart) costs no system
//! call: the caller notifies the condvar only when a worker has counted itself asleep
//! (a `notify_all` is a futex system call even with nobody waiting; without it a
//! two-thread split of trivial tasks took 0.53 instead of 1.27 microseconds). The
//! calling thread always takes part in the work. A pool serves one job at a time; a
//! caller that finds it busy (another thread is running a model that shares it) runs the
//! whole job itself, so sharing a model between threads never deadlocks.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::thread::JoinHandle;

/// A job: called once per participant with the participant's index.
type JobRef = *const (dyn Fn(usize) + Sync);

struct Job(JobRef);
// SAFETY: the pointer is only dereferenced while `run` keeps the closure alive.
unsafe impl Send for Job {}

struct Shared {
    /// The current job: written by the caller only while no worker runs one (before it
    /// bumps `generation`), read by workers after they see the bump.
    job: UnsafeCell<Option<Job>>,
    /// Workers asleep, or about to sleep, on `wake`: the caller takes `sleep` and
    /// notifies only when there are any, so a hand-off to a spinning worker makes no
    /// system call.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    generation: AtomicU64,
    pending: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Spin iterations before waiting threads yield or sleep ([`spin_budget`]).
    spin: u32,
}

// SAFETY: `job` is written and read under the generation/pending protocol documented on
// it, by one caller at a time (`Pool::busy` is held while a job runs); every other field
// is a synchronization primitive.
unsafe impl Sync for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held while a job runs; see the module comment.
    busy: Mutex<()>,
}

/// Spin iterations before a worker sleeps (roughly 50-100 microseconds).
const SPIN: u32 = 20_000;

/// Spin iterations before yielding (or, for a worker, sleeping) when a pool has more
/// participants than CPUs: one of them is then always off a core, and a participant
/// spinning for it keeps it off. ResNet-50 at 3 threads on 2 CPUs: 130 ms with the full
/// spin, 17 with this (14 at 2 threads).
const SPIN_OVERSUBSCRIBED: u32 = 64;

/// How long `participants` threads spin on each other before yielding.
fn spin_budget(participants: usize) -> u32 {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if participants > cpus {
        SPIN_OVERSUBSCRIBED
    } else {
        SPIN
    }
}

impl Pool {
    /// A pool of `threads` participants: the caller plus `threads - 1` workers.
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            spin: spin_budget(threads.max(1)),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("resnetc-worker-{i}"))
                    .spawn(move || worker(&s, i))
                    .expect("spawn a worker thread")
            })
            .collect();
        Pool { shared, workers, busy: Mutex::new(()) }
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` for every participant `i` in `0..threads()`, concurrently, and returns
    /// when all calls have. Panics if one of them panicked. (On a busy pool, or with one
    /// thread, the calls run one after the other on the caller's thread.)
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if !self.try_run(f) {
            (0..self.threads()).for_each(f);
        }
    }

    /// As [`Pool::run`], but only if the participants run at once, each on its own
    /// thread; `false`, having called nothing, with one thread or when the pool is busy.
    fn try_run(&self, f: &(dyn Fn(usize) + Sync)) -> bool {
        let n = self.threads();
        let _guard = match self.busy.try_lock() {
            Ok(g) if n > 1 => g,
            // A job that panicked left the lock poisoned; the pool itself is sound.
            Err(TryLockError::Poisoned(g)) if n > 1 => g.into_inner(),
            Ok(_) | Err(_) => return false,
        };
        let s = &self.shared;
        s.panicked.store(false, Ordering::Relaxed);
        s.pending.store(n - 1, Ordering::Relaxed);
        // SAFETY (lifetime erasure): we wait below until every worker is done with it.
        let erased: JobRef = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), JobRef>(f) };
        // SAFETY: no worker reads `job` now: each finished the previous job (`pending`
        // reached zero) and reads again only after the bump below; no other caller
        // writes it (we hold `busy`).
        unsafe { *s.job.get() = Some(Job(erased)) };
        // SeqCst with the sleepers' count (see `worker`): a worker that counted itself
        // after this bump sees it before sleeping.
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        spin_until(s.spin, || s.pending.load(Ordering::Acquire) == 0);
        // SAFETY: every worker is done with the job (no pointer to `f` outlives this call).
        unsafe { *s.job.get() = None };
        if mine.is_err() || s.panicked.load(Ordering::Relaxed) {
            panic!("a thread-pool job panicked");
        }
        true
    }

    /// Runs `f(begin, end)` over disjoint ranges that cover `0..tasks`, across the
    /// participants. Each participant owns one contiguous share and runs it front to back,
    /// a few chunks at a time; one that has finished takes half of what is left at the back
    /// of another's share, and again, until nothing is left. So an owner's tasks are the
    /// front of its share (each reads about its share of the weights and rows, as with a
    /// fixed split), and a participant the OS or the host delayed holds the call up only
    /// by the chunk it is running, not by the rest of its share: with a fixed split every
    /// call waited for its slowest half. (A range once taken is run by its taker.) More
    /// than `u32::MAX` tasks run on the caller alone; more than 16 participants cost one
    /// small allocation per call.
    pub fn split(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.threads().min(tasks.max(1));
        if n <= 1 || tasks > u32::MAX as usize {
            if tasks > 0 {
                f(0, tasks);
            }
            return;
        }
        let per = tasks / n;
        let extra = tasks % n;
        let range = |i: usize| {
            let begin = i * per + i.min(extra);
            (begin, begin + per + usize::from(i < extra))
        };
        // The shares as (begin, end) packed into one word each, so that taking from
        // either end is one compare-and-swap, each word on its own cache lines; on the
        // stack for the usual thread counts.
        let share = |i: usize| {
            let (b, e) = range(i);
            Share(AtomicU64::new(pack(b, e)))
        };
        let on_stack: [Share; STACK_SHARES];
        let on_heap: Vec<Share>;
        let shares: &[Share] = if n <= STACK_SHARES {
            on_stack = std::array::from_fn(|i| if i < n { share(i) } else { Share(AtomicU64::new(0)) });
            &on_stack[..n]
        } else {
            on_heap = (0..n).map(share).collect();
            &on_heap
        };
        self.run(&|i| {
            if i >= n {
                return;
            }
            let (b, e) = range(i);
            let chunk = (e - b).div_ceil(OWN_CHUNKS);
            while let Some((b, e)) = take(&shares[i].0, |b, e| (b, (b + chunk).min(e))) {
                f(b, e);
            }
            for k in (1..n).map(|k| (i + k) % n) {
                while let Some((b, e)) = take(&shares[k].0, |b, e| (e - (e - b).div_ceil(2), e)) {
                    f(b, e);
                }
            }
        });
    }

    /// Runs `f(begin, end)` once for each of `shares` equal shares of `0..tasks` (which
    /// `shares` divides): share `i` on participant `i`, with no stealing, for kernels that
    /// carry state from task to task within a share (`exec::Order::Pipelined`). With
    /// fewer participants than shares, the caller runs them all in one call.
    pub fn shares(&self, tasks: usize, shares: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        assert!(shares > 0 && tasks.is_multiple_of(shares), "{tasks} tasks in {shares} shares");
        if tasks == 0 {
            return;
        }
        if self.threads() < shares {
            return f(0, tasks);
        }
        let per = tasks / shares;
        self.run(&|i| {
            if i < shares {
                f(i * per, (i + 1) * per);
            }
        });
    }
}

/// Chunks a participant takes its own share in: small enough that another can take over
/// the rest when it lags, large enough that a kernel call covers several rows.
const OWN_CHUNKS: usize = 8;

/// Spins until `done()`, yielding the core after `spin` rounds.
fn spin_until(spin: u32, done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        spins += 1;
        if spins < spin {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Participants whose shares [`Pool::split`] keeps on the stack.
const STACK_SHARES: usize = 16;

/// One participant's share of a [`Pool::split`], alone on its (pair of) cache lines: its
/// owner takes a chunk from it several times per call, and with the shares of two
/// participants on one line each of those takes would move the line between their cores
/// (false sharing), a round trip of 0.1-0.4 us on the Zen 5 VM (`bench/core_rtt.c`).
/// 128 bytes, as the core's adjacent-line prefetcher fetches lines in pairs. (Measured:
/// ResNet-50 at 2 threads, batch 1, twenty interleaved A/Bs, 1.00x the time while the
/// two vCPUs share a cache, 0.99x while not: kept for being right at no cost.)
#[repr(align(128))]
struct Share(AtomicU64);

fn pack(begin: usize, end: usize) -> u64 {
    (begin as u64) << 32 | end as u64
}

/// Takes the range `pick(begin, end)` (a non-empty part at one end of the share's
/// non-empty rest) out of `share`; `None` once the share is empty.
fn take(share: &AtomicU64, pick: impl Fn(usize, usize) -> (usize, usize)) -> Option<(usize, usize)> {
    let mut now = share.load(Ordering::Acquire);
    loop {
        let (b, e) = ((now >> 32) as usize, (now & u32::MAX as u64) as usize);
        if b >= e {
            return None;
        }
        let (pb, pe) = pick(b, e);
        let rest = if pb == b { pack(pe, e) } else { pack(b, pb) };
        match share.compare_exchange_weak(now, rest, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some((pb, pe)),
            Err(seen) => now = seen,
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        while s.generation.load(Ordering::Acquire) == seen && !s.shutdown.load(Ordering::Relaxed) {
            spins += 1;
            if spins < s.spin {
                std::hint::spin_loop();
                continue;
            }
            let guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            if s.generation.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::Relaxed) {
                drop(s.wake.wait(guard).unwrap_or_else(|e| e.into_inner()));
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        if s.shutdown.load(Ordering::Relaxed) {
            return;
        }
        seen = s.generation.load(Ordering::Acquire);
        // SAFETY: the caller wrote the job before the bump this thread has seen, and
        // leaves it alone until this thread decrements `pending`.
        let job = unsafe { (*s.job.get()).as_ref().map(|j| j.0) };
        if let Some(f) = job {
            // SAFETY: `run` keeps the closure alive until `pending` reaches zero.
            let f: &(dyn Fn(usize) + Sync) = unsafe { &*f };
            if catch_unwind(AssertUnwindSafe(|| f(index))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn split_covers_every_task_once() {
        let pool = Pool::new(3);
        for tasks in [0, 1, 2, 5, 1000] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                pool.split(tasks, &|b, e| {
                    (b..e).for_each(|t| {
                        hits[t].fetch_add(1, Ordering::Relaxed);
                    })
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50), "tasks {tasks}");
        }
    }

    /// `shares` runs each share whole, once, and (with the participants) each on its
    /// own participant; with fewer participants than shares, all in one call.
    #[test]
    fn shares_run_whole_and_once() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            for (tasks, shares) in [(0, 2), (2, 2), (8, 2), (9, 3)] {
                let calls = std::sync::Mutex::new(vec![]);
                pool.shares(tasks, shares, &|b, e| calls.lock().unwrap().push((b, e, std::thread::current().id())));
                let mut calls = calls.into_inner().unwrap();
                calls.sort_by_key(|c| c.0);
                let ranges: Vec<(usize, usize)> = calls.iter().map(|c| (c.0, c.1)).collect();
                let want: Vec<(usize, usize)> = if tasks == 0 {
                    vec![]
                } else if threads < shares {
                    vec![(0, tasks)]
                } else {
                    (0..shares).map(|i| (i * tasks / shares, (i + 1) * tasks / shares)).collect()
                };
                assert_eq!(ranges, want, "{tasks} tasks in {shares} shares, {threads} threads");
                let mut ids: Vec<_> = calls.iter().map(|c| format!("{:?}", c.2)).collect();
                ids.dedup();
                assert_eq!(ids.len(), calls.len(), "each share on its own participant: {calls:?}");
            }
        }
    }

    /// The caller's first chunk blocks until every other task has run: only if the
    /// worker takes over the rest of the caller's share does it finish (with a fixed
    /// split it would wait for the timeout). Every task runs once all the same.
    #[test]
    fn late_participants_share_is_taken_over() {
        let pool = Pool::new(2);
        let caller = std::thread::current().id();
        for tasks in [2, 3, 17, 100, 1000] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            let done = AtomicUsize::new(0);
            let timed_out = AtomicBool::new(false);
            pool.split(tasks, &|b, e| {
                if b == 0 && std::thread::current().id() == caller {
                    let start = std::time::Instant::now();
                    while done.load(Ordering::Acquire) < tasks - e {
                        if start.elapsed() > std::time::Duration::from_secs(10) {
                            timed_out.store(true, Ordering::Relaxed);
                            break;
                        }
                        std::thread::yield_now();
                    }
                }
                (b..e).for_each(|t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
                done.fetch_add(e - b, Ordering::Release);
            });
            assert!(!timed_out.load(Ordering::Relaxed), "the caller's share was not taken over, {tasks} tasks");
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "tasks {tasks}");
        }
    }

    /// Workers that fell asleep between jobs (past their spin) wake for the next one:
    /// the caller notifies whenever one counts itself a sleeper; and for the shutdown of
    /// a pool dropped while they sleep. (On a thread of its own, so that a lost wake-up
    /// fails the test instead of hanging it.)
    #[test]
    fn sleeping_workers_wake_for_the_next_job() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = Pool::new(3);
            let mut all = true;
            for pause_us in [0u64, 30, 100, 1_000, 20_000, 0, 50_000] {
                std::thread::sleep(std::time::Duration::from_micros(pause_us));
                let ran: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
                all &= pool.try_run(&|p| {
                    ran[p].fetch_add(1, Ordering::Relaxed);
                });
                all &= ran.iter().all(|r| r.load(Ordering::Relaxed) == 1);
            }
            // Dropped while its workers sleep: they must wake for the shutdown.
            std::thread::sleep(std::time::Duration::from_millis(5));
            drop(pool);
            done.send(all).unwrap();
        });
        let all = finished.recv_timeout(std::time::Duration::from_secs(20)).expect("a sleeping worker was not woken");
        assert!(all, "every participant runs each job once");
    }

    /// Participants beyond the CPUs spin only briefly on each other; up to the CPUs, the
    /// full spin that keeps hand-offs free of system calls.
    #[test]
    fn oversubscribed_pools_spin_briefly() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(spin_budget(cpus), SPIN);
        assert_eq!(spin_budget(1), SPIN);
        assert_eq!(spin_budget(cpus + 1), SPIN_OVERSUBSCRIBED);
        assert_eq!(Pool::new(cpus + 1).shared.spin, SPIN_OVERSUBSCRIBED);
    }

    /// `try_run` runs nothing where the participants could not run at once.
    #[test]
    fn try_run_refuses_a_single_thread() {
        let calls = AtomicUsize::new(0);
        assert!(!Pool::new(1).try_run(&|_| {
            calls.fetch_add(1, Ordering::Relaxed);
        }));
        assert_eq!(calls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn concurrent_callers_share_one_pool() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        pool.split(10, &|b, e| {
                            total.fetch_add(e - b, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 10);
    }
}
