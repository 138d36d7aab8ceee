//! Recycled chunk buffers for one transfer, so a steady stream allocates (and zero-fills) a
//! handful of buffers instead of one per chunk.
//!
//! Owns: the buffers of one transfer, handed from its producer to its consumers and back.
//! Must never: hold more buffers than the transfer ever had in flight at once (a buffer is
//! only made when none came back, so the pool is bounded by the transfer's queues), or block.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

/// The producer's end: takes a recycled buffer, or makes one.
#[derive(Debug)]
pub(crate) struct ChunkPool {
    /// Behind a (never contended) lock only so that a transfer future holding `&ChunkPool`
    /// across an await stays `Send`.
    returned: Mutex<Receiver<Vec<u8>>>,
    recycler: Sender<Vec<u8>>,
}

/// A consumer's end: gives buffers back once done with them.
#[derive(Debug, Clone)]
pub(crate) struct Recycler(Sender<Vec<u8>>);

impl ChunkPool {
    pub(crate) fn new() -> Self {
        let (recycler, returned) = channel();
        ChunkPool {
            returned: Mutex::new(returned),
            recycler,
        }
    }

    /// A buffer of exactly `len` bytes (contents unspecified: the caller overwrites them).
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let mut buffer = self
            .returned
            .lock()
            .ok()
            .and_then(|returned| returned.try_recv().ok())
            .unwrap_or_default();
        // A recycled buffer of the usual length is not zero-filled again.
        buffer.resize(len, 0);
        debug_assert_eq!(buffer.len(), len);
        buffer
    }

    /// The end consumers give buffers back through.
    pub(crate) fn recycler(&self) -> Recycler {
        Recycler(self.recycler.clone())
    }
}

impl Recycler {
    /// Gives `buffer` back (dropped if the producer is gone).
    pub(crate) fn give(&self, buffer: Vec<u8>) {
        let _ = self.0.send(buffer);
    }

    /// Gives a shared chunk back if this was its last holder.
    pub(crate) fn give_shared(&self, chunk: Arc<Vec<u8>>) {
        if let Some(buffer) = Arc::into_inner(chunk) {
            self.give(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_reused() {
        let pool = ChunkPool::new();
        let recycler = pool.recycler();
        let first = pool.take(100);
        let pointer = first.as_ptr();
        let shared = Arc::new(first);
        let other = Arc::clone(&shared);
        recycler.give_shared(shared);
        recycler.give_shared(other);
        let again = pool.take(100);
        assert_eq!(again.as_ptr(), pointer);
        assert_eq!(pool.take(7).len(), 7);
    }
}
