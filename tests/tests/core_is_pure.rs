//! Proves idunno-core is pure: nothing async, no I/O crates, no OS randomness.
//!
//! Three layers, each tested on synthetic input it must reject, so this fails the day someone
//! adds tokio (or `std::fs`) to core:
//! - cargo's own resolve of core (`cargo tree -p idunno-core -e normal,build`) against the full
//!   deny list;
//! - the workspace `Cargo.lock`, walked from the names in `core/Cargo.toml`'s non-dev dependency
//!   tables, against the async-runtime and socket deny list (the lock over-approximates, see
//!   `idunno_tests::deps`);
//! - a scan of core's sources for I/O, clock and global-RNG calls.

use std::fs;
use std::path::{Path, PathBuf};

use idunno_tests::deps::{
    CORE_DENIED, CORE_DENIED_ANYWHERE, LockGraph, cargo_tree, check_member, is_denied,
    normal_dependency_names, parse_cargo_tree,
};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn cargo_resolves_core_without_async_io_or_os_randomness() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let tree =
        cargo_tree(Path::new(&cargo), &workspace_root(), "idunno-core").expect("cargo tree runs");
    let denied: Vec<&(String, String)> = tree
        .iter()
        .filter(|(name, _)| is_denied(name, CORE_DENIED))
        .collect();
    assert!(
        denied.is_empty(),
        "idunno-core must stay sans-IO, but it depends on {denied:?}\nits tree: {tree:#?}"
    );
    // The tree really is core's: its codec and RNG are there, its dev-dependencies are not.
    for expected in ["serde", "bincode", "rand_chacha"] {
        assert!(
            tree.iter().any(|(n, _)| n == expected),
            "{expected} missing: {tree:?}"
        );
    }
    assert!(
        !tree.iter().any(|(n, _)| n == "proptest"),
        "dev-dependencies excluded"
    );
}

#[test]
fn the_lock_file_reaches_no_async_runtime_or_socket_crate_from_core() {
    let root = workspace_root();
    let (denied, closure) = check_member(
        &read(&root.join("Cargo.lock")),
        "idunno-core",
        &read(&root.join("core/Cargo.toml")),
        &read(&root.join("Cargo.toml")),
        CORE_DENIED_ANYWHERE,
    )
    .expect("the lock file and manifests parse");
    assert!(
        denied.is_empty(),
        "idunno-core's dependencies pull in {denied:?}\nfull closure: {closure:#?}"
    );
    for expected in ["serde ", "bincode ", "rand_chacha "] {
        assert!(
            closure.iter().any(|p| p.starts_with(expected)),
            "{expected} missing from {closure:?}"
        );
    }
    assert!(!closure.iter().any(|p| p.starts_with("proptest ")));
}

#[test]
fn cargo_tree_parser_and_deny_list_catch_tokio() {
    let text = "idunno-core v0.1.0 (/x/core)\nserde v1.0.0\ntokio v1.54.0\n\
                tokio-macros v2.0.0 (proc-macro)\ntokiox v1.0.0\nserde v1.0.0 (*)\n";
    let tree = parse_cargo_tree(text, "idunno-core").expect("parses");
    let denied: Vec<&str> = tree
        .iter()
        .filter(|(name, _)| is_denied(name, CORE_DENIED))
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(denied, ["tokio", "tokio-macros"]);
    assert_eq!(tree.len(), 4, "core itself excluded, duplicates merged");
    assert!(parse_cargo_tree("garbage", "idunno-core").is_err());
}

const WORKSPACE_MANIFEST: &str = r#"
[workspace]
members = ["core"]
[workspace.dependencies]
serde = "1"
rng = { package = "rand", version = "0.9" }
"#;

const CORE_MANIFEST: &str = r#"
[package]
name = "idunno-core"
[dependencies]
serde.workspace = true
rng.workspace = true
[dev-dependencies]
proptest = "1"
"#;

/// A lock where core is clean; `extra_core_dep` adds one more entry under idunno-core.
fn synthetic_lock(extra_core_dep: &str) -> String {
    format!(
        r#"
version = 4

[[package]]
name = "idunno-core"
version = "0.1.0"
dependencies = [
 "proptest",
 "rand 0.9.5",
 "serde",
 {extra_core_dep}
]

[[package]]
name = "serde"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "rand"
version = "0.9.5"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "rand"
version = "0.10.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = [
 "getrandom",
]

[[package]]
name = "proptest"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = [
 "rand 0.10.0",
]

[[package]]
name = "getrandom"
version = "0.3.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = [
 "libc",
]

[[package]]
name = "libc"
version = "0.2.0"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "tokio"
version = "1.54.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = [
 "mio",
]

[[package]]
name = "mio"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = [
 "libc",
]
"#
    )
}

fn denied_for(lock: &str, core_manifest: &str) -> Vec<String> {
    check_member(
        lock,
        "idunno-core",
        core_manifest,
        WORKSPACE_MANIFEST,
        CORE_DENIED,
    )
    .expect("synthetic input parses")
    .0
}

#[test]
fn walker_passes_a_clean_core_and_ignores_dev_dependencies() {
    assert_eq!(
        denied_for(&synthetic_lock(""), CORE_MANIFEST),
        Vec::<String>::new()
    );
}

#[test]
fn walker_fails_when_tokio_is_added_to_core() {
    // Even as a target-specific dependency.
    let manifest = format!("{CORE_MANIFEST}\n[target.'cfg(unix)'.dependencies]\ntokio = \"1\"\n");
    let denied = denied_for(&synthetic_lock("\"tokio\","), &manifest);
    assert_eq!(denied, ["libc 0.2.0", "mio 1.0.0", "tokio 1.54.0"]);
    let (anywhere, _) = check_member(
        &synthetic_lock("\"tokio\","),
        "idunno-core",
        &manifest,
        WORKSPACE_MANIFEST,
        CORE_DENIED_ANYWHERE,
    )
    .expect("parses");
    assert_eq!(anywhere, ["mio 1.0.0", "tokio 1.54.0"]);
}

#[test]
fn walker_fails_when_a_normal_dependency_reaches_getrandom() {
    // proptest as a normal dependency drags rand 0.10 -> getrandom -> libc in.
    let manifest = CORE_MANIFEST.replace("[dev-dependencies]\n", "");
    let denied = denied_for(&synthetic_lock(""), &manifest);
    assert_eq!(denied, ["getrandom 0.3.0", "libc 0.2.0"]);
}

#[test]
fn walker_resolves_renamed_workspace_dependencies() {
    let names = normal_dependency_names(CORE_MANIFEST, WORKSPACE_MANIFEST).expect("parses");
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["rand", "serde"]);
}

#[test]
fn walker_refuses_a_manifest_dependency_missing_from_the_lock() {
    let manifest = format!("{CORE_MANIFEST}\n[build-dependencies]\ncc = \"1\"\n");
    let graph = LockGraph::parse(&synthetic_lock("")).expect("parses");
    let names = normal_dependency_names(&manifest, WORKSPACE_MANIFEST).expect("parses");
    assert!(graph.closure("idunno-core", Some(&names)).is_err());
}

/// Source patterns core must not use, and why.
const FORBIDDEN_SOURCE: &[(&str, &str)] = &[
    ("std::fs", "file I/O"),
    ("std::io::stdin", "terminal I/O"),
    ("UdpSocket", "network I/O"),
    ("TcpStream", "network I/O"),
    ("TcpListener", "network I/O"),
    ("std::process", "processes"),
    ("std::thread", "threads"),
    ("std::env", "the environment"),
    ("Instant::now", "the clock"),
    ("SystemTime", "the wall clock"),
    ("thread_rng", "global randomness"),
    ("rand::rng()", "global randomness"),
    ("OsRng", "OS randomness"),
    ("from_entropy", "OS randomness"),
    ("from_os_rng", "OS randomness"),
    ("getrandom", "OS randomness"),
    ("tokio", "an async runtime"),
    (".await", "async code"),
    ("async fn", "async code"),
];

/// `(line number, pattern, why)` for every forbidden pattern on a non-comment line.
fn scan_source(text: &str) -> Vec<(usize, &'static str, &'static str)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        for &(pattern, why) in FORBIDDEN_SOURCE {
            if code.contains(pattern) {
                found.push((number + 1, pattern, why));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_sources_do_no_io_read_no_clock_and_use_no_global_randomness() {
    let mut files = Vec::new();
    rust_files(&workspace_root().join("core/src"), &mut files);
    assert!(files.len() >= 3, "found core's sources: {files:?}");
    let mut violations = Vec::new();
    for file in &files {
        for (line, pattern, why) in scan_source(&read(file)) {
            violations.push(format!("{}:{line}: `{pattern}` ({why})", file.display()));
        }
    }
    assert!(
        violations.is_empty(),
        "core must stay pure:\n{}",
        violations.join("\n")
    );
}

#[test]
fn source_scanner_catches_io_and_skips_comments() {
    let text = "//! never reads the clock: no Instant::now here\n\
                let t = std::time::Instant::now(); // the clock\n\
                use tokio::net::UdpSocket;\n";
    let found: Vec<(usize, &str)> = scan_source(text).iter().map(|&(l, p, _)| (l, p)).collect();
    assert_eq!(found, [(2, "Instant::now"), (3, "UdpSocket"), (3, "tokio")]);
}
