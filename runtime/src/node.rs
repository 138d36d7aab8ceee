//! One running node: binds its sockets, fixes its identity and wires the driver, the control
//! server and the signal handler together.
//!
//! Owns: the UDP socket and the TCP control listener on the same address (port 0 resolves to one
//! real port for both), the node's [`NodeId`] (bound address + persisted generation), the
//! `node{addr=..}` tracing span every task of the node runs in, and the shutdown sequence
//! (first SIGINT/SIGTERM: leave gracefully; second: stop at once).
//! With Raft options it also sets up Raft: on a voter, the Raft driver (its store in
//! `<data-dir>/raft`) runs beside the membership driver and the node stops if it fails; on every
//! Raft-aware node the control server routes `leader` / `kv-put` / `kv-get` / `failed`. The
//! membership driver publishes its view ([`crate::view`]); the Raft driver reads it to propose
//! the failures of members the view reports gone.
//! Membership datagrams go through [`AuthSocket`] and accepted TCP connections through a
//! [`TcpGuard`]: sealed with the cluster key when the node has one (the key also becomes the
//! process's credential for the connections it opens); without one the node warns that it is
//! insecure.
//! With a data dir it opens the blob store at `<data-dir>/blobs`, serves blob transfers on the
//! control port and runs the scrubber; with Raft it also announces the store to the cluster
//! (`StoreReady`: only announced stores receive replicas), reports corrupt blobs to the leader
//! and collects garbage. Without a data dir the node stores no blobs and is never placed on.
//! Must never: print to stdout (main prints the `LISTENING` line), or make membership decisions.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;

use idunno_core::consensus::{Message, VoterId};
use idunno_core::membership::{Config, Metrics, NodeId};
use idunno_core::wire::{ControlRequest, ControlResponse};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::auth::{AuthSocket, AuthStats, ClusterKey, TcpAuth, TcpAuthStats, TcpGuard};
use crate::blobs::scrubber::{self, ScrubOptions};
use crate::blobs::{BlobHash, BlobService, BlobStore, StoreLimits};
use crate::consensus::driver::{RaftDriver, RaftDriverError};
use crate::consensus::transport::Inbound;
use crate::consensus::{LocalVoter, RAFT_REQUESTS_QUEUE_MAX, RaftOptions, RaftRequest, RaftRoute};
use crate::control;
use crate::dfs::tasks::GcOptions;
use crate::driver::{Driver, DriverError, Exit, ProbeHints, REQUESTS_QUEUE_MAX, Request};
use crate::identity::{self, IdentityError};
use crate::jobs::{
    self, client::SchedClient, model::ModelExecutor, noop::NoopExecutor, worker::WorkerOptions,
    worker::WorkerStats,
};
use crate::net::{DatagramSocket, TcpListener, UdpSocket};
use crate::view;

/// Tries at binding UDP and TCP to one free port when asked for port 0 (the port the UDP socket
/// got may already be taken for TCP).
const BIND_ATTEMPTS_MAX: usize = 16;
/// How often a node that routes Raft requests asks whether the cluster recorded it failed.
pub const FENCE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Deadline of one such check.
const FENCE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Most tries to bind the same address again after a fenced node stopped.
const REBIND_ATTEMPTS_MAX: usize = 50;
/// Pause between those tries.
const REBIND_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Address for both sockets; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Seeds to join through; empty for the first node of a cluster.
    pub join: Vec<SocketAddr>,
    /// Where the last generation is persisted; `None` uses the wall clock alone.
    pub data_dir: Option<PathBuf>,
    /// Membership parameters.
    pub config: Config,
    /// Raft: this node's voter id (if a voter) and the voter set; `None` runs no Raft at all.
    /// A voter keeps its log in `<data_dir>/raft`, so it needs `data_dir`.
    pub raft: Option<RaftOptions>,
    /// The cluster key that authenticates every membership datagram; `None` runs insecure
    /// (and says so loudly).
    pub cluster_key: Option<ClusterKey>,
    /// The blob store's limits and scrub schedule (used only with `data_dir`).
    pub blobs: BlobOptions,
    /// The inference worker's settings (it runs only with Raft; `lanes: 0` runs none).
    pub worker: WorkerOptions,
}

/// How a node with a data dir keeps blobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobOptions {
    /// Size limits of the store.
    pub limits: StoreLimits,
    /// When and how fast the scrubber re-hashes stored blobs.
    pub scrub: ScrubOptions,
    /// When the garbage collector runs and how old an orphan must be (with Raft only).
    pub gc: GcOptions,
}

impl NodeOptions {
    /// Options with the default (LAN) membership configuration.
    pub fn new(bind: SocketAddr, join: Vec<SocketAddr>, data_dir: Option<PathBuf>) -> Self {
        NodeOptions {
            bind,
            join,
            data_dir,
            config: Config::default(),
            raft: None,
            cluster_key: None,
            blobs: BlobOptions::default(),
            worker: WorkerOptions::default(),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The generation could not be chosen or persisted.
    #[error("cannot choose a generation: {0}")]
    Identity(#[from] IdentityError),
    /// The driver refused its configuration.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The Raft options do not fit this node.
    #[error("raft: {0}")]
    RaftOptions(String),
    /// The Raft driver could not start (its store, or its persisted state).
    #[error(transparent)]
    Raft(#[from] RaftDriverError),
    /// The blob store could not be opened.
    #[error("blob store: {0}")]
    Blobs(#[from] crate::blobs::StoreError),
}

/// Sends requests to a running node from inside the process (signals, tests).
#[derive(Debug, Clone)]
pub struct NodeHandle {
    requests: mpsc::Sender<Request>,
}

impl NodeHandle {
    /// Asks the node; `None` if it has stopped.
    pub async fn request(&self, request: ControlRequest) -> Option<ControlResponse> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request { request, reply }).await.ok()?;
        answer.await.ok()
    }
}

/// A node whose sockets are bound and whose identity is fixed, not yet running.
#[derive(Debug)]
pub struct BoundNode {
    driver: Driver<AuthSocket<UdpSocket>>,
    auth: Arc<AuthStats>,
    tcp_guard: Arc<TcpGuard>,
    listener: TcpListener,
    seeds: Vec<SocketAddr>,
    requests: mpsc::Receiver<Request>,
    handle: NodeHandle,
    hints: ProbeHints,
    span: tracing::Span,
    raft: Option<RaftParts>,
    route: Option<RaftRoute>,
    blobs: Option<BlobParts>,
    worker: WorkerOptions,
}

/// The blob service of a node with a data dir, not yet running.
#[derive(Debug)]
struct BlobParts {
    service: Arc<BlobService>,
    scrub: ScrubOptions,
    gc: GcOptions,
    corrupt: mpsc::Receiver<BlobHash>,
}

/// Name of the directory, inside `--data-dir`, that holds the blob store.
pub const BLOBS_DIR: &str = "blobs";

/// A voter's Raft driver and the channels that feed it, not yet running.
#[derive(Debug)]
struct RaftParts {
    driver: RaftDriver,
    requests: mpsc::Receiver<RaftRequest>,
    messages: mpsc::Receiver<(VoterId, Message)>,
}

/// Name of the directory, inside `--data-dir`, that holds a voter's Raft log.
pub const RAFT_DIR: &str = "raft";

/// Sets up Raft for a node bound at `addr`: the route for the control server, and on a voter
/// its driver (opening the store, so this blocks on the disk).
fn setup_raft(
    options: &RaftOptions,
    addr: SocketAddr,
    data_dir: Option<&std::path::Path>,
    rng_seed: u64,
) -> Result<(RaftRoute, Option<RaftParts>), NodeError> {
    let voters = Arc::new(options.voters.clone());
    if voters.is_empty() {
        return Err(NodeError::RaftOptions("the voter set is empty".into()));
    }
    let Some(me) = options.id else {
        let route = RaftRoute {
            self_addr: addr,
            voters,
            local: None,
        };
        return Ok((route, None));
    };
    match voters.get(&me) {
        Some(&listed) if listed == addr => {}
        Some(&listed) => {
            return Err(NodeError::RaftOptions(format!(
                "voter {} is listed at {listed} but this node is bound at {addr}",
                me.0
            )));
        }
        None => {
            return Err(NodeError::RaftOptions(format!(
                "voter {} is not in the voter set",
                me.0
            )));
        }
    }
    let data_dir = data_dir
        .ok_or_else(|| NodeError::RaftOptions("a voter needs --data-dir for its log".into()))?;
    let driver = RaftDriver::open_with(
        me,
        Arc::clone(&voters),
        &data_dir.join(RAFT_DIR),
        rng_seed ^ me.0,
        options.persist,
    )?
    .with_compaction(options.compact_every);
    let (inbound, messages) = Inbound::new(me, Arc::clone(&voters));
    let (tx, requests) = mpsc::channel(RAFT_REQUESTS_QUEUE_MAX);
    let route = RaftRoute {
        self_addr: addr,
        voters,
        local: Some(LocalVoter {
            requests: tx,
            inbound,
        }),
    };
    let parts = RaftParts {
        driver,
        requests,
        messages,
    };
    Ok((route, Some(parts)))
}

/// Binds the sockets and fixes the identity (persisting the generation before returning).
pub async fn bind(options: NodeOptions) -> Result<BoundNode, NodeError> {
    let (socket, listener) = bind_pair(options.bind)
        .await
        .map_err(|source| NodeError::Bind {
            addr: options.bind,
            source,
        })?;
    let addr = socket.local_addr().map_err(|source| NodeError::Bind {
        addr: options.bind,
        source,
    })?;
    debug_assert_ne!(addr.port(), 0);
    let generation =
        identity::next_generation(options.data_dir.as_deref(), identity::unix_time_ms())?;
    let seed = identity::rng_seed(addr, generation);
    let socket = AuthSocket::new(socket, options.cluster_key.as_ref());
    let auth = socket.stats();
    let (view_tx, view) = view::channel(NodeId::new(addr, generation));
    let (hints, hints_rx) = ProbeHints::channel();
    let driver = Driver::new(options.config, socket, generation, seed)?
        .with_view(view_tx)
        .with_probe_hints(hints_rx);
    debug_assert_eq!(driver.id(), NodeId::new(addr, generation));
    debug!(rng_seed = seed, "identity fixed");
    let (tx, requests) = mpsc::channel(REQUESTS_QUEUE_MAX);
    let span = info_span!("node", addr = %addr);
    let tcp_guard = Arc::new(TcpGuard::new(options.cluster_key.as_ref()));
    if options.cluster_key.is_some() {
        // This node's own connections (Raft, blob chains, calls to the leader) prove its key.
        let installed = crate::auth::tcp::install(TcpAuth::node(options.cluster_key.as_ref()));
        if installed.is_err() {
            // Only a process running nodes of two clusters (a test) gets here.
            span.in_scope(|| {
                warn!(
                    "this process already connects with another cluster key: this node's own \
                     TCP connections prove that one (one process serves one cluster)"
                );
            });
        }
    }
    if options.cluster_key.is_none() {
        span.in_scope(|| {
            warn!(
                "INSECURE: no cluster key, so anyone who can reach this node's ports can join, \
                 read and forge membership traffic, read and change every TCP request, Raft \
                 message and file transfer, and send any request without a token; create one with `idunno-node keygen FILE` \
                 and start every node with --cluster-key-file FILE (or {})",
                crate::auth::KEY_FILE_ENV
            );
        });
    }
    let (route, raft) = match &options.raft {
        Some(raft) => {
            let _entered = span.enter();
            let (route, parts) = setup_raft(raft, addr, options.data_dir.as_deref(), seed)?;
            let parts = parts.map(|mut parts| {
                parts.driver = parts.driver.with_view(view.clone());
                parts
            });
            (Some(route), parts)
        }
        None => (None, None),
    };
    let blobs = match &options.data_dir {
        Some(dir) => {
            let store = BlobStore::open(&dir.join(BLOBS_DIR), options.blobs.limits)?;
            let (service, corrupt) = BlobService::new(store, addr);
            Some(BlobParts {
                service: Arc::new(service),
                scrub: options.blobs.scrub,
                gc: options.blobs.gc,
                corrupt,
            })
        }
        None => None,
    };
    Ok(BoundNode {
        driver,
        auth,
        tcp_guard,
        listener,
        seeds: options.join,
        requests,
        handle: NodeHandle { requests: tx },
        hints,
        span,
        raft,
        route,
        blobs,
        worker: options.worker,
    })
}

/// Binds UDP then TCP on the port UDP got; with port 0, retries when that TCP port is taken.
async fn bind_pair(bind: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let attempts = if bind.port() == 0 {
        BIND_ATTEMPTS_MAX
    } else {
        1
    };
    let mut last_error = io::Error::from(io::ErrorKind::AddrInUse);
    for _ in 0..attempts {
        let socket = UdpSocket::bind(bind).await?;
        let addr = socket.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok((socket, listener)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = e,
            Err(e) => return Err(e),
        }
    }
    Err(last_error)
}

impl BoundNode {
    /// The node's identity: bound address and generation.
    pub fn id(&self) -> NodeId {
        self.driver.id()
    }

    /// Counters of the membership datagrams this node accepted and refused.
    pub fn auth_stats(&self) -> Arc<AuthStats> {
        Arc::clone(&self.auth)
    }

    /// Counters of the TCP connections this node accepted and refused.
    pub fn tcp_auth_stats(&self) -> Arc<TcpAuthStats> {
        self.tcp_guard.stats()
    }

    /// A handle to send requests from inside the process.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The node's blob store, if it has a data dir.
    pub fn blob_store(&self) -> Option<BlobStore> {
        self.blobs.as_ref().map(|b| b.service.store().clone())
    }

    /// The `node{addr=..}` span all of this node's logs run in.
    pub fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    /// Runs the node until it has left the cluster; the control server stops with it.
    pub async fn run(self) -> (Exit, Metrics) {
        let BoundNode {
            driver,
            listener,
            seeds,
            requests,
            handle,
            hints,
            span,
            raft,
            route,
            auth,
            tcp_guard,
            blobs,
            worker,
        } = self;
        let tcp_auth = tcp_guard.stats();
        let id = driver.id();
        let routes_raft = route.is_some();
        let worker_stats = Arc::new(WorkerStats::default());
        // The worker asks through this node's own control port (which routes to the leader).
        let (stop_worker, worker_stopped) = watch::channel(false);
        let worker_task = (route.is_some() && worker.lanes > 0).then(|| {
            let client = Arc::new(SchedClient::new(id.addr, worker.call_timeout));
            let executor: Arc<dyn jobs::Executor> = match ModelExecutor::new(
                id.addr,
                worker.call_timeout,
                tokio::runtime::Handle::current(),
                jobs::model::scratch_dir(id.addr),
            ) {
                Ok(executor) => Arc::new(executor),
                Err(e) => {
                    span.in_scope(|| {
                        warn!(error = %e, "no scratch directory: this worker runs only the noop model");
                    });
                    Arc::new(NoopExecutor)
                }
            };
            tokio::spawn(
                jobs::worker::run(
                    id,
                    client,
                    executor,
                    worker,
                    Arc::clone(&worker_stats),
                    worker_stopped,
                )
                .instrument(span.clone()),
            )
        });
        let (service, mut blob_tasks) = match blobs {
            Some(parts) => {
                let (service, tasks) = spawn_blob_tasks(parts, &span, id, route.is_some());
                (Some(service), tasks)
            }
            None => (None, Vec::new()),
        };
        if raft.is_some() && service.is_some() {
            blob_tasks.push(tokio::spawn(
                crate::dfs::tasks::repair_loop(id.addr).instrument(span.clone()),
            ));
        }
        let server = tokio::spawn(
            control::serve_guarded(
                listener,
                handle.requests,
                route,
                service,
                tcp_guard,
                Some(hints),
            )
            .instrument(span.clone()),
        );
        let raft_task = raft.map(|parts| {
            tokio::spawn(
                parts
                    .driver
                    .run(parts.requests, parts.messages)
                    .instrument(span.clone()),
            )
        });
        let (exit, metrics) = async {
            info!(generation = id.generation, "node started");
            let counters = crate::stats::NodeCounters {
                datagrams: Some(Arc::clone(&auth)),
                connections: Some(Arc::clone(&tcp_auth)),
                worker: worker_task.is_some().then(|| Arc::clone(&worker_stats)),
            };
            let membership = driver.with_counters(counters).run(seeds, requests);
            let mut raft_task = raft_task;
            let (exit, metrics) = tokio::select! {
                result = membership => result,
                () = fence_watch(id, routes_raft) => {
                    warn!(
                        "the cluster recorded this node as failed (it was cut off for longer \
                         than the failure grace); stopping so that it comes back as a new generation"
                    );
                    (Exit::Fenced, Metrics::default())
                }
                stopped = wait_opt(raft_task.as_mut()) => {
                    match stopped {
                        Ok(Ok(())) => error!("raft driver stopped unexpectedly"),
                        Ok(Err(e)) => error!(error = %e, "raft driver failed; stopping the node"),
                        Err(e) => error!(error = %e, "raft driver task ended"),
                    }
                    (Exit::RaftFailed, Metrics::default())
                }
            };
            // Wait for the Raft driver to be dropped: its storage thread must let go of the
            // log before a restarted node in this process opens it again.
            if let Some(task) = raft_task {
                abort_and_wait(task).await;
            }
            info!(?exit, ?metrics, ?auth, ?tcp_auth, "node stopped");
            (exit, metrics)
        }
        .instrument(span)
        .await;
        let _ = stop_worker.send(true);
        // Waiting for each task to be dropped closes its sockets and files, so the same
        // address and data dir can be taken again at once.
        if let Some(task) = worker_task {
            abort_and_wait(task).await;
        }
        abort_and_wait(server).await;
        for task in blob_tasks {
            abort_and_wait(task).await;
        }
        (exit, metrics)
    }
}

/// Binds and runs the node described by `options`, again as a new generation at the same
/// address whenever the cluster fences it ([`Exit::Fenced`]); returns how it finally ended.
/// `started` sees each bound node before it runs (to print its address, or to install signal
/// handlers on its handle); the future it returns runs beside the node, and when it ends first
/// the node is dropped and `Ok(None)` is returned.
pub async fn run<F, Fut>(
    mut options: NodeOptions,
    mut started: F,
) -> Result<Option<Exit>, NodeError>
where
    F: FnMut(&BoundNode) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut restarts = 0u32;
    loop {
        let bound = bind_again(&options, restarts > 0).await?;
        // A restart binds exactly the address the first run got (port 0 included).
        options.bind = bound.id().addr;
        let beside = started(&bound);
        let exit = tokio::select! {
            (exit, _) = bound.run() => exit,
            () = beside => return Ok(None),
        };
        if exit != Exit::Fenced {
            return Ok(Some(exit));
        }
        restarts = restarts.saturating_add(1);
        info!(restarts, addr = %options.bind, "restarting as a new generation");
    }
}

/// [`bind`]; on a restart, retries for a while if the address is still taken.
async fn bind_again(options: &NodeOptions, restart: bool) -> Result<BoundNode, NodeError> {
    let attempts = if restart { REBIND_ATTEMPTS_MAX } else { 1 };
    let mut tries = 0;
    loop {
        tries += 1;
        match bind(options.clone()).await {
            Err(NodeError::Bind { source, .. })
                if source.kind() == io::ErrorKind::AddrInUse && tries < attempts =>
            {
                tokio::time::sleep(REBIND_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// Ends when the cluster's replicated state lists `id` as failed (asked through this node's
/// own control port every [`FENCE_CHECK_EVERY`]); never ends without `raft`.
async fn fence_watch(id: NodeId, raft: bool) {
    if !raft {
        return std::future::pending().await;
    }
    let mut tick = tokio::time::interval(FENCE_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match control::failed_nodes(id.addr, FENCE_CHECK_TIMEOUT).await {
            Ok(failed) if failed.contains(&id) => return,
            Ok(_) => {}
            Err(e) => debug!(error = %e, "could not ask whether this node is recorded failed"),
        }
    }
}

async fn wait_opt<T>(
    task: Option<&mut tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// Cancels `task` and waits until its future has been dropped.
async fn abort_and_wait<T>(task: tokio::task::JoinHandle<T>) {
    task.abort();
    let _ = task.await;
}

/// Starts the scrubber and the task that takes corrupt-blob reports (sent to the Raft leader
/// as `ReplicaLost` when the node routes Raft requests, logged otherwise), and with Raft the
/// garbage collector (it asks the leader what is referenced) and the store's announcement.
fn spawn_blob_tasks(
    parts: BlobParts,
    span: &tracing::Span,
    id: NodeId,
    raft: bool,
) -> (Arc<BlobService>, Vec<tokio::task::JoinHandle<()>>) {
    let BlobParts {
        service,
        scrub,
        gc,
        mut corrupt,
    } = parts;
    let scrubber = tokio::spawn(
        scrubber::run(service.store().clone(), scrub, service.corrupt_reports())
            .instrument(span.clone()),
    );
    if raft {
        let reports = tokio::spawn(
            crate::dfs::tasks::report_corrupt(id.addr, id, corrupt).instrument(span.clone()),
        );
        let gc = tokio::spawn(
            crate::dfs::tasks::gc_loop(id.addr, service.store().clone(), gc)
                .instrument(span.clone()),
        );
        let announce =
            tokio::spawn(crate::dfs::tasks::announce_store(id.addr, id).instrument(span.clone()));
        return (service, vec![scrubber, reports, gc, announce]);
    }
    let reports = tokio::spawn(
        async move {
            while let Some(hash) = corrupt.recv().await {
                warn!(%hash, "corrupt blob removed from this node's store");
            }
        }
        .instrument(span.clone()),
    );
    (service, vec![scrubber, reports])
}

/// Installs the SIGINT/SIGTERM handlers now (so a signal that arrives right after this call is
/// not fatal) and returns a future that, at the first signal, asks the node to leave, and
/// completes at a second one (the caller then stops without finishing the leave). The future
/// never completes if the handlers cannot be installed. Call inside the tokio runtime.
pub fn leave_on_signals(handle: NodeHandle, span: tracing::Span) -> impl Future<Output = ()> {
    let signals = Signals::new();
    async move {
        let mut signals = match signals {
            Ok(signals) => signals,
            Err(e) => {
                span.in_scope(
                    || warn!(error = %e, "cannot watch signals; stop the node with `leave`"),
                );
                return std::future::pending().await;
            }
        };
        signals.next().await;
        span.in_scope(|| {
            info!("signal received: leaving gracefully (signal again to stop at once)")
        });
        let leave = handle.request(ControlRequest::Leave);
        tokio::select! {
            _ = leave => {}
            () = signals.next() => return,
        }
        signals.next().await;
        span.in_scope(|| warn!("second signal: stopping without finishing the leave"));
    }
}

/// SIGINT and SIGTERM as one stream.
pub(crate) struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts watching; fails if the signal handlers cannot be installed.
    #[cfg(unix)]
    pub(crate) fn new() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Signals {})
    }

    /// Completes at the next SIGINT or SIGTERM.
    #[cfg(unix)]
    pub(crate) async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    #[cfg(not(unix))]
    pub(crate) async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `future` on a fresh current-thread tokio runtime.
pub fn block_on<F: Future>(future: F) -> io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}
