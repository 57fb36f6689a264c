//! `specd link`: a TCP proxy that emulates a WAN link between a draft-node and a target-node (this
//! kernel has no `tc netem`). Each direction of each connection is delayed by `delay ± jitter`
//! (so RTT = 2·delay) and limited to `rate`; bytes keep their order, as on a real TCP path
//! (release times never decrease). Many connections; a failing connection never affects others.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub listen: SocketAddr,
    pub upstream: String,
    /// One-way delay of each direction.
    pub delay: Duration,
    /// Uniform jitter: each chunk's delay is in [delay − jitter, delay + jitter] (not below 0).
    pub jitter: Duration,
    /// Bytes per second per direction; `None` = unlimited.
    pub rate: Option<f64>,
    pub seed: u64,
}

/// Parses `20ms`, `2ms`, `1.5s`, `500us`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    let (num, unit) = t.split_at(
        t.find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
            .unwrap_or(t.len()),
    );
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a duration (e.g. 20ms, 1.5s, 500us)"))?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "" if v == 0.0 => 0.0,
        _ => bail!("{s:?}: unknown duration unit {unit:?} (use s, ms or us)"),
    };
    if !secs.is_finite() || secs < 0.0 {
        bail!("{s:?}: a duration must be >= 0");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a rate as `100mbit`, `1gbit`, `800kbit`, `64bit` (bits per second) or `10MB/s`,
/// `512KB/s`, `100B/s` (bytes per second); returns bytes per second.
pub fn parse_rate(s: &str) -> Result<f64> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a rate (e.g. 100mbit, 10MB/s)"))?;
    let bytes = match unit {
        "bit" => v / 8.0,
        "kbit" => v * 1e3 / 8.0,
        "mbit" => v * 1e6 / 8.0,
        "gbit" => v * 1e9 / 8.0,
        "b/s" => v,
        "kb/s" => v * 1e3,
        "mb/s" => v * 1e6,
        "gb/s" => v * 1e9,
        _ => bail!("{s:?}: unknown rate unit {unit:?} (use bit, kbit, mbit, gbit, or B/s, KB/s, MB/s, GB/s)"),
    };
    if !bytes.is_finite() || bytes <= 0.0 {
        bail!("{s:?}: a rate must be > 0");
    }
    Ok(bytes)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Delivers everything read from `from` to `to`, each chunk released at
/// `max(arrival + delay ± jitter, previous release, previous release + size/rate)`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cfg: Arc<LinkConfig>,
    key: u64,
) -> u64 {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(4096);
    let reader = {
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut last = Instant::now();
            let mut n_chunk = 0u64;
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let now = Instant::now();
                let j = if cfg.jitter.is_zero() {
                    0.0
                } else {
                    let u = (splitmix64(splitmix64(cfg.seed ^ key) ^ n_chunk) >> 11) as f64
                        / (1u64 << 53) as f64;
                    (2.0 * u - 1.0) * cfg.jitter.as_secs_f64()
                };
                n_chunk += 1;
                let delay = Duration::from_secs_f64((cfg.delay.as_secs_f64() + j).max(0.0));
                let serialization = cfg
                    .rate
                    .map_or(Duration::ZERO, |r| Duration::from_secs_f64(n as f64 / r));
                let release = (now + delay).max(last + serialization);
                last = release;
                if tx.send((release, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut sent = 0u64;
    while let Some((at, data)) = rx.recv().await {
        // A release time already reached goes out at once (a timer would round up to its tick).
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        if to.write_all(&data).await.is_err() {
            break;
        }
        sent += data.len() as u64;
    }
    let _ = to.shutdown().await;
    reader.abort();
    sent
}

async fn handle(client: TcpStream, peer: SocketAddr, cfg: Arc<LinkConfig>, id: u64) {
    let upstream = match TcpStream::connect(&cfg.upstream).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(
                "connection {id} from {peer}: cannot reach upstream {}: {e}; closing it",
                cfg.upstream
            );
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = tokio::spawn(pump(cr, uw, cfg.clone(), id * 2));
    let down = tokio::spawn(pump(ur, cw, cfg.clone(), id * 2 + 1));
    let (a, b) = (up.await.unwrap_or(0), down.await.unwrap_or(0));
    tracing::info!("connection {id} from {peer} closed ({a} bytes up, {b} bytes down)");
}

/// Binds and serves until `shutdown`.
pub async fn serve(cfg: LinkConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    serve_on(listener, cfg, shutdown).await
}

/// Serves on an already bound listener until `shutdown`.
pub async fn serve_on(
    listener: TcpListener,
    cfg: LinkConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    tracing::info!(
        "{} -> {}, delay {:?} ± {:?} per direction (RTT {:?}), rate {}",
        listener.local_addr()?,
        cfg.upstream,
        cfg.delay,
        cfg.jitter,
        cfg.delay * 2,
        cfg.rate.map_or("unlimited".into(), |r| format!(
            "{:.1} Mbit/s",
            r * 8.0 / 1e6
        ))
    );
    let cfg = Arc::new(cfg);
    let ids = AtomicU64::new(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(handle(sock, peer, cfg.clone(), id));
                }
                Err(e) => tracing::warn!("accept failed: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_rates() {
        assert_eq!(parse_duration("20ms").unwrap(), Duration::from_millis(20));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(
            parse_duration("20").is_err()
                && parse_duration("-1ms").is_err()
                && parse_duration("fast").is_err()
        );
        assert_eq!(parse_rate("100mbit").unwrap(), 12.5e6);
        assert_eq!(parse_rate("10MB/s").unwrap(), 10e6);
        assert!(parse_rate("0mbit").is_err() && parse_rate("100 furlongs").is_err());
    }
}
