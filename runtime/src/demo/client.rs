//! The demo's client: `idunno-node client --node ADDR <command...>` run as a child process, as
//! a user would, with a deadline; its stdout parsed as JSON (or kept as the table it printed).
//!
//! Owns: [`client_json`] and [`client_text`]. Going through the command line keeps the demo to
//! the documented client contract (the JSON shapes of `jobs::cli` and `dfs::client`), not to the
//! runtime's internals.
//! Must never: wait for a client without a deadline (one past it is SIGKILLed and reaped), or
//! trust its output (unparsable output is an error naming the command).

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{DemoError, fail, secs};

/// Most bytes of a client's stdout kept (a `c4` of every result of a large job fits).
const CLIENT_OUTPUT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Most bytes of a client's stderr quoted in an error.
const CLIENT_ERROR_BYTES_MAX: usize = 2000;
/// Pause between two checks of a running client.
const CLIENT_POLL: Duration = Duration::from_millis(5);

/// Environment variables that would give a client another credential than the demo's key.
const CREDENTIAL_ENVS: [&str; 3] = [
    "IDUNNO_CLUSTER_KEY",
    "IDUNNO_CLUSTER_KEY_FILE",
    "IDUNNO_CLIENT_TOKEN",
];

/// How to run a client of the demo's cluster.
#[derive(Debug, Clone)]
pub struct ClientCmd {
    /// The `idunno-node` executable.
    pub exe: PathBuf,
    /// The demo cluster's key file: the client proves its client token.
    pub key_file: PathBuf,
}

/// Runs `exe client --node NODE --timeout-ms T ARGS..` within `timeout`; its stdout on
/// success, else an error with its stderr.
pub async fn client_text(
    cmd: &ClientCmd,
    node: SocketAddr,
    args: &[String],
    timeout: Duration,
) -> Result<String, DemoError> {
    let cmd = cmd.clone();
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || run_blocking(&cmd, node, &args, timeout))
        .await
        .map_err(|e| DemoError(format!("client thread failed: {e}")))?
}

/// [`client_text`] with `--json` appended, parsed.
pub async fn client_json(
    exe: &ClientCmd,
    node: SocketAddr,
    args: &[String],
    timeout: Duration,
) -> Result<serde_json::Value, DemoError> {
    let mut with_json = args.to_vec();
    with_json.push("--json".to_owned());
    let text = client_text(exe, node, &with_json, timeout).await?;
    serde_json::from_str(text.trim()).map_err(|e| {
        DemoError(format!(
            "`client {}` printed no JSON ({e}): {}",
            with_json.join(" "),
            cut(&text)
        ))
    })
}

fn cut(text: &str) -> &str {
    let mut end = text.len().min(CLIENT_ERROR_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim()
}

fn run_blocking(
    cmd: &ClientCmd,
    node: SocketAddr,
    args: &[String],
    timeout: Duration,
) -> Result<String, DemoError> {
    let shown = args.join(" ");
    let timeout_ms = timeout.as_millis().clamp(1, 600_000).to_string();
    let mut command = Command::new(&cmd.exe);
    for env in CREDENTIAL_ENVS {
        command.env_remove(env);
    }
    let mut child = command
        .env("IDUNNO_CLUSTER_KEY_FILE", &cmd.key_file)
        .arg("client")
        .arg("--node")
        .arg(node.to_string())
        .arg("--timeout-ms")
        .arg(&timeout_ms)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DemoError(format!("cannot run `client {shown}`: {e}")))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = std::thread::spawn(move || read_capped(stdout));
    let err = std::thread::spawn(move || read_capped(stderr));
    // The client has its own per-request deadline; this one bounds the whole command.
    let deadline = Instant::now() + timeout + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(CLIENT_POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return fail(format!(
                    "`client {shown}` against {node} did not finish within {}",
                    secs(timeout + timeout)
                ));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return fail(format!("cannot wait for `client {shown}`: {e}"));
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        fail(format!(
            "`client {shown}` against {node} failed ({status}): {}",
            cut(&stderr)
        ))
    }
}

fn read_capped(pipe: Option<impl Read>) -> String {
    let mut bytes = Vec::new();
    if let Some(pipe) = pipe {
        let _ = pipe.take(CLIENT_OUTPUT_BYTES_MAX).read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_quote_a_bounded_piece_of_output() {
        let long = "é".repeat(CLIENT_ERROR_BYTES_MAX);
        let shown = cut(&long);
        assert!(shown.len() <= CLIENT_ERROR_BYTES_MAX);
        assert!(shown.starts_with('é'));
        assert_eq!(cut("  short \n"), "short");
    }
}
