//! Transparent huge pages for buffers of packed weights.
//!
//! A forward call streams every weight once, ResNet-50's 120 MB mostly from DRAM. With
//! 4 KB pages that stream crosses a page, a TLB miss, every 4 KB, and the hardware
//! prefetchers stop at each page boundary. With 2 MB pages ResNet-50's layer-4 1x1 conv
//! (4 MB of weights, from DRAM) took 0.67-0.75 ms instead of 0.85-0.90 (Xeon, AVX-512,
//! one thread, the kernel alone); the whole model 0.93-0.96x the time there, 0.98-1.01x
//! on an EPYC (Zen 4). Linux on x86-64 only (4 KB pages, 2 MB huge pages), where the
//! kernel offers transparent huge pages to the processes that ask (`madvise` or `always`
//! in `/sys/kernel/mm/transparent_hugepage/enabled`); elsewhere buffers keep the usual
//! pages. All of it is advice: a refusal only costs the speed.

/// The huge page size.
pub const SIZE: usize = 2 << 20;

/// The base page size.
const PAGE: usize = 4096;

/// Buffers of at least this many bytes get huge pages (where [`available`]): the huge
/// pages they fill; the tail past the last stays on base pages (`exec::Aligned`), except
/// where the system backs all memory with huge pages (`always`), where it may cost up to
/// one huge page, at most a quarter of the buffer.
pub const MIN_BYTES: usize = 4 * SIZE;

/// Whether a buffer of `bytes` gets huge pages.
pub fn wanted(bytes: usize) -> bool {
    bytes >= MIN_BYTES && available()
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod sys {
    const MADV_DONTNEED: i32 = 4;
    const MADV_HUGEPAGE: i32 = 14;
    extern "C" {
        fn madvise(addr: *mut core::ffi::c_void, len: usize, advice: i32) -> i32;
    }

    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
        })
    }

    /// # Safety
    /// `[addr, addr + len)` is page-aligned memory of this process whose contents
    /// `advice` may change only as its caller allows.
    unsafe fn advise(addr: usize, len: usize, advice: i32) {
        // SAFETY: forwarded from the caller.
        unsafe { madvise(addr as *mut _, len, advice) };
    }

    pub fn hugepage(addr: usize, len: usize) {
        // SAFETY: changes no contents.
        unsafe { advise(addr, len, MADV_HUGEPAGE) }
    }

    /// # Safety
    /// See [`super::copy_releasing`].
    pub unsafe fn dontneed(addr: usize, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { advise(addr, len, MADV_DONTNEED) }
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod sys {
    pub fn available() -> bool {
        false
    }
    pub fn hugepage(_addr: usize, _len: usize) {}
    pub unsafe fn dontneed(_addr: usize, _len: usize) {}
}

/// Whether this process can have transparent huge pages by asking for them.
pub fn available() -> bool {
    sys::available()
}

/// Asks for huge pages for `[ptr, ptr + bytes)`, memory this process allocated and has
/// not touched yet, whose pages then fault in huge (memory already touched keeps its
/// pages until the kernel's background collapse). `ptr` must be `SIZE`-aligned.
pub fn advise(ptr: *mut u8, bytes: usize) {
    debug_assert_eq!(ptr as usize % SIZE, 0);
    sys::hugepage(ptr as usize, bytes);
}

/// Copies `src` into `dst` (of equal length) a huge page at a time, dropping this
/// process's resident pages of `src` behind the copy (best effort: memory locked with
/// `mlock` stays): an embedded blob copied into huge pages does not count twice in the
/// resident set, not even at its peak. `src` stays mapped; read again, it would come
/// back from its file (whose pages the system's page cache may still hold).
///
/// # Safety
/// `src` must be read-only, file-backed memory (an executable's embedded data), which
/// `MADV_DONTNEED` leaves reading the same; never anonymous memory, which it would zero.
pub unsafe fn copy_releasing(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "copy_releasing: lengths differ");
    let mut released = src.as_ptr() as usize; // the pages below this are released
    for (d, s) in dst.chunks_mut(SIZE / 4).zip(src.chunks(SIZE / 4)) {
        d.copy_from_slice(s);
        // `src` is copied up to the end of this chunk.
        if let Some((first, last)) = whole_pages(released, s.as_ptr_range().end as usize) {
            // SAFETY: whole pages of `src`, already copied; the caller promises `src`
            // read-only and file-backed.
            unsafe { sys::dontneed(first, last - first) };
            released = last;
        }
    }
}

/// The whole pages of `[start, end)`: `(first, last)` with `first..last` page-aligned
/// and inside, or `None` where no page is whole.
fn whole_pages(start: usize, end: usize) -> Option<(usize, usize)> {
    let (first, last) = (start.next_multiple_of(PAGE), end / PAGE * PAGE);
    (first < last).then_some((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More than one copy step of floats, none zero, in this test binary's read-only data.
    const N: usize = SIZE / 4 + 70_000;
    static EMBEDDED: [f32; N] = {
        let mut a = [0.0; N];
        let mut i = 0;
        while i < N {
            a[i] = (i % 1000 + 1) as f32;
            i += 1;
        }
        a
    };

    /// The copy holds the blob; the blob, whose pages were released, still reads the same
    /// (it comes back from the file: releasing anonymous memory would read zeros here).
    #[test]
    fn copy_releasing_copies_and_keeps_the_source_readable() {
        let mut dst = vec![0.0f32; N];
        // SAFETY: EMBEDDED is an immutable static, in the executable's read-only data.
        unsafe { copy_releasing(&mut dst, &EMBEDDED) };
        assert!(dst.iter().zip(EMBEDDED.iter()).all(|(a, b)| a == b));
        let expected = |i: usize| (i % 1000 + 1) as f32;
        assert!(EMBEDDED.iter().enumerate().all(|(i, &v)| v == expected(i)));
    }

    #[test]
    fn whole_pages_lie_inside_the_range() {
        assert_eq!(whole_pages(4097, 8000), None);
        assert_eq!(whole_pages(5000, 9000), None);
        assert_eq!(whole_pages(4096, 8192), Some((4096, 8192)));
        assert_eq!(whole_pages(4095, 12289), Some((4096, 12288)));
        assert_eq!(whole_pages(1, 3 * 4096 - 1), Some((4096, 8192)));
    }
}
