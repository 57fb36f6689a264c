//! Helpers shared by the CLI's process tests.

#![allow(dead_code)]

pub mod cluster;
pub mod netns;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_specd")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 exchange: status and body.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |x| x.1).to_owned();
    (status, body)
}

/// A `specd` process whose log (stderr) is read as it comes, so that a full pipe never blocks
/// it, and kept for the test to read. Killed when dropped.
pub struct Proc {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts `specd ARGS` with the extra environment `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn_under(&[], args, env)
    }

    /// Starts `WRAPPER… specd ARGS` (e.g. `ip netns exec NS`, which becomes the specd process).
    pub fn spawn_under(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = match wrapper {
            [] => Command::new(bin()),
            [program, rest @ ..] => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
        };
        let mut child = cmd
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn specd");
        let mut err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc { child, log }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Panics with its log if it has exited.
    pub fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            panic!("specd exited early: {status}: {}", self.log());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `GET /health` on `port` answers 200 (503 "loading" before), or panics.
pub fn wait_http_ready(port: u16, proc: &mut Proc) {
    let start = std::time::Instant::now();
    loop {
        proc.check_running();
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (code, body) = http(port, "GET", "/health", "");
            if code == 200 {
                return;
            }
            assert_eq!(code, 503, "{body}");
            assert!(body.contains("loading"), "{body}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "HTTP API not ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The prompt of the OpenAI client checks.
pub const PROMPT: &str = "Explain in detail how a bicycle works.";

/// Runs cli/tests/openai_client.py (the official `openai` Python client) against the HTTP API on
/// `port`; its greedy output must equal `specd generate`'s. `coordinator`: the API of a
/// coordinator (no logprobs there).
pub fn openai_client_checks(port: u16, model: &str, coordinator: bool) {
    let out = Command::new(bin())
        .args([
            "generate",
            "--prompt",
            PROMPT,
            "--chat",
            "--max-tokens",
            "40",
            "--json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let j: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.json");
    std::fs::write(
        &expected,
        serde_json::json!({
            "prompt": PROMPT,
            "text": j["text"],
            "completion_tokens": j["token_ids"].as_array().unwrap().len(),
        })
        .to_string(),
    )
    .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let base = format!("http://127.0.0.1:{port}/v1");
    let mut args = vec![script, &base, model, expected.to_str().unwrap()];
    if coordinator {
        args.push("coordinator");
    }
    let out = python().args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai client checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed, 0 failed"), "{stdout}");
}

/// The Python the tests check the servers with ($SPECD_TEST_PYTHON, default python3).
pub fn python() -> Command {
    Command::new(std::env::var("SPECD_TEST_PYTHON").unwrap_or_else(|_| "python3".into()))
}

/// Runs the Python `code` with `args`: its stdout, the test failing with both streams if it fails.
pub fn run_python(code: &str, args: &[&str]) -> String {
    let o = python().arg("-c").arg(code).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Certificates made for the test: a CA, a server certificate for localhost signed by it, and
/// a client certificate signed by it; written as PEM files into `dir`.
pub struct TestPki {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub client_cert: String,
    pub client_key: String,
}

pub fn test_pki(dir: &std::path::Path) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL takes a leaf whose issuer name is its own for a self-signed one.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "specd test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf(vec!["localhost".into()]);
    let (client, client_key) = leaf(vec!["specd-client".into()]);
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p.to_str().unwrap().to_owned()
    };
    TestPki {
        ca: write("ca.pem", &ca.pem()),
        cert: write("node.pem", &server),
        key: write("node.key", &server_key),
        client_cert: write("client.pem", &client),
        client_key: write("client.key", &client_key),
    }
}

/// The samples at http://127.0.0.1:PORT/metrics as a real Prometheus parser
/// (`prometheus_client`) reads them, keyed by name and labels (`name{"label": "value"}`).
pub fn prometheus(port: u16) -> std::collections::HashMap<String, f64> {
    prometheus_at(&format!("127.0.0.1:{port}"))
}

/// [`prometheus`] of a host's `ADDR:PORT`.
pub fn prometheus_at(addr: &str) -> std::collections::HashMap<String, f64> {
    let code = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1]).read().decode()
print(json.dumps({s.name + json.dumps(s.labels, sort_keys=True): s.value
                  for f in text_string_to_metric_families(text) for s in f.samples}))
"#;
    let out = run_python(code, &[&format!("http://{addr}/metrics")]);
    serde_json::from_str(&out).unwrap()
}
