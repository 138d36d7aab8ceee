//! idunno-tests (placeholder until written).
