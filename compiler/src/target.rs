//! What the code generator targets: the vector width (which is also the channel block of
//! the activation layout) and how many vector registers the register allocator has.

/// A code-generation target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub name: &'static str,
    /// f32 lanes of one vector; activations are blocked by this many channels (NCHW[lanes]c).
    pub lanes: usize,
    /// Vector registers available to a micro-kernel's tile.
    pub vregs: usize,
}

impl Target {
    /// Cranelift on x86-64: 128-bit xmm registers only, 16 of them.
    pub const CRANELIFT_X64: Target = Target { name: "cranelift-x64", lanes: 4, vregs: 16 };
    /// rustc with AVX-512F: 512-bit zmm registers, 32 of them.
    pub const AVX512: Target = Target { name: "avx512", lanes: 16, vregs: 32 };
}
