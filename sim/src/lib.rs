//! idunno-sim: the deterministic cluster simulator (placeholder until written).
