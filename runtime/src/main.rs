//! The idunno-node binary (placeholder until written).
fn main() {}
