//! The `idunno-node` binary: parses the command line and dispatches to the runtime library.
//!
//! Owns: the process's exit codes and what goes to stdout (`LISTENING <addr> <generation>` for
//! `start`, answers for `client`, progress for `demo`); logs go to stderr.
//! Must never: panic on user input or a closed stdout, or contain logic that a test cannot reach
//! through the library.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use idunno_runtime::auth::{ClientToken, ClusterKey, TcpAuth};
use idunno_runtime::cli::{Cli, ClientArgs, ClientRequest, Command, PredictArgs, StartArgs};
use idunno_runtime::control;
use idunno_runtime::dfs::tasks::GcOptions;
use idunno_runtime::driver::Exit;
use idunno_runtime::node::{self, NodeOptions};
use idunno_runtime::{demo, jobs, logging, render};

/// Exit code of a node stopped by a second signal before its leave finished (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse_checked();
    match cli.command {
        Command::Start(args) => start(args),
        Command::Client(args) => client(args),
        Command::Demo(args) => demo::run(args),
        Command::Predict(args) => predict(args),
        Command::Keygen { file } => keygen(&file),
        Command::Token { cluster_key_file } => token(cluster_key_file.as_deref()),
    }
}

/// `token`: prints the client token of the cluster key.
fn token(file: Option<&std::path::Path>) -> ExitCode {
    match ClusterKey::from_file_or_env(file) {
        Ok(Some(key)) => {
            let token = ClientToken::from_key(&key);
            match print_stdout(&format!("{}\n", token.to_hex())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(None) => {
            eprintln!(
                "error: no cluster key: give --cluster-key-file FILE, or set {} or {}",
                idunno_runtime::auth::KEY_FILE_ENV,
                idunno_runtime::auth::KEY_ENV
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `keygen FILE`: writes a fresh cluster key; never overwrites.
fn keygen(file: &std::path::Path) -> ExitCode {
    match ClusterKey::generate().write_new_file(file) {
        Ok(()) => {
            eprintln!(
                "wrote a new cluster key to {}; start every node with --cluster-key-file {}",
                file.display(),
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `predict`: exit 0 when every input got a result, 1 when some failed (each one reported in
/// the output), 2 when the model itself could not be built or run.
fn predict(args: PredictArgs) -> ExitCode {
    let device = match idunno_models::device::parse(&args.device) {
        Ok(device) => device,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = io::stdout().lock();
    let ran = match &args.weights {
        None => {
            idunno_models::predict::run_on(&args.model, &device, &args.files, args.json, &mut out)
        }
        Some(file) => match jobs::model::load_weights_file(&args.model, file, &device) {
            Ok(model) => {
                idunno_models::predict::run_model(model.as_ref(), &args.files, args.json, &mut out)
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match ran {
        Ok(summary) if summary.failed == 0 => ExitCode::SUCCESS,
        Ok(summary) => {
            eprintln!("{} of {} inputs failed", summary.failed, summary.inputs);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Writes `text` to stdout and flushes; a closed stdout is reported, never a panic.
fn print_stdout(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

fn start(args: StartArgs) -> ExitCode {
    logging::init();
    let raft = args.raft_options();
    let cluster_key = match ClusterKey::from_file_or_env(args.cluster_key_file.as_deref()) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut options = NodeOptions::new(args.bind, args.join, args.data_dir);
    options.raft = raft;
    options.cluster_key = cluster_key;
    options.worker.lanes = usize::try_from(args.worker_lanes).unwrap_or(0);
    options.blobs.gc = GcOptions {
        interval: Duration::from_millis(args.gc_interval_ms),
        grace: Duration::from_millis(args.gc_grace_ms),
    };
    // `IDUNNO_WORKER_PIPELINE=0`: lanes do one step at a time (the benchmarks' "before").
    options.worker.pipeline = std::env::var("IDUNNO_WORKER_PIPELINE").map_or(true, |v| v != "0");
    let result = node::block_on(async {
        // A fenced node comes back as a new generation; each run prints its LISTENING line.
        let started = |bound: &node::BoundNode| {
            // Handlers first: whoever reads the LISTENING line may signal at once.
            let signals = node::leave_on_signals(bound.handle(), bound.span());
            let id = bound.id();
            if let Err(e) = print_stdout(&format!("LISTENING {} {}\n", id.addr, id.generation)) {
                bound
                    .span()
                    .in_scope(|| tracing::warn!(error = %e, "cannot print the LISTENING line"));
            }
            signals
        };
        match node::run(options, started).await {
            Ok(Some(Exit::Left)) => ExitCode::SUCCESS,
            Ok(Some(Exit::LeaveTimedOut | Exit::RaftFailed | Exit::Fenced)) => ExitCode::FAILURE,
            Ok(None) => ExitCode::from(EXIT_INTERRUPTED),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

fn client(args: ClientArgs) -> ExitCode {
    // A client proves the cluster's client token when it has the key or a token.
    match TcpAuth::client_from_env() {
        Ok(auth) => {
            let _ = idunno_runtime::auth::tcp::install(auth);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let node = args.node;
    let timeout = Duration::from_millis(args.timeout_ms);
    if let ClientRequest::Dfs(command) = args.request {
        return idunno_runtime::dfs::client::main(node, timeout, command);
    }
    let result = node::block_on(async {
        match args.request {
            ClientRequest::ListMem { json } => {
                let members = control::list_members(node, timeout).await?;
                Ok(if json {
                    format!("{}\n", render::members_json(&members))
                } else {
                    render::members_table(&members)
                })
            }
            ClientRequest::ListSelf { json } => {
                let (id, incarnation) = control::list_self(node, timeout).await?;
                Ok(if json {
                    format!("{}\n", render::self_json(id, incarnation))
                } else {
                    format!("{}\n", render::self_line(id, incarnation))
                })
            }
            ClientRequest::Stats { json } => {
                let groups = control::node_stats(node, timeout).await?;
                Ok(if json {
                    format!("{}\n", render::stats_json(&groups))
                } else {
                    render::stats_table(&groups)
                })
            }
            ClientRequest::Leave => {
                control::leave(node, timeout).await?;
                Ok(format!("node {node} is leaving the cluster\n"))
            }
            ClientRequest::Leader { json } => {
                let (id, addr, term) = control::leader(node, timeout).await?;
                Ok(render_leader(id.map(|id| id.0), addr, term, json))
            }
            ClientRequest::KvPut { key, value, json } => {
                let index = control::kv_put(node, key.clone(), value.into_bytes(), timeout).await?;
                Ok(render_kv_put(&key, index, json))
            }
            ClientRequest::KvGet { key, json } => {
                let value = control::kv_get(node, key.clone(), timeout).await?;
                Ok(render_kv_get(&key, value.as_deref(), json))
            }
            ClientRequest::Failed { json } => {
                let nodes = control::failed_nodes(node, timeout).await?;
                Ok(render_failed(&nodes, json))
            }
            ClientRequest::Jobs(request) => Ok(jobs::cli::run(node, timeout, request).await?),
            // Answered above, before the runtime starts.
            ClientRequest::Dfs(_) => Ok(String::new()),
        }
    });
    let text: Result<String, Box<dyn std::error::Error>> = match result {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match text {
        Ok(text) => match print_stdout(&text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write the answer: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `failed`: one node id (`addr#generation`) per line, or a JSON array of them.
fn render_failed(nodes: &[idunno_core::membership::NodeId], json: bool) -> String {
    let ids: Vec<String> = nodes.iter().map(ToString::to_string).collect();
    if json {
        return format!("{}\n", serde_json::json!(ids));
    }
    if ids.is_empty() {
        return "no failed nodes recorded\n".to_owned();
    }
    ids.iter().map(|id| format!("{id}\n")).collect()
}

/// `leader`: `leader ID ADDR term T` (or `no leader known (term T)`), or
/// `{"id":N|null,"addr":"ADDR"|null,"term":T}`.
fn render_leader(
    id: Option<u64>,
    addr: Option<std::net::SocketAddr>,
    term: u64,
    json: bool,
) -> String {
    if json {
        let addr = addr.map(|a| a.to_string());
        return format!(
            "{}\n",
            serde_json::json!({"id": id, "addr": addr, "term": term})
        );
    }
    match (id, addr) {
        (Some(id), Some(addr)) => format!("leader {id} {addr} term {term}\n"),
        (Some(id), None) => format!("leader {id} (address unknown) term {term}\n"),
        _ => format!("no leader known (term {term})\n"),
    }
}

/// `kv-put`: `ok KEY index N`, or `{"key":KEY,"index":N}`.
fn render_kv_put(key: &str, index: u64, json: bool) -> String {
    if json {
        return format!("{}\n", serde_json::json!({"key": key, "index": index}));
    }
    format!("ok {key} index {index}\n")
}

/// `kv-get`: the value (lossy UTF-8) or `(absent)`, or `{"key":KEY,"value":"V"|null}`.
fn render_kv_get(key: &str, value: Option<&[u8]>, json: bool) -> String {
    let text = value.map(|v| String::from_utf8_lossy(v).into_owned());
    if json {
        return format!("{}\n", serde_json::json!({"key": key, "value": text}));
    }
    format!("{}\n", text.unwrap_or_else(|| "(absent)".to_owned()))
}
