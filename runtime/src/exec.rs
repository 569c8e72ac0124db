//! Runs a compiled model: a list of kernel calls over an arena of one slot per image
//! (images run one after the other share one), with tasks split across a thread pool.
//! Backends differ only in where the kernel functions come from (Cranelift JIT, an AOT
//! object, rustc); this executor drives them all.
//!
//! Kernel ABI: `extern "C" fn(args: *const *mut f32, begin: i64, end: i64)` runs tasks
//! `begin..end`; `args[i]` is the kernel's i-th pointer argument (see [`Arg`]).

use crate::hugepages;
use crate::pool::Pool;
use anyhow::{bail, Result};

pub type KernelFn = unsafe extern "C" fn(args: *const *mut f32, begin: i64, end: i64);

/// Where a kernel argument points, for one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arg {
    /// The image's arena plus a float offset.
    Arena(usize),
    /// The weight blob plus a float offset.
    Weights(usize),
    /// The image's external input, NCHW.
    Input,
    /// The image's external logits.
    Output,
}

/// One kernel call of the schedule.
#[derive(Clone, Debug)]
pub struct Call {
    pub f: KernelFn,
    pub args: Vec<Arg>,
    pub tasks: usize,
    /// How the call runs a batch.
    pub order: Order,
}

/// How a call runs a batch of `n` images (with one image both are the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// Task `t / n` of image `t % n`: the weights one task reads (a tile of output
    /// channels, a Winograd position) serve every image while they are in cache, and each
    /// thread streams only its share of them. For calls whose weights do not stay in
    /// cache from one image to the next. (Images on one thread, and threads with their
    /// own shares of the images, run them image by image instead: see `run_images`. So
    /// this order applies to images split across a pool.)
    TaskMajor = 1,
    /// Consecutive depth-first calls run as a segment, image by image: image 0 through
    /// the whole segment, then image 1, ... For calls with small weights (or none), so
    /// one image's activations flow from call to call through cache instead of the whole
    /// batch's going out to memory between calls.
    DepthFirst = 2,
    /// The first call of a band group: a conv run as bands of output rows, each band a
    /// few calls that run one after the other on one thread, with no barrier between
    /// them, while another thread runs other bands. Band `b` uses scratch slot
    /// [`band_slot`] (the compiler places its scratch there) and, with exactly
    /// [`BAND_SLOTS`] threads, runs on the thread of that number; with any other thread
    /// count the bands run one after the other (see `run_bands`). Within a batch, a group
    /// runs image by image like a depth-first call.
    BandGroup = 3,
    /// The first call of a later band of the group.
    BandStart = 4,
    /// Any other call of a band.
    Band = 5,
    /// A call whose tasks carry state from one to the next on a thread (a pipeline: the
    /// Winograd products that transform raw weights, `Winograd::raw`, each unit's
    /// products transforming the next unit's weights into a scratch slot). Its task
    /// space is [`BAND_SLOTS`] shares (its first task dimension), each with its own
    /// scratch, each run front to back by one thread, whole, in one kernel call (the
    /// kernel starts its pipeline at each share's first task, so it must never be called
    /// from inside a share): split across a pool, participant `i < BAND_SLOTS` runs share
    /// `i`, with no stealing; alone, one call runs them all. A batch runs it image by
    /// image, like a depth-first call.
    Pipelined = 6,
}

/// Scratch slots of a band group: how many of its bands may run at once.
pub const BAND_SLOTS: usize = 2;

/// The scratch slot of band `b` of a group of `bands`, and (with [`BAND_SLOTS`] threads)
/// the thread that runs it: the bands split into contiguous runs, one per slot. So each
/// thread's bands cover one block of rows, the block its share of a row-split call before
/// or after the group also covers, and the rows stay in that core's cache (with bands
/// dealt out in turn, half of every band's input came from the other core's).
pub fn band_slot(b: usize, bands: usize) -> usize {
    b * BAND_SLOTS / bands.max(1)
}

impl Order {
    /// The descriptor encoding of AOT objects (`runner::CallDesc::order`).
    pub fn from_code(code: u64) -> Option<Order> {
        [Order::TaskMajor, Order::DepthFirst, Order::BandGroup, Order::BandStart, Order::Band, Order::Pipelined]
            .into_iter()
            .find(|o| *o as u64 == code)
    }

    /// Whether the call continues the band group before it.
    fn continues_group(self) -> bool {
        matches!(self, Order::BandStart | Order::Band)
    }
}

/// A 64-byte aligned, zero-initialized float buffer, on huge pages if asked for
/// ([`Aligned::zeroed_huge`]).
pub struct Aligned {
    ptr: *mut f32,
    len: usize,
    /// Bytes from the allocation's start to `ptr`.
    skew: usize,
    /// On huge pages ([`Aligned::zeroed_huge`]).
    huge: bool,
}

// SAFETY: plain owned memory.
unsafe impl Send for Aligned {}
unsafe impl Sync for Aligned {}

/// The buffers' alignment (a cache line, an AVX-512 vector).
const ALIGN: usize = 64;

impl Aligned {
    /// Where `ptr` is aligned (to a huge page for a buffer on huge pages, else to
    /// `ALIGN`), and the bytes from `ptr` that are the buffer's (whole huge pages for the
    /// first).
    fn geometry(len: usize, huge: bool) -> (usize, usize) {
        let bytes = len.max(1) * 4;
        if huge {
            (hugepages::SIZE, bytes.next_multiple_of(hugepages::SIZE))
        } else {
            (ALIGN, bytes)
        }
    }

    /// The allocation is requested 16-byte aligned, with room to align it by hand: at 16
    /// bytes the system allocator zeroes through `calloc`, which leaves fresh pages
    /// untouched (a blob costs memory only as it is filled, and huge pages can still be
    /// asked for); at 64 it writes every byte.
    fn layout(len: usize, huge: bool) -> std::alloc::Layout {
        let (align, bytes) = Self::geometry(len, huge);
        std::alloc::Layout::from_size_align(bytes + align, 16).expect("buffer size fits in memory")
    }

    /// Allocates `len` zeroed floats; an error (not an abort) when memory runs out.
    pub fn zeroed(len: usize) -> Result<Aligned> {
        Self::allocate(len, false)
    }

    /// [`Aligned::zeroed`] on huge pages, where the buffer is large and the system offers
    /// them ([`hugepages::wanted`]): for weights, which every forward call streams. Not for
    /// arenas: a huge page is resident whole once touched (ResNet-50's 9 MB arena raised
    /// its peak RSS by 1.7 MB), and on huge pages they were no faster (0.996x).
    pub fn zeroed_huge(len: usize) -> Result<Aligned> {
        Self::allocate(len, hugepages::wanted(len * 4))
    }

    fn allocate(len: usize, huge: bool) -> Result<Aligned> {
        // SAFETY: non-zero size layout.
        let base = unsafe { std::alloc::alloc_zeroed(Self::layout(len, huge)) };
        if base.is_null() {
            bail!("cannot allocate {} MiB", (len * 4) >> 20);
        }
        let (align, _) = Self::geometry(len, huge);
        let skew = (align - base as usize % align) % align;
        // SAFETY: `skew < align`, and the allocation has `align` spare bytes.
        let ptr = unsafe { base.add(skew) };
        if huge {
            // Fresh memory (a `calloc` this large usually maps it) faults in huge pages;
            // memory already touched keeps its pages (a loss of speed only). Only the huge
            // pages the floats fill: the rest of the last one stays on base pages, resident
            // only as far as it is written (advised whole, it was resident whole: ResNet-50's
            // weights then cost up to 2 MB more peak RSS, as their size crossed a multiple
            // of 2 MB). Where the system gives every process huge pages (`always`), the
            // kernel may still back the tail with one.
            hugepages::advise(ptr, (len * 4) / hugepages::SIZE * hugepages::SIZE);
        }
        Ok(Aligned { ptr: ptr as *mut f32, len, skew, huge })
    }

    pub fn from_slice(data: &[f32]) -> Result<Aligned> {
        let mut a = Aligned::zeroed(data.len())?;
        a.as_mut_slice().copy_from_slice(data);
        Ok(a)
    }

    /// [`Aligned::from_slice`] of a blob embedded in the executable, into huge pages
    /// where [`hugepages::wanted`], dropping the blob's resident pages behind the copy
    /// ([`hugepages::copy_releasing`]).
    ///
    /// # Safety
    /// `data` must be read-only, file-backed memory (an executable's embedded data).
    pub unsafe fn from_embedded(data: &[f32]) -> Result<Aligned> {
        let mut a = Aligned::zeroed_huge(data.len())?;
        // SAFETY: forwarded from the caller.
        unsafe { hugepages::copy_releasing(a.as_mut_slice(), data) };
        Ok(a)
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `ptr` owns `len` initialized floats.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub fn as_ptr(&self) -> *mut f32 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: the allocation `allocate` made, with the same layout (`huge` and `len`
        // never change).
        unsafe { std::alloc::dealloc((self.ptr as *mut u8).sub(self.skew), Self::layout(self.len, self.huge)) }
    }
}

/// Sizes of one image's memory.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub arena_floats: usize,
    pub input_floats: usize,
    pub output_floats: usize,
}

/// Raw pointers of one forward pass, shared by the pool's threads.
struct Frame {
    arena: *mut f32,
    weights: *mut f32,
    input: *mut f32,
    output: *mut f32,
}
// SAFETY: kernels write disjoint memory per task (the IR's invariant), bands that run at
// once disjoint memory per band (`run_bands`), and threads that run images by share each
// their own images' arenas, inputs and outputs (`run`).
unsafe impl Sync for Frame {}

/// Runs `calls` on `n` images; adds each call's seconds to `timings[i]` when given: its
/// wall time, or where threads run calls at once (images by share, bands), each thread's
/// time over the number of such threads, so that the timings add up to about the wall
/// time and per-call rates stay those of the whole pool.
/// `arena` must hold `n * arena_floats` floats, 64-byte aligned; `input`
/// `n * input_floats`, `output` `n * output_floats`.
///
/// With `T` threads, whole rounds of `T` images run one share per thread, each thread
/// taking its images through every call alone ([`run_images`] with [`Team::Alone`]):
/// per image the kernels are as fast on one core as split across two, so this saves the
/// hand-off after every call, and each image's activations stay in one core's cache.
/// The threads run free, each at its own pace. (They used to keep step call by call, a
/// barrier after each, so that they would read the same weights at the same time: one
/// stream from memory through a shared L3. Interleaved A/Bs on the Zen 5, ResNet-50
/// batch 8 at 2 threads: free threads 0.96-1.00x the time in seven pairs while the two
/// vCPUs shared a cache, 0.95-0.98x in four while they did not (or the host moved
/// them); ResNet-18 0.95-1.01x, ResNet-101 0.97-1.05x, ResNet-50 batch 2 0.98-1.07x:
/// the waits for the slower thread at every call cost more than the shared stream saved.)
/// The images left over (all of them when `n < T`) run with each call split across the
/// pool.
///
/// # Safety
/// The kernels must be valid functions of the ABI above, generated for these sizes: they
/// access memory only within the regions described by `sizes`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn run(
    calls: &[Call],
    sizes: Sizes,
    weights: &[f32],
    arena: &mut Aligned,
    input: &[f32],
    output: &mut [f32],
    n: usize,
    pool: &Pool,
    mut timings: Option<&mut [f64]>,
) {
    assert!(arena.len() >= n * sizes.arena_floats, "arena too small");
    assert_eq!(input.len(), n * sizes.input_floats, "input length");
    assert_eq!(output.len(), n * sizes.output_floats, "output length");
    let frame = Frame {
        arena: arena.as_ptr(),
        weights: weights.as_ptr() as *mut f32,
        input: input.as_ptr() as *mut f32,
        output: output.as_mut_ptr(),
    };
    let frame = &frame;
    let threads = pool.threads();
    let share = if threads > 1 { n / threads } else { 0 };
    if share > 0 {
        // Per thread, its calls' seconds when timing (merged below).
        let times: Vec<std::sync::Mutex<Vec<f64>>> =
            (0..if timings.is_some() { threads } else { 0 }).map(|_| Default::default()).collect();
        // On a busy pool, the shares one after the other on this thread.
        pool.run(&|p| {
            let mut mine = (!times.is_empty()).then(|| vec![0.0; calls.len()]);
            // SAFETY: forwarded from the caller; the threads' images, and so their arenas,
            // inputs and outputs, are disjoint, and the weights are only read.
            unsafe { run_images(calls, frame, sizes, p * share, share, Team::Alone, mine.as_deref_mut()) };
            if let Some(mine) = mine {
                *times[p].lock().unwrap_or_else(|e| e.into_inner()) = mine;
            }
        });
        if let Some(t) = timings.as_deref_mut() {
            for mine in times {
                let mine = mine.into_inner().unwrap_or_else(|e| e.into_inner());
                t.iter_mut().zip(mine).for_each(|(t, m)| *t += m / threads as f64);
            }
        }
    }
    let done = share * threads;
    if done < n {
        // SAFETY: forwarded from the caller.
        unsafe { run_images(calls, frame, sizes, done, n - done, Team::Pool(pool), timings) };
    }
}

/// Who runs a call's tasks: the pool, split across its threads, or the calling thread
/// alone (inside a pool job that gave it its own images).
#[derive(Clone, Copy)]
enum Team<'a> {
    Pool(&'a Pool),
    Alone,
}

impl Team<'_> {
    fn split(self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        match self {
            Team::Pool(pool) => pool.split(tasks, f),
            Team::Alone if tasks > 0 => f(0, tasks),
            Team::Alone => {}
        }
    }

    /// Runs `f(begin, end)` over `shares` equal shares of `0..tasks`, each whole in one
    /// call: share `i` on participant `i` of a pool, all of them in one call when alone.
    fn shares(self, tasks: usize, shares: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        match self {
            Team::Pool(pool) => pool.shares(tasks, shares, f),
            Team::Alone if tasks > 0 => f(0, tasks),
            Team::Alone => {}
        }
    }
}

/// Runs `calls` on images `first .. first + count`, each call's tasks run by `team`;
/// adds each call's seconds to `timings` when given.
///
/// # Safety
/// As [`run`]; besides, no other thread touches these images' memory meanwhile.
unsafe fn run_images(
    calls: &[Call],
    frame: &Frame,
    sizes: Sizes,
    first: usize,
    count: usize,
    team: Team,
    mut timings: Option<&mut [f64]>,
) {
    // Task-major calls run so only across a pool of several threads. Images on one thread
    // (a pool of one, or a busy pool's fallback, the shares one after the other) run
    // them image by image too: one thread has the memory bandwidth to itself, and the
    // images' activations staying in cache from call to call measured as fast or faster
    // than reading each weight once per batch (AMD Zen 5, batch 8, two interleaved A/Bs
    // each: ResNet-50 0.96-0.99x the time, ResNet-34 0.92-0.99x, ResNet-101 0.93x; the
    // host was noisy). So do threads with their own shares of the images.
    let split = matches!(team, Team::Pool(pool) if pool.threads() > 1);
    let task_major = |c: &Call| c.order == Order::TaskMajor && split;
    // Images that run one after the other through every call share one arena, the first
    // one's: a batch then keeps one arena per thread in memory (ResNet-50 batch 8, 2
    // threads: peak RSS 165 MB against 217), and in cache from image to image. (Time:
    // 0.99-1.01x, on a noisy host.) Task-major calls over several images need each
    // image's own.
    let slot = (!calls.iter().any(task_major)).then_some(first);
    let timed = |timings: &mut Option<&mut [f64]>, i: usize, first: usize, count: usize| {
        let start = timings.is_some().then(std::time::Instant::now);
        // SAFETY: forwarded from the caller.
        unsafe { run_call(&calls[i], frame, sizes, first, count, slot, team) };
        if let (Some(t), Some(start)) = (timings.as_deref_mut(), start) {
            t[i] += start.elapsed().as_secs_f64();
        }
    };
    let mut i = 0;
    while i < calls.len() {
        if task_major(&calls[i]) {
            timed(&mut timings, i, first, count);
            i += 1;
            continue;
        }
        // A segment of calls that run image by image, band groups included.
        let end = i + calls[i..].iter().take_while(|c| !task_major(c)).count();
        for image in first..first + count {
            let mut k = i;
            while k < end {
                // With any other thread count than the slots', bands run one after the
                // other as ordinary calls.
                if let (Order::BandGroup, Team::Pool(pool)) = (calls[k].order, team) {
                    if pool.threads() == BAND_SLOTS {
                        let stop = k + 1 + calls[k + 1..end].iter().take_while(|c| c.order.continues_group()).count();
                        let t = timings.as_deref_mut().map(|t| &mut t[k..stop]);
                        // SAFETY: forwarded from the caller.
                        unsafe { run_bands(&calls[k..stop], frame, sizes, image, slot, pool, t) };
                        k = stop;
                        continue;
                    }
                }
                timed(&mut timings, k, image, 1);
                k += 1;
            }
        }
        i = end;
    }
}

/// Runs one image's band group (calls from a [`Order::BandGroup`] call to the group's
/// end) on a pool of [`BAND_SLOTS`] threads: each runs whole bands, band `b` on thread
/// [`band_slot`] (its scratch slot's), each call with all of its tasks and no barrier
/// inside a band. (With one thread, or more threads than slots, `run` runs the bands one
/// after the other, each call's tasks split across the pool as any call's.) Adds each
/// call's time over [`BAND_SLOTS`] to `timings` when given (see [`run`]). Allocates only
/// when timing.
///
/// # Safety
/// As [`run`]; besides, the pool has [`BAND_SLOTS`] threads, and the bands of a group
/// write disjoint memory except their slot's scratch, and none reads what another
/// writes.
unsafe fn run_bands(
    group: &[Call],
    frame: &Frame,
    sizes: Sizes,
    image: usize,
    slot: Option<usize>,
    pool: &Pool,
    timings: Option<&mut [f64]>,
) {
    // A band starts at every call but a `Band` one.
    let bands = group.iter().filter(|c| c.order != Order::Band).count();
    let timing = timings.is_some();
    // Per thread: (call, seconds) of the calls it ran, when timing.
    let times: Vec<std::sync::Mutex<Vec<(usize, f64)>>> =
        if timing { (0..BAND_SLOTS).map(|_| Default::default()).collect() } else { Vec::new() };
    pool.run(&|p| {
        let mut mine = vec![];
        let mut band = 0;
        for (k, call) in group.iter().enumerate() {
            if k > 0 && call.order != Order::Band {
                band += 1;
            }
            if band_slot(band, bands) != p {
                continue;
            }
            let begin = timing.then(std::time::Instant::now);
            // SAFETY: forwarded from the caller; this band's scratch slot is this thread's
            // alone.
            unsafe { (call.f)(pointers(call, frame, sizes, image, slot).as_ptr(), 0, call.tasks as i64) };
            if let Some(begin) = begin {
                mine.push((k, begin.elapsed().as_secs_f64()));
            }
        }
        if timing {
            *times[p].lock().unwrap_or_else(|e| e.into_inner()) = mine;
        }
    });
    if let Some(t) = timings {
        for (k, secs) in times.into_iter().flat_map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner())) {
            t[k] += secs / BAND_SLOTS as f64;
        }
    }
}

/// The argument pointers of `call` for `image`, whose activations are in arena `slot`
/// (`None`: the image's own).
///
/// # Safety
/// As [`run`].
unsafe fn pointers(call: &Call, frame: &Frame, sizes: Sizes, image: usize, slot: Option<usize>) -> [*mut f32; 8] {
    let mut ptrs = [std::ptr::null_mut::<f32>(); 8];
    for (p, a) in ptrs.iter_mut().zip(&call.args) {
        // SAFETY: offsets come from the plan and stay within each region.
        *p = unsafe {
            match *a {
                Arg::Arena(o) => frame.arena.add(slot.unwrap_or(image) * sizes.arena_floats + o),
                Arg::Weights(o) => frame.weights.add(o),
                Arg::Input => frame.input.add(image * sizes.input_floats),
                Arg::Output => frame.output.add(image * sizes.output_floats),
            }
        };
    }
    ptrs
}

/// Runs `call` on images `first .. first + count`, its tasks run by `team`.
///
/// # Safety
/// As [`run`].
unsafe fn run_call(
    call: &Call,
    frame: &Frame,
    sizes: Sizes,
    first: usize,
    count: usize,
    slot: Option<usize>,
    team: Team,
) {
    // SAFETY: forwarded from the caller.
    let args = |image: usize| unsafe { pointers(call, frame, sizes, image, slot) };
    if call.order == Order::Pipelined {
        // Image by image (never task-major), each share whole in one kernel call.
        for image in first..first + count {
            team.shares(call.tasks, BAND_SLOTS, &|begin, end| {
                // SAFETY: the caller guarantees the kernel's validity; each share has its
                // own scratch, and runs on one thread.
                unsafe { (call.f)(args(image).as_ptr(), begin as i64, end as i64) };
            });
        }
        return;
    }
    let f = &|begin: usize, end: usize| {
        if call.order == Order::TaskMajor && count > 1 {
            for t in begin..end {
                let (task, image) = (t / count, first + t % count);
                // SAFETY: the caller guarantees the kernel's validity.
                unsafe { (call.f)(args(image).as_ptr(), task as i64, task as i64 + 1) };
            }
            return;
        }
        // A participant's range may span images: one kernel call per image.
        let mut t = begin;
        while t < end {
            let image = t / call.tasks;
            let stop = end.min((image + 1) * call.tasks);
            let local = t - image * call.tasks;
            // SAFETY: as above.
            unsafe { (call.f)(args(first + image).as_ptr(), local as i64, (local + stop - t) as i64) };
            t = stop;
        }
    };
    team.split(count * call.tasks, f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Every order survives the AOT descriptor's encoding.
    #[test]
    fn orders_round_trip_through_their_codes() {
        for o in
            [Order::TaskMajor, Order::DepthFirst, Order::BandGroup, Order::BandStart, Order::Band, Order::Pipelined]
        {
            assert_eq!(Order::from_code(o as u64), Some(o));
        }
        assert_eq!(Order::from_code(0), None);
        assert_eq!(Order::from_code(7), None);
    }

    static SEQ: AtomicU64 = AtomicU64::new(1);

    /// What test kernels ran, one entry per task: (image, call, task, sequence number).
    /// Images may share an arena, so the kernels log instead of writing their arena; an
    /// image is known by its input, which holds its index.
    type Entry = (usize, usize, usize, u64);
    type Log = std::sync::Mutex<Vec<Entry>>;

    /// Logs each task of call `K` (argument 0: the image's input) in `L`.
    unsafe extern "C" fn log_tasks<const K: usize, const L: usize>(args: *const *mut f32, begin: i64, end: i64) {
        let image = unsafe { **args } as usize;
        let mut log = LOGS[L].lock().unwrap_or_else(|e| e.into_inner());
        for t in begin as usize..end as usize {
            log.push((image, K, t, SEQ.fetch_add(1, Ordering::SeqCst)));
        }
    }

    /// [`log_tasks`], 30 ms late.
    unsafe extern "C" fn slow_log_tasks<const K: usize, const L: usize>(args: *const *mut f32, begin: i64, end: i64) {
        std::thread::sleep(std::time::Duration::from_millis(30));
        unsafe { log_tasks::<K, L>(args, begin, end) };
    }

    /// One log per test, as tests run at once.
    static LOGS: [Log; 3] = [Log::new(Vec::new()), Log::new(Vec::new()), Log::new(Vec::new())];

    /// Runs `calls` on `n` images at `threads` threads, each image's input its index;
    /// takes the log `l` (cleared first) and the calls' timings.
    fn run_logged(calls: &[Call], l: usize, n: usize, pool: &Pool) -> (Vec<Entry>, Vec<f64>) {
        LOGS[l].lock().unwrap_or_else(|e| e.into_inner()).clear();
        let sizes = Sizes { arena_floats: 8, input_floats: 1, output_floats: 1 };
        let mut arena = Aligned::zeroed(n * sizes.arena_floats).unwrap();
        let input: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut output = vec![0.0; n];
        let mut timings = vec![0.0; calls.len()];
        // SAFETY: the kernels read their image's input and touch nothing else.
        unsafe { run(calls, sizes, &[], &mut arena, &input, &mut output, n, pool, Some(&mut timings)) };
        let log = std::mem::take(&mut *LOGS[l].lock().unwrap_or_else(|e| e.into_inner()));
        (log, timings)
    }

    /// Two adjacent band groups of two bands of two calls, the first group's second band
    /// slow: at one, two and three threads, with one to three images (at two threads:
    /// bands on both threads, images one per thread, and both), each band's calls run in
    /// order and the second group starts only when the first has ended, so two groups
    /// never merge into one.
    #[test]
    fn band_groups_run_in_order_and_one_after_the_other() {
        let call = |f: KernelFn, order: Order| Call { f, args: vec![Arg::Input], tasks: 1, order };
        let calls = vec![
            call(log_tasks::<0, 0>, Order::BandGroup),
            call(log_tasks::<1, 0>, Order::Band),
            call(slow_log_tasks::<2, 0>, Order::BandStart),
            call(slow_log_tasks::<3, 0>, Order::Band),
            call(log_tasks::<4, 0>, Order::BandGroup),
            call(log_tasks::<5, 0>, Order::Band),
            call(log_tasks::<6, 0>, Order::BandStart),
            call(log_tasks::<7, 0>, Order::Band),
        ];
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            for n in 1..=3 {
                let (log, timings) = run_logged(&calls, 0, n, &pool);
                for image in 0..n {
                    // Each call's sequence number for this image (each runs once).
                    let seq: Vec<u64> = (0..8)
                        .map(|k| {
                            let runs: Vec<u64> = log.iter().filter(|e| e.0 == image && e.1 == k).map(|e| e.3).collect();
                            assert_eq!(runs.len(), 1, "call {k} of image {image}: {log:?}");
                            runs[0]
                        })
                        .collect();
                    for band in seq.chunks(2) {
                        assert!(
                            band[0] < band[1],
                            "a band's calls out of order: {seq:?}, {threads} threads, {n} images"
                        );
                    }
                    let first_end = seq[..4].iter().cloned().fold(0, u64::max);
                    assert!(seq[4..].iter().all(|&s| s > first_end), "groups overlapped: {seq:?}, {threads} threads");
                }
                // 30 ms per image, over the threads where several run at once.
                let slow = 0.03 * n as f64 / threads as f64;
                assert!(timings[2] >= slow && timings[3] >= slow, "slow calls timed {timings:?}, {n} images");
            }
        }
    }

    /// Task-major and depth-first calls on 1-7 images at 1-3 threads (whole rounds of
    /// images one share per thread, the rest split per call): every call runs every task
    /// of every image exactly once, and each image's calls in order.
    #[test]
    fn every_image_runs_every_call_once_in_order() {
        const TASKS: usize = 3;
        let call = |f: KernelFn, order: Order| Call { f, args: vec![Arg::Input], tasks: TASKS, order };
        let calls = vec![
            call(log_tasks::<0, 1>, Order::TaskMajor),
            call(log_tasks::<1, 1>, Order::DepthFirst),
            call(log_tasks::<2, 1>, Order::DepthFirst),
            call(log_tasks::<3, 1>, Order::TaskMajor),
        ];
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            for n in 1..=7 {
                let (log, timings) = run_logged(&calls, 1, n, &pool);
                assert_eq!(log.len(), n * calls.len() * TASKS, "tasks run, {n} images, {threads} threads: {log:?}");
                for image in 0..n {
                    let seqs = |k: usize| log.iter().filter(move |e| e.0 == image && e.1 == k);
                    for k in 0..calls.len() {
                        let mut tasks: Vec<usize> = seqs(k).map(|e| e.2).collect();
                        tasks.sort();
                        assert_eq!(
                            tasks,
                            (0..TASKS).collect::<Vec<_>>(),
                            "call {k}, image {image} of {n}, {threads} threads"
                        );
                    }
                    for k in 1..calls.len() {
                        let before = seqs(k - 1).map(|e| e.3).max().unwrap();
                        let after = seqs(k).map(|e| e.3).min().unwrap();
                        assert!(before < after, "calls out of order: image {image} of {n}, {threads} threads: {log:?}");
                    }
                }
                assert!(timings.iter().all(|&t| t > 0.0), "every call timed: {timings:?}");
            }
        }
    }

    /// Pipelined calls (`Order::Pipelined`) run whole shares in one kernel call each: on
    /// 1-3 threads with 1-5 images, every call of every image covers shares whole, all
    /// tasks once; split across a pool (images left over), each share on its own thread.
    #[test]
    fn pipelined_calls_run_whole_shares() {
        const TASKS: usize = 8;
        static RANGES: std::sync::Mutex<Vec<(usize, usize, usize, std::thread::ThreadId)>> =
            std::sync::Mutex::new(Vec::new());
        unsafe extern "C" fn log_range(args: *const *mut f32, begin: i64, end: i64) {
            let image = unsafe { **args } as usize;
            let entry = (image, begin as usize, end as usize, std::thread::current().id());
            RANGES.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
        }
        let calls = vec![
            Call { f: log_tasks::<0, 2>, args: vec![Arg::Input], tasks: 2, order: Order::DepthFirst },
            Call { f: log_range, args: vec![Arg::Input], tasks: TASKS, order: Order::Pipelined },
        ];
        let per = TASKS / BAND_SLOTS;
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            for n in 1..=5 {
                RANGES.lock().unwrap().clear();
                run_logged(&calls, 2, n, &pool);
                let ranges = std::mem::take(&mut *RANGES.lock().unwrap());
                let share = if threads > 1 { n / threads } else { 0 };
                for image in 0..n {
                    let mine: Vec<_> = ranges.iter().filter(|r| r.0 == image).collect();
                    let mut covered = [0; TASKS];
                    for r in &mine {
                        assert!(r.1 % per == 0 && r.2 % per == 0 && r.1 < r.2, "a partial share: {r:?}");
                        (r.1..r.2).for_each(|t| covered[t] += 1);
                    }
                    assert!(covered.iter().all(|&c| c == 1), "image {image}: {mine:?}");
                    let split = threads > 1 && image >= share * threads;
                    if split {
                        assert_eq!(mine.len(), BAND_SLOTS, "one call per share: {mine:?}");
                        assert_ne!(mine[0].3, mine[1].3, "shares on distinct threads: {mine:?}");
                    }
                }
            }
        }
    }

    /// Where images' activations go: images that run one after the other through every
    /// call share their first image's arena; images that meet in a task-major call
    /// (leftover images split across the pool) each keep their own.
    #[test]
    fn images_share_an_arena_only_when_run_one_after_the_other() {
        static SEEN: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());
        // Logs (image, arena address) once per call.
        unsafe extern "C" fn arena_of(args: *const *mut f32, begin: i64, _end: i64) {
            if begin == 0 {
                let entry = unsafe { (**args as usize, *args.add(1) as usize) };
                SEEN.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
            }
        }
        let sizes = Sizes { arena_floats: 16, input_floats: 1, output_floats: 1 };
        let call = |order: Order| Call { f: arena_of, args: vec![Arg::Input, Arg::Arena(0)], tasks: 2, order };
        // (threads, images, task-major calls?) -> whether the images share one arena
        let cases = [(1, 3, true, true), (2, 4, true, true), (3, 2, false, true), (3, 2, true, false)];
        for (threads, n, task_major, shared) in cases {
            let pool = Pool::new(threads);
            let order = if task_major { Order::TaskMajor } else { Order::DepthFirst };
            let calls = vec![call(Order::DepthFirst), call(order)];
            SEEN.lock().unwrap().clear();
            let mut arena = Aligned::zeroed(n * sizes.arena_floats).unwrap();
            let input: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let mut output = vec![0.0; n];
            // SAFETY: the kernel reads its image's input and only logs the arena's address.
            unsafe { run(&calls, sizes, &[], &mut arena, &input, &mut output, n, &pool, None) };
            let seen = std::mem::take(&mut *SEEN.lock().unwrap());
            let base = arena.as_ptr() as usize;
            let per_thread = if threads > 1 && n >= threads { n / threads } else { n };
            for &(image, at) in &seen {
                let slot = (at - base) / (4 * sizes.arena_floats);
                let want = if shared { image / per_thread * per_thread } else { image };
                assert_eq!(
                    slot, want,
                    "image {image}, {threads} threads, {n} images, task-major {task_major}: {seen:?}"
                );
            }
            assert_eq!(seen.len(), 2 * n, "{seen:?}");
        }
    }

    /// Band slots come in contiguous runs: below `BAND_SLOTS`, never decreasing, the first
    /// band in slot 0, and with two bands or more every slot in use (up to their count).
    #[test]
    fn band_slots_are_contiguous_runs() {
        for bands in 1..=9 {
            let slots: Vec<usize> = (0..bands).map(|b| band_slot(b, bands)).collect();
            assert_eq!(slots[0], 0, "{slots:?}");
            assert!(slots.windows(2).all(|w| w[0] <= w[1]), "{slots:?}");
            assert!(slots.iter().all(|&s| s < BAND_SLOTS), "{slots:?}");
            assert_eq!(slots[bands - 1], bands.min(BAND_SLOTS) - 1, "{slots:?}");
        }
    }

    /// Buffers are 64-byte aligned and zero whatever the allocator returned.
    #[test]
    fn aligned_buffers_are_aligned_and_zero() {
        let bufs: Vec<Aligned> =
            [1, 3, 16, 1000, 1 << 20, 5_000_001].iter().map(|&n| Aligned::zeroed(n).unwrap()).collect();
        for b in &bufs {
            assert_eq!(b.as_ptr() as usize % ALIGN, 0, "{} floats", b.len());
            assert!(b.as_slice().iter().all(|&v| v == 0.0), "{} floats", b.len());
        }
        let copy = Aligned::from_slice(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(copy.as_slice(), &[1.0, 2.0, 3.0]);
    }

    /// A large buffer on huge pages starts on one where the system offers them (so that
    /// its pages can be huge), and every float of it can be written and read back.
    #[test]
    fn large_buffers_start_on_a_huge_page() {
        let n = hugepages::MIN_BYTES / 4 + 12345;
        let mut b = Aligned::zeroed_huge(n).unwrap();
        let align = if hugepages::available() { hugepages::SIZE } else { ALIGN };
        assert_eq!(b.as_ptr() as usize % align, 0);
        for (i, v) in b.as_mut_slice().iter_mut().enumerate() {
            *v = i as f32;
        }
        assert!(b.as_slice().iter().enumerate().all(|(i, &v)| v == i as f32));
        // A copy of read-only data (this test binary's), on huge pages, as executables
        // copy their embedded weights.
        // Rows of 977 (prime) distinct floats: a copy step off by any offset shows.
        const ROW: [f32; 977] = {
            let mut a = [0.0; 977];
            let mut i = 0;
            while i < a.len() {
                a[i] = i as f32 - 400.0;
                i += 1;
            }
            a
        };
        static DATA: [[f32; 977]; 2200] = [ROW; 2200];
        let data = DATA.as_flattened();
        assert!(data.len() * 4 >= hugepages::MIN_BYTES);
        // SAFETY: DATA is an immutable static, in the binary's read-only data.
        let copy = unsafe { Aligned::from_embedded(data) }.unwrap();
        assert_eq!(copy.as_ptr() as usize % align, 0);
        assert!(copy.as_slice() == data);
        // Just below the threshold: the usual alignment is enough.
        let small = Aligned::zeroed_huge(hugepages::MIN_BYTES / 4 - 1).unwrap();
        assert_eq!(small.as_ptr() as usize % ALIGN, 0);
    }
}
