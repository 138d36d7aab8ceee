//! Makes the Raft machine's persist batches durable without blocking the node's event loop.
//!
//! Owns: the voter's durable [`Store`] once its driver runs, and where batches are written:
//! on a dedicated storage thread ([`PersistMode::Background`], the default: the fsync no longer
//! stalls membership, transfers and the control server that share the node's single-threaded
//! runtime, and batches that queue up behind a slow fsync are written with one fsync, a group
//! commit) or inline on the caller ([`PersistMode::Inline`]: the batch is durable when
//! [`Persister::submit`] returns, for simulations that must not depend on thread timing).
//! Completions come back in batch order as cumulative acknowledgements.
//! Must never: acknowledge a batch before it and every batch before it are fsynced, reorder
//! batches, keep writing after a storage error, or outlive its driver (dropping the persister
//! waits for the storage thread, so a restarted driver never shares the files with it).

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use idunno_core::consensus::PersistBatch;
use tokio::sync::mpsc;
use tracing::{debug, error};

use crate::storage::{StorageError, Store};

/// Most batches written with one fsync.
pub const GROUP_BATCHES_MAX: usize = 256;

/// Where persist batches are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PersistMode {
    /// On a dedicated storage thread; the event loop goes on while the disk works.
    #[default]
    Background,
    /// On the caller, before `submit` returns.
    Inline,
}

/// What the storage thread reports: the last batch made durable, or the error that stopped it.
pub type Completion = Result<u64, StorageError>;

/// Counters of the persistence path (this process's lifetime).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistStats {
    /// Batches handed in.
    pub batches: u64,
    /// fsyncs of the log made for them (fewer than `batches` when group commit merged some).
    pub groups: u64,
}

enum Backend {
    Inline(Store),
    Background {
        jobs: Option<std_mpsc::Sender<PersistBatch>>,
        thread: Option<JoinHandle<()>>,
    },
}

/// The voter's store behind a queue of persist batches.
pub struct Persister {
    backend: Backend,
    completions: Option<mpsc::UnboundedReceiver<Completion>>,
    groups: std::sync::Arc<std::sync::atomic::AtomicU64>,
    batches: u64,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.backend {
            Backend::Inline(_) => PersistMode::Inline,
            Backend::Background { .. } => PersistMode::Background,
        };
        f.debug_struct("Persister")
            .field("mode", &mode)
            .field("batches", &self.batches)
            .finish_non_exhaustive()
    }
}

impl Persister {
    /// Takes over `store`; in background mode starts the storage thread.
    pub fn start(store: Store, mode: PersistMode) -> std::io::Result<Self> {
        let groups = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut completions = None;
        let backend = match mode {
            PersistMode::Inline => Backend::Inline(store),
            PersistMode::Background => {
                let (done_tx, done_rx) = mpsc::unbounded_channel();
                completions = Some(done_rx);
                let (jobs_tx, jobs_rx) = std_mpsc::channel();
                let span = tracing::Span::current();
                let counter = groups.clone();
                let thread = std::thread::Builder::new()
                    .name("raft-store".into())
                    .spawn(move || {
                        let _entered = span.enter();
                        write_loop(store, &jobs_rx, &done_tx, &counter);
                    })?;
                Backend::Background {
                    jobs: Some(jobs_tx),
                    thread: Some(thread),
                }
            }
        };
        Ok(Persister {
            backend,
            completions,
            groups,
            batches: 0,
        })
    }

    /// Hands `batch` to the disk. Inline: returns `Ok(Some(batch number))` once it is durable.
    /// Background: returns `Ok(None)`; its completion arrives on [`Self::take_completions`]'s
    /// channel. An error means the store failed and the voter must stop.
    pub fn submit(&mut self, batch: PersistBatch) -> Result<Option<u64>, StorageError> {
        self.batches += 1;
        match &mut self.backend {
            Backend::Inline(store) => {
                store.apply_persist(&batch)?;
                self.groups
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(Some(batch.batch))
            }
            Backend::Background { jobs, .. } => {
                let sent = jobs.as_ref().is_some_and(|jobs| jobs.send(batch).is_ok());
                if sent {
                    Ok(None)
                } else {
                    // The thread stopped after an error it has already reported.
                    Err(StorageError::Failed)
                }
            }
        }
    }

    /// The channel of background completions (taken once, by the driver's event loop; `None`
    /// inline, where `submit` answers). It closes if the storage thread stops.
    pub fn take_completions(&mut self) -> Option<mpsc::UnboundedReceiver<Completion>> {
        self.completions.take()
    }

    /// The counters so far.
    pub fn stats(&self) -> PersistStats {
        PersistStats {
            batches: self.batches,
            groups: self.groups.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        if let Backend::Background { jobs, thread } = &mut self.backend {
            // Closing the queue lets the thread finish what it holds and stop; waiting for it
            // keeps a restarted driver in this process from opening files it still writes.
            drop(jobs.take());
            if let Some(thread) = thread.take()
                && thread.join().is_err()
            {
                error!("the raft storage thread panicked");
            }
        }
    }
}

/// The storage thread: takes every batch queued so far (up to [`GROUP_BATCHES_MAX`]), writes
/// them with one fsync, and reports the last one. Stops when the queue closes or on an error.
fn write_loop(
    mut store: Store,
    jobs: &std_mpsc::Receiver<PersistBatch>,
    done: &mpsc::UnboundedSender<Completion>,
    groups: &std::sync::atomic::AtomicU64,
) {
    let mut group = Vec::new();
    while let Ok(first) = jobs.recv() {
        group.clear();
        group.push(first);
        while group.len() < GROUP_BATCHES_MAX {
            match jobs.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        debug_assert!(group.windows(2).all(|w| w[0].batch < w[1].batch));
        let last = group.last().map_or(0, |b| b.batch);
        match store.apply_persist_group(&group) {
            Ok(()) => {
                groups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if group.len() > 1 {
                    debug!(batches = group.len(), last, "group commit");
                }
                if done.send(Ok(last)).is_err() {
                    return;
                }
            }
            Err(e) => {
                error!(error = %e, "raft storage failed");
                let _ = done.send(Err(e));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Options;
    use crate::storage::tests::TempDir;
    use idunno_core::consensus::{Entry, HardState, Payload, VoterId};

    fn batch(n: u64, first_index: u64, count: u64) -> PersistBatch {
        PersistBatch {
            batch: n,
            hard_state: HardState {
                term: 1,
                vote: Some(VoterId(1)),
            },
            snapshot: None,
            first_index,
            entries: (first_index..first_index + count)
                .map(|index| Entry {
                    index,
                    term: 1,
                    payload: Payload::Noop,
                })
                .collect(),
        }
    }

    fn recover(dir: &std::path::Path) -> u64 {
        let (store, persisted) = Store::open(dir, Options::default()).expect("reopen");
        drop(store);
        persisted.entries.last().map_or(0, |e| e.index)
    }

    #[tokio::test]
    async fn background_batches_are_durable_in_order_when_acknowledged() {
        let dir = TempDir::new("persister");
        let (store, _) = Store::open(&dir.0, Options::default()).expect("open");
        let mut persister = Persister::start(store, PersistMode::Background).expect("start");
        let mut done = persister.take_completions().expect("channel");
        let mut next_index = 1;
        for n in 1..=50 {
            assert_eq!(
                persister.submit(batch(n, next_index, 3)).expect("queued"),
                None
            );
            next_index += 3;
        }
        let mut acked = 0;
        while acked < 50 {
            let last = done.recv().await.expect("open").expect("written");
            assert!(
                last > acked,
                "acknowledgements are cumulative and increasing"
            );
            acked = last;
        }
        let stats = persister.stats();
        assert_eq!(stats.batches, 50);
        assert!(stats.groups >= 1 && stats.groups <= 50);
        drop(persister);
        assert_eq!(recover(&dir.0), 150);
    }

    #[test]
    fn inline_batches_are_durable_when_submit_returns() {
        let dir = TempDir::new("persister");
        let (store, _) = Store::open(&dir.0, Options::default()).expect("open");
        let mut persister = Persister::start(store, PersistMode::Inline).expect("start");
        assert_eq!(persister.submit(batch(1, 1, 2)).expect("written"), Some(1));
        assert_eq!(persister.submit(batch(2, 3, 2)).expect("written"), Some(2));
        assert_eq!(persister.stats().groups, 2);
        drop(persister);
        assert_eq!(recover(&dir.0), 4);
    }

    #[tokio::test]
    async fn a_storage_error_is_reported_and_stops_the_writer() {
        let dir = TempDir::new("persister");
        let (store, _) = Store::open(&dir.0, Options::default()).expect("open");
        let mut persister = Persister::start(store, PersistMode::Background).expect("start");
        let mut done = persister.take_completions().expect("channel");
        // A batch whose entries do not follow the log is refused by the store.
        persister.submit(batch(1, 7, 1)).expect("queued");
        assert!(matches!(done.recv().await, Some(Err(_))));
        assert!(done.recv().await.is_none(), "the thread stopped");
        assert!(persister.submit(batch(2, 1, 1)).is_err());
    }
}
