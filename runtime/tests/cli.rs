//! Runs the built `idunno-node` binary: the CLI contract, the client's errors, and single- and
//! two-node behaviour over real loopback sockets. Deadlines are generous upper bounds so a slow
//! machine cannot hang the suite; nothing here asserts how fast anything happens.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_idunno-node");
/// Upper bound for anything a test waits on.
const DEADLINE: Duration = Duration::from_secs(30);

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "idunno-cli-test-{name}-{}-{nanos}",
            std::process::id()
        ));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `idunno-node start`, killed on drop.
struct Node {
    child: Child,
    addr: SocketAddr,
    generation: u64,
}

impl Node {
    fn start(bind: &str, join: Option<SocketAddr>, data_dir: Option<&TempDir>) -> Node {
        let mut command = Command::new(BIN);
        command
            .args(["start", "--bind", bind])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(seed) = join {
            command.args(["--join", &seed.to_string()]);
        }
        if let Some(dir) = data_dir {
            command.arg("--data-dir").arg(&dir.0);
        }
        let mut child = command.spawn().expect("node starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the LISTENING line");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            words.len(),
            3,
            "LISTENING <addr> <generation>, got {line:?}"
        );
        assert_eq!(words[0], "LISTENING", "{line:?}");
        let addr: SocketAddr = words[1].parse().expect("an address");
        let generation: u64 = words[2].parse().expect("a generation");
        assert_ne!(addr.port(), 0, "port 0 resolves to the real port");
        Node {
            child,
            addr,
            generation,
        }
    }

    fn id(&self) -> String {
        format!("{}#{}", self.addr, self.generation)
    }

    fn client(&self, args: &[&str]) -> Output {
        let node = self.addr.to_string();
        let mut all = vec!["client", "--node", node.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }

    fn json(&self, args: &[&str]) -> Value {
        let output = self.client(args);
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            stderr(&output)
        );
        serde_json::from_str(&stdout(&output)).expect("one JSON value")
    }

    /// Waits for the process to exit by itself; its exit status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(t0.elapsed() < DEADLINE, "node did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `check` holds or the deadline passes.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !check() {
        assert!(t0.elapsed() < DEADLINE, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn states(members: &Value) -> Vec<(String, String)> {
    members
        .as_array()
        .expect("an array")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().expect("id").to_owned(),
                m["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect()
}

#[test]
fn help_lists_the_subcommands() {
    let output = run(&["--help"]);
    assert!(output.status.success());
    let text = stdout(&output);
    for word in ["start", "client", "demo"] {
        assert!(text.contains(word), "--help mentions {word}: {text}");
    }
    let output = run(&["client", "--help"]);
    assert!(output.status.success());
    let text = stdout(&output);
    for word in ["list_mem", "list_self", "leave", "--node"] {
        assert!(text.contains(word), "client --help mentions {word}: {text}");
    }
}

#[test]
fn bad_arguments_are_usage_errors() {
    let output = run(&["start", "--bind", "not-an-address"]);
    assert_eq!(output.status.code(), Some(2));
    let output = run(&["demo", "--nodes", "3", "--kill", "3"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--kill"), "{}", stderr(&output));
}

#[test]
fn a_client_that_cannot_connect_fails_clearly() {
    for request in ["list_mem", "list_self", "leave"] {
        let output = run(&["client", "--node", "127.0.0.1:1", request]);
        assert!(!output.status.success());
        let err = stderr(&output);
        assert!(err.contains("cannot connect to node 127.0.0.1:1"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(stdout(&output).is_empty());
    }
}

#[test]
fn a_client_that_gets_no_answer_times_out() {
    // A TCP listener that accepts and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let output = run(&[
        "client",
        "--node",
        &addr,
        "--timeout-ms",
        "300",
        "list_self",
    ]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("did not answer"), "{err}");
    drop(listener);
}

#[test]
fn a_single_node_answers_shrugs_off_garbage_and_leaves_on_request() {
    let dir = TempDir::new("single");
    let mut node = Node::start("127.0.0.1:0", None, Some(&dir));

    let me = node.json(&["list_self", "--json"]);
    assert_eq!(me["id"], node.id().as_str());
    assert_eq!(me["addr"], node.addr.to_string().as_str());
    assert_eq!(me["generation"], node.generation);
    assert_eq!(me["incarnation"], 0);

    let members = node.json(&["list_mem", "--json"]);
    assert_eq!(states(&members), vec![(node.id(), "alive".to_owned())]);
    let table = stdout(&node.client(&["list_mem"]));
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&node.id()), "{table}");

    // Garbage and oversized datagrams, and garbage control frames, change nothing.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for bytes in [
        vec![],
        vec![1],
        vec![0xff; 64],
        vec![1; 1400],
        vec![7; 9000],
    ] {
        udp.send_to(&bytes, node.addr).expect("send");
    }
    for frame in [
        &[0u8, 0, 0, 2, 9, 9][..],
        &[0xff, 0xff, 0xff, 0xff][..],
        b"GET / HTTP/1.0\r\n\r\n",
    ] {
        let mut tcp = TcpStream::connect(node.addr).expect("connect");
        tcp.write_all(frame).expect("write");
    }
    let me_again = node.json(&["list_self", "--json"]);
    assert_eq!(me_again, me);

    let output = node.client(&["leave"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("leaving"), "{}", stdout(&output));
    assert!(node.wait_exit().success(), "a node that left exits 0");

    // Restarted with the same data dir: a strictly newer generation.
    let restarted = Node::start("127.0.0.1:0", None, Some(&dir));
    assert!(restarted.generation > node.generation);
}

#[cfg(unix)]
#[test]
fn sigterm_makes_a_node_leave_and_exit_zero() {
    let mut node = Node::start("127.0.0.1:0", None, None);
    let pid = node.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    assert!(node.wait_exit().success());
}

#[test]
fn two_nodes_see_each_other_and_a_leave_propagates() {
    let a = Node::start("127.0.0.1:0", None, None);
    let mut b = Node::start("127.0.0.1:0", Some(a.addr), None);
    let both = {
        let mut v = vec![(a.id(), "alive".to_owned()), (b.id(), "alive".to_owned())];
        v.sort();
        v
    };
    for node in [&a, &b] {
        eventually("both nodes see both alive", || {
            let mut seen = states(&node.json(&["list_mem", "--json"]));
            seen.sort();
            seen == both
        });
    }
    let output = b.client(&["leave"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(b.wait_exit().success());
    eventually("the survivor sees the leaver as left", || {
        states(&a.json(&["list_mem", "--json"])).contains(&(b.id(), "left".to_owned()))
    });
}

#[test]
fn predict_classifies_a_photo_and_reports_bad_inputs_per_input() {
    let testdata = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/testdata");
    let coffee = testdata.join("coffee.png");
    let not_an_image = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let output = run(&[
        "predict",
        "efficientnet-lite0",
        &coffee.display().to_string(),
        &not_an_image.display().to_string(),
        "--json",
    ]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "one input failed: {}",
        stderr(&output)
    );
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0]["class_id"], 967,
        "coffee.png is an espresso: {}",
        lines[0]
    );
    assert_eq!(lines[0]["top5"].as_array().map(Vec::len), Some(5));
    assert!(lines[1]["error"].is_string(), "{}", lines[1]);
}

#[test]
fn predict_with_an_unknown_model_fails_clearly() {
    let output = run(&["predict", "no-such-model", "x.png"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no-such-model"),
        "{}",
        stderr(&output)
    );
}
