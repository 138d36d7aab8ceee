//! Transfer tests over loopback TCP: real control servers with blob services, the blob client,
//! and fake peers that misbehave (die mid-transfer, send garbage).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use idunno_core::wire::{self, ControlRequest, ControlResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::client::{GetError, PutError, ReplicaFault};
use super::testutil::{TempDir, bytes};
use super::*;
use crate::control::{self, read_frame, write_frame};

/// One blob-serving node on loopback.
struct TestNode {
    addr: SocketAddr,
    store: BlobStore,
    corrupt: mpsc::Receiver<BlobHash>,
    server: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn node_with(limits: StoreLimits) -> TestNode {
    let dir = TempDir::new("node");
    let store = BlobStore::open(dir.path(), limits).expect("open store");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (service, corrupt) = BlobService::new(store.clone(), addr);
    // No membership driver behind this server: other requests get "shutting down".
    let (requests, _) = mpsc::channel(1);
    let server = tokio::spawn(control::serve_full(
        listener,
        requests,
        None,
        Some(Arc::new(service)),
    ));
    TestNode {
        addr,
        store,
        corrupt,
        server,
        _dir: dir,
    }
}

async fn node() -> TestNode {
    node_with(StoreLimits::default()).await
}

async fn nodes(n: usize) -> Vec<TestNode> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(node().await);
    }
    out
}

fn addrs(nodes: &[TestNode]) -> Vec<SocketAddr> {
    nodes.iter().map(|n| n.addr).collect()
}

fn tmp_empty(node: &TestNode) -> bool {
    std::fs::read_dir(node.store.dir().join(store::TMP_DIR))
        .expect("tmp")
        .next()
        .is_none()
}

async fn put(replicas: &[SocketAddr], data: &[u8], mode: PutMode) -> Result<BlobHash, PutError> {
    let hash = BlobHash::of(data);
    put_blob_from(replicas, hash, data.len() as u64, data, mode).await?;
    Ok(hash)
}

/// Waits (bounded) until every node's temp dir is empty: failed transfers clean up after the
/// client already got its answer.
async fn settle(nodes: &[TestNode]) {
    for _ in 0..200 {
        if nodes.iter().all(tmp_empty) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("temp files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_and_fan_out_puts_reach_every_replica_and_get_round_trips() {
    let cluster = nodes(4).await;
    let replicas = addrs(&cluster);
    let scratch = TempDir::new("rt");
    for (seed, mode) in [(1, PutMode::Chain), (2, PutMode::FanOut)] {
        let data = bytes(3 * CHUNK_BYTES + 1234, seed);
        let hash = put(&replicas, &data, mode).await.expect("put");
        for node in &cluster {
            assert_eq!(node.store.size_of(&hash), Some(data.len() as u64));
        }
        // Idempotent: the same put again succeeds and changes nothing.
        assert_eq!(put(&replicas, &data, mode).await.expect("again"), hash);
        for (i, node) in cluster.iter().enumerate() {
            let dest = scratch.path().join(format!("out-{seed}-{i}"));
            let report = get_blob(&[node.addr], hash, &dest).await.expect("get");
            assert_eq!(report.served_by, node.addr);
            assert!(report.bad.is_empty());
            assert_eq!(std::fs::read(&dest).expect("dest"), data);
        }
    }
    // A file put hashes it first.
    let path = scratch.path().join("source");
    let data = bytes(1000, 3);
    std::fs::write(&path, &data).expect("write");
    let hash = put_blob(&replicas, &path, PutMode::Chain)
        .await
        .expect("file put");
    assert_eq!(hash, BlobHash::of(&data));
    // An empty blob is a blob too.
    let empty = put(&replicas, &[], PutMode::Chain).await.expect("empty");
    let dest = scratch.path().join("empty");
    get_blob(&replicas, empty, &dest).await.expect("get empty");
    assert_eq!(std::fs::read(&dest).expect("dest"), b"");
    settle(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_mismatch_is_refused_everywhere_and_invisible() {
    let cluster = nodes(3).await;
    let data = bytes(CHUNK_BYTES + 10, 4);
    let wrong = BlobHash::of(b"not these bytes");
    for mode in [PutMode::Chain, PutMode::FanOut] {
        let result =
            put_blob_from(&addrs(&cluster), wrong, data.len() as u64, &data[..], mode).await;
        match result {
            Err(PutError::Replica { replica, reason }) => {
                assert_eq!(replica, cluster[0].addr);
                assert!(reason.contains("hash mismatch"), "{reason}");
            }
            other => panic!("expected a replica error, got {other:?}"),
        }
    }
    settle(&cluster).await;
    for node in &cluster {
        assert!(node.store.list().expect("list").is_empty());
    }
}

/// Sends a put's frame and waits for `BlobReady`.
async fn start_raw_put(
    to: SocketAddr,
    hash: BlobHash,
    size: u64,
    chain: Vec<SocketAddr>,
) -> TcpStream {
    let mut stream = TcpStream::connect(to).await.expect("connect");
    let request = ControlRequest::BlobPut {
        hash: hash.0,
        size,
        chain,
    };
    write_frame(&mut stream, &request).await.expect("frame");
    let ready: Option<ControlResponse> = read_frame(&mut stream, wire::FRAME_BYTES_MAX)
        .await
        .expect("answer");
    assert_eq!(ready, Some(ControlResponse::BlobReady));
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_stream_is_never_acknowledged_nor_visible() {
    let cluster = nodes(3).await;
    let data = bytes(2 * CHUNK_BYTES, 5);
    let hash = BlobHash::of(&data);
    let chain = addrs(&cluster[1..]);
    let mut stream = start_raw_put(cluster[0].addr, hash, data.len() as u64, chain).await;
    stream
        .write_all(&data[..CHUNK_BYTES + 7])
        .await
        .expect("half");
    stream.shutdown().await.expect("close");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    // Whatever came back, it is not a `BlobStored`.
    assert!(rest.is_empty(), "got an answer to a truncated put");
    settle(&cluster).await;
    for node in &cluster {
        assert!(!node.store.contains(&hash));
    }
}

/// A replica that accepts a put, reads `after` bytes, then dies (closes the connection).
async fn dying_replica(after: usize) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let _: Option<ControlRequest> = read_frame(&mut stream, control::REQUEST_BYTES_MAX)
                .await
                .ok()
                .flatten();
            let _ = write_frame(&mut stream, &ControlResponse::BlobReady).await;
            let mut got = vec![0u8; after];
            let _ = stream.read_exact(&mut got).await;
            drop(stream);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_dying_mid_transfer_is_named_and_nothing_is_acknowledged() {
    let cluster = nodes(2).await;
    let (dead, fake) = dying_replica(CHUNK_BYTES).await;
    let data = bytes(6 * CHUNK_BYTES, 6);
    for mode in [PutMode::Chain, PutMode::FanOut] {
        let replicas = vec![cluster[0].addr, cluster[1].addr, dead];
        match put(&replicas, &data, mode).await {
            Err(PutError::Replica { replica, .. }) => assert_eq!(replica, dead, "{mode:?}"),
            other => panic!("{mode:?}: expected the dead replica named, got {other:?}"),
        }
    }
    fake.abort();
    // An unreachable first hop is named too, before any byte is sent.
    let gone = dead;
    tokio::time::sleep(Duration::from_millis(50)).await;
    match put(&[gone, cluster[0].addr], &data, PutMode::Chain).await {
        Err(PutError::Replica { replica, .. }) => assert_eq!(replica, gone),
        other => panic!("expected the unreachable replica named, got {other:?}"),
    }
    settle(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_falls_back_past_corrupt_missing_and_dead_replicas() {
    let mut cluster = nodes(3).await;
    let data = bytes(2 * CHUNK_BYTES + 99, 7);
    let hash = put(&addrs(&cluster), &data, PutMode::Chain)
        .await
        .expect("put");
    // Corrupt the first replica's copy on disk; remove the second's.
    let path = cluster[0].store.path_of(&hash);
    let mut flipped = std::fs::read(&path).expect("read");
    flipped[CHUNK_BYTES + 5] ^= 0x10;
    std::fs::write(&path, &flipped).expect("corrupt");
    cluster[1].store.remove(&hash).expect("remove");
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    };
    let scratch = TempDir::new("fallback");
    let dest = scratch.path().join("out");
    let order = [dead, cluster[0].addr, cluster[1].addr, cluster[2].addr];
    let report = get_blob(&order, hash, &dest).await.expect("get");
    assert_eq!(report.served_by, cluster[2].addr);
    assert_eq!(std::fs::read(&dest).expect("dest"), data);
    let faults: Vec<_> = report.bad.iter().map(|(a, f)| (*a, f.clone())).collect();
    assert_eq!(faults.len(), 3, "{faults:?}");
    assert!(matches!(faults[0], (a, ReplicaFault::Unreachable(_)) if a == dead));
    assert!(matches!(faults[1], (a, ReplicaFault::Corrupt(_)) if a == cluster[0].addr));
    assert!(matches!(faults[2], (a, ReplicaFault::Refused(_)) if a == cluster[1].addr));
    // The corrupt copy was removed and reported by its node.
    let reported = tokio::time::timeout(Duration::from_secs(5), cluster[0].corrupt.recv())
        .await
        .expect("reported");
    assert_eq!(reported, Some(hash));
    assert!(!cluster[0].store.contains(&hash));
    // With no good copy left anywhere, the get fails and leaves no destination.
    let nowhere = scratch.path().join("nowhere");
    let failed = get_blob(&[cluster[0].addr, cluster[1].addr], hash, &nowhere).await;
    assert!(matches!(failed, Err(GetError::NoGoodReplica { ref bad }) if bad.len() == 2));
    assert!(!nowhere.exists());
    assert!(!client::partial_path(&nowhere).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_replica_refuses_before_any_byte_and_is_named() {
    let small = StoreLimits {
        blob_bytes_max: 1 << 30,
        disk_bytes_max: 100_000,
    };
    let cluster = vec![node().await, node().await, node_with(small).await];
    let data = bytes(200_000, 8);
    match put(&addrs(&cluster), &data, PutMode::Chain).await {
        Err(PutError::Replica { replica, reason }) => {
            assert_eq!(replica, cluster[2].addr);
            assert!(reason.contains("disk full"), "{reason}");
        }
        other => panic!("expected disk full at the last replica, got {other:?}"),
    }
    settle(&cluster).await;
    for node in &cluster {
        assert!(node.store.list().expect("list").is_empty());
        assert_eq!(node.store.used_bytes(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_bad_requests_get_clear_errors() {
    let cluster = nodes(1).await;
    let me = cluster[0].addr;
    let ask = |request: ControlRequest| async move {
        let mut stream = TcpStream::connect(me).await.expect("connect");
        write_frame(&mut stream, &request).await.expect("frame");
        read_frame::<ControlResponse, _>(&mut stream, wire::FRAME_BYTES_MAX)
            .await
            .expect("answer")
    };
    // A chain naming the node itself.
    let looped = ask(ControlRequest::BlobPut {
        hash: [0; 32],
        size: 1,
        chain: vec![me],
    })
    .await;
    assert!(matches!(looped, Some(ControlResponse::BlobFailed { replica, .. }) if replica == me));
    // Too large for the store.
    let huge = ask(ControlRequest::BlobPut {
        hash: [0; 32],
        size: u64::MAX,
        chain: vec![],
    })
    .await;
    assert!(
        matches!(huge, Some(ControlResponse::BlobFailed { ref reason, .. }) if reason.contains("exceeds")),
        "{huge:?}"
    );
    // A chain longer than allowed.
    let long = ask(ControlRequest::BlobPut {
        hash: [0; 32],
        size: 1,
        chain: vec![SocketAddr::from(([127, 0, 0, 1], 1)); transfer::CHAIN_MAX + 1],
    })
    .await;
    assert!(
        matches!(long, Some(ControlResponse::BlobFailed { .. })),
        "{long:?}"
    );
    // An unknown blob.
    let unknown = ask(ControlRequest::BlobGet {
        hash: [7; 32],
        offset: 0,
    })
    .await;
    assert!(
        matches!(unknown, Some(ControlResponse::Error(_))),
        "{unknown:?}"
    );
    // Garbage instead of a frame.
    let mut stream = TcpStream::connect(me).await.expect("connect");
    stream
        .write_all(&[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x00])
        .await
        .expect("garbage");
    let answer = read_frame::<ControlResponse, _>(&mut stream, wire::FRAME_BYTES_MAX)
        .await
        .expect("answer");
    assert!(
        matches!(answer, Some(ControlResponse::Error(_))),
        "{answer:?}"
    );
    // A raw put by hand: frame, ready, exactly `size` bytes, one answer.
    let data = bytes(1000, 9);
    let hash = BlobHash::of(&data);
    let mut stream = start_raw_put(me, hash, data.len() as u64, vec![]).await;
    stream.write_all(&data).await.expect("data");
    let answer = read_frame::<ControlResponse, _>(&mut stream, wire::FRAME_BYTES_MAX)
        .await
        .expect("answer");
    assert_eq!(
        answer,
        Some(ControlResponse::BlobStored { replicas: vec![me] })
    );
    assert_eq!(cluster[0].store.size_of(&hash), Some(1000));
    settle(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_data_dir_serves_blobs_and_one_without_refuses() {
    use crate::node::{BLOBS_DIR, NodeOptions, bind};
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let dir = TempDir::new("node-wiring");
    let with = bind(NodeOptions::new(
        loopback,
        vec![],
        Some(dir.path().to_owned()),
    ))
    .await
    .expect("bind");
    let with_addr = with.id().addr;
    let store = with.blob_store().expect("a data dir opens a store");
    assert_eq!(store.dir(), dir.path().join(BLOBS_DIR));
    let without = bind(NodeOptions::new(loopback, vec![], None))
        .await
        .expect("bind");
    let without_addr = without.id().addr;
    assert!(without.blob_store().is_none());
    let running = [tokio::spawn(with.run()), tokio::spawn(without.run())];
    let data = bytes(CHUNK_BYTES + 3, 10);
    let hash = put(&[with_addr], &data, PutMode::Chain)
        .await
        .expect("put to the node");
    assert!(store.contains(&hash));
    match put(&[without_addr], &data, PutMode::Chain).await {
        Err(PutError::Replica { replica, reason }) => {
            assert_eq!(replica, without_addr);
            assert!(reason.contains("no blobs"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let dest = dir.path().join("out");
    get_blob(&[without_addr, with_addr], hash, &dest)
        .await
        .expect("get falls back to the node with blobs");
    assert_eq!(std::fs::read(&dest).expect("dest"), data);
    for task in running {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_gets_ready_is_named_by_its_upstream() {
    let cluster = nodes(2).await;
    // Accepts connections and reads the request, but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let stalled = listener.local_addr().expect("addr");
    let fake = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let data = bytes(1000, 11);
    let started = std::time::Instant::now();
    match put(
        &[cluster[0].addr, cluster[1].addr, stalled],
        &data,
        PutMode::Chain,
    )
    .await
    {
        Err(PutError::Replica { replica, .. }) => assert_eq!(replica, stalled),
        other => panic!("expected the stalled replica named, got {other:?}"),
    }
    // The hop right above it gave up first (one hop's budget), not the client (three hops').
    assert!(started.elapsed() < transfer::READY_TIMEOUT_PER_HOP * 2);
    fake.abort();
    settle(&cluster).await;
}
