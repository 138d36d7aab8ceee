//! The executor of the registry's real models (digits-cnn, efficientnet-lite0), and of the
//! no-op models (`noop`, `noop:MS`).
//!
//! Owns: [`ModelExecutor`]. Per batch: the model's weights come from the file-system file
//! `models/<MODEL>` (written by `train`), cached per (model, version, hash) so a worker loads a
//! model once and picks up a retrained one; the inputs come from the file system by name,
//! [`FETCH_PARALLEL`] at a time; the model runs on the calling (blocking) thread through
//! `idunno_models::predict_batch`; the results go to ONE file per batch,
//! `results/job-J/lease-L.jsonl` (format in [`super::results`]), and each input's outcome is
//! `Result(<that file's name>)` or `Failed(<short error>)`. One read looks up the weights and
//! every input's newest version (`DfsRequest::Newest`). The fetch (inputs and weights) is
//! the [`Executor::prepare`] step, the model's run the [`Prepared::run`] step, the result file
//! the [`Ran::store`] step: the worker times each and logs them.
//! Failure policy: a bad input (missing, too large, undecodable) fails that input only; a model
//! that is not trained yet or whose weights do not load fails every input of the batch with a
//! clear error; a cluster that does not answer (weights, inputs or the result file) makes the
//! batch report nothing (`ExecError`), so its lease lapses and it runs again.
//! Must never: hold more than [`INPUT_BYTES_MAX`] bytes per input or [`WEIGHTS_BYTES_MAX`] of
//! weights, run an unknown model, report a result whose file is not committed, or panic on
//! bytes from the file system.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idunno_core::dfs::{ContentHash, DfsError, VersionInfo};
use idunno_core::scheduler::{
    Completion, ELAPSED_MICROS_MAX, ERROR_BYTES_MAX, Grant, InputOutcome,
};
use idunno_models::{Device, Model, registry};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::noop::{NoopExecutor, is_noop, truncated, unknown_model};
use super::results::{self, ResultLine};
use super::{ExecError, Executor, Prepared, Ran};
use crate::blobs::client::GetError;
use crate::dfs::client::{DfsClient, DfsClientError};
use crate::leader_client::LeaderClient;

/// Largest weights file a worker loads.
pub const WEIGHTS_BYTES_MAX: u64 = 256 << 20;
/// Largest input a worker fetches (the models' own cap).
pub const INPUT_BYTES_MAX: u64 = idunno_models::image_input::INPUT_BYTES_MAX as u64;
/// Inputs fetched at once per batch.
pub const FETCH_PARALLEL: usize = 8;
/// The directory of trained weights in the file system.
pub const MODELS_DIR: &str = "models";

/// The file-system name of `model`'s weights.
pub fn weights_file_name(model: &str) -> String {
    format!("{MODELS_DIR}/{model}")
}

/// The error every input of a batch gets when its model has no weights in the file system.
pub fn not_trained(model: &str) -> String {
    format!("model {model} is not trained yet: run `train {model}` first")
}

/// A fetched batch: the weights' newest version (or why the model cannot run) and each
/// input's bytes (or its own error); `Err` when the cluster did not answer.
type FetchedBatch = Result<(Result<VersionInfo, String>, Vec<Result<Vec<u8>, String>>), ExecError>;

/// A loaded model and which weights file it came from.
struct Loaded {
    version: u64,
    hash: ContentHash,
    model: Mutex<Box<dyn Model>>,
}

/// What a batch's steps share with their executor: the node the file-system requests go to,
/// the runtime that I/O runs on, and the scratch directory (removed when the last holder drops
/// it: a batch's store step may outlive its executor).
struct Io {
    /// The node whose control port the file-system requests go to.
    node: SocketAddr,
    timeout: Duration,
    /// The leader's file-system requests of every batch go over its kept connections.
    leader: Arc<LeaderClient>,
    handle: Handle,
    scratch: PathBuf,
    files: AtomicU64,
}

/// Runs the registry's models (and `noop`) on batches, reading weights and inputs from the file
/// system and writing one result file per batch.
pub struct ModelExecutor {
    io: Arc<Io>,
    device: Device,
    cache: Mutex<BTreeMap<String, Arc<Loaded>>>,
    /// Held while weights load, so two lanes never load the same model twice at once.
    loading: Mutex<()>,
}

impl std::fmt::Debug for ModelExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelExecutor")
            .field("node", &self.io.node)
            .field("scratch", &self.io.scratch)
            .finish_non_exhaustive()
    }
}

/// Per-batch step timings, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchTimes {
    /// Looking up (and, on a cache miss, fetching and loading) the weights.
    pub load_ms: f64,
    /// Fetching the inputs.
    pub fetch_ms: f64,
    /// Decoding and running the model.
    pub run_ms: f64,
    /// Writing and committing the result file.
    pub store_ms: f64,
}

fn ms(since: Instant) -> f64 {
    ms_of(since.elapsed())
}

fn ms_of(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn short(error: &str) -> String {
    truncated(error, ERROR_BYTES_MAX)
}

/// Every input of `grant` failed with `reason`.
fn all_failed(grant: &Grant, reason: &str) -> Vec<Completion> {
    grant
        .inputs
        .iter()
        .map(|(input, _)| Completion {
            input: *input,
            outcome: InputOutcome::Failed(short(reason)),
            elapsed_micros: 0,
        })
        .collect()
}

impl ModelExecutor {
    /// An executor asking `node` (this node's own address) within `timeout` per request, on the
    /// runtime of `handle`, keeping fetched files under `scratch` (created; emptied first).
    pub fn new(
        node: SocketAddr,
        timeout: Duration,
        handle: Handle,
        scratch: PathBuf,
    ) -> std::io::Result<Self> {
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)?;
        Ok(ModelExecutor {
            io: Arc::new(Io {
                node,
                timeout,
                leader: Arc::new(LeaderClient::new(node, timeout)),
                handle,
                scratch,
                files: AtomicU64::new(0),
            }),
            device: idunno_models::default_device(),
            cache: Mutex::new(BTreeMap::new()),
            loading: Mutex::new(()),
        })
    }

    fn cached(&self, model: &str, version: u64, hash: &ContentHash) -> Option<Arc<Loaded>> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(model)
            .filter(|l| l.version == version && &l.hash == hash)
            .cloned()
    }

    /// The model loaded with the weights of `version` (from [`Self::fetch_batch`]), from
    /// the cache or fetched: `Ok(Err(reason))` fails the batch's inputs, `Err` makes the batch
    /// run again later.
    fn model(
        &self,
        name: &str,
        version: VersionInfo,
    ) -> Result<Result<Arc<Loaded>, String>, ExecError> {
        let file = weights_file_name(name);
        let dfs = self.io.dfs();
        if let Some(loaded) = self.cached(name, version.version, &version.hash) {
            return Ok(Ok(loaded));
        }
        let _guard = self
            .loading
            .lock()
            .map_err(|_| ExecError("poisoned".into()))?;
        if let Some(loaded) = self.cached(name, version.version, &version.hash) {
            return Ok(Ok(loaded));
        }
        let (number, hash) = (version.version, version.hash);
        let path = self.io.scratch_file();
        let fetched = {
            let path = path.clone();
            self.io.on_runtime(async move {
                dfs.get_version(version, &path, WEIGHTS_BYTES_MAX).await
            })?
        };
        let bytes = match fetched {
            Ok(_) => std::fs::read(&path),
            Err(e @ DfsClientError::TooLarge { .. }) => return Ok(Err(e.to_string())),
            Err(e) => return Err(ExecError(format!("fetching {file}: {e}"))),
        };
        let _ = std::fs::remove_file(&path);
        let bytes = bytes.map_err(|e| ExecError(format!("reading fetched {file}: {e}")))?;
        let started = Instant::now();
        let model = match registry::from_weights(name, &bytes, &self.device) {
            Ok(model) => model,
            Err(e) => return Ok(Err(format!("cannot load {file} version {number}: {e}"))),
        };
        info!(
            model = name,
            version = number,
            bytes = bytes.len(),
            load_ms = ms(started),
            "model loaded"
        );
        let loaded = Arc::new(Loaded {
            version: number,
            hash,
            model: Mutex::new(model),
        });
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(name.to_owned(), Arc::clone(&loaded));
        }
        Ok(Ok(loaded))
    }

    /// Looks up the batch's weights file and every input in one read (a chunk of
    /// [`idunno_core::dfs::request::NEWEST_NAMES_MAX`] names per round trip), then fetches
    /// every input's bytes (or its own error), [`FETCH_PARALLEL`] at a time. The weights'
    /// newest version, or why the batch's model cannot run; `Err` when the cluster did not
    /// answer (the batch runs again later).
    fn fetch_batch(&self, grant: &Grant) -> impl Future<Output = FetchedBatch> + Send + 'static {
        let dfs = Arc::new(self.io.dfs());
        let gate = Arc::new(Semaphore::new(FETCH_PARALLEL));
        let model = grant.model.clone();
        let mut names = Vec::with_capacity(grant.inputs.len() + 1);
        names.push(weights_file_name(&model));
        names.extend(grant.inputs.iter().map(|(_, name)| name.clone()));
        let paths: Vec<PathBuf> = grant
            .inputs
            .iter()
            .map(|_| self.io.scratch_file())
            .collect();
        async move {
            let newest = dfs
                .newest(&names)
                .await
                .map_err(|e| ExecError(format!("looking up the batch's files: {e}")))?;
            if newest.len() != names.len() {
                return Err(ExecError("the lookup answered the wrong count".into()));
            }
            let mut newest = newest.into_iter();
            let weights = match newest.next() {
                Some(Ok(version)) => Ok(version),
                Some(Err(DfsError::NotFound { .. })) | None => Err(not_trained(&model)),
                Some(Err(e)) => Err(format!("looking up {}: {e}", weights_file_name(&model))),
            };
            let count = paths.len();
            let mut set = JoinSet::new();
            for (slot, (version, path)) in newest.zip(paths).enumerate() {
                let dfs = Arc::clone(&dfs);
                let gate = Arc::clone(&gate);
                set.spawn(async move {
                    let version = match version {
                        Ok(version) => version,
                        Err(e) => return (slot, Err(Ok(DfsClientError::Refused(e).to_string()))),
                    };
                    let name = version.name.clone();
                    let _permit = gate.acquire_owned().await;
                    let got = dfs.get_version(version, &path, INPUT_BYTES_MAX).await;
                    let bytes = match got {
                        Ok(_) => tokio::fs::read(&path).await.map_err(|e| {
                            Ok::<String, ExecError>(format!("reading fetched {name}: {e}"))
                        }),
                        // This node's own trouble (no answer, its scratch disk): the batch runs
                        // again later; only the input's own fault fails the input.
                        Err(
                            e @ (DfsClientError::Control(_)
                            | DfsClientError::Local { .. }
                            | DfsClientError::Get(GetError::Destination { .. })),
                        ) => Err(Err(ExecError(format!("fetching {name}: {e}")))),
                        Err(e) => Err(Ok(e.to_string())),
                    };
                    let _ = tokio::fs::remove_file(&path).await;
                    (slot, bytes)
                });
            }
            let mut out: Vec<Result<Vec<u8>, String>> = vec![Err("not fetched".to_owned()); count];
            while let Some(done) = set.join_next().await {
                let (slot, bytes) = done.map_err(|e| ExecError(format!("fetch task: {e}")))?;
                let Some(entry) = out.get_mut(slot) else {
                    continue;
                };
                *entry = match bytes {
                    Ok(bytes) => Ok(bytes),
                    Err(Ok(per_input)) => Err(per_input),
                    Err(Err(transient)) => return Err(transient),
                };
            }
            Ok((weights, out))
        }
    }

    /// Fetches a batch of a registry model (its inputs and weights): what is left to run it,
    /// or the completions when the model cannot run.
    fn prepare_model(&self, grant: &Grant) -> Result<Prepared, ExecError> {
        let mut times = BatchTimes::default();
        let started = Instant::now();
        let fetch = self.fetch_batch(grant);
        let (version, fetched) = self.io.on_runtime(fetch)??;
        times.fetch_ms = ms(started);
        let step = Instant::now();
        // A weights file that cannot load fails the batch's inputs; trouble fetching it (a
        // transient `ExecError`) makes the batch run again later.
        let loaded = match version {
            Ok(v) => self.model(&grant.model, v)?,
            Err(reason) => Err(reason),
        };
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(reason) => {
                warn!(model = %grant.model, lease = %grant.lease, %reason, "the batch's model cannot run");
                return Ok(Prepared::done(all_failed(grant, &reason)));
            }
        };
        times.load_ms = ms(step);
        debug!(
            lease = %grant.lease, fetch_ms = times.fetch_ms, load_ms = times.load_ms,
            "batch fetched"
        );
        let (io, grant) = (Arc::clone(&self.io), grant.clone());
        let prepared_in = started.elapsed();
        Ok(Prepared::new(move || {
            let step = Instant::now();
            let ran = predict(&loaded, &grant.model, &fetched)?;
            let ran_in = step.elapsed();
            Ok(Ran::new(move || {
                let step = Instant::now();
                let completions = io.finish(&grant, fetched, ran, prepared_in + ran_in)?;
                let times = BatchTimes {
                    run_ms: ms_of(ran_in),
                    store_ms: ms(step),
                    ..times
                };
                debug!(
                    job = %grant.job, lease = %grant.lease, model = %grant.model,
                    inputs = grant.inputs.len(), load_ms = times.load_ms, fetch_ms = times.fetch_ms,
                    run_ms = times.run_ms, store_ms = times.store_ms, "batch stored"
                );
                Ok(completions)
            }))
        }))
    }
}

/// Runs `loaded` on the inputs that were fetched: one result per fetched input, in order.
fn predict(
    loaded: &Loaded,
    model_name: &str,
    fetched: &[Result<Vec<u8>, String>],
) -> Result<Vec<Result<idunno_models::Prediction, String>>, ExecError> {
    let good: Vec<&[u8]> = fetched
        .iter()
        .filter_map(|f| f.as_ref().ok().map(Vec::as_slice))
        .collect();
    let model = loaded
        .model
        .lock()
        .map_err(|_| ExecError("the model's lock is poisoned".into()))?;
    Ok(match idunno_models::predict_batch(model.as_ref(), &good) {
        Ok(p) => p
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect(),
        Err(e) => vec![Err(format!("{model_name} failed on the batch: {e}")); good.len()],
    })
}

impl Io {
    /// A file-system client on the shared leader connections.
    fn dfs(&self) -> DfsClient {
        DfsClient::with_leader(Arc::clone(&self.leader))
    }

    /// Runs `io` on the node's runtime and waits for it on this (blocking) thread. The I/O
    /// runs on the runtime's own thread, not here: inside a turmoil simulation only that thread
    /// reaches the simulated network.
    fn on_runtime<T: Send + 'static>(
        &self,
        io: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, ExecError> {
        let (tx, rx) = std::sync::mpsc::channel();
        drop(self.handle.spawn(async move {
            let _ = tx.send(io.await);
        }));
        rx.recv()
            .map_err(|_| ExecError("the node's runtime stopped".into()))
    }

    /// A fresh scratch path.
    fn scratch_file(&self) -> PathBuf {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        self.scratch.join(format!("f{n}"))
    }

    /// Writes `lines` as the result file `name`; `Err` when it was not committed.
    fn store(&self, name: &str, lines: &[ResultLine]) -> Result<(), ExecError> {
        let path = self.scratch_file();
        std::fs::write(&path, results::encode(lines))
            .map_err(|e| ExecError(format!("writing {}: {e}", path.display())))?;
        let mut dfs = self.dfs();
        let put = {
            let (path, name) = (path.clone(), name.to_owned());
            self.on_runtime(async move { dfs.put(&path, &name).await.map(|_| ()) })?
        };
        let _ = std::fs::remove_file(&path);
        put.map_err(|e| ExecError(format!("storing {name}: {e}")))
    }

    /// Builds the lines from the fetch outcomes and the model's per-input results (one per
    /// fetched input, in order), stores the file and makes the completions; `worked` (the
    /// fetch and the run) plus the store, split over the inputs, is each one's time.
    fn finish(
        &self,
        grant: &Grant,
        fetched: Vec<Result<Vec<u8>, String>>,
        ran: Vec<Result<idunno_models::Prediction, String>>,
        worked: Duration,
    ) -> Result<Vec<Completion>, ExecError> {
        let started = Instant::now();
        let file = results::result_file_name(grant.job, grant.lease);
        let mut ran = ran.into_iter();
        let mut lines = Vec::with_capacity(grant.inputs.len());
        for ((index, name), fetched) in grant.inputs.iter().zip(fetched) {
            let outcome = match fetched {
                Ok(_) => ran
                    .next()
                    .unwrap_or_else(|| Err("the model returned too few results".to_owned())),
                Err(e) => Err(e),
            };
            lines.push(match outcome {
                Ok(p) => ResultLine::prediction(name, *index, &p),
                Err(e) => ResultLine::failed(name, *index, &e),
            });
        }
        self.store(&file, &lines)?;
        let per_input = u64::try_from((worked + started.elapsed()).as_micros())
            .unwrap_or(u64::MAX)
            .checked_div(grant.inputs.len() as u64)
            .unwrap_or(0)
            .min(ELAPSED_MICROS_MAX);
        let completions: Vec<Completion> = lines
            .iter()
            .map(|line| Completion {
                input: line.index,
                outcome: match &line.error {
                    None => InputOutcome::Result(file.clone()),
                    Some(e) => InputOutcome::Failed(short(e)),
                },
                elapsed_micros: per_input,
            })
            .collect();
        debug_assert_eq!(completions.len(), grant.inputs.len());
        Ok(completions)
    }
}

impl Executor for ModelExecutor {
    fn prepare(&self, grant: &Grant) -> Result<Prepared, ExecError> {
        if is_noop(&grant.model) {
            return NoopExecutor.prepare(grant);
        }
        if registry::info(&grant.model).is_err() {
            return Ok(Prepared::done(
                grant
                    .inputs
                    .iter()
                    .map(|(input, _)| Completion {
                        input: *input,
                        outcome: unknown_model(&grant.model),
                        elapsed_micros: 0,
                    })
                    .collect(),
            ));
        }
        self.prepare_model(grant)
    }

    fn discard(&self, grant: &Grant, results: &[Completion]) {
        let files: BTreeSet<String> = results
            .iter()
            .filter_map(|c| match &c.outcome {
                InputOutcome::Result(name) if name.starts_with(results::RESULTS_DIR) => {
                    Some(name.clone())
                }
                _ => None,
            })
            .collect();
        if files.is_empty() || is_noop(&grant.model) {
            return;
        }
        let (node, timeout) = (self.io.node, self.io.timeout);
        self.io.handle.spawn(async move {
            let mut dfs = DfsClient::new(node, timeout);
            for file in files {
                match dfs.delete(&file).await {
                    Ok(_) => debug!(%file, "deleted the result file of a refused report"),
                    Err(e) => {
                        debug!(%file, error = %e, "cannot delete an unreferenced result file")
                    }
                }
            }
        });
    }
}

/// A scratch directory for an executor of the node bound at `addr`: its own for each call in
/// this process (a node that restarts in the process, or simulated nodes sharing an address in
/// parallel tests, never share one; the executor removes it when dropped).
pub fn scratch_dir(addr: SocketAddr) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let label: String = addr
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("idunno-worker-{}-{label}-{n}", std::process::id()))
}

impl Drop for Io {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// `model` rebuilt from a local weights file (as `train` stores them), at most
/// [`WEIGHTS_BYTES_MAX`] bytes, on `device`: `predict --weights`.
pub fn load_weights_file(
    model: &str,
    file: &std::path::Path,
    device: &Device,
) -> Result<Box<dyn Model>, String> {
    use std::io::Read;
    let open = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut bytes = Vec::new();
    open.take(WEIGHTS_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if bytes.len() as u64 > WEIGHTS_BYTES_MAX {
        return Err(format!(
            "{} is larger than {WEIGHTS_BYTES_MAX} bytes",
            file.display()
        ));
    }
    registry::from_weights(model, &bytes, device).map_err(|e| format!("{}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_messages() {
        assert_eq!(weights_file_name("digits-cnn"), "models/digits-cnn");
        assert!(not_trained("digits-cnn").contains("train digits-cnn"));
        assert!(short(&"x".repeat(500)).len() <= ERROR_BYTES_MAX);
        let dir = scratch_dir("127.0.0.1:4000".parse().expect("addr"));
        assert!(dir.to_string_lossy().contains("127_0_0_1_4000"));
    }

    #[test]
    fn bad_weights_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("idunno-weights-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let garbage = dir.join("garbage");
        std::fs::write(&garbage, b"not burnpack").expect("write");
        let cpu = idunno_models::default_device();
        match load_weights_file("digits-cnn", &garbage, &cpu) {
            Err(e) => assert!(e.contains("garbage"), "{e}"),
            Ok(_) => panic!("garbage weights loaded"),
        }
        assert!(load_weights_file("digits-cnn", &dir.join("missing"), &cpu).is_err());
        assert!(load_weights_file("resnet", &garbage, &cpu).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
