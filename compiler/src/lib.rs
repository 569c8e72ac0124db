//! resnetc: compiles a description of a residual network into specialized native code.
//!
//! Pipeline (see ARCHITECTURE.md): [`spec`] -> [`from_spec`] builds the petgraph
//! [`graph`] -> passes -> plan -> kernel IR -> backends. [`reference`] executes the graph
//! directly and is the oracle for every backend.

pub mod from_spec;
pub mod graph;
pub mod inspect;
pub mod reference;
pub mod spec;
pub mod weights;
