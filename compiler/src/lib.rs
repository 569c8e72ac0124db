//! resnetc: compiles a description of a residual network into specialized native code.
//!
//! Pipeline (see ARCHITECTURE.md): [`spec`] -> [`from_spec`] builds the petgraph
//! [`graph`] -> passes -> plan -> kernel IR -> backends. [`reference`] executes the graph
//! directly and is the oracle for every backend.

#[cfg(feature = "cranelift")]
pub mod aot_build;
pub mod bench;
#[cfg(feature = "cranelift")]
pub mod cranelift;
pub mod emit;
#[cfg(feature = "cranelift")]
pub mod fashion;
pub mod folded;
pub mod from_spec;
pub mod graph;
pub mod inspect;
#[cfg(feature = "cranelift")]
pub mod jit_model;
pub mod kernels;
pub mod kir;
pub mod memory;
pub mod passes;
pub mod plan;
pub mod plan_exec;
pub mod reference;
pub mod rust_build;
pub mod rustgen;
pub mod spec;
pub mod target;
pub mod weights;

/// A C identifier made from a model name (lowercase alphanumerics and `_`, starting with a
/// letter); names symbols, crates and generated types.
pub fn identifier(name: &str) -> String {
    let mut s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s.insert_str(0, "m_");
    }
    s
}
