//! The link emulator against an echo server on loopback: round trip within one-sided bounds of
//! 2·delay, byte order under jitter, rate limiting, and surviving client and upstream disconnects.

use std::time::{Duration, Instant};

use specd_link::{serve_on, LinkConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = tokio::spawn(async move {
        loop {
            let (mut s, _) = match l.accept().await {
                Ok(x) => x,
                Err(_) => return,
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, h)
}

async fn link(upstream: &str, delay_ms: u64, jitter_ms: u64, rate: Option<f64>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let cfg = LinkConfig {
        listen: l.local_addr().unwrap(),
        upstream: upstream.to_owned(),
        delay: Duration::from_millis(delay_ms),
        jitter: Duration::from_millis(jitter_ms),
        rate,
        seed: 7,
    };
    tokio::spawn(async move { serve_on(l, cfg, std::future::pending()).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_is_about_twice_the_delay() {
    let (echo, _h) = echo_server().await;
    for d in [0u64, 10, 25] {
        let addr = link(&echo, d, 0, None).await;
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut rtts = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            rtts.push(t0.elapsed());
            assert_eq!(&buf, b"ping");
        }
        let two_d = Duration::from_millis(2 * d);
        let slack = Duration::from_millis(20).max(two_d / 2);
        // Never early (the delay is a floor); late only by scheduling, so the upper bound is on
        // the median (a loaded machine may stall one ping).
        for &rtt in &rtts {
            assert!(
                rtt + Duration::from_millis(1) >= two_d,
                "delay {d} ms: RTT {rtt:?} < 2D - 1 ms"
            );
        }
        rtts.sort();
        let median = rtts[rtts.len() / 2];
        assert!(
            median <= two_d + slack,
            "delay {d} ms: median RTT {median:?} > 2D + {slack:?} ({rtts:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arrive_in_order_under_jitter() {
    let (echo, _h) = echo_server().await;
    let addr = link(&echo, 5, 5, None).await;
    let s = TcpStream::connect(&addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let data: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let expect = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(7919) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "bytes reordered or corrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_throughput() {
    let (echo, _h) = echo_server().await;
    // 1 MB/s each way: 300 KB needs at least ~0.3 s.
    let addr = link(&echo, 0, 0, Some(1e6)).await;
    let s = TcpStream::connect(&addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let t0 = Instant::now();
    let writer = tokio::spawn(async move {
        w.write_all(&vec![1u8; 300_000]).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), 300_000);
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_client_and_upstream_disconnects() {
    let (echo, h) = echo_server().await;
    let addr = link(&echo, 2, 0, None).await;
    // A client that goes away mid-stream.
    {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(&vec![0u8; 100_000]).await.unwrap();
    }
    // The proxy still serves new connections.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    // The upstream goes away: the client sees the connection end, the proxy keeps accepting.
    h.abort();
    drop(s);
    let (echo2, _h2) = echo_server().await;
    let addr2 = link(&echo2, 2, 0, None).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .expect("the client is not left hanging");
    assert!(matches!(r, Ok(0) | Err(_)), "no data from a dead upstream");
    let mut s2 = TcpStream::connect(&addr2).await.unwrap();
    s2.write_all(b"x").await.unwrap();
    s2.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"x");
}
