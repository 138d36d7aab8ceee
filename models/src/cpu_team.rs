//! Keeps the rest of the rayon pool awake while one image runs alone on the CPU path.
//!
//! One image's pass over several threads is about 50 short parallel steps (a few hundred
//! microseconds each at 7x7). Between two steps rayon's idle workers go to sleep after a few
//! rounds of spinning, and waking one costs tens of microseconds, on a virtual machine more:
//! enough to make a 2-thread pass barely faster than a 1-thread one. [`with_team`] runs the pass
//! with the pool's other workers spinning on rayon's queue (`rayon::yield_now`) until it ends,
//! so each step's split is taken at once, as onnxruntime's spinning thread pool does.
//!
//! Owns: the helper jobs and their stop flag. Must never: change what the pass computes, or be
//! used while other work of the same pool waits (the helpers would run it inside the pass and
//! delay its end; the caller uses it only for a pass that has the pool to itself).

use std::sync::atomic::{AtomicBool, Ordering};

/// `pass()` on this thread while the other `rayon::current_num_threads() - 1` workers of the
/// current pool spin on its queue, running the jobs the pass splits off; returns when the pass
/// and every helper are done. On one thread, just `pass()`.
pub(crate) fn with_team<T: Send>(pass: impl FnOnce() -> T + Send) -> T {
    let helpers = rayon::current_num_threads().saturating_sub(1);
    if helpers == 0 {
        return pass();
    }
    let done = AtomicBool::new(false);
    rayon::in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| {
                while !done.load(Ordering::Acquire) {
                    match rayon::yield_now() {
                        Some(rayon::Yield::Executed) => {}
                        Some(rayon::Yield::Idle) => std::hint::spin_loop(),
                        // Not on a pool thread: nothing to help with.
                        None => break,
                    }
                }
            });
        }
        let out = pass();
        done.store(true, Ordering::Release);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn a_pass_with_a_team_gives_the_same_result_and_ends() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let sum = pool.install(|| {
                with_team(|| {
                    (0..50)
                        .map(|step| {
                            (0..10_000u64)
                                .into_par_iter()
                                .map(|i| i * step)
                                .sum::<u64>()
                        })
                        .sum::<u64>()
                })
            });
            assert_eq!(sum, 49_995_000 * (0..50).sum::<u64>());
        }
        // Outside any pool (the global one runs the helpers) it still ends.
        assert_eq!(with_team(|| 7), 7);
    }
}
