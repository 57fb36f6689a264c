//! Node processes for the benchmarks: `specd <subcommand>` children on loopback ports, killed
//! when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A child process, killed and reaped on drop.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the gRPC server on the loopback `port` answers health SERVING.
async fn serving(port: u16) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(ch) = ep.connect().await else {
        return false;
    };
    HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32)
}

/// A loopback port free at the time of asking.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `specd <args>` and waits until its gRPC health on `port` answers SERVING (a node
/// listens at once and is NOT_SERVING while its model loads).
pub fn start(args: &[String], port: u16) -> Result<Proc> {
    let exe = std::env::current_exe().context("cannot find the specd binary")?;
    // The child's messages go to a log file, quoted if it fails to start.
    let log = std::env::temp_dir().join(format!("specd-bench-{}-{port}.log", std::process::id()));
    let mut p = Proc(
        Command::new(exe)
            .args(args)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&log)
                    .with_context(|| format!("cannot create {}", log.display()))?,
            )
            .spawn()?,
    );
    let t0 = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    while !rt.block_on(serving(port)) {
        if let Some(status) = p.0.try_wait()? {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "`specd {}` exited: {status}\n{}",
                args.join(" "),
                said.trim_end()
            );
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("`specd {}` did not start serving", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(p)
}

/// Starts `specd <role> --listen 127.0.0.1:PORT --model MODEL` (`target-node` or `draft-node`) on
/// a free loopback port; returns the process and the port.
pub fn start_model_node(role: &str, model: &str) -> Result<(Proc, u16)> {
    let port = free_port()?;
    let p = start(
        &[
            role.into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--model".into(),
            model.into(),
        ],
        port,
    )?;
    Ok((p, port))
}
