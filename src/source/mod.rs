//! Where configs come from. Each source is a thread that reads, parses and checks at its edge and
//! sends the result to the state thread; the state thread never parses.

pub mod configmap;
pub mod file;
