//! Dependency-tree checks: which packages does a crate pull in, transitively?
//!
//! Owns two views of idunno-core's dependencies and the deny lists they are checked against:
//! - [`cargo_tree`]: cargo's own resolve for one package (`cargo tree -p <pkg> -e normal,build`,
//!   host target), exact about features and platforms. Checked against [`CORE_DENIED`]: nothing
//!   async, no sockets, no OS interface, no OS randomness.
//! - [`LockGraph`]: a `Cargo.lock` walker that needs no cargo. The lock is the workspace's
//!   resolve for every platform with every member's features unified, so its closure is an
//!   over-approximation: on this workspace it reaches `getrandom`, `libc` and `futures-util`
//!   through `rand_core`'s `os_rng` feature and wasm-only edges that another member's
//!   dependencies (Burn) switch on, none of which core compiles on its own. It is therefore
//!   checked against the shorter [`CORE_DENIED_ANYWHERE`] (async runtimes and socket crates,
//!   which no unification excuses). The walk starts from the names in the member's
//!   `[dependencies]` / `[build-dependencies]` (target tables included), never from
//!   `[dev-dependencies]`, because the lock lists a member's dev-dependencies next to its
//!   normal ones (idunno-core -> proptest -> rand 0.10 -> getrandom).
//!
//! Must never: touch the network itself or write anything; it reads files and runs `cargo tree`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Packages idunno-core must never depend on in its own resolve, as name prefixes: async
/// runtimes, executors and futures, socket and event-loop crates, OS interfaces, OS randomness.
pub const CORE_DENIED: &[&str] = &[
    "tokio",
    "mio",
    "async-std",
    "async-io",
    "async-net",
    "async-executor",
    "async-global-executor",
    "async-trait",
    "smol",
    "futures",
    "socket2",
    "net2",
    "hyper",
    "reqwest",
    "ureq",
    "polling",
    "libc",
    "nix",
    "rustix",
    "winapi",
    "windows-sys",
    "wasi",
    "getrandom",
    "fastrand",
    "turmoil",
    "madsim",
];

/// Packages that must not appear even in the lock file's over-approximated closure of core:
/// async runtimes and socket crates (see the module docs).
pub const CORE_DENIED_ANYWHERE: &[&str] = &[
    "tokio",
    "mio",
    "async-std",
    "async-io",
    "async-net",
    "smol",
    "socket2",
    "net2",
    "hyper",
    "reqwest",
    "ureq",
    "polling",
    "turmoil",
    "madsim",
];

/// `name version` of every package in `package`'s own resolve for the host, normal and build
/// edges only (no dev-dependencies), as `cargo tree` reports it; `package` itself excluded.
pub fn cargo_tree(
    cargo: &Path,
    workspace_root: &Path,
    package: &str,
) -> Result<BTreeSet<(String, String)>, LockError> {
    let output = Command::new(cargo)
        .current_dir(workspace_root)
        .args(["tree", "-p", package, "-e", "normal,build"])
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .map_err(|e| LockError(format!("cannot run {}: {e}", cargo.display())))?;
    if !output.status.success() {
        return err(format!(
            "cargo tree failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_cargo_tree(&String::from_utf8_lossy(&output.stdout), package)
}

/// Parses `cargo tree --prefix none --format {p}` output: one `name vVERSION [extra]` per line.
pub fn parse_cargo_tree(
    text: &str,
    package: &str,
) -> Result<BTreeSet<(String, String)>, LockError> {
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            return err(format!("unexpected cargo tree line {line:?}"));
        };
        let Some(version) = version.strip_prefix('v') else {
            return err(format!("unexpected cargo tree line {line:?}"));
        };
        if name != package {
            out.insert((name.to_owned(), version.to_owned()));
        }
    }
    Ok(out)
}

/// Whether `name` is `denied` or starts with it followed by `-` or `_` (`tokio` matches
/// `tokio` and `tokio-util`, not `tokiox`).
pub fn is_denied(name: &str, denied: &[&str]) -> bool {
    denied.iter().any(|d| {
        name == *d
            || name
                .strip_prefix(d)
                .is_some_and(|rest| rest.starts_with(['-', '_']))
    })
}

/// One `[[package]]` of a lock file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    /// Crate name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Registry or git source; `None` for path (workspace) packages.
    pub source: Option<String>,
    /// Raw dependency entries: `name`, `name version` or `name version (source)`.
    pub dependencies: Vec<String>,
}

/// The packages of one lock file, with dependency entries resolvable to packages.
#[derive(Debug, Clone)]
pub struct LockGraph {
    packages: Vec<Package>,
}

/// Why a lock file or manifest could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockError(pub String);

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LockError {}

fn err<T>(message: impl Into<String>) -> Result<T, LockError> {
    Err(LockError(message.into()))
}

impl LockGraph {
    /// Parses the text of a `Cargo.lock` (format v3 or v4).
    pub fn parse(text: &str) -> Result<Self, LockError> {
        let value: toml::Table = text
            .parse()
            .map_err(|e| LockError(format!("Cargo.lock is not TOML: {e}")))?;
        let Some(list) = value.get("package").and_then(|p| p.as_array()) else {
            return err("Cargo.lock has no [[package]] entries");
        };
        let mut packages = Vec::with_capacity(list.len());
        for entry in list {
            let field = |key: &str| entry.get(key).and_then(|v| v.as_str()).map(str::to_owned);
            let (Some(name), Some(version)) = (field("name"), field("version")) else {
                return err(format!("package entry without name or version: {entry}"));
            };
            let dependencies = entry
                .get("dependencies")
                .and_then(|d| d.as_array())
                .map(|deps| {
                    deps.iter()
                        .filter_map(|d| d.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            packages.push(Package {
                name,
                version,
                source: field("source"),
                dependencies,
            });
        }
        Ok(LockGraph { packages })
    }

    /// Every package in the lock.
    pub fn packages(&self) -> &[Package] {
        &self.packages
    }

    /// The unique package named `name`, or an error if there is none or several.
    pub fn package(&self, name: &str) -> Result<&Package, LockError> {
        let mut found = self.packages.iter().filter(|p| p.name == name);
        match (found.next(), found.next()) {
            (Some(p), None) => Ok(p),
            (None, _) => err(format!("no package {name} in the lock file")),
            (Some(_), Some(_)) => err(format!("several packages named {name} in the lock file")),
        }
    }

    /// Resolves one dependency entry (`name`, `name version`, `name version (source)`).
    pub fn resolve(&self, entry: &str) -> Result<&Package, LockError> {
        let mut parts = entry.splitn(3, ' ');
        let name = parts.next().unwrap_or_default();
        let version = parts.next();
        let source = parts
            .next()
            .map(|s| s.trim_start_matches('(').trim_end_matches(')'));
        let mut found = self.packages.iter().filter(|p| {
            p.name == name
                && version.is_none_or(|v| p.version == v)
                && source.is_none_or(|s| p.source.as_deref() == Some(s))
        });
        match (found.next(), found.next()) {
            (Some(p), None) => Ok(p),
            (None, _) => err(format!("dependency entry {entry:?} matches no package")),
            (Some(_), Some(_)) => err(format!("dependency entry {entry:?} is ambiguous")),
        }
    }

    /// Every package reachable from `root`'s dependencies whose names are in `root_names`
    /// (all of `root`'s dependencies when `root_names` is `None`), sorted; `root` excluded.
    /// An entry of `root` whose name appears in `root_names` is followed whatever its version,
    /// so a name used both as a normal and a dev-dependency errs on the strict side.
    pub fn closure(
        &self,
        root: &str,
        root_names: Option<&BTreeSet<String>>,
    ) -> Result<BTreeSet<&Package>, LockError> {
        let root = self.package(root)?;
        let mut stack: Vec<&Package> = Vec::new();
        for entry in &root.dependencies {
            let name = entry.split(' ').next().unwrap_or_default();
            if root_names.is_none_or(|names| names.contains(name)) {
                stack.push(self.resolve(entry)?);
            }
        }
        if let Some(names) = root_names {
            for name in names {
                if !stack.iter().any(|p| &p.name == name) {
                    return err(format!(
                        "{} declares {name} but the lock file lists no such dependency of it",
                        root.name
                    ));
                }
            }
        }
        let mut seen: BTreeSet<&Package> = BTreeSet::new();
        // Bounded by the number of packages: each is expanded at most once.
        while let Some(package) = stack.pop() {
            if !seen.insert(package) {
                continue;
            }
            for entry in &package.dependencies {
                stack.push(self.resolve(entry)?);
            }
        }
        Ok(seen)
    }
}

/// The package names a member manifest depends on outside `[dev-dependencies]`: its
/// `[dependencies]` and `[build-dependencies]`, also under `[target.*]`. A key renamed with
/// `package = ".."` (in the member or in the workspace's `[workspace.dependencies]`) counts
/// under its real package name.
pub fn normal_dependency_names(
    member_manifest: &str,
    workspace_manifest: &str,
) -> Result<BTreeSet<String>, LockError> {
    let member: toml::Table = member_manifest
        .parse()
        .map_err(|e| LockError(format!("member manifest is not TOML: {e}")))?;
    let workspace: toml::Table = workspace_manifest
        .parse()
        .map_err(|e| LockError(format!("workspace manifest is not TOML: {e}")))?;
    let workspace_deps = workspace
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(|d| d.as_table());
    let mut tables: Vec<&toml::Table> = Vec::new();
    for key in ["dependencies", "build-dependencies"] {
        tables.extend(member.get(key).and_then(|t| t.as_table()));
    }
    if let Some(targets) = member.get("target").and_then(|t| t.as_table()) {
        for target in targets.values() {
            for key in ["dependencies", "build-dependencies"] {
                tables.extend(target.get(key).and_then(|t| t.as_table()));
            }
        }
    }
    let mut names = BTreeSet::new();
    for table in tables {
        for (key, spec) in table {
            let inherited = spec
                .get("workspace")
                .and_then(|w| w.as_bool())
                .unwrap_or(false);
            let renamed = spec.get("package").and_then(|p| p.as_str()).or_else(|| {
                inherited
                    .then(|| workspace_deps?.get(key)?.get("package")?.as_str())
                    .flatten()
            });
            names.insert(renamed.unwrap_or(key).to_owned());
        }
    }
    Ok(names)
}

/// The packages in `closure` that [`is_denied`].
pub fn denied_in<'a>(closure: &BTreeSet<&'a Package>, denied: &[&str]) -> Vec<&'a Package> {
    closure
        .iter()
        .copied()
        .filter(|p| is_denied(&p.name, denied))
        .collect()
}

/// Convenience for the purity test: the denied packages that `member`'s non-dev dependencies
/// pull in, given the texts of the lock file and the two manifests. Also returns the closure's
/// `name version` list for diagnostics.
pub fn check_member(
    lock: &str,
    member: &str,
    member_manifest: &str,
    workspace_manifest: &str,
    denied: &[&str],
) -> Result<(Vec<String>, Vec<String>), LockError> {
    let graph = LockGraph::parse(lock)?;
    let roots = normal_dependency_names(member_manifest, workspace_manifest)?;
    let closure = graph.closure(member, Some(&roots))?;
    let show = |p: &Package| format!("{} {}", p.name, p.version);
    let bad = denied_in(&closure, denied).into_iter().map(show).collect();
    let all = closure.iter().map(|p| show(p)).collect();
    Ok((bad, all))
}
