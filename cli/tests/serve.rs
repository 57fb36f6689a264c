//! `specd serve` as a user runs it: a real process on 127.0.0.1 checked by the official `openai`
//! Python client (cli/tests/openai_client.py), with greedy output equal to `specd generate`; plain
//! HTTP for what a client library hides (SSE framing, disconnects, start-up errors).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{
    bin, free_port, http, openai_client_checks, run_python, test_pki, wait_http_ready, Proc,
};

/// A `specd serve` process, killed on drop.
struct Server {
    proc: Proc,
    port: u16,
}

fn serve(extra: &[&str]) -> Server {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["serve", "--listen", &listen];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&args, &[]);
    wait_http_ready(port, &mut proc);
    Server { proc, port }
}

#[test]
fn openai_python_client_against_serve() {
    let server = serve(&["--max-running", "1", "--max-waiting", "1"]);
    openai_client_checks(server.port, "smollm2-135m-q8_0", false);
}

/// The SSE framing itself, a client that disconnects mid-stream (the server keeps serving), and a
/// server without a draft model.
#[test]
fn raw_sse_disconnect_and_no_draft() {
    let server = serve(&["--draft", "none"]);
    let body = serde_json::json!({
        "model": "smollm2-135m-q8_0", "prompt": "Count to twenty: 1, 2, 3,", "max_tokens": 300,
        "temperature": 0, "stream": true, "speculative": {"drafter": "ngram"}
    })
    .to_string();
    // Read a few events, then hang up.
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut events = 0;
    while events < 3 {
        line.clear();
        r.read_line(&mut line).unwrap();
        if let Some(data) = line.trim().strip_prefix("data: ") {
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["object"], "text_completion");
            events += 1;
        }
    }
    drop(r);
    drop(s);
    // The server goes on serving; without a draft model, the model drafter is refused clearly.
    let (code, body) = http(
        server.port,
        "POST",
        "/v1/completions",
        r#"{"model": "smollm2-135m-q8_0", "prompt": "Hi", "max_tokens": 3, "temperature": 0}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("no draft model"), "{body}");
    let (code, body) = http(
        server.port,
        "POST",
        "/v1/completions",
        r#"{"model": "smollm2-135m-q8_0", "prompt": "Hi", "max_tokens": 3, "temperature": 0, "speculative": {"mode": "target-only"}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // Not JSON, and an unknown path: OpenAI's error object.
    let (code, body) = http(server.port, "POST", "/v1/chat/completions", "{oops");
    assert_eq!(code, 400);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let (code, body) = http(server.port, "GET", "/v2/nothing", "");
    assert_eq!(code, 404);
    assert!(body.contains("invalid_request_error"), "{body}");
    let (code, body) = http(server.port, "GET", "/v1/chat/completions", "");
    assert_eq!(code, 405);
    assert!(body.contains("method not allowed"), "{body}");
}

#[test]
fn serve_start_up_errors_are_clear() {
    let out = Command::new(bin())
        .args(["serve", "--listen", "nowhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
    let out = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--default-rule",
            "bogus",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rule") && err.contains("bogus"), "{err}");
    let out = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--target",
            "/nonexistent/model.gguf",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
}

/// SIGTERM: the running stream finishes to `[DONE]`, no new connection is taken, and the
/// process exits 0.
#[test]
fn sigterm_lets_the_running_stream_finish() {
    let mut server = serve(&["--draft", "none", "--drain-timeout", "120"]);
    let body = serde_json::json!({
        "model": "smollm2-135m-q8_0", "prompt": "Count to fifty: 1, 2, 3,", "max_tokens": 80,
        "temperature": 0, "stream": true, "speculative": {"mode": "target-only"}
    })
    .to_string();
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    // The first event: the request runs.
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
        if line.starts_with("data: ") {
            break;
        }
    }
    let kill = Command::new("kill")
        .args(["-TERM", &server.proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut text = String::new();
    let mut done = false;
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(data) = line.trim().strip_prefix("data: ") {
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
        }
    }
    assert!(done, "the stream was cut: {text:?}");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = server.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed().as_secs() < 30, "did not exit");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(TcpStream::connect(("127.0.0.1", server.port)).is_err());
}

/// API keys (`--api-key-file`): the official `openai` client with a tenant's key is served; a
/// wrong key or none is 401 (`openai.AuthenticationError`); `/health` stays open to probes. Each
/// tenant's suffix index holds its own completions only: asked the same prompt again, tenant
/// acme is drafted its earlier completion, while globex, asking it after acme, is not.
#[test]
fn api_keys_authenticate_and_tenants_do_not_share_the_suffix_index() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        "# tenant key\nacme sk-acme-0123456789abcdef\nglobex sk-globex-0123456789abcdef\n",
    )
    .unwrap();
    let server = serve(&["--draft", "none", "--api-key-file", keys.to_str().unwrap()]);
    let (code, body) = http(server.port, "GET", "/v1/models", "");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("invalid_api_key"), "{body}");
    let (code, _) = http(server.port, "GET", "/health", "");
    assert_eq!(code, 200);
    let script = r#"
import sys, openai
base = f"http://127.0.0.1:{sys.argv[1]}/v1"
acme = openai.OpenAI(base_url=base, api_key="sk-acme-0123456789abcdef")
globex = openai.OpenAI(base_url=base, api_key="sk-globex-0123456789abcdef")
wrong = openai.OpenAI(base_url=base, api_key="sk-wrong-0123456789abcdef")
try:
    wrong.models.list()
    raise SystemExit("a wrong key was served")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and "not one of" in str(e), e
msgs = [{"role": "user", "content": "Write a short poem about autumn leaves."}]
def run(client):
    r = client.chat.completions.create(
        model="smollm2-135m-q8_0", messages=msgs, temperature=0, max_tokens=64,
        extra_body={"speculative": {"drafter": "suffix", "gamma": 4}})
    return r.choices[0].message.content, r.usage.model_extra["speculative"]["accepted_tokens"]
first, a1 = run(acme)
other, a2 = run(globex)
again, a3 = run(acme)
assert first == other == again, (first, other, again)
# globex drafts as from an empty index (it sees none of acme's completion); acme's second run
# finds its first completion and nearly every proposal is accepted.
assert a2 == a1 and a3 >= 40 and a3 >= a1 + 12, ("accepted", a1, a2, a3)
print("accepted", a1, a2, a3)
"#;
    run_python(script, &[&server.port.to_string()]);
}

/// HTTPS: the official client with the test's CA gets the plain-HTTP run's text; without the CA
/// (the public roots) it refuses the certificate; a plaintext request gets no answer;
/// `specd health https://…/health` checks with $SPECD_TLS_CA.
#[test]
fn https_with_the_openai_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut proc = Proc::spawn(
        &[
            "serve",
            "--listen",
            &listen,
            "--draft",
            "none",
            "--tls-cert",
            &pki.cert,
            "--tls-key",
            &pki.key,
        ],
        &[],
    );
    let url = format!("https://localhost:{port}/health");
    let start = std::time::Instant::now();
    loop {
        proc.check_running();
        let o = Command::new(bin())
            .args(["health", &url])
            .env("SPECD_TLS_CA", &pki.ca)
            .output()
            .unwrap();
        if o.status.success() {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(300),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Plain HTTP to the HTTPS port: no answer (the handshake fails), and health says why.
    let o = Command::new(bin())
        .args(["health", &format!("http://127.0.0.1:{port}/health")])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("https://"), "{e}");
    let script = r#"
import sys, openai
port, ca = sys.argv[1], sys.argv[2]
base = f"https://localhost:{port}/v1"
msgs = [{"role": "user", "content": "Name three colors."}]
client = openai.OpenAI(base_url=base, api_key="none",
                       http_client=openai.DefaultHttpxClient(verify=ca))
r = client.chat.completions.create(model="smollm2-135m-q8_0", messages=msgs, temperature=0,
                                   max_tokens=16, extra_body={"speculative": {"drafter": "ngram"}})
print(r.choices[0].message.content)
try:
    openai.OpenAI(base_url=base, api_key="none", max_retries=0).models.list()
    raise SystemExit("a certificate of the test's CA was trusted without it")
except openai.APIConnectionError as e:
    assert "CERTIFICATE_VERIFY_FAILED" in repr(e.__cause__), repr(e.__cause__)
"#;
    let text = run_python(script, &[&port.to_string(), &pki.ca])
        .trim()
        .to_owned();
    // The same request over plain HTTP (another server) gives the same text.
    let plain = serve(&["--draft", "none"]);
    let body = serde_json::json!({
        "model": "smollm2-135m-q8_0", "temperature": 0, "max_tokens": 16,
        "messages": [{"role": "user", "content": "Name three colors."}],
        "speculative": {"drafter": "ngram"}
    })
    .to_string();
    let (code, resp) = http(plain.port, "POST", "/v1/chat/completions", &body);
    assert_eq!(code, 200, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .trim(),
        text
    );
}
