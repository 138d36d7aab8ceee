//! `auth-bench`: what cluster authentication costs membership traffic.
//!
//! Measures, in one run on this machine: (1) sealing and opening one datagram
//! (XChaCha20-Poly1305 plus the replay check) at membership sizes, single-threaded; (2) the
//! round-trip time of datagram ping-pong over loopback UDP through [`AuthSocket`], with and
//! without a key, the same sockets and sizes (what a SWIM probe pays). Prints a markdown table.
//!
//! ```sh
//! cargo run --release -p idunno-runtime --bin auth-bench -- --round-trips 20000
//! ```
//!
//! Must never: bind outside loopback.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_runtime::auth::{AuthSocket, ClusterKey, DatagramKey, ReplayGuard};
use idunno_runtime::net::{DatagramSocket, RECV_BUFFER_BYTES};
use idunno_runtime::node::block_on;
use tokio::net::UdpSocket;

/// Options.
#[derive(Debug, Parser)]
#[command(name = "auth-bench")]
struct Args {
    /// Seal/open operations per size.
    #[arg(long, default_value_t = 200_000)]
    operations: u64,
    /// Ping-pong round trips per size and mode.
    #[arg(long, default_value_t = 20_000)]
    round_trips: u64,
    /// Datagram sizes in bytes (SWIM: a bare ping is ~100 B, the cap is 1400 B).
    #[arg(long, value_delimiter = ',', default_value = "128,512,1400")]
    sizes: Vec<usize>,
}

fn seal_open_ns(size: usize, operations: u64) -> (f64, f64) {
    let key = DatagramKey::from(&ClusterKey::generate());
    let payload = vec![7u8; size];
    let now = 1_800_000_000;
    let start = Instant::now();
    let mut sealed = Vec::new();
    for counter in 0..operations {
        sealed = black_box(key.seal(1, counter, now, black_box(&payload)));
    }
    let seal = start.elapsed().as_secs_f64() * 1e9 / operations as f64;
    let datagrams: Vec<Vec<u8>> = (0..operations.min(10_000))
        .map(|counter| key.seal(1, counter, now, &payload))
        .collect();
    drop(sealed);
    let mut guard = ReplayGuard::default();
    let start = Instant::now();
    for (i, datagram) in datagrams
        .iter()
        .cycle()
        .take(operations as usize)
        .enumerate()
    {
        let opened = key.open(black_box(datagram), now);
        if let Ok(opened) = opened {
            // Fresh counters, so every check takes the accepting path a live stream takes.
            let _ = black_box(guard.accept(opened.session, i as u64));
        }
    }
    let open = start.elapsed().as_secs_f64() * 1e9 / operations as f64;
    (seal, open)
}

async fn ping_pong(
    key: Option<&ClusterKey>,
    size: usize,
    round_trips: u64,
) -> std::io::Result<Duration> {
    let a = AuthSocket::new(UdpSocket::bind("127.0.0.1:0").await?, key);
    let b = AuthSocket::new(UdpSocket::bind("127.0.0.1:0").await?, key);
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (a.local_addr()?, b.local_addr()?);
    let echo = async {
        let mut buf = [0u8; RECV_BUFFER_BYTES];
        for _ in 0..round_trips {
            let (len, _) = b.recv_from(&mut buf).await?;
            b.send_to(&buf[..len], a_addr).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    let ping = async {
        let payload = vec![3u8; size];
        let mut buf = [0u8; RECV_BUFFER_BYTES];
        let start = Instant::now();
        for _ in 0..round_trips {
            a.send_to(&payload, b_addr).await?;
            let (len, _) = a.recv_from(&mut buf).await?;
            if len != size {
                return Err(std::io::Error::other("echo changed the size"));
            }
        }
        Ok(start.elapsed())
    };
    let (echoed, elapsed) = tokio::try_join!(echo, ping)?;
    let () = echoed;
    Ok(elapsed)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| datagram | seal | open + replay check | RTT no key | RTT with key | added per round trip |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
    let key = ClusterKey::generate();
    for &size in &args.sizes {
        let (seal, open) = seal_open_ns(size, args.operations);
        let result = block_on(async {
            // Warm up both paths, then measure each twice and keep the faster (scheduler noise).
            ping_pong(None, size, 1000).await?;
            ping_pong(Some(&key), size, 1000).await?;
            let mut plain = Duration::MAX;
            let mut sealed = Duration::MAX;
            for _ in 0..2 {
                plain = plain.min(ping_pong(None, size, args.round_trips).await?);
                sealed = sealed.min(ping_pong(Some(&key), size, args.round_trips).await?);
            }
            Ok::<_, std::io::Error>((plain, sealed))
        });
        let (plain, sealed) = match result {
            Ok(Ok(times)) => times,
            Ok(Err(e)) | Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let per = |d: Duration| d.as_secs_f64() * 1e6 / args.round_trips as f64;
        let _ = writeln!(
            out,
            "| {size} B | {:.2} µs | {:.2} µs | {:.1} µs | {:.1} µs | {:+.1} µs ({:+.0}%) |",
            seal / 1000.0,
            open / 1000.0,
            per(plain),
            per(sealed),
            per(sealed) - per(plain),
            (per(sealed) / per(plain) - 1.0) * 100.0
        );
    }
    print!("{out}");
    ExitCode::SUCCESS
}
