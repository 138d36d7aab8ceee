//! `dfs-bench`: blob put and get throughput against a raw TCP copy of the same bytes, and the
//! peak memory of a large put.
//!
//! In one process on loopback it starts R blob servers (the node's real control server and blob
//! service; each store in its own directory under `--dir`, so every replica writes to the same
//! disk and fsyncs), writes a source file of each size, and measures in the same run, `--reps`
//! times each (the median is reported):
//! - raw copy (the baseline): one TCP stream between two blocking threads with one reused
//!   512 KiB buffer each; the sender reads the source file, the receiver writes a file in the
//!   same directory and fsyncs it;
//! - raw copy to memory: the same, the receiver discards the bytes;
//! - put with 1 replica (the protocol's own cost over the raw copy), and with R replicas, chain
//!   (pipelined) and fan-out (the client sends to each replica); the hash is known beforehand
//!   (hashing the file is timed separately);
//! - get from one replica into a file (fsynced, hash-checked).
//!
//! Then, in a child process (the same executable with `--rss-child`), it starts the R servers
//! and the client there, puts a `--rss-mb` file with 4 replicas (chain, then fan-out) and reports
//! the process's peak resident memory (VmHWM) before and after.
//!
//! With `--secure`, every blob connection (client to replica, replica to replica) runs the
//! cluster-key handshake and is sealed in ChaCha20-Poly1305 records, as in a keyed cluster
//! (the raw copies stay plain: they are the baseline); compare a run with and without.
//!
//! ```sh
//! cargo build --release -p idunno-runtime --bin dfs-bench
//! target/release/dfs-bench --sizes-mb 25,500 --reps 3 --rss-mb 1024
//! target/release/dfs-bench --sizes-mb 25,500 --reps 3 --rss-mb 1024 --secure
//! ```
//!
//! Must never: leave its temp directory behind on a normal exit, or bind outside 127.0.0.1.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_runtime::auth::tcp::install;
use idunno_runtime::auth::{ClusterKey, TcpAuth, TcpGuard};
use idunno_runtime::blobs::{
    BlobHash, BlobService, BlobStore, CHUNK_BYTES, PutMode, StoreLimits, get_blob, hash_file,
    put_blob_from,
};
use idunno_runtime::control;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Blob put/get throughput vs a raw TCP copy, and peak memory of a large put.
#[derive(Debug, Parser)]
#[command(name = "dfs-bench")]
struct Args {
    /// Blob sizes in MB (10^6 bytes), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [25u64, 500])]
    sizes_mb: Vec<u64>,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Replicas per put.
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Size of the put whose peak memory is measured, in MB; 0 skips it.
    #[arg(long, default_value_t = 1000)]
    rss_mb: u64,
    /// Where the stores and files go (a fresh subdirectory is made and removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seal every blob connection with a fresh cluster key (handshake and encrypted records).
    #[arg(long)]
    secure: bool,
    /// Internal: run the peak-memory put of this many MB in this process and print VmHWM.
    #[arg(long, hide = true)]
    rss_child: Option<u64>,
}

const MB: u64 = 1_000_000;

fn main() -> ExitCode {
    let args = Args::parse();
    let key = args.secure.then(ClusterKey::generate);
    // The client's and the replicas' own connections prove the key (one process, one key).
    if install(TcpAuth::node(key.as_ref())).is_err() {
        eprintln!("dfs-bench: cannot install the key");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dfs-bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = base.join(format!("idunno-dfs-bench-{}", std::process::id()));
    let result = match fs::create_dir_all(&root) {
        Ok(()) => runtime.block_on(async {
            match args.rss_child {
                Some(size_mb) => rss_child(&root, size_mb, args.replicas, key.as_ref()).await,
                None => bench(&args, &root, key.as_ref()).await,
            }
        }),
        Err(e) => Err(format!("cannot create {}: {e}", root.display())),
    };
    let _ = fs::remove_dir_all(&root);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfs-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// R blob servers on loopback, each with its own store under `root`.
struct Servers {
    addrs: Vec<SocketAddr>,
    stores: Vec<BlobStore>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn start_servers(
    root: &Path,
    count: usize,
    key: Option<&ClusterKey>,
) -> Result<Servers, String> {
    let mut servers = Servers {
        addrs: Vec::new(),
        stores: Vec::new(),
        tasks: Vec::new(),
    };
    for i in 0..count {
        let store = BlobStore::open(&root.join(format!("replica-{i}")), StoreLimits::default())
            .map_err(|e| e.to_string())?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (service, mut corrupt) = BlobService::new(store.clone(), addr);
        let (requests, _) = mpsc::channel(1);
        servers.tasks.push(tokio::spawn(control::serve_guarded(
            listener,
            requests,
            None,
            Some(Arc::new(service)),
            Arc::new(TcpGuard::new(key)),
            None,
        )));
        servers.tasks.push(tokio::spawn(async move {
            while let Some(hash) = corrupt.recv().await {
                eprintln!("dfs-bench: replica {addr} found {hash} corrupt");
            }
        }));
        servers.addrs.push(addr);
        servers.stores.push(store);
    }
    Ok(servers)
}

/// Writes `size` deterministic pseudo-random bytes to `path`, a chunk at a time.
fn write_source(path: &Path, size: u64, seed: u64) -> Result<(), String> {
    let mut file = File::create(path).map_err(|e| e.to_string())?;
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let mut left = size;
    while left > 0 {
        let len = usize::try_from(left.min(CHUNK_BYTES as u64)).unwrap_or(CHUNK_BYTES);
        for word in chunk[..len].chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        file.write_all(&chunk[..len]).map_err(|e| e.to_string())?;
        left -= len as u64;
    }
    file.sync_all().map_err(|e| e.to_string())
}

/// Where the raw copy's receiver puts the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Disk,
    Memory,
}

/// One single-stream TCP copy of `source` on loopback, the plainest there is: two blocking
/// threads, each with one reused 512 KiB buffer (sender: read the file, write the socket;
/// receiver: read the socket, write the file, fsync). Returns the time from connecting to the
/// receiver's confirmation (sent after its fsync, for `Sink::Disk`).
async fn raw_copy(source: &Path, dest: &Path, sink: Sink) -> Result<Duration, String> {
    let source = source.to_owned();
    let dest = dest.to_owned();
    tokio::task::spawn_blocking(move || raw_copy_blocking(&source, &dest, sink))
        .await
        .map_err(|e| e.to_string())?
}

fn raw_copy_blocking(source: &Path, dest: &Path, sink: Sink) -> Result<Duration, String> {
    use std::net::{TcpListener as StdListener, TcpStream as StdStream};
    let listener = StdListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let dest = dest.to_owned();
    let receiver = std::thread::spawn(move || -> Result<(), String> {
        let (mut stream, _) = listener.accept().map_err(|e| e.to_string())?;
        let mut file = match sink {
            Sink::Disk => Some(File::create(&dest).map_err(|e| e.to_string())?),
            Sink::Memory => None,
        };
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let read = stream.read(&mut buf).map_err(|e| e.to_string())?;
            if read == 0 {
                break;
            }
            if let Some(file) = &mut file {
                file.write_all(&buf[..read]).map_err(|e| e.to_string())?;
            }
        }
        if let Some(file) = file {
            file.sync_all().map_err(|e| e.to_string())?;
        }
        stream.write_all(b"k").map_err(|e| e.to_string())
    });
    let started = Instant::now();
    let mut stream = StdStream::connect(addr).map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut file = File::open(source).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let read = file.read(&mut buf).map_err(|e| e.to_string())?;
        if read == 0 {
            break;
        }
        stream.write_all(&buf[..read]).map_err(|e| e.to_string())?;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    receiver
        .join()
        .map_err(|_| "raw receiver panicked".to_owned())??;
    Ok(elapsed)
}

async fn put_once(
    servers: &Servers,
    replicas: usize,
    source: &Path,
    hash: BlobHash,
    size: u64,
    mode: PutMode,
) -> Result<Duration, String> {
    for store in &servers.stores {
        store.remove(&hash).map_err(|e| e.to_string())?;
    }
    let file = tokio::fs::File::open(source)
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    put_blob_from(&servers.addrs[..replicas], hash, size, file, mode)
        .await
        .map_err(|e| e.to_string())?;
    Ok(started.elapsed())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn mb_per_s(size: u64, time: Duration) -> f64 {
    size as f64 / MB as f64 / time.as_secs_f64().max(1e-9)
}

/// This process's CPU time (user + system, all threads) so far, from `/proc/self/stat` (in
/// 10 ms ticks: `CLK_TCK` is 100 on Linux); zero where unavailable.
fn cpu_time() -> Duration {
    let Ok(stat) = fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The fields after the command name (which may hold spaces) start at `state`, field 3;
    // utime and stime are fields 14 and 15.
    let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Wall time and CPU time of one measured operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Cost {
    wall: Duration,
    cpu: Duration,
}

/// Runs `op` (which returns its own wall time) and adds the CPU time it took.
async fn measure(op: impl Future<Output = Result<Duration, String>>) -> Result<Cost, String> {
    let before = cpu_time();
    let wall = op.await?;
    Ok(Cost {
        wall,
        cpu: cpu_time().saturating_sub(before),
    })
}

fn median_cost(costs: Vec<Cost>) -> Cost {
    Cost {
        wall: median(costs.iter().map(|c| c.wall).collect()),
        cpu: median(costs.iter().map(|c| c.cpu).collect()),
    }
}

struct Row {
    size_mb: u64,
    hash: Duration,
    raw_disk: Cost,
    raw_memory: Cost,
    single: Cost,
    chain: Cost,
    fan_out: Cost,
    get: Cost,
}

async fn bench(args: &Args, root: &Path, key: Option<&ClusterKey>) -> Result<(), String> {
    if args.replicas == 0 || args.reps == 0 {
        return Err("--replicas and --reps must be at least 1".to_owned());
    }
    let servers = start_servers(root, args.replicas, key).await?;
    let mut rows = Vec::new();
    for (index, &size_mb) in args.sizes_mb.iter().enumerate() {
        let size = size_mb * MB;
        let source = root.join(format!("source-{size_mb}"));
        write_source(&source, size, index as u64 + 1)?;
        let started = Instant::now();
        let (hash, hashed_size) = hash_file(&source).await.map_err(|e| e.to_string())?;
        let hash_time = started.elapsed();
        debug_assert_eq!(hashed_size, size);
        let mut raw_disk = Vec::new();
        let mut raw_memory = Vec::new();
        let mut single = Vec::new();
        let mut chain = Vec::new();
        let mut fan_out = Vec::new();
        let mut get = Vec::new();
        let copy = root.join("raw-copy");
        let dest = root.join("got");
        for _ in 0..args.reps {
            raw_disk.push(measure(raw_copy(&source, &copy, Sink::Disk)).await?);
            let _ = fs::remove_file(&copy);
            raw_memory.push(measure(raw_copy(&source, &copy, Sink::Memory)).await?);
            let all = args.replicas;
            let s = &servers;
            single.push(measure(put_once(s, 1, &source, hash, size, PutMode::Chain)).await?);
            // Get right after the single-replica put: from the replica that has it.
            get.push(
                measure(async {
                    let started = Instant::now();
                    get_blob(&servers.addrs[..1], hash, &dest)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(started.elapsed())
                })
                .await?,
            );
            fan_out.push(measure(put_once(s, all, &source, hash, size, PutMode::FanOut)).await?);
            chain.push(measure(put_once(s, all, &source, hash, size, PutMode::Chain)).await?);
            let _ = fs::remove_file(&dest);
        }
        for store in &servers.stores {
            store.remove(&hash).map_err(|e| e.to_string())?;
        }
        let _ = fs::remove_file(&source);
        rows.push(Row {
            size_mb,
            hash: hash_time,
            raw_disk: median_cost(raw_disk),
            raw_memory: median_cost(raw_memory),
            single: median_cost(single),
            chain: median_cost(chain),
            fan_out: median_cost(fan_out),
            get: median_cost(get),
        });
    }
    drop(servers);
    let rss = if args.rss_mb > 0 {
        Some(rss_in_child(args, root)?)
    } else {
        None
    };
    print!("{}", report(args, root, &rows, rss.as_deref()));
    Ok(())
}

fn report(args: &Args, root: &Path, rows: &[Row], rss: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### dfs-bench\n");
    let _ = writeln!(out, "Machine: {}", machine());
    let _ = writeln!(
        out,
        "Data under `{}` (every replica and the raw copy on the same disk, fsync on); {} \
         replicas; median of {} reps; 1 MB = 10^6 bytes; page cache warm (source file just \
         written). Blob connections: {}.\n",
        root.display(),
        args.replicas,
        args.reps,
        if args.secure {
            "sealed (`--secure`: cluster-key handshake, ChaCha20-Poly1305 records)"
        } else {
            "plain TCP (no `--secure`)"
        }
    );
    let _ = writeln!(
        out,
        "| size | raw TCP copy to disk (baseline) | raw TCP copy to memory | put x1 | put chain x{r} | put fan-out x{r} | get | hash the file |",
        r = args.replicas
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for row in rows {
        let size = row.size_mb * MB;
        let raw = mb_per_s(size, row.raw_disk.wall);
        let cell = |cost: Cost| {
            let rate = mb_per_s(size, cost.wall);
            format!(
                "{rate:.0} MB/s ({:.0}%, {:.2}s)",
                100.0 * rate / raw,
                cost.wall.as_secs_f64()
            )
        };
        let _ = writeln!(
            out,
            "| {} MB | {raw:.0} MB/s ({:.2}s) | {} | {} | {} | {} | {} | {:.0} MB/s |",
            row.size_mb,
            row.raw_disk.wall.as_secs_f64(),
            cell(row.raw_memory),
            cell(row.single),
            cell(row.chain),
            cell(row.fan_out),
            cell(row.get),
            mb_per_s(size, row.hash),
        );
    }
    let _ = writeln!(
        out,
        "\nCPU time of the whole process (every replica, the client and the raw receiver \
         run in it; user + system, 10 ms ticks), seconds per GB moved, median:\n"
    );
    let _ = writeln!(
        out,
        "| size | raw copy to disk | raw copy to memory | put x1 | put chain x{r} | put fan-out x{r} | get |",
        r = args.replicas
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for row in rows {
        let gb = (row.size_mb * MB) as f64 / 1e9;
        let per_gb = |cost: Cost| format!("{:.2}", cost.cpu.as_secs_f64() / gb);
        let _ = writeln!(
            out,
            "| {} MB | {} | {} | {} | {} | {} | {} |",
            row.size_mb,
            per_gb(row.raw_disk),
            per_gb(row.raw_memory),
            per_gb(row.single),
            per_gb(row.chain),
            per_gb(row.fan_out),
            per_gb(row.get),
        );
    }
    if let Some(rss) = rss {
        let _ = writeln!(out, "\n{rss}");
    }
    out
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal"))
                .map(|l| l.trim_start_matches("MemTotal:").trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores available, {memory} memory, Linux {}",
        kernel.trim()
    )
}

fn vm_hwm_kb() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn rss_in_child(args: &Args, root: &Path) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new(exe)
        .arg("--rss-child")
        .arg(args.rss_mb.to_string())
        .arg("--replicas")
        .arg(args.replicas.to_string())
        .arg("--dir")
        .arg(root)
        .args(args.secure.then_some("--secure"))
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "peak-memory child failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The child: R servers and the client in this process; a large put, chain then fan-out.
async fn rss_child(
    root: &Path,
    size_mb: u64,
    replicas: usize,
    key: Option<&ClusterKey>,
) -> Result<(), String> {
    let size = size_mb * MB;
    let servers = start_servers(root, replicas, key).await?;
    let source = root.join("rss-source");
    write_source(&source, size, 99)?;
    let (hash, _) = hash_file(&source).await.map_err(|e| e.to_string())?;
    let before = vm_hwm_kb().unwrap_or(0);
    let chain = put_once(&servers, replicas, &source, hash, size, PutMode::Chain).await?;
    let after_chain = vm_hwm_kb().unwrap_or(0);
    let fan_out = put_once(&servers, replicas, &source, hash, size, PutMode::FanOut).await?;
    let after_fan_out = vm_hwm_kb().unwrap_or(0);
    let mut check = File::open(&source).map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    check.read_exact(&mut first).map_err(|e| e.to_string())?;
    println!(
        "Peak memory (VmHWM) of one process holding {replicas} blob servers and the client, \
         putting a {size_mb} MB file: {:.1} MiB before the put, {:.1} MiB after the chain put \
         ({:.1}s), {:.1} MiB after the fan-out put ({:.1}s); chunks are {} KiB, {} queued per hop.",
        before as f64 / 1024.0,
        after_chain as f64 / 1024.0,
        chain.as_secs_f64(),
        after_fan_out as f64 / 1024.0,
        fan_out.as_secs_f64(),
        CHUNK_BYTES / 1024,
        idunno_runtime::blobs::transfer::QUEUE_CHUNKS,
    );
    Ok(())
}
