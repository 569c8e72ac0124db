//! Transparent huge pages for the large buffers (packed weights, arenas).
//!
//! A forward call streams every weight once, ResNet-50's 100 MB mostly from DRAM. With
//! 4 KB pages that stream crosses a page, a TLB miss, every 4 KB, and the hardware
//! prefetchers stop at each page boundary. With 2 MB pages ResNet-50's layer-4 1x1 conv
//! (4 MB of weights, from DRAM) took 0.67-0.75 ms instead of 0.85-0.90 (Xeon, AVX-512,
//! one thread, the kernel alone). Linux only, where the kernel offers transparent huge
//! pages to the processes that ask (`madvise` or `always` in
//! `/sys/kernel/mm/transparent_hugepage/enabled`); elsewhere buffers keep the usual pages.

/// The huge page size on the platforms where this module asks for them.
pub const SIZE: usize = 2 << 20;

/// Buffers of at least this many bytes get huge pages (where [`available`]): the unused
/// tail of their last huge page then costs at most a quarter of the buffer.
pub const MIN_BYTES: usize = 4 * SIZE;

/// Whether a buffer of `bytes` gets huge pages.
pub fn wanted(bytes: usize) -> bool {
    bytes >= MIN_BYTES && available()
}

#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod sys {
    pub const MADV_DONTNEED: i32 = 4;
    pub const MADV_HUGEPAGE: i32 = 14;
    extern "C" {
        pub fn madvise(addr: *mut core::ffi::c_void, len: usize, advice: i32) -> i32;
    }
}

/// Whether this process can have transparent huge pages by asking for them.
pub fn available() -> bool {
    #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
        })
    }
    #[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
    {
        false
    }
}

/// Asks for huge pages for `[ptr, ptr + bytes)`, memory this process allocated and has
/// not touched yet (its pages are then faulted in huge). `ptr` must be `SIZE`-aligned.
/// Advice only: a refusal leaves the usual pages.
pub fn advise(ptr: *mut u8, bytes: usize) {
    debug_assert_eq!(ptr as usize % SIZE, 0);
    #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
    // SAFETY: advice on memory the caller owns; it changes no contents.
    unsafe {
        sys::madvise(ptr.cast(), bytes, sys::MADV_HUGEPAGE);
    }
    #[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
    let _ = (ptr, bytes);
}

/// Copies `src` into `dst` (of equal length) a huge page at a time, dropping this
/// process's resident pages of `src` behind the copy: an embedded blob copied into huge
/// pages does not count twice in the resident set, not even at its peak. `src` stays
/// mapped; read again, it would come back from its file.
///
/// # Safety
/// `src` must be read-only, file-backed memory (an executable's embedded data), which
/// `MADV_DONTNEED` leaves reading the same; never anonymous memory, which it would zero.
pub unsafe fn copy_releasing(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "copy_releasing: lengths differ");
    let step = SIZE / 4;
    let mut released = src.as_ptr() as usize; // pages below this are released
    for (i, (d, s)) in dst.chunks_mut(step).zip(src.chunks(step)).enumerate() {
        d.copy_from_slice(s);
        let copied_end = src.as_ptr() as usize + 4 * (i * step + s.len());
        released = release_pages(released, copied_end);
    }
}

/// Releases the whole pages of `[start, end)` (see [`copy_releasing`]) and returns the end
/// of the last page released, or `start` where none was whole.
fn release_pages(start: usize, end: usize) -> usize {
    const PAGE: usize = 4096;
    let (first, last) = (start.next_multiple_of(PAGE), end / PAGE * PAGE);
    if last <= first {
        return start;
    }
    #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
    // SAFETY: whole pages of the source `copy_releasing`'s caller promises read-only and
    // file-backed.
    unsafe {
        sys::madvise(first as *mut _, last - first, sys::MADV_DONTNEED);
    }
    last
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
    fn release_pages_covers_whole_pages_only() {
        // Nothing whole inside: nothing released, the start stays.
        assert_eq!(release_pages(4097, 8000), 4097);
        assert_eq!(release_pages(5000, 9000), 5000);
    }
}
