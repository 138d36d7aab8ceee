//! idunno-models: the Burn model zoo that workers run.
//!
//! Owns: model definitions, weight loading, pre- and post-processing, training loops.
//! Must never: depend on the cluster crates; a worker drives models through this crate's
//! interface only. The models themselves arrive with issue 5; this crate holds their place in
//! the workspace so the dependency direction (runtime -> models) is fixed from the start.
