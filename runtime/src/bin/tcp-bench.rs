//! `tcp-bench`: what TCP security costs control traffic, with and without a cluster key.
//!
//! In one process on loopback it starts two control servers (the node's real
//! [`control::serve_guarded`], with a stub driver that answers `ListSelf` at once): one plain,
//! one keyed. Then, for each, in the same run: (1) request round trips on one open connection
//! (`ListSelf`, in batches of [`control::REQUESTS_PER_CONNECTION_MAX`], the most a connection
//! serves; only the round trips are timed); (2) a whole call on a fresh connection, as
//! [`control::call`] makes it (connect, handshake, one request, answer); (3) one-way bulk
//! throughput of a single connection (memory to memory: the record layer's ceiling).
//! Prints markdown tables.
//!
//! ```sh
//! cargo run --release -p idunno-runtime --bin tcp-bench -- --round-trips 10000 --calls 2000
//! ```
//!
//! Must never: bind outside loopback.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_core::membership::NodeId;
use idunno_core::wire::{self, ControlRequest, ControlResponse};
use idunno_runtime::auth::tcp::{TcpAuth, connect_with};
use idunno_runtime::auth::{ClusterKey, TcpGuard};
use idunno_runtime::control::{self, read_frame, write_frame};
use idunno_runtime::driver::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Options.
#[derive(Debug, Parser)]
#[command(name = "tcp-bench")]
struct Args {
    /// Request round trips on open connections, per mode.
    #[arg(long, default_value_t = 10_000)]
    round_trips: usize,
    /// Calls on fresh connections, per mode.
    #[arg(long, default_value_t = 2_000)]
    calls: usize,
    /// Bulk bytes sent one way, per mode, in MB (10^6 bytes).
    #[arg(long, default_value_t = 1000)]
    bulk_mb: u64,
}

type BenchResult<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A control server behind `guard` whose driver answers every request with `SelfInfo`.
async fn control_server(guard: TcpGuard) -> BenchResult<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let (tx, mut rx) = mpsc::channel::<Request>(64);
    tokio::spawn(async move {
        while let Some(Request { reply, .. }) = rx.recv().await {
            let _ = reply.send(ControlResponse::SelfInfo {
                id: NodeId::new(addr, 1),
                incarnation: 1,
            });
        }
    });
    tokio::spawn(control::serve_guarded(
        listener,
        tx,
        None,
        None,
        Arc::new(guard),
        None,
    ));
    Ok(addr)
}

/// `round_trips` ListSelf round trips on connections opened beforehand; the time of the round
/// trips alone.
async fn round_trips(addr: SocketAddr, auth: &TcpAuth, count: usize) -> BenchResult<Duration> {
    let mut total = Duration::ZERO;
    let mut left = count;
    while left > 0 {
        let batch = left.min(control::REQUESTS_PER_CONNECTION_MAX);
        let mut stream = connect_with(addr, auth).await.map_err(err)?;
        let started = Instant::now();
        for _ in 0..batch {
            write_frame(&mut stream, &ControlRequest::ListSelf)
                .await
                .map_err(err)?;
            let answer = read_frame::<ControlResponse, _>(&mut stream, wire::FRAME_BYTES_MAX)
                .await
                .map_err(err)?;
            if !matches!(answer, Some(ControlResponse::SelfInfo { .. })) {
                return Err(format!("unexpected answer {answer:?}"));
            }
        }
        total += started.elapsed();
        left -= batch;
    }
    Ok(total)
}

/// `count` whole calls on fresh connections; each call's time, sorted.
async fn fresh_calls(addr: SocketAddr, auth: &TcpAuth, count: usize) -> BenchResult<Vec<Duration>> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let mut stream = connect_with(addr, auth).await.map_err(err)?;
        write_frame(&mut stream, &ControlRequest::ListSelf)
            .await
            .map_err(err)?;
        let answer = read_frame::<ControlResponse, _>(&mut stream, wire::FRAME_BYTES_MAX)
            .await
            .map_err(err)?;
        if !matches!(answer, Some(ControlResponse::SelfInfo { .. })) {
            return Err(format!("unexpected answer {answer:?}"));
        }
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times)
}

/// Sends `bytes` one way over one connection (the receiver discards them and acks at the end);
/// the time from the first byte to the ack.
async fn bulk(key: Option<&ClusterKey>, bytes: u64) -> BenchResult<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let guard = TcpGuard::new(key);
    let receiver = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(err)?;
        let (mut stream, _) = guard.accept(tcp).await.map_err(err)?;
        let mut buf = vec![0u8; 512 * 1024];
        let mut got = 0u64;
        while got < bytes {
            let n = stream.read(&mut buf).await.map_err(err)?;
            if n == 0 {
                return Err("early end".to_owned());
            }
            got += n as u64;
        }
        stream.write_all(b"k").await.map_err(err)?;
        Ok::<(), String>(())
    });
    let mut stream = connect_with(addr, &TcpAuth::node(key)).await.map_err(err)?;
    let chunk = vec![5u8; 512 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = usize::try_from((bytes - sent).min(chunk.len() as u64)).unwrap_or(chunk.len());
        stream.write_all(&chunk[..n]).await.map_err(err)?;
        sent += n as u64;
    }
    stream.flush().await.map_err(err)?;
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).await.map_err(err)?;
    let elapsed = started.elapsed();
    receiver.await.map_err(err)??;
    Ok(elapsed)
}

/// Single-threaded seal and open speed of 64 KiB records (the cipher alone), in MB/s.
fn cipher_mb_per_s(bytes: u64) -> (f64, f64) {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&[9u8; 32]));
    let record = idunno_runtime::auth::stream::RECORD_PLAINTEXT_MAX;
    let records = (bytes / record as u64).max(1);
    let nonce = Nonce::from([0u8; 12]);
    let mut buf = vec![1u8; record];
    let started = Instant::now();
    for _ in 0..records {
        let sealed = cipher.encrypt_in_place_detached(&nonce, b"hdr", &mut buf);
        let _ = std::hint::black_box(sealed);
    }
    let seal = started.elapsed();
    let sealed = buf.clone();
    let Ok(tag) = cipher.encrypt_in_place_detached(&nonce, b"hdr", &mut buf) else {
        return (0.0, 0.0);
    };
    let ciphertext = buf.clone();
    let started = Instant::now();
    let mut opened = 0u64;
    for _ in 0..records {
        // A fresh copy of the ciphertext each time (a 64 KiB copy, included in the time).
        buf.copy_from_slice(&ciphertext);
        if cipher
            .decrypt_in_place_detached(&nonce, b"hdr", &mut buf, &tag)
            .is_ok()
        {
            opened += 1;
        }
    }
    let open = started.elapsed();
    if opened != records || buf != sealed {
        return (0.0, 0.0);
    }
    let mb = (records * record as u64) as f64 / 1e6;
    (
        mb / seal.as_secs_f64().max(1e-9),
        mb / open.as_secs_f64().max(1e-9),
    )
}

/// This process's CPU time (user + system, all threads) so far, from `/proc/self/stat` (in
/// 10 ms ticks); zero where unavailable.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn bench(args: &Args) -> BenchResult<String> {
    let key = ClusterKey::generate();
    let plain_addr = control_server(TcpGuard::insecure()).await?;
    let secure_addr = control_server(TcpGuard::new(Some(&key))).await?;
    let modes = [
        ("plain TCP (no key)", plain_addr, TcpAuth::Insecure),
        (
            "sealed, client token",
            secure_addr,
            TcpAuth::client_of(&key),
        ),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| connection | round trip on an open connection (mean of {}) | fresh call p50 | fresh call p99 | fresh call mean (of {}) |",
        args.round_trips, args.calls
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (name, addr, auth) in &modes {
        // Warm up, then measure.
        round_trips(*addr, auth, 500).await?;
        fresh_calls(*addr, auth, 100).await?;
        let rt = round_trips(*addr, auth, args.round_trips).await?;
        let calls = fresh_calls(*addr, auth, args.calls).await?;
        let mean: Duration =
            calls.iter().sum::<Duration>() / u32::try_from(calls.len().max(1)).unwrap_or(1);
        let _ = writeln!(
            out,
            "| {name} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
            us(rt) / args.round_trips.max(1) as f64,
            us(percentile(&calls, 0.5)),
            us(percentile(&calls, 0.99)),
            us(mean),
        );
    }
    let bytes = args.bulk_mb * 1_000_000;
    let _ = writeln!(
        out,
        "\n| one connection, {} MB one way, memory to memory | time | throughput | CPU (both ends) per GB |",
        args.bulk_mb
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let (seal, open) = cipher_mb_per_s(bytes / 4);
    let _ = writeln!(
        out,
        "| (the cipher alone, one thread: seal {seal:.0} MB/s, open {open:.0} MB/s) | | | |"
    );
    for (name, key) in [("plain TCP", None), ("sealed", Some(&key))] {
        bulk(key, bytes / 10).await?;
        let before = cpu_time();
        let time = bulk(key, bytes).await?;
        let cpu = cpu_time().saturating_sub(before);
        let _ = writeln!(
            out,
            "| {name} | {:.2} s | {:.0} MB/s | {:.2} s |",
            time.as_secs_f64(),
            bytes as f64 / 1e6 / time.as_secs_f64().max(1e-9),
            cpu.as_secs_f64() / (bytes as f64 / 1e9).max(1e-9)
        );
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Two workers: the client and the server side can run on separate cores, as two processes.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tcp-bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(&args)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tcp-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
