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
pub mod rustgen;
pub mod spec;
pub mod target;
pub mod weights;
