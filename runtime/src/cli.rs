//! The `idunno-node` command line.
//!
//! Owns: the argument grammar (clap derive) and its validation. The contract, which tests and
//! scripts depend on:
//! - `idunno-node start --bind ADDR [--join ADDR,ADDR...] [--data-dir DIR]
//!   [--raft-id N] [--voters N=ADDR,N=ADDR...] [--cluster-key-file FILE]
//!   [--worker-lanes N]`
//! - `idunno-node keygen FILE` (a new cluster key, readable by its owner only)
//! - `idunno-node client --node ADDR list_mem [--json]`
//! - `idunno-node client --node ADDR list_self [--json]`
//! - `idunno-node client --node ADDR leave`
//! - `idunno-node client --node ADDR leader [--json]`
//! - `idunno-node client --node ADDR kv-put KEY VALUE [--json]`
//! - `idunno-node client --node ADDR kv-get KEY [--json]`
//! - `idunno-node client --node ADDR failed [--json]`
//! - `idunno-node client --node ADDR submit MODEL NAME... [--batch B] [--lease-ms MS]
//!   [--request ID] [--any-model] [--json]`
//! - `idunno-node client --node ADDR jobs|c1|c5 [--json]`
//! - `idunno-node client --node ADDR c2 JOB [--json]`, `c3 JOB B [--json]`,
//!   `c4 JOB [N] [--json]`, `cancel JOB [--json]` (JOB: `N` or `job-N`; JSON shapes in
//!   `jobs::cli`)
//! - `idunno-node client --node ADDR put LOCAL NAME [--json]`
//! - `idunno-node client --node ADDR get NAME LOCAL [--json]`
//! - `idunno-node client --node ADDR delete NAME [--json]`
//! - `idunno-node client --node ADDR ls NAME [--json]`
//! - `idunno-node client --node ADDR store [--json]`
//! - `idunno-node client --node ADDR get-versions NAME N LOCAL [--json]`
//! - `idunno-node client --node ADDR list [PREFIX] [--json]`
//! - `idunno-node client --node ADDR train MODEL [--json]`
//! - `idunno-node client --node ADDR upload DIR [N] [--prefix P] [--json]`
//! - `idunno-node client --node ADDR inference MODEL DIR [--batch B] [--lease-ms MS]
//!   [--request ID] [--wait] [--json]` (JSON shapes of these and `c4` in `jobs::cli`)
//! - `idunno-node predict MODEL FILE... [--json] [--weights FILE] [--device cpu|wgpu]`
//! - `idunno-node demo [--nodes 10] [--kill 3] [--voters 7] [--digits N] [--photos DIR]
//!   [--photo-copies N] [--digits-batch B] [--photos-batch B] [--noop | --membership]`
//!
//! Must never: act on the arguments (main.rs dispatches) or accept an argument it cannot honour.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use idunno_core::consensus::{VOTERS_MAX, VoterId};

use crate::consensus::RaftOptions;

/// Most nodes the demo starts (one loopback address each, 127.0.0.2 upwards).
pub const DEMO_NODES_MAX: u16 = 250;

/// idunno: a fault-tolerant distributed inference cluster node.
#[derive(Debug, Parser, PartialEq, Eq)]
#[command(name = "idunno-node", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Run a node until SIGINT/SIGTERM or a `leave` request (then leave gracefully and exit 0).
    /// Prints `LISTENING <addr> <generation>` on stdout once bound; logs go to stderr.
    Start(StartArgs),
    /// Ask a running node something over its control port.
    Client(ClientArgs),
    /// Start a 10-node cluster on 127.0.0.x, train, upload, run two inference jobs while 3 nodes
    /// (the coordinator among them) are SIGKILLed; exit 0 only if every input has one result.
    Demo(DemoArgs),
    /// Run a model on local files in this one process (the baseline the cluster is measured
    /// against): a table by default, one JSON object per input and line with --json.
    Predict(PredictArgs),
    /// Write a new random cluster key to FILE (mode 0600; an existing file is never
    /// overwritten). Start every node with `--cluster-key-file FILE`.
    Keygen {
        /// Where to write the key.
        file: PathBuf,
    },
    /// Print the client token of the cluster key (FILE, else IDUNNO_CLUSTER_KEY_FILE, else
    /// IDUNNO_CLUSTER_KEY). A client given the token in IDUNNO_CLIENT_TOKEN may send client
    /// requests but cannot act as a node.
    Token {
        /// The cluster key file.
        #[arg(long, value_name = "FILE")]
        cluster_key_file: Option<PathBuf>,
    },
}

/// Arguments of `predict`.
#[derive(Debug, Args, PartialEq, Eq)]
pub struct PredictArgs {
    /// Model name: digits-cnn or efficientnet-lite0.
    pub model: String,
    /// Input files (PNG or JPEG; digits-cnn also takes them, shrunk to 8x8 grey).
    #[arg(required = true, num_args = 1..)]
    pub files: Vec<std::path::PathBuf>,
    /// One JSON object per input and line: input, class_id, label, probability, top5 (or input
    /// and error).
    #[arg(long)]
    pub json: bool,
    /// Load the weights from FILE (bytes as `train` stores them in the file system, e.g. from
    /// `client get models/MODEL FILE`) instead of training or loading the vendored ones.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// The device the model runs on: `cpu` (Burn's Flex backend, always there) or `wgpu` (a
    /// GPU through Vulkan/Metal/DX12; only in a build with `--features wgpu`, else a clear
    /// error).
    #[arg(long, value_name = "NAME", default_value = "cpu")]
    pub device: String,
}

/// Arguments of `start`.
#[derive(Debug, Args, PartialEq, Eq)]
pub struct StartArgs {
    /// UDP (membership) and TCP (control) address; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub bind: SocketAddr,
    /// Addresses of existing members to join through, comma-separated.
    #[arg(long, value_name = "ADDR,ADDR...", value_delimiter = ',')]
    pub join: Vec<SocketAddr>,
    /// Directory for this node's durable state (its last generation; a voter's Raft log in
    /// DIR/raft).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// This node's Raft voter id (needs --voters, listing it at --bind, and --data-dir).
    /// Without it, a node given --voters is a non-voting member that routes Raft requests.
    #[arg(long, value_name = "N")]
    pub raft_id: Option<u64>,
    /// The Raft voter set: each voter's id and node address (its --bind), comma-separated.
    /// Raft is off when absent.
    #[arg(long, value_name = "N=ADDR,N=ADDR...", value_delimiter = ',', value_parser = parse_voter)]
    pub voters: Vec<VoterSpec>,
    /// File holding the cluster key (from `idunno-node keygen`); every membership datagram and
    /// every TCP connection is authenticated and encrypted with it. Default: the file named by IDUNNO_CLUSTER_KEY_FILE,
    /// else the hex key in IDUNNO_CLUSTER_KEY, else none (insecure). The key itself is never
    /// taken on the command line.
    #[arg(long, value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// A voter snapshots the replicated state and drops the log before it every N applied
    /// entries.
    #[arg(long, value_name = "N", default_value_t = crate::consensus::COMPACT_EVERY_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub raft_compact_every: u64,
    /// Where a voter fsyncs its Raft log: `background` (a storage thread; the node's event loop
    /// goes on meanwhile and queued batches share one fsync) or `inline` (on the event loop;
    /// for comparison).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = crate::consensus::persister::PersistMode::Background)]
    pub raft_persist: crate::consensus::persister::PersistMode,
    /// Inference batches this node works on at once (with Raft configured); 0 runs no worker.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(0..=idunno_core::scheduler::LEASES_PER_WORKER_MAX as u64))]
    pub worker_lanes: u64,
    /// Milliseconds between the blob garbage collector's passes (with --data-dir and Raft).
    #[arg(long, value_name = "MS", default_value_t = crate::dfs::tasks::GC_INTERVAL.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub gc_interval_ms: u64,
    /// Age in milliseconds under which a blob no kept version refers to is kept (it may belong
    /// to a put not yet committed): keep it far above the longest put.
    #[arg(long, value_name = "MS", default_value_t = crate::dfs::tasks::GC_GRACE.as_millis() as u64)]
    pub gc_grace_ms: u64,
}

/// One `--voters` item: `ID=ADDR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoterSpec {
    /// The voter's id.
    pub id: u64,
    /// Its node address.
    pub addr: SocketAddr,
}

fn parse_voter(text: &str) -> Result<VoterSpec, String> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not ID=ADDR"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("bad voter id in {text:?}: {e}"))?;
    let addr = addr
        .trim()
        .parse()
        .map_err(|e| format!("bad voter address in {text:?}: {e}"))?;
    Ok(VoterSpec { id, addr })
}

impl StartArgs {
    /// The Raft options these arguments ask for (`None`: Raft off).
    pub fn raft_options(&self) -> Option<RaftOptions> {
        if self.voters.is_empty() {
            return None;
        }
        Some(RaftOptions {
            compact_every: self.raft_compact_every,
            persist: self.raft_persist,
            id: self.raft_id.map(VoterId),
            voters: self
                .voters
                .iter()
                .map(|v| (VoterId(v.id), v.addr))
                .collect::<BTreeMap<_, _>>(),
        })
    }

    /// Checks the Raft arguments' relations.
    fn validate_raft(&self) -> Result<(), String> {
        let mut ids = BTreeSet::new();
        for voter in &self.voters {
            if !ids.insert(voter.id) {
                return Err(format!("voter id {} is listed twice in --voters", voter.id));
            }
        }
        if self.voters.len() > VOTERS_MAX {
            return Err(format!("at most {VOTERS_MAX} voters"));
        }
        if let Some(id) = self.raft_id {
            if !ids.contains(&id) {
                return Err(format!("--raft-id {id} is not listed in --voters"));
            }
            if self.data_dir.is_none() {
                return Err("--raft-id needs --data-dir (the Raft log lives in DIR/raft)".into());
            }
        }
        Ok(())
    }
}

/// Arguments of `client`.
#[derive(Debug, Args, PartialEq, Eq)]
pub struct ClientArgs {
    /// The node to ask (its bind address).
    #[arg(long, value_name = "ADDR")]
    pub node: SocketAddr,
    /// How long to wait for connecting and answering, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
    /// The request.
    #[command(subcommand)]
    pub request: ClientRequest,
}

/// Requests a client can make.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum ClientRequest {
    /// The node's member list: id, addr, generation, incarnation, state.
    #[command(name = "list_mem")]
    ListMem {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The node's own id and incarnation.
    #[command(name = "list_self")]
    ListSelf {
        /// Print one JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Tell the node to leave the cluster gracefully and exit.
    Leave,
    /// The node's own counters: membership (datagrams, drops, suspicions), authentication
    /// (refused datagrams and connections), its worker, and on a voter Raft (term, indexes,
    /// dropped and stale messages, persist batches and fsyncs).
    Stats {
        /// Print one JSON object `{"GROUP":{"COUNTER":VALUE}}` instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Who leads the Raft log: voter id, address and term (any node answers).
    Leader {
        /// Print one JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// The nodes the cluster's replicated state has recorded as failed (their leases and
    /// replicas were given up), oldest first; read through the leader.
    Failed {
        /// Print one JSON array of node ids instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Set KEY to VALUE through the Raft log (forwarded to the leader).
    #[command(name = "kv-put")]
    KvPut {
        /// The key.
        key: String,
        /// The value (stored as its UTF-8 bytes).
        value: String,
        /// Print one JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Read KEY linearizably through the leader.
    #[command(name = "kv-get")]
    KvGet {
        /// The key.
        key: String,
        /// Print one JSON object instead of the value.
        #[arg(long)]
        json: bool,
    },
    /// Inference jobs (submit, jobs, c1..c5, cancel).
    #[command(flatten)]
    Jobs(crate::jobs::cli::JobsRequest),
    /// The distributed file system.
    #[command(flatten)]
    Dfs(DfsClientCommand),
}

/// File-system client commands (see [`crate::dfs::client`]).
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum DfsClientCommand {
    /// Store the local file LOCAL as a new version of NAME (replicated before it is committed).
    Put {
        /// The local file.
        local: PathBuf,
        /// The name in the cluster.
        name: String,
        /// Print one JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the newest version of NAME into the local file LOCAL.
    Get {
        /// The name in the cluster.
        name: String,
        /// The local file to write (replaced atomically once verified).
        local: PathBuf,
        /// Print one JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Delete every version of NAME.
    Delete {
        /// The name.
        name: String,
        /// Print one JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Which nodes hold the newest version of NAME.
    Ls {
        /// The name.
        name: String,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What the asked node stores: the file versions the namespace places on it and its blobs.
    Store {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The last N versions of NAME, newest first, into one local file with delimiter lines.
    #[command(name = "get-versions")]
    GetVersions {
        /// The name.
        name: String,
        /// How many versions (1..=64).
        #[arg(value_parser = clap::value_parser!(u64).range(1..=64))]
        n: u64,
        /// The local file to write.
        local: PathBuf,
        /// Print one JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// File names starting with PREFIX (all when omitted).
    List {
        /// The prefix.
        #[arg(default_value = "")]
        prefix: String,
        /// Print one JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `demo`.
#[derive(Debug, Args, PartialEq, Eq)]
pub struct DemoArgs {
    /// Nodes to start, on 127.0.0.2 upwards (every one a worker).
    #[arg(long, default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(2..=i64::from(DEMO_NODES_MAX)))]
    pub nodes: u16,
    /// Nodes to SIGKILL at once (the coordinator among them); must leave at least one
    /// survivor, and (without --membership) a majority of the voters.
    #[arg(long, default_value_t = 3)]
    pub kill: u16,
    /// Raft voters among the nodes (the first ones); the others are non-voting members.
    #[arg(long, default_value_t = 7,
          value_parser = clap::value_parser!(u16).range(1..=VOTERS_MAX as i64))]
    pub voters: u16,
    /// Longest each step may take to converge, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub step_timeout_secs: u64,
    /// Longest the two jobs may take together, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=36_000))]
    pub jobs_timeout_secs: u64,
    /// Digits of the test split to classify (default: all of it).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub digits: Option<u64>,
    /// Directory of the photos for efficientnet-lite0 (PNG, JPEG; other files are skipped).
    /// Default: models/testdata of the source tree this binary was built from.
    #[arg(long, value_name = "DIR")]
    pub photos: Option<PathBuf>,
    /// Copies of each photo in the efficientnet-lite0 job (so it runs as long as the digits).
    #[arg(long, value_name = "N", default_value_t = DEMO_PHOTO_COPIES_DEFAULT,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub photo_copies: u16,
    /// Batch size of the digits-cnn job.
    #[arg(long, value_name = "B", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=idunno_core::scheduler::BATCH_SIZE_MAX as i64))]
    pub digits_batch: u32,
    /// Batch size of the efficientnet-lite0 job.
    #[arg(long, value_name = "B", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=idunno_core::scheduler::BATCH_SIZE_MAX as i64))]
    pub photos_batch: u32,
    /// Run the no-op model for both jobs instead (no training, no file upload): the scheduling
    /// and failure part alone.
    #[arg(long, conflicts_with = "membership")]
    pub noop: bool,
    /// Run the membership demo instead: converge, kill nodes, restart one, one leaves (no Raft,
    /// no jobs).
    #[arg(long)]
    pub membership: bool,
}

/// Copies of each photo in the demo's efficientnet-lite0 job by default.
pub const DEMO_PHOTO_COPIES_DEFAULT: u16 = 16;

impl DemoArgs {
    /// Checks relations between the demo's arguments.
    pub fn validate(&self) -> Result<(), String> {
        if self.kill >= self.nodes {
            return Err(format!(
                "--kill {} must be smaller than --nodes {} (at least one node must survive)",
                self.kill, self.nodes
            ));
        }
        if self.membership {
            return Ok(());
        }
        if self.voters > self.nodes {
            return Err(format!(
                "--voters {} cannot exceed --nodes {}",
                self.voters, self.nodes
            ));
        }
        let majority = self.voters / 2 + 1;
        if self.kill > self.voters - majority {
            return Err(format!(
                "--kill {} could take the Raft log's majority ({majority} of --voters {}); \
                 at most {} may be killed",
                self.kill,
                self.voters,
                self.voters - majority
            ));
        }
        Ok(())
    }
}

impl Cli {
    /// Parses and validates relations clap cannot express; exits with usage on error.
    pub fn parse_checked() -> Self {
        let cli = Cli::parse();
        if let Err(message) = cli.validate() {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            cmd.error(clap::error::ErrorKind::ValueValidation, message)
                .exit();
        }
        cli
    }

    /// Checks relations between arguments.
    pub fn validate(&self) -> Result<(), String> {
        if let Command::Start(start) = &self.command {
            start.validate_raft()?;
        }
        if let Command::Demo(demo) = &self.command {
            demo.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("idunno-node").chain(args.iter().copied()))
    }

    #[test]
    fn predict_takes_a_device_name_cpu_by_default() {
        let cli = parse(&["predict", "efficientnet-lite0", "a.png", "b.jpg"]).expect("valid");
        let Command::Predict(args) = cli.command else {
            panic!("not predict: {cli:?}")
        };
        assert_eq!(args.device, "cpu");
        assert_eq!(args.files.len(), 2);
        let cli = parse(&[
            "predict",
            "digits-cnn",
            "--device",
            "wgpu",
            "x.png",
            "--json",
        ])
        .expect("valid");
        let Command::Predict(args) = cli.command else {
            panic!("not predict: {cli:?}")
        };
        assert_eq!((args.device.as_str(), args.json), ("wgpu", true));
        // Whether the name is a device this build has is for idunno_models::device::parse.
        assert!(parse(&["predict", "digits-cnn", "--device"]).is_err());
    }

    #[test]
    fn start_takes_bind_join_list_and_data_dir() {
        let cli = parse(&[
            "start",
            "--bind",
            "127.0.0.2:0",
            "--join",
            "127.0.0.3:4000,127.0.0.4:4001",
            "--data-dir",
            "/tmp/x",
        ])
        .expect("valid");
        let Command::Start(args) = cli.command else {
            panic!("not start: {cli:?}")
        };
        assert_eq!(args.bind, "127.0.0.2:0".parse().expect("addr"));
        assert_eq!(
            args.join,
            vec![
                "127.0.0.3:4000".parse().expect("addr"),
                "127.0.0.4:4001".parse().expect("addr")
            ]
        );
        assert_eq!(args.data_dir, Some(PathBuf::from("/tmp/x")));
    }

    #[test]
    fn garbage_collection_is_configurable() {
        let Command::Start(args) = parse(&["start", "--bind", "127.0.0.1:0"])
            .expect("valid")
            .command
        else {
            panic!("not start")
        };
        assert_eq!(
            args.gc_interval_ms,
            crate::dfs::tasks::GC_INTERVAL.as_millis() as u64
        );
        assert_eq!(
            args.gc_grace_ms,
            crate::dfs::tasks::GC_GRACE.as_millis() as u64
        );
        let cli = parse(&[
            "start",
            "--bind",
            "127.0.0.1:0",
            "--gc-interval-ms",
            "500",
            "--gc-grace-ms",
            "0",
        ])
        .expect("valid");
        let Command::Start(args) = cli.command else {
            panic!("not start")
        };
        assert_eq!((args.gc_interval_ms, args.gc_grace_ms), (500, 0));
        let zero = parse(&["start", "--bind", "127.0.0.1:0", "--gc-interval-ms", "0"]);
        assert!(zero.is_err(), "a zero interval is refused");
    }

    #[test]
    fn start_needs_bind_and_refuses_bad_addresses() {
        assert!(parse(&["start"]).is_err());
        assert!(parse(&["start", "--bind", "nonsense"]).is_err());
        assert!(parse(&["start", "--bind", "127.0.0.1:0", "--join", "1.2.3.4"]).is_err());
        let cli = parse(&["start", "--bind", "127.0.0.1:0"]).expect("join is optional");
        assert!(
            matches!(cli.command, Command::Start(StartArgs { ref join, data_dir: None, .. }) if join.is_empty())
        );
    }

    #[test]
    fn client_subcommands_use_underscored_names() {
        let cli = parse(&["client", "--node", "127.0.0.1:9", "list_mem", "--json"]).expect("valid");
        assert_eq!(
            cli.command,
            Command::Client(ClientArgs {
                node: "127.0.0.1:9".parse().expect("addr"),
                timeout_ms: 3000,
                request: ClientRequest::ListMem { json: true },
            })
        );
        let cli = parse(&["client", "--node", "127.0.0.1:9", "list_self"]).expect("valid");
        assert!(matches!(
            cli.command,
            Command::Client(ClientArgs {
                request: ClientRequest::ListSelf { json: false },
                ..
            })
        ));
        let cli = parse(&["client", "--node", "127.0.0.1:9", "leave"]).expect("valid");
        assert!(matches!(
            cli.command,
            Command::Client(ClientArgs {
                request: ClientRequest::Leave,
                ..
            })
        ));
        assert!(
            parse(&["client", "list_mem"]).is_err(),
            "--node is required"
        );
        assert!(parse(&["client", "--node", "127.0.0.1:9", "list-mem"]).is_err());
    }

    #[test]
    fn start_takes_raft_options_and_checks_them() {
        let cli = parse(&[
            "start",
            "--bind",
            "127.0.0.2:7000",
            "--data-dir",
            "/tmp/x",
            "--raft-id",
            "1",
            "--voters",
            "1=127.0.0.2:7000,2=127.0.0.3:7000",
        ])
        .expect("valid");
        assert_eq!(cli.validate(), Ok(()));
        let Command::Start(args) = &cli.command else {
            panic!("not start")
        };
        let raft = args.raft_options().expect("raft on");
        assert_eq!(raft.id, Some(VoterId(1)));
        assert_eq!(raft.voters.len(), 2);
        let no_dir = parse(&[
            "start",
            "--bind",
            "127.0.0.2:7000",
            "--raft-id",
            "1",
            "--voters",
            "1=127.0.0.2:7000",
        ])
        .expect("parses");
        assert!(no_dir.validate().is_err(), "a voter needs --data-dir");
        let unlisted = parse(&[
            "start",
            "--bind",
            "127.0.0.2:7000",
            "--data-dir",
            "/tmp/x",
            "--raft-id",
            "3",
            "--voters",
            "1=127.0.0.2:7000",
        ])
        .expect("parses");
        assert!(unlisted.validate().is_err());
        let twice = parse(&[
            "start",
            "--bind",
            "127.0.0.2:1",
            "--voters",
            "1=127.0.0.2:1,1=127.0.0.3:1",
        ])
        .expect("parses");
        assert!(twice.validate().is_err());
        assert!(
            parse(&[
                "start",
                "--bind",
                "127.0.0.2:1",
                "--voters",
                "x=127.0.0.2:1"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "start",
                "--bind",
                "127.0.0.2:1",
                "--voters",
                "1:127.0.0.2:1"
            ])
            .is_err()
        );
        let member = parse(&[
            "start",
            "--bind",
            "127.0.0.2:1",
            "--voters",
            "1=127.0.0.3:1",
        ])
        .expect("a non-voter with a voter list");
        assert_eq!(member.validate(), Ok(()));
        let plain = parse(&["start", "--bind", "127.0.0.2:1"]).expect("raft is optional");
        let Command::Start(args) = &plain.command else {
            panic!("not start")
        };
        assert_eq!(args.raft_options(), None);
    }

    #[test]
    fn client_raft_subcommands() {
        let cli = parse(&["client", "--node", "127.0.0.1:9", "leader", "--json"]).expect("valid");
        assert!(matches!(
            cli.command,
            Command::Client(ClientArgs {
                request: ClientRequest::Leader { json: true },
                ..
            })
        ));
        let cli = parse(&["client", "--node", "127.0.0.1:9", "kv-put", "k", "v"]).expect("valid");
        assert!(matches!(
            cli.command,
            Command::Client(ClientArgs {
                request: ClientRequest::KvPut { ref key, ref value, json: false },
                ..
            }) if key == "k" && value == "v"
        ));
        let cli =
            parse(&["client", "--node", "127.0.0.1:9", "kv-get", "k", "--json"]).expect("valid");
        assert!(matches!(
            cli.command,
            Command::Client(ClientArgs {
                request: ClientRequest::KvGet { json: true, .. },
                ..
            })
        ));
        assert!(parse(&["client", "--node", "127.0.0.1:9", "kv-put", "k"]).is_err());
    }

    #[test]
    fn demo_defaults_and_limits() {
        let cli = parse(&["demo"]).expect("valid");
        assert_eq!(
            cli.command,
            Command::Demo(DemoArgs {
                nodes: 10,
                kill: 3,
                voters: 7,
                step_timeout_secs: 60,
                jobs_timeout_secs: 600,
                digits: None,
                photos: None,
                photo_copies: DEMO_PHOTO_COPIES_DEFAULT,
                digits_batch: 4,
                photos_batch: 1,
                noop: false,
                membership: false,
            })
        );
        assert_eq!(cli.validate(), Ok(()));
        assert!(parse(&["demo", "--nodes", "1"]).is_err());
        assert!(parse(&["demo", "--nodes", "251"]).is_err());
        let cli = parse(&["demo", "--nodes", "3", "--kill", "3"]).expect("parses");
        assert!(cli.validate().is_err(), "nobody would survive");
        let cli = parse(&["demo", "--nodes", "3", "--kill", "0", "--membership"]).expect("parses");
        assert_eq!(cli.validate(), Ok(()));
        let cli = parse(&["demo", "--nodes", "3", "--kill", "0"]).expect("parses");
        assert!(cli.validate().is_err(), "7 voters on 3 nodes");
        let cli = parse(&["demo", "--voters", "5", "--kill", "3"]).expect("parses");
        assert!(cli.validate().is_err(), "3 of 5 voters is the majority");
        let cli = parse(&["demo", "--nodes", "5", "--voters", "5", "--kill", "2"]).expect("parses");
        assert_eq!(cli.validate(), Ok(()));
        assert!(parse(&["demo", "--noop", "--membership"]).is_err());
        assert!(parse(&["demo", "--digits", "0"]).is_err());
        let cli = parse(&["demo", "--nodes", "3", "--kill", "0", "--voters", "3"]).expect("parses");
        assert_eq!(cli.validate(), Ok(()));
    }
}
