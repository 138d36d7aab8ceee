//! The event loop of one node: runs the membership machine on a socket, a timer queue and a
//! request channel.
//!
//! Owns: the machine, its timer queue and the mapping between tokio time and the machine's
//! [`Instant`] (microseconds since the driver's epoch, captured when the driver is built).
//! Inputs: datagrams from the socket, due timers, control requests (from [`crate::control`] and
//! the signal handler), and [`ProbeHints`] (members the control server saw close a worker's
//! connection, probed out of turn). Outputs, carried out in the order the machine decided them: datagrams
//! sent, timers armed, events logged at info.
//! Must never: decide anything about membership, drop or reorder the machine's outputs, block
//! on anything but its own socket, or panic on what a peer sends.

use crate::stats::NodeCounters;
use std::net::SocketAddr;
use std::time::Duration;

use idunno_core::membership::{Config, Event, Input, Membership, Metrics, NodeId, Output, Timer};
use idunno_core::time::Instant;
use idunno_core::wire::{ControlRequest, ControlResponse};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::net::{DatagramSocket, RECV_BUFFER_BYTES};
use crate::timers::TimerQueue;
use crate::view::MembershipView;

/// Most due timers handed in before the loop looks at the socket and requests again.
const TIMERS_PER_TURN_MAX: usize = 1024;
/// Pause after a failed `recv_from`, so a persistent socket error cannot spin the loop.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Extra time, beyond twice the machine's leave linger, before a leave that never reports
/// `SelfLeft` is abandoned (a guard against a machine bug; normally never reached).
const LEAVE_GRACE: Duration = Duration::from_secs(5);
/// Capacity of the request channel that feeds the driver.
pub const REQUESTS_QUEUE_MAX: usize = 64;
/// Capacity of the probe-hint channel; a hint that finds it full is dropped (the member is
/// still probed in its round-robin turn).
pub const PROBE_HINTS_QUEUE_MAX: usize = 64;

/// Where the control server reports a member that may be gone: a worker whose connection to
/// this node closed without a goodbye (a killed process's kernel closes its sockets at once,
/// long before a probe round reaches it). The driver hands each hint to the machine as
/// [`Input::ProbeSoon`]: a probe out of turn, never a verdict.
#[derive(Debug, Clone)]
pub struct ProbeHints {
    tx: mpsc::Sender<NodeId>,
}

impl ProbeHints {
    /// A hint sender and the receiver for [`Driver::with_probe_hints`].
    pub fn channel() -> (ProbeHints, mpsc::Receiver<NodeId>) {
        let (tx, rx) = mpsc::channel(PROBE_HINTS_QUEUE_MAX);
        (ProbeHints { tx }, rx)
    }

    /// Reports `node`; never waits (a full queue drops the hint).
    pub fn hint(&self, node: NodeId) {
        if self.tx.try_send(node).is_err() {
            debug!(member = %node, "probe hint dropped (queue full or driver stopped)");
        }
    }
}

/// A control request for the driver, with the channel its answer goes back on.
#[derive(Debug)]
pub struct Request {
    /// What is asked.
    pub request: ControlRequest,
    /// Where the answer goes; a dropped receiver is ignored.
    pub reply: oneshot::Sender<ControlResponse>,
}

/// Why a driver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The membership configuration was refused.
    #[error(transparent)]
    Config(#[from] idunno_core::membership::ConfigError),
    /// The socket does not know its own address.
    #[error("cannot read the socket's address: {0}")]
    LocalAddr(#[from] std::io::Error),
}

/// How the driver's loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The graceful leave finished (`Event::SelfLeft`).
    Left,
    /// The leave did not finish within its deadline; the driver stopped anyway.
    LeaveTimedOut,
    /// The node's Raft driver stopped on a fatal error (storage); the node stopped with it.
    RaftFailed,
    /// The cluster's replicated state records this node (this generation) as failed: it was
    /// cut off for longer than the failure grace, its leases and replicas were given up, and it
    /// must come back as a new generation ([`crate::node::run`] does that).
    Fenced,
}

/// One node's membership machine wired to a socket and a clock.
#[derive(Debug)]
pub struct Driver<S> {
    machine: Membership,
    socket: S,
    timers: TimerQueue<Timer>,
    epoch: tokio::time::Instant,
    left: bool,
    leave_deadline: Option<tokio::time::Instant>,
    view: Option<watch::Sender<MembershipView>>,
    counters: NodeCounters,
    hints: Option<mpsc::Receiver<NodeId>>,
}

impl<S: DatagramSocket> Driver<S> {
    /// A driver for the node `NodeId{socket's address, generation}`. The machine's epoch is now.
    pub fn new(
        config: Config,
        socket: S,
        generation: u64,
        rng_seed: u64,
    ) -> Result<Self, DriverError> {
        let addr = socket.local_addr()?;
        let me = NodeId::new(addr, generation);
        // The machine's `Instant::ZERO` is this moment.
        let epoch = tokio::time::Instant::now();
        let machine = Membership::new(config, me, rng_seed, Instant::ZERO)?;
        Ok(Driver {
            machine,
            socket,
            timers: TimerQueue::new(),
            epoch,
            left: false,
            leave_deadline: None,
            view: None,
            counters: NodeCounters::default(),
            hints: None,
        })
    }

    /// Publishes the membership view on `view` from now on.
    pub fn with_view(mut self, view: watch::Sender<MembershipView>) -> Self {
        self.view = Some(view);
        self
    }

    /// Probes the members reported on `hints` out of turn (see [`ProbeHints`]).
    pub fn with_probe_hints(mut self, hints: mpsc::Receiver<NodeId>) -> Self {
        self.hints = Some(hints);
        self
    }

    /// Adds the node's other counters to this driver's `NodeStats` answers.
    pub fn with_counters(mut self, counters: NodeCounters) -> Self {
        self.counters = counters;
        self
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.machine.me()
    }

    /// Runs until the node has left the cluster: joins through `seeds` (if any), then serves
    /// datagrams, timers and `requests` until a leave completes. Returns how it ended and the
    /// machine's counters.
    pub async fn run(
        mut self,
        seeds: Vec<SocketAddr>,
        mut requests: mpsc::Receiver<Request>,
    ) -> (Exit, Metrics) {
        self.drain().await;
        if !seeds.is_empty() {
            info!(?seeds, "joining");
            self.input(Input::Join { seeds }).await;
        }
        let mut buf = vec![0u8; RECV_BUFFER_BYTES];
        let mut requests_open = true;
        let mut hints = self.hints.take();
        let exit = loop {
            if self.left {
                break Exit::Left;
            }
            let wake = self.timers.next_deadline().map(|at| self.deadline_of(at));
            let leave_deadline = self.leave_deadline;
            tokio::select! {
                biased;
                request = requests.recv(), if requests_open => match request {
                    Some(request) => self.on_request(request).await,
                    None => requests_open = false,
                },
                () = sleep_until_opt(wake), if wake.is_some() => self.on_timers().await,
                hint = recv_opt(hints.as_mut()), if hints.is_some() => match hint {
                    Some(node) => self.on_probe_hint(node).await,
                    None => hints = None,
                },
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        let bytes = buf.get(..len).unwrap_or(&buf);
                        self.input(Input::Datagram { from, bytes }).await;
                    }
                    Err(e) => {
                        debug!(error = %e, "recv_from failed");
                        tokio::time::sleep(RECV_ERROR_BACKOFF).await;
                    }
                },
                () = sleep_until_opt(leave_deadline), if leave_deadline.is_some() => {
                    warn!("graceful leave did not finish in time; stopping anyway");
                    break Exit::LeaveTimedOut;
                }
            }
        };
        (exit, self.machine.metrics().clone())
    }

    /// The machine's clock: microseconds since the driver's epoch.
    fn now(&self) -> Instant {
        let micros = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        Instant::from_micros(micros)
    }

    /// The tokio instant of a machine instant (far in the future for "never").
    fn deadline_of(&self, at: Instant) -> tokio::time::Instant {
        self.epoch
            .checked_add(at.since_epoch())
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400))
    }

    /// Hands one input to the machine and carries out what it asks.
    async fn input(&mut self, input: Input<'_>) {
        let now = self.now();
        if let Err(e) = self.machine.handle(now, input) {
            debug!(error = %e, "input dropped");
        }
        self.drain().await;
    }

    /// Hands a hint to the machine; logs the ones it takes (it ignores hints about members
    /// it is probing already, or that are not alive).
    async fn on_probe_hint(&mut self, node: NodeId) {
        let taken = self.machine.metrics().probe_hints;
        self.input(Input::ProbeSoon(node)).await;
        if self.machine.metrics().probe_hints > taken {
            info!(member = %node, "probing a member out of turn: its connection to this node closed");
        }
    }

    /// Hands every due timer back to the machine, up to a bound per turn.
    async fn on_timers(&mut self) {
        for _ in 0..TIMERS_PER_TURN_MAX {
            let now = self.now();
            let Some((_, timer)) = self.timers.pop_due(now) else {
                return;
            };
            self.input(Input::Timer(timer)).await;
            if self.left {
                return;
            }
        }
    }

    async fn on_request(&mut self, Request { request, reply }: Request) {
        let response = match request {
            ControlRequest::ListMembers => ControlResponse::Members(self.machine.members()),
            ControlRequest::NodeStats => {
                let members = u64::try_from(self.machine.members().len()).unwrap_or(u64::MAX);
                let mut groups = vec![crate::stats::group_of(
                    "membership",
                    &[
                        ("incarnation", self.machine.incarnation()),
                        ("members", members),
                    ],
                    self.machine.metrics(),
                )];
                groups.extend(self.counters.groups());
                ControlResponse::NodeStats(groups)
            }
            ControlRequest::ListSelf => ControlResponse::SelfInfo {
                id: self.machine.me(),
                incarnation: self.machine.incarnation(),
            },
            ControlRequest::Leave => {
                if !self.machine.is_leaving() {
                    info!("leaving the cluster");
                    let linger = self.machine.config().leave_linger;
                    self.leave_deadline =
                        Some(tokio::time::Instant::now() + linger * 2 + LEAVE_GRACE);
                    self.input(Input::Leave).await;
                }
                ControlResponse::Leaving
            }
            // Raft requests are routed to the Raft driver by the control server.
            ControlRequest::RaftHello { .. }
            | ControlRequest::Leader
            | ControlRequest::KvPut { .. }
            | ControlRequest::KvGet { .. }
            | ControlRequest::FailedNodes { .. }
            | ControlRequest::Sched { .. } => {
                ControlResponse::Error("raft is not enabled on this node".to_owned())
            }
            ControlRequest::Dfs { request, .. } if !request.for_leader() => ControlResponse::Error(
                "this node has no blob store (start it with --data-dir)".to_owned(),
            ),
            ControlRequest::Dfs { .. } => {
                ControlResponse::Error("raft is not enabled on this node".to_owned())
            }
            // Blob requests are served by the control server's blob service.
            ControlRequest::BlobPut { .. } | ControlRequest::BlobGet { .. } => {
                ControlResponse::Error("this node stores no blobs (no --data-dir)".to_owned())
            }
        };
        // The asker may have given up (timeout, closed connection): nothing to do then.
        let _ = reply.send(response);
    }

    /// Carries out the machine's outputs in order until it has none.
    async fn drain(&mut self) {
        while let Some(output) = self.machine.poll_output() {
            match output {
                Output::Send { to, bytes } => {
                    if let Err(e) = self.socket.send_to(&bytes, to).await {
                        debug!(%to, error = %e, "send_to failed");
                    }
                }
                Output::SetTimer { timer, at } => {
                    if let Err(e) = self.timers.push(at, timer) {
                        error!(?timer, error = %e, "timer dropped");
                    }
                }
                Output::Event(event) => self.on_event(event),
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        if let Some(view) = &self.view {
            view.send_if_modified(|view| view.apply(&event));
        }
        match event {
            Event::Joined(id) => info!(member = %id, "member joined"),
            Event::Suspect(id) => info!(member = %id, "member suspected"),
            Event::Refuted(id) => info!(member = %id, "member refuted its suspicion"),
            Event::Failed(id) => info!(member = %id, "member failed"),
            Event::Left(id) => info!(member = %id, "member left"),
            Event::SelfLeft => {
                info!("left the cluster");
                self.left = true;
            }
        }
    }
}

/// The next item of `rx`; never completes for `None` (callers also guard the branch).
async fn recv_opt<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`; never completes for `None` (callers also guard the branch).
async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
