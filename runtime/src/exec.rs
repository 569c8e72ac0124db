//! Runs a compiled model: a list of kernel calls over one arena per image, with tasks
//! split across a thread pool. Backends differ only in where the kernel functions come
//! from (Cranelift JIT, an AOT object, rustc); this executor drives them all.
//!
//! Kernel ABI: `extern "C" fn(args: *const *mut f32, begin: i64, end: i64)` runs tasks
//! `begin..end`; `args[i]` is the kernel's i-th pointer argument (see [`Arg`]).

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
    /// thread streams only its share of them. For calls whose weights do not stay in cache
    /// from one image to the next.
    TaskMajor = 1,
    /// Consecutive depth-first calls run as a segment, image by image: image 0 through
    /// the whole segment, then image 1, ... For calls with small weights (or none), so
    /// one image's activations flow from call to call through cache instead of the whole
    /// batch's going out to memory between calls.
    DepthFirst = 2,
    /// The first call of a band group: a conv run as bands of output rows, each band a
    /// few calls that run one after the other on one thread, with no barrier between
    /// them, while other threads run other bands. Band `b` uses scratch slot
    /// `b % BAND_SLOTS` (the compiler places its scratch there), so at most
    /// [`BAND_SLOTS`] threads take part, thread `p` running the bands `b % threads == p`.
    /// Within a batch, a group runs image by image like a depth-first call.
    BandGroup = 3,
    /// The first call of a later band of the group.
    BandStart = 4,
    /// Any other call of a band.
    Band = 5,
}

/// Scratch slots of a band group: how many of its bands may run at once.
pub const BAND_SLOTS: usize = 2;

impl Order {
    /// The descriptor encoding of AOT objects (`runner::CallDesc::order`).
    pub fn from_code(code: u64) -> Option<Order> {
        [Order::TaskMajor, Order::DepthFirst, Order::BandGroup, Order::BandStart, Order::Band]
            .into_iter()
            .find(|o| *o as u64 == code)
    }

    /// Whether the call continues the band group before it.
    fn continues_group(self) -> bool {
        matches!(self, Order::BandStart | Order::Band)
    }
}

/// A 64-byte aligned, zero-initialized float buffer.
pub struct Aligned {
    ptr: *mut f32,
    len: usize,
    /// Bytes from the allocation's start to `ptr`.
    skew: usize,
}

// SAFETY: plain owned memory.
unsafe impl Send for Aligned {}
unsafe impl Sync for Aligned {}

/// The buffers' alignment (a cache line, an AVX-512 vector).
const ALIGN: usize = 64;

impl Aligned {
    /// The allocation is requested 16-byte aligned, with room to align it to 64 by hand:
    /// at 16 bytes the system allocator zeroes through `calloc`, which leaves fresh pages
    /// untouched (a blob costs memory only as it is filled); at 64 it writes every byte.
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(1) * 4 + ALIGN, 16).expect("buffer size fits in memory")
    }

    /// Allocates `len` zeroed floats; an error (not an abort) when memory runs out.
    pub fn zeroed(len: usize) -> Result<Aligned> {
        // SAFETY: non-zero size layout.
        let base = unsafe { std::alloc::alloc_zeroed(Self::layout(len)) };
        if base.is_null() {
            bail!("cannot allocate {} MiB", (len * 4) >> 20);
        }
        let skew = (ALIGN - base as usize % ALIGN) % ALIGN;
        // SAFETY: `skew < ALIGN`, and the allocation has `ALIGN` spare bytes.
        let ptr = unsafe { base.add(skew) } as *mut f32;
        Ok(Aligned { ptr, len, skew })
    }

    pub fn from_slice(data: &[f32]) -> Result<Aligned> {
        let mut a = Aligned::zeroed(data.len())?;
        a.as_mut_slice().copy_from_slice(data);
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
        // SAFETY: the allocation `zeroed` made, with the same layout.
        unsafe { std::alloc::dealloc((self.ptr as *mut u8).sub(self.skew), Self::layout(self.len)) }
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
// SAFETY: kernels write disjoint memory per task (the IR's invariant).
unsafe impl Sync for Frame {}

/// Runs `calls` on `n` images; adds each call's wall time in seconds to `timings[i]`
/// when given. `arena` must hold `n * arena_floats` floats, 64-byte
/// aligned; `input` `n * input_floats`, `output` `n * output_floats`.
///
/// # Safety
/// The kernels must be valid functions of the ABI above, generated for these sizes: they
/// access memory only within the regions described by `sizes`.
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
    let timed = |timings: &mut Option<&mut [f64]>, i: usize, first: usize, count: usize| {
        let start = timings.is_some().then(std::time::Instant::now);
        // SAFETY: forwarded from the caller.
        unsafe { run_call(&calls[i], frame, sizes, first, count, pool) };
        if let (Some(t), Some(start)) = (timings.as_deref_mut(), start) {
            t[i] += start.elapsed().as_secs_f64();
        }
    };
    let mut i = 0;
    while i < calls.len() {
        if calls[i].order == Order::TaskMajor {
            timed(&mut timings, i, 0, n);
            i += 1;
            continue;
        }
        // A segment of calls that run image by image, band groups included.
        let end = i + calls[i..].iter().take_while(|c| c.order != Order::TaskMajor).count();
        for image in 0..n {
            let mut k = i;
            while k < end {
                if calls[k].order == Order::BandGroup {
                    let stop = k + 1 + calls[k + 1..end].iter().take_while(|c| c.order.continues_group()).count();
                    // SAFETY: forwarded from the caller.
                    let t = timings.as_deref_mut().map(|t| &mut t[k..stop]);
                    unsafe { run_bands(&calls[k..stop], frame, sizes, image, pool, t) };
                    k = stop;
                } else {
                    timed(&mut timings, k, image, 1);
                    k += 1;
                }
            }
        }
        i = end;
    }
}

/// Runs one image's band group (calls from a [`Order::BandGroup`] call to the group's
/// end): each band's calls in order on one thread, all of their tasks, bands spread over
/// at most [`BAND_SLOTS`] threads as the scratch slots allow. Adds each call's time to
/// `timings` when given.
///
/// # Safety
/// As [`run`]; besides, bands write disjoint memory except their slot's scratch.
unsafe fn run_bands(
    group: &[Call],
    frame: &Frame,
    sizes: Sizes,
    image: usize,
    pool: &Pool,
    timings: Option<&mut [f64]>,
) {
    let starts: Vec<usize> = (0..group.len()).filter(|&k| group[k].order != Order::Band).collect();
    let threads = pool.threads().min(BAND_SLOTS);
    let times: Vec<std::sync::Mutex<f64>> = group.iter().map(|_| std::sync::Mutex::new(0.0)).collect();
    let timing = timings.is_some();
    pool.run(&|p| {
        if p >= threads {
            return;
        }
        for (b, &start) in starts.iter().enumerate().filter(|&(b, _)| b % threads == p) {
            let stop = starts.get(b + 1).copied().unwrap_or(group.len());
            for (k, call) in group.iter().enumerate().take(stop).skip(start) {
                let begin = timing.then(std::time::Instant::now);
                // SAFETY: forwarded from the caller; this band's slot is this thread's.
                unsafe { (call.f)(pointers(call, frame, sizes, image).as_ptr(), 0, call.tasks as i64) };
                if let Some(begin) = begin {
                    *times[k].lock().unwrap() += begin.elapsed().as_secs_f64();
                }
            }
        }
    });
    if let Some(t) = timings {
        for (t, m) in t.iter_mut().zip(&times) {
            *t += *m.lock().unwrap();
        }
    }
}

/// The argument pointers of `call` for `image`.
///
/// # Safety
/// As [`run`].
unsafe fn pointers(call: &Call, frame: &Frame, sizes: Sizes, image: usize) -> [*mut f32; 8] {
    let mut ptrs = [std::ptr::null_mut::<f32>(); 8];
    for (p, a) in ptrs.iter_mut().zip(&call.args) {
        // SAFETY: offsets come from the plan and stay within each region.
        *p = unsafe {
            match *a {
                Arg::Arena(o) => frame.arena.add(image * sizes.arena_floats + o),
                Arg::Weights(o) => frame.weights.add(o),
                Arg::Input => frame.input.add(image * sizes.input_floats),
                Arg::Output => frame.output.add(image * sizes.output_floats),
            }
        };
    }
    ptrs
}

/// Runs `call` on images `first .. first + count`, its tasks split across `pool`.
///
/// # Safety
/// As [`run`].
unsafe fn run_call(call: &Call, frame: &Frame, sizes: Sizes, first: usize, count: usize, pool: &Pool) {
    // SAFETY: forwarded from the caller.
    let args = |image: usize| unsafe { pointers(call, frame, sizes, image) };
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
    pool.split(count * call.tasks, f);
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
