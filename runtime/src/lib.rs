//! idunno-runtime (placeholder until written).
