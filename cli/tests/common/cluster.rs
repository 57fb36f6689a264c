//! Processes of a distributed run on 127.0.0.1: nodes started and waited for (gRPC health), and
//! `specd` commands whose JSON line is read.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use specd_proto::v1;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::{bin, free_port, Proc};

/// A node process, killed on drop.
pub struct Node {
    pub proc: Proc,
    pub url: String,
}

/// Waits until the node's gRPC health answers SERVING (NOT_SERVING while its model loads).
pub fn wait_ready(url: &str, proc: &mut Proc) {
    let start = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    while start.elapsed() < Duration::from_secs(120) {
        proc.check_running();
        if grpc_health(&rt, url, "") == Some(ServingStatus::Serving) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} did not become ready: {}", proc.log());
}

/// A node's gRPC health for `service` ("" for the whole server); None when it cannot be asked.
pub fn grpc_health(
    rt: &tokio::runtime::Runtime,
    url: &str,
    service: &str,
) -> Option<ServingStatus> {
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
            .ok()?;
        let r = HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .ok()?;
        Some(r.into_inner().status())
    })
}

pub fn spawn_with(args: &[&str], env: &[(&str, &str)], port: u16) -> Node {
    let mut proc = Proc::spawn(args, env);
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url, &mut proc);
    Node { proc, url }
}

pub fn spawn(args: &[&str], port: u16) -> Node {
    spawn_with(args, &[], port)
}

pub fn target_node(extra: &[&str]) -> Node {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["target-node", "--listen", &listen];
    args.extend_from_slice(extra);
    spawn(&args, port)
}

pub fn draft_node(model: &str) -> Node {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    spawn(&["draft-node", "--listen", &listen, "--model", model], port)
}

pub fn coordinator(target: &Node, draft: Option<&Node>) -> Node {
    coordinator_with(&target.url, draft.map_or("", |d| d.url.as_str()), &[])
}

/// A coordinator on 127.0.0.1 for the `--target` list `targets` and the `--draft` list `drafts`
/// (comma-separated; "" for none), with `extra` flags, waited for.
pub fn coordinator_with(targets: &str, drafts: &str, extra: &[&str]) -> Node {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["coordinator", "--listen", &listen, "--target", targets];
    if !drafts.is_empty() {
        args.extend(["--draft", drafts]);
    }
    args.extend_from_slice(extra);
    spawn(&args, port)
}

pub fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("run specd")
}

pub fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "specd failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap()
}

pub fn generate(prompt: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["generate", "--prompt", prompt, "--chat", "--json"];
    args.extend_from_slice(extra);
    json(&run(&args))
}

pub const PROMPTS: &[&str] = &[
    "Write a haiku about the sea.",
    "Why do cats purr?",
    "What is 12 times 7? Show your work.",
];

/// A coordinator's `Generate` stream for a greedy chat prompt (γ 4), with the client it runs on.
pub async fn chat_stream(
    url: &str,
    prompt: &str,
    max_tokens: u32,
) -> (
    specd_proto::v1::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    tonic::Streaming<v1::TokenEvent>,
) {
    let mut client =
        specd_proto::v1::coordinator_client::CoordinatorClient::connect(url.to_owned())
            .await
            .unwrap();
    let stream = client
        .generate(v1::GenerateRequest {
            prompt: prompt.into(),
            chat: true,
            max_tokens,
            // Speculative where the coordinator has a draft-node (γ 0 would decode target-only).
            gamma: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (client, stream)
}

pub fn ledger(rt: &tokio::runtime::Runtime, url: &str) -> Vec<v1::SessionRecord> {
    rt.block_on(async {
        specd_proto::v1::coordinator_client::CoordinatorClient::connect(url.to_owned())
            .await
            .unwrap()
            .list_sessions(v1::ListSessionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .sessions
    })
}

/// Streams a chat `prompt` (200 tokens at most) through the coordinator at `url`, calling `cut`
/// with the running session's row after 24 tokens: the tokens, the text and the last event.
pub fn stream_cut_midway(
    rt: &tokio::runtime::Runtime,
    url: &str,
    prompt: &str,
    cut: impl FnOnce(&v1::SessionRecord),
) -> (Vec<u32>, String, v1::TokenEvent) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    rt.block_on(async {
        let (mut client, mut stream) = chat_stream(url, prompt, 200).await;
        while ids.len() < 24 {
            let ev = stream.message().await.unwrap().unwrap();
            assert!(!ev.finished, "the request ended before the cut");
            ids.extend(ev.token_ids);
            text.push_str(&ev.text);
        }
        let row = client
            .list_sessions(v1::ListSessionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .sessions
            .into_iter()
            .find(|r| r.state == "running")
            .expect("the running session");
        cut(&row);
        while let Some(ev) = stream.message().await.unwrap() {
            ids.extend_from_slice(&ev.token_ids);
            text.push_str(&ev.text);
            if ev.finished {
                return (ids, text, ev);
            }
        }
        panic!("the stream ended without its last event");
    })
}

/// The coordinator's latest session row, once it has ended (it is marked once the target
/// session is closed, just after the last event).
pub fn ended_row(rt: &tokio::runtime::Runtime, url: &str) -> v1::SessionRecord {
    ended_row_within(rt, url, Duration::from_secs(10))
}

/// [`ended_row`], waiting up to `within`.
pub fn ended_row_within(
    rt: &tokio::runtime::Runtime,
    url: &str,
    within: Duration,
) -> v1::SessionRecord {
    let start = Instant::now();
    loop {
        let row = ledger(rt, url).into_iter().max_by_key(|r| r.seq).unwrap();
        if row.state != "running" || start.elapsed() > within {
            return row;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn token_ids(out: &serde_json::Value) -> Vec<u32> {
    out["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}
