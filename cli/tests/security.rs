//! Security of the distributed mode, with the real binaries on 127.0.0.1: the coordinator's API
//! keys, the node secret, TLS on every gRPC link (mutual between nodes). Session tokens are
//! tested with the other frame checks in `distributed.rs`; the HTTP API's keys and HTTPS in
//! `serve.rs`.

use std::process::Command;
use std::time::{Duration, Instant};

use specd_proto::v1;
use specd_proto::v1::target_verifier_client::TargetVerifierClient;
use tonic_health::pb::health_check_response::ServingStatus;

mod common;

use common::cluster::{
    coordinator_with, generate, grpc_health, json, run, spawn_with, target_node, Node, PROMPTS,
};
use common::{bin, free_port, test_pki, Proc};

/// The coordinator's gRPC service with an API key: a request without it, or with another, is
/// UNAUTHENTICATED and runs nothing; with it (`SPECD_API_KEY` of `specd generate`), the output is
/// the embedded run's. gRPC health stays open to probes.
#[test]
fn the_coordinator_grpc_api_requires_its_key() {
    let prompt = PROMPTS[1];
    let expected = generate(prompt, &["--max-tokens", "16", "--mode", "target-only"]);
    let t = target_node(&[]);
    let c = coordinator_with(&t.url, "", &["--api-key", "acme:sk-acme-0123456789abcdef"]);
    let args = [
        "generate",
        "--prompt",
        prompt,
        "--chat",
        "--json",
        "--max-tokens",
        "16",
        "--coordinator",
        &c.url,
    ];
    for key in [None, Some("sk-wrong-0123456789abcdef")] {
        let mut cmd = Command::new(bin());
        cmd.args(args).env_remove("SPECD_API_KEY");
        if let Some(k) = key {
            cmd.env("SPECD_API_KEY", k);
        }
        let o = cmd.output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && e.contains("API key"),
            "key {key:?}: {e}"
        );
    }
    let o = Command::new(bin())
        .args(args)
        .env("SPECD_API_KEY", "sk-acme-0123456789abcdef")
        .output()
        .unwrap();
    assert_eq!(json(&o)["token_ids"], expected["token_ids"]);
}

/// With `--node-secret-file`, a node refuses calls without the secret or with another
/// (UNAUTHENTICATED, naming the flag), its health stays open, and a deployment whose processes
/// share the file runs as without one.
#[test]
fn node_rpcs_require_the_node_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("node-secret");
    std::fs::write(&secret, "3f6c0e0b5d1a4c2e9b7f8a6d5c4b3a29\n").unwrap();
    let secret = secret.to_str().unwrap();
    let prompt = PROMPTS[0];
    let expected = generate(prompt, &["--max-tokens", "24", "--mode", "target-only"]);
    // Started by health alone: the probes need no secret.
    let t = target_node(&["--node-secret-file", secret]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let d = spawn_with(
        &["draft-node", "--listen", &listen, "--drafter", "ngram"],
        &[("SPECD_NODE_SECRET_FILE", secret)],
        port,
    );
    let c = coordinator_with(&t.url, &d.url, &["--node-secret-file", secret]);
    let o = run(&[
        "generate",
        "--prompt",
        prompt,
        "--chat",
        "--json",
        "--max-tokens",
        "24",
        "--drafter",
        "ngram",
        "--coordinator",
        &c.url,
    ]);
    let out = json(&o);
    assert_eq!(out["token_ids"], expected["token_ids"]);
    // The draft-node reached the target with the secret (else it falls back to target-only).
    assert_eq!(out["fallback"], false, "{out}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = TargetVerifierClient::connect(t.url.clone()).await.unwrap();
        let open = || v1::OpenSessionRequest {
            prompt: "Hello".into(),
            max_tokens: 4,
            ..Default::default()
        };
        let e = c.open_session(open()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains("--node-secret-file"), "{e:?}");
        let mut wrong = tonic::Request::new(open());
        wrong.metadata_mut().insert(
            specd_rpc::auth::NODE_SECRET_HEADER,
            "0000000000000000000000".parse().unwrap(),
        );
        let e = c.open_session(wrong).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains("wrong node secret"), "{e:?}");
    });
    let service = specd_proto::v1::target_verifier_server::SERVICE_NAME;
    assert_eq!(
        grpc_health(&rt, &t.url, service),
        Some(ServingStatus::Serving)
    );
    // A coordinator without the secret is refused at start, naming why.
    let port = free_port();
    let o = run(&[
        "coordinator",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--target",
        &t.url,
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("node secret"), "{e}");
}

/// `specd health URL` with the given environment: its exit status and stderr.
fn health_cli(url: &str, env: &[(&str, &str)]) -> (bool, String) {
    let o = Command::new(bin())
        .args(["health", url, "--timeout", "3"])
        .env_remove("SPECD_TLS_CA")
        .env_remove("SPECD_TLS_CERT")
        .env_remove("SPECD_TLS_KEY")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// TLS on every gRPC link, mutual on the node links: the output equals target-only's through
/// TLS; a plaintext client against a TLS node, and a client without a certificate against a
/// node that requires one, are refused with a clear error.
#[test]
fn tls_on_every_grpc_link_with_mutual_tls_between_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path());
    let client_env = [
        ("SPECD_TLS_CA", pki.ca.as_str()),
        ("SPECD_TLS_CERT", pki.client_cert.as_str()),
        ("SPECD_TLS_KEY", pki.client_key.as_str()),
    ];
    // Every node serves TLS with the node certificate, requires client certificates from the
    // CA (the coordinator's public API does not), and checks its peers against the CA.
    let node_tls = |mutual: bool| {
        let mut a = vec![
            "--tls-cert".to_owned(),
            pki.cert.clone(),
            "--tls-key".into(),
            pki.key.clone(),
            "--tls-ca".into(),
            pki.ca.clone(),
        ];
        if mutual {
            a.extend(["--tls-client-ca".into(), pki.ca.clone()]);
        }
        a
    };
    let start = |args: Vec<String>, port: u16| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proc = Proc::spawn(&refs, &[]);
        let url = format!("https://localhost:{port}");
        let t0 = Instant::now();
        loop {
            proc.check_running();
            if health_cli(&url, &client_env).0 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "{}", proc.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        Node { proc, url }
    };
    let node = |role: &str, extra: &[&str], mutual: bool| {
        let port = free_port();
        let mut args: Vec<String> =
            vec![role.into(), "--listen".into(), format!("127.0.0.1:{port}")];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(node_tls(mutual));
        start(args, port)
    };
    let t = node("target-node", &[], true);
    let d = node("draft-node", &["--drafter", "ngram"], true);
    let c = node(
        "coordinator",
        &["--target", &t.url, "--draft", &d.url],
        false,
    );

    let prompt = PROMPTS[0];
    let expected = generate(prompt, &["--max-tokens", "24", "--mode", "target-only"]);
    // The prompt through a coordinator, as a client with the CA and a client certificate.
    let through = |url: &str| {
        let o = Command::new(bin())
            .args([
                "generate",
                "--prompt",
                prompt,
                "--chat",
                "--json",
                "--max-tokens",
                "24",
                "--drafter",
                "ngram",
                "--coordinator",
                url,
            ])
            .envs(client_env)
            .output()
            .unwrap();
        json(&o)
    };
    let out = through(&c.url);
    assert_eq!(out["token_ids"], expected["token_ids"]);
    assert_eq!(
        out["fallback"], false,
        "the draft-node verified through TLS: {out}"
    );

    // The target as a DNS name: the coordinator dials https://127.0.0.1:PORT, an address the
    // certificate does not carry, and checks it against the name (localhost); so does the
    // draft-node it tells the name, whose --allow-target allows the name's addresses.
    let name = t.url.replace("https://localhost", "dns:///localhost");
    let d2 = node(
        "draft-node",
        &["--drafter", "ngram", "--allow-target", &name],
        true,
    );
    let c2 = node(
        "coordinator",
        &["--target", &name, "--draft", &d2.url],
        false,
    );
    let out = through(&c2.url);
    assert_eq!(out["token_ids"], expected["token_ids"]);
    assert_eq!(out["fallback"], false, "the draft verified by name: {out}");

    // A plaintext client against a TLS node: refused, pointing at https://.
    let plain = t.url.replace("https://localhost", "http://127.0.0.1");
    let (ok, e) = health_cli(&plain, &[]);
    assert!(!ok && e.contains("https://"), "{e}");
    // Without a client certificate the mutual-TLS target refuses; the coordinator's API does not
    // ask for one.
    let (ok, e) = health_cli(&t.url, &client_env[..1]);
    assert!(!ok, "no client certificate, yet served: {e}");
    assert!(health_cli(&c.url, &client_env[..1]).0);
    // A CA that did not sign the node's certificate: refused.
    let other = tempfile::tempdir().unwrap();
    let other = test_pki(other.path());
    let (ok, e) = health_cli(&c.url, &[("SPECD_TLS_CA", other.ca.as_str())]);
    assert!(!ok, "a certificate of another CA was trusted: {e}");
    // A coordinator told a plaintext URL for a TLS target fails at start, naming the fix.
    let port = free_port();
    let o = run(&[
        "coordinator",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--target",
        &plain,
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("https://"), "{e}");
}
