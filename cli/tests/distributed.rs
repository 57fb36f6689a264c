//! The distributed mode with the real binaries as separate processes on 127.0.0.1:
//! coordinator → draft-node → target-node equals embedded and target-only output; concurrent
//! sessions; a draft with another vocabulary is refused; a killed draft-node falls back to the
//! target; invalid frames get the documented status codes without harming other sessions; start-up
//! errors are clear.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use specd_proto::v1::target_verifier_client::TargetVerifierClient;
use specd_proto::v1::{self, DraftBlock, DraftFrame};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

mod common;

use common::cluster::{
    chat_stream, coordinator, coordinator_with, draft_node, ended_row, generate, grpc_health,
    ledger, run, spawn, spawn_with, stream_cut_midway, target_node, token_ids, wait_ready, Node,
    PROMPTS,
};
use common::{bin, free_port, prometheus, Proc};

/// A model-free draft-node (`--drafter ngram`: no model file loaded) drafts by prompt lookup for
/// the target: the output equals the embedded lookup run and target-only, text included (the
/// text comes from the target's verdicts), pipelined and not; asking it for the model drafter is
/// a clear error; a model-holding node serves a lookup request too.
#[test]
fn model_free_draft_node_equals_embedded() {
    let t = target_node(&[]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let free = spawn(
        &[
            "draft-node",
            "--listen",
            &listen,
            "--drafter",
            "ngram",
            "--model",
            "no-such-model",
            "--allow-target",
            &t.url,
        ],
        port,
    );
    // A draft-node told which targets it may reach refuses any other.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let fenced = spawn(
        &[
            "draft-node",
            "--listen",
            &listen,
            "--drafter",
            "ngram",
            "--allow-target",
            "http://127.0.0.1:1",
        ],
        port,
    );
    let c_fenced = coordinator(&t, Some(&fenced));
    let o = run(&[
        "generate",
        "--prompt",
        "hi",
        "--max-tokens",
        "4",
        "--drafter",
        "ngram",
        "--coordinator",
        &c_fenced.url,
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--allow-target"), "{e}");
    let c = coordinator(&t, Some(&free));
    let with_model = draft_node("smollm2-135m-q4_1");
    let c_model = coordinator(&t, Some(&with_model));
    let prompt = "Repeat this sentence exactly twice: the quick brown fox jumps over the lazy dog.";
    let base = generate(prompt, &["--max-tokens", "48", "--mode", "target-only"]);
    let embedded = generate(prompt, &["--max-tokens", "48", "--drafter", "ngram"]);
    assert_eq!(embedded["token_ids"], base["token_ids"]);
    assert!(
        embedded["accepted_tokens"].as_u64().unwrap() > 0,
        "the quoting prompt must give lookup something: {embedded}"
    );
    for (url, extra, drafter) in [
        (&c.url, None, "ngram"),
        (&c.url, Some("--no-pipeline"), "ngram"),
        (&c_model.url, None, "ngram"),
        (&c.url, None, "suffix"),
        (&c_model.url, Some("--no-pipeline"), "suffix"),
    ] {
        let mut args = vec![
            "--max-tokens",
            "48",
            "--drafter",
            drafter,
            "--coordinator",
            url,
        ];
        args.extend(extra);
        let d = generate(prompt, &args);
        assert_eq!(d["token_ids"], base["token_ids"], "{args:?}");
        assert_eq!(d["text"], base["text"], "{args:?}: text from the target");
        assert_eq!(d["fallback"], false, "{args:?}: {d}");
        assert!(d["accepted_tokens"].as_u64().unwrap() > 0, "{args:?}: {d}");
    }
    let o = run(&[
        "generate",
        "--prompt",
        prompt,
        "--max-tokens",
        "8",
        "--coordinator",
        &c.url,
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("no draft model") && e.contains("ngram"),
        "asking a model-free node for the model drafter: {e}"
    );
    let o = run(&[
        "generate",
        "--prompt",
        prompt,
        "--max-tokens",
        "8",
        "--drafter",
        "hybrid",
        "--coordinator",
        &c.url,
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("no draft model"),
        "asking a model-free node for the hybrid drafter: {e}"
    );
}

#[test]
fn distributed_equals_embedded_and_target_only() {
    let t = target_node(&[]);
    let d = draft_node("smollm2-135m-q4_0");
    let c = coordinator(&t, Some(&d));
    for p in PROMPTS {
        let base = generate(p, &["--max-tokens", "48", "--mode", "target-only"]);
        let emb = generate(
            p,
            &[
                "--max-tokens",
                "48",
                "--gamma",
                "4",
                "--draft",
                "smollm2-135m-q4_0",
            ],
        );
        let common = [
            "--max-tokens",
            "48",
            "--gamma",
            "4",
            "--coordinator",
            &c.url,
        ];
        let dist = generate(p, &[&common[..], &["--no-pipeline"]].concat());
        let piped = generate(p, &common);
        assert_eq!(
            piped["token_ids"], base["token_ids"],
            "{p}: pipelined distributed vs target-only"
        );
        assert_eq!(piped["fallback"], false);
        assert_eq!(
            dist["token_ids"], base["token_ids"],
            "{p}: distributed vs target-only"
        );
        assert_eq!(
            dist["token_ids"], emb["token_ids"],
            "{p}: distributed vs embedded"
        );
        assert_eq!(dist["text"], base["text"]);
        assert_eq!(dist["fallback"], false);
        assert_eq!(
            dist["target_calls"], emb["target_calls"],
            "same blocks, same verify calls"
        );
        assert_eq!(dist["accepted_tokens"], emb["accepted_tokens"]);
    }
    // A seeded sampled run gives the same text distributed and embedded.
    let sampled = [
        "--max-tokens",
        "40",
        "--gamma",
        "4",
        "--temperature",
        "0.8",
        "--seed",
        "11",
        "--draft-sampling",
        "sample",
    ];
    let emb = generate(
        PROMPTS[1],
        &[&sampled[..], &["--draft", "smollm2-135m-q4_0"]].concat(),
    );
    // With --no-pipeline, a seeded sampled run gives the same text distributed and embedded.
    let dist = generate(
        PROMPTS[1],
        &[&sampled[..], &["--coordinator", &c.url, "--no-pipeline"]].concat(),
    );
    assert_eq!(dist["token_ids"], emb["token_ids"], "seeded sampled run");
    // Pipelined seeded runs repeat exactly too: the draft announces each successor, so whether
    // the target skips a bonus draw never depends on timing.
    let a = generate(
        PROMPTS[1],
        &[&sampled[..], &["--coordinator", &c.url]].concat(),
    );
    let b = generate(
        PROMPTS[1],
        &[&sampled[..], &["--coordinator", &c.url]].concat(),
    );
    assert_eq!(
        a["token_ids"], b["token_ids"],
        "pipelined seeded run repeats"
    );
    // A relaxed rule travels with the request and the budget holds.
    let relaxed = [
        "--max-tokens",
        "48",
        "--gamma",
        "4",
        "--rule",
        "topk:3",
        "--budget",
        "3",
        "--pacing",
        "none",
    ];
    let emb = generate(
        PROMPTS[1],
        &[&relaxed[..], &["--draft", "smollm2-135m-q4_0"]].concat(),
    );
    let dist = generate(
        PROMPTS[1],
        &[&relaxed[..], &["--coordinator", &c.url, "--no-pipeline"]].concat(),
    );
    assert_eq!(dist["token_ids"], emb["token_ids"], "relaxed rule");
    assert_eq!(dist["lossy_accepted_tokens"], emb["lossy_accepted_tokens"]);
    assert!(dist["budget_spent"].as_f64().unwrap() <= 3.0);
}

#[test]
fn concurrent_sessions_each_equal_their_sequential_run() {
    let t = target_node(&[]);
    let d = draft_node("smollm2-135m-q4_1");
    let c = coordinator(&t, Some(&d));
    let prompts: Vec<String> = (0..16)
        .map(|i| format!("Give me one fact about the number {i}."))
        .collect();
    let sequential: Vec<serde_json::Value> = prompts
        .iter()
        .map(|p| {
            generate(
                p,
                &[
                    "--max-tokens",
                    "24",
                    "--gamma",
                    "4",
                    "--coordinator",
                    &c.url,
                ],
            )
        })
        .collect();
    let url = c.url.clone();
    let handles: Vec<_> = prompts
        .iter()
        .cloned()
        .map(|p| {
            let url = url.clone();
            std::thread::spawn(move || {
                generate(
                    &p,
                    &["--max-tokens", "24", "--gamma", "4", "--coordinator", &url],
                )
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().expect("client thread");
        assert_eq!(out["token_ids"], sequential[i]["token_ids"], "session {i}");
    }
}

/// Writes a tiny random-weight llama GGUF with its own 512-token byte-level vocabulary.
fn tiny_model_with_other_vocab(path: &std::path::Path) {
    use specd_engine::synth::{write_synth, Shape};
    write_synth(&Shape::parse("tiny").unwrap(), "f32", 1, path, &|_, _| {}).unwrap();
}

#[test]
fn draft_with_another_vocabulary_is_refused_naming_both_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.gguf");
    tiny_model_with_other_vocab(&tiny);
    let t = target_node(&[]);
    let d = draft_node(tiny.to_str().unwrap());
    let c = coordinator(&t, Some(&d));
    let o = run(&[
        "generate",
        "--prompt",
        "hi",
        "--chat",
        "--max-tokens",
        "8",
        "--coordinator",
        &c.url,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("vocabulary mismatch"), "{err}");
    let fingerprints: Vec<&str> = err
        .split(|ch: char| !ch.is_ascii_hexdigit())
        .filter(|w| w.len() == 16)
        .collect();
    assert!(
        fingerprints.len() >= 2 && fingerprints[0] != fingerprints[1],
        "both fingerprints named: {err}"
    );
}

#[test]
fn killing_the_draft_node_falls_back_to_the_target() {
    let t = target_node(&[]);
    let mut d = draft_node("smollm2-135m-q4_0");
    let c = coordinator(&t, Some(&d));
    let prompt = PROMPTS[1];
    let base = generate(prompt, &["--max-tokens", "200", "--mode", "target-only"]);
    let url = c.url.clone();
    let client = std::thread::spawn(move || {
        generate(
            prompt,
            &["--max-tokens", "200", "--gamma", "4", "--coordinator", &url],
        )
    });
    // Early enough that the 200-token request is still running (a kill before the draft even
    // starts also ends in the fallback).
    std::thread::sleep(Duration::from_millis(1000));
    d.proc.child.kill().unwrap();
    let out = client.join().unwrap();
    assert_eq!(
        out["fallback"], true,
        "the final event must say the target finished alone"
    );
    assert_eq!(
        out["token_ids"], base["token_ids"],
        "greedy text after fallback equals target-only"
    );
}

#[test]
fn invalid_frames_get_documented_codes_and_spare_other_sessions() {
    let t = target_node(&[
        "--max-sessions",
        "3",
        "--max-waiting",
        "0",
        "--max-block",
        "8",
    ]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = TargetVerifierClient::connect(t.url.clone()).await.unwrap();
        let open = |max_tokens: u32| v1::OpenSessionRequest {
            prompt: "Hello there".into(),
            chat: true,
            max_tokens,
            ..Default::default()
        };
        // max_tokens 0: what the context leaves after the prompt.
        let whole = c.open_session(open(0)).await.unwrap().into_inner();
        let info = whole.model.as_ref().unwrap();
        assert_eq!(
            whole.max_tokens as usize + whole.prompt_ids.len(),
            info.context_length as usize,
            "max_tokens 0"
        );
        c.close_session(v1::CloseSessionRequest {
            session_id: whole.session_id,
            session_token: whole.session_token,
        })
        .await
        .unwrap();
        let mut bad_policy = open(8);
        bad_policy.policy = Some(v1::Policy {
            rule: "topk:0".into(),
            budget: 1.0,
            ..Default::default()
        });
        assert_eq!(
            c.open_session(bad_policy).await.unwrap_err().code(),
            Code::InvalidArgument,
            "bad rule"
        );
        // Resume: a (completion, spent) pair continues; spent over the budget is refused.
        let mut resume = open(8);
        resume.resume_completion = vec![9707, 314];
        resume.policy = Some(v1::Policy {
            rule: "topk:3".into(),
            budget: 1.0,
            ..Default::default()
        });
        resume.resume_budget_spent = 1.5;
        let e = c.open_session(resume.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("exceeds the session's budget"),
            "{e:?}"
        );
        resume.resume_budget_spent = 0.5;
        let r = c.open_session(resume).await.unwrap().into_inner();
        let summary = c
            .close_session(v1::CloseSessionRequest {
                session_id: r.session_id,
                session_token: r.session_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(summary.committed_len as usize, r.prompt_ids.len() + 2);
        assert_eq!(summary.budget_spent, 0.5);
        let a = c.open_session(open(16)).await.unwrap().into_inner();
        let base = a.prompt_ids.len() as u64;
        // A frame naming `a` carries its token.
        let token = |sid: &str| {
            if sid == a.session_id {
                a.session_token.clone()
            } else {
                String::new()
            }
        };
        let frame = |sid: &str, base_len: u64, tokens: Vec<u32>, seq: u64| DraftFrame {
            session_id: sid.into(),
            session_token: token(sid),
            block: Some(DraftBlock {
                block_seq: seq,
                base_len,
                tokens,
                ..Default::default()
            }),
        };
        // One bad frame per stream: each ends its stream with the documented code.
        let verify_one = |c: &mut TargetVerifierClient<tonic::transport::Channel>,
                          f: DraftFrame| {
            let mut c = c.clone();
            async move {
                let mut s = c.verify(tokio_stream::iter(vec![f])).await?.into_inner();
                s.message().await
            }
        };
        let e = verify_one(&mut c, frame("nope", 1, vec![1], 1))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = verify_one(&mut c, frame(&a.session_id, base, vec![49152], 1))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Code::InvalidArgument,
            "token id outside the vocabulary"
        );
        let e = verify_one(&mut c, frame(&a.session_id, base, vec![1; 9], 1))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "block over the maximum");
        let e = verify_one(&mut c, frame("", base, vec![1], 1))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Code::InvalidArgument,
            "first frame without a session"
        );
        // The session's token is required: without it, or with another, nothing is judged.
        for bad in ["", "0123456789abcdef0123456789abcdef"] {
            let mut f = frame(&a.session_id, base, vec![1], 1);
            f.session_token = bad.into();
            let e = verify_one(&mut c, f).await.unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated, "token {bad:?}: {e:?}");
            let e = c
                .close_session(v1::CloseSessionRequest {
                    session_id: a.session_id.clone(),
                    session_token: bad.into(),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated, "close, token {bad:?}");
        }
        // One Verify stream drives a session at a time: a newer one presenting the token (a
        // re-attached draft) takes over, and the earlier one's next frame is refused; a Decode
        // (here replay-only, as a coordinator re-attaching a draft sends it) takes over too.
        for by_decode in [false, true] {
            let (first_tx, first_rx) = tokio::sync::mpsc::channel(2);
            first_tx
                .send(frame(&a.session_id, base + 7, vec![1], 1))
                .await
                .unwrap();
            let mut first = c
                .verify(tokio_stream::wrappers::ReceiverStream::new(first_rx))
                .await
                .unwrap()
                .into_inner();
            assert!(first.message().await.unwrap().unwrap().stale);
            if by_decode {
                let mut replay = c
                    .decode(v1::DecodeRequest {
                        session_id: a.session_id.clone(),
                        from_len: base,
                        session_token: a.session_token.clone(),
                        replay_only: true,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(
                    replay.message().await.unwrap().is_none(),
                    "nothing committed past {base}: a replay-only Decode sends nothing"
                );
            } else {
                let newer = verify_one(&mut c, frame(&a.session_id, base + 7, vec![1], 1))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(newer.stale, "the newer stream is judged");
            }
            first_tx
                .send(frame("", base + 7, vec![1], 2))
                .await
                .unwrap();
            let e = first.message().await.unwrap_err();
            assert_eq!(e.code(), Code::Aborted, "by decode {by_decode}: {e:?}");
            assert!(
                e.message().contains("newer Verify stream or a Decode"),
                "{e:?}"
            );
        }
        // A stale block is answered in-band and the stream goes on.
        let frames = vec![
            frame(&a.session_id, base + 5, vec![1], 1),
            frame("", base, vec![], 2),
        ];
        let mut s = c
            .verify(tokio_stream::iter(frames))
            .await
            .unwrap()
            .into_inner();
        let v1 = s.message().await.unwrap().unwrap();
        assert!(v1.stale && v1.committed_len == base);
        let v2 = s.message().await.unwrap().unwrap();
        assert!(
            !v2.stale && v2.committed.len() == 1,
            "the stream survived the stale block"
        );
        // The session is intact after all that.
        let mut s = c
            .verify(tokio_stream::iter(vec![frame(
                &a.session_id,
                base + 1,
                vec![],
                1,
            )]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.message().await.unwrap().unwrap().committed_len, base + 2);
        // Session limit.
        c.open_session(open(8)).await.unwrap();
        c.open_session(open(8)).await.unwrap();
        assert_eq!(
            c.open_session(open(8)).await.unwrap_err().code(),
            Code::ResourceExhausted
        );
        let e = c
            .decode(v1::DecodeRequest {
                session_id: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = c
            .decode(v1::DecodeRequest {
                session_id: a.session_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "decode without the token");
        c.close_session(v1::CloseSessionRequest {
            session_id: a.session_id.clone(),
            session_token: a.session_token.clone(),
        })
        .await
        .unwrap();
        assert_eq!(
            c.close_session(v1::CloseSessionRequest {
                session_id: a.session_id,
                session_token: a.session_token,
            })
            .await
            .unwrap_err()
            .code(),
            Code::NotFound
        );
    });
}

#[test]
fn start_up_errors_are_clear() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = run(&["target-node", "--listen", &addr]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("cannot listen on {addr}")),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&[
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--target",
        "http://127.0.0.1:1",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("cannot reach http://127.0.0.1:1"),
        "{e}"
    );
    let o = run(&[
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--target",
        "not a url",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("invalid URL"), "{e}");
    let o = run(&["target-node", "--listen", "nowhere"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--listen"));
    let o = run(&[
        "generate",
        "--prompt",
        "hi",
        "--coordinator",
        "http://127.0.0.1:1",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("cannot reach"), "{e}");
}

#[test]
fn eval_runs_through_a_coordinator_and_admin_rpcs_work() {
    let t = target_node(&[]);
    let d = draft_node("smollm2-135m-q4_1");
    let c = coordinator(&t, Some(&d));
    let out = tempfile::tempdir().unwrap();
    let data = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/gsm8k/test_dev.jsonl");
    let o = run(&[
        "eval",
        "gsm8k",
        "--data",
        data.to_str().unwrap(),
        "--limit",
        "1",
        "--configs",
        "exact;topk:3@budget=2",
        "--max-tokens",
        "16",
        "--coordinator",
        &c.url,
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let results = std::fs::read_to_string(out.path().join("results.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 3);
    assert!(recs
        .iter()
        .all(|r| r["ok"] == true && r["completion_tokens"].as_u64().unwrap() > 0));
    let exact = recs.iter().find(|r| r["config"] == "exact").unwrap();
    assert_eq!(exact["fidelity"], true);
    assert!(
        exact["target_calls"].as_u64().unwrap() < 16,
        "speculative through the coordinator"
    );
    // Admin: the sessions are listed with their ledger; a live-session policy change reaches the target.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut admin =
            specd_proto::v1::coordinator_client::CoordinatorClient::connect(c.url.clone())
                .await
                .unwrap();
        let list = admin
            .list_sessions(v1::ListSessionsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(list.sessions.len(), 3);
        assert!(list
            .sessions
            .iter()
            .all(|s| s.state == "finished" && s.completion_tokens > 0));
        let e = admin
            .set_session_policy(v1::SetSessionPolicyRequest {
                session_id: "nope".into(),
                policy: None,
                allow_loosen: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        // Tighten a live session on the target directly (what SetSessionPolicy forwards).
        let mut tc = TargetVerifierClient::connect(t.url.clone()).await.unwrap();
        let s = tc
            .open_session(v1::OpenSessionRequest {
                prompt: "hi".into(),
                max_tokens: 4,
                policy: Some(v1::Policy {
                    rule: "topk:3".into(),
                    budget: 2.0,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // Loosening (a larger budget) is refused unless asked for, and then stated.
        let loosen = |allow_loosen| v1::UpdatePolicyRequest {
            session_id: s.session_id.clone(),
            policy: Some(v1::Policy {
                rule: "topk:3".into(),
                budget: 8.0,
                ..Default::default()
            }),
            allow_loosen,
            session_token: s.session_token.clone(),
        };
        let e = tc.update_policy(loosen(false)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("loosens"), "{e:?}");
        let sum = tc.update_policy(loosen(true)).await.unwrap().into_inner();
        assert_eq!((sum.rule.as_str(), sum.budget), ("topk:3", 8.0));
        let sum = tc
            .update_policy(v1::UpdatePolicyRequest {
                session_id: s.session_id,
                session_token: s.session_token,
                policy: Some(v1::Policy {
                    rule: "exact".into(),
                    ..Default::default()
                }),
                allow_loosen: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(sum.rule, "exact");
        assert_eq!(sum.budget, 0.0);
    });
}

#[test]
fn generation_through_the_link_emulator_is_unchanged_and_slower() {
    let t = target_node(&[]);
    let d = draft_node("smollm2-135m-q4_1");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let upstream = t.url.trim_start_matches("http://").to_owned();
    // Ready when the target's health answers through it.
    let link = spawn(
        &[
            "link",
            "--listen",
            &listen,
            "--upstream",
            &upstream,
            "--delay",
            "10ms",
            "--jitter",
            "1ms",
        ],
        port,
    );
    let direct = coordinator(&t, Some(&d));
    let slow = coordinator(&link, Some(&d));
    let args = |url: &str| {
        vec![
            "--max-tokens".to_owned(),
            "24".into(),
            "--gamma".into(),
            "4".into(),
            "--coordinator".into(),
            url.to_owned(),
        ]
    };
    let a = generate(
        PROMPTS[0],
        &args(&direct.url)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let b = generate(
        PROMPTS[0],
        &args(&slow.url)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        a["token_ids"], b["token_ids"],
        "the link must not change the output"
    );
    // Pipelined (the default): a fully accepted block's successor is judged, not stale. With the
    // strong draft (α ≈ 0.97) most blocks are fully accepted.
    for r in [&a, &b] {
        let (stale, calls) = (
            r["stale_blocks"].as_u64().unwrap(),
            r["target_calls"].as_u64().unwrap(),
        );
        assert!(
            2 * stale <= calls,
            "{stale} stale blocks for {calls} verify calls"
        );
    }
    // Every verify round pays at least one 20 ms round trip through the link.
    let rounds = b["target_calls"].as_f64().unwrap();
    assert!(
        b["decode_ms"].as_f64().unwrap() >= rounds * 19.0,
        "{} ms for {rounds} rounds",
        b["decode_ms"]
    );
    // Adaptive block sizes change no output, and their estimates see the link.
    let mut link_rtt_ms = f64::INFINITY;
    for policy in ["auto", "heuristic"] {
        let c = generate(
            PROMPTS[0],
            &[
                "--max-tokens",
                "24",
                "--gamma",
                policy,
                "--gamma-max",
                "12",
                "--coordinator",
                &slow.url,
            ],
        );
        assert_eq!(c["token_ids"], a["token_ids"], "γ {policy}");
        assert_eq!(c["gamma"], policy);
        assert_eq!(c["gamma_max"], 12);
        let mean = c["mean_gamma"].as_f64().unwrap();
        assert!(mean > 0.0 && mean <= 12.0, "γ {policy}: mean γ {mean}");
        let rtt = c["est_rtt_ms"].as_f64().unwrap();
        assert!(
            rtt >= 19.0,
            "γ {policy}: estimated RTT {rtt} ms through a 20 ms link"
        );
        link_rtt_ms = link_rtt_ms.min(rtt);
        assert!(c["est_t_verify_ms"].as_f64().unwrap() > 0.0);
        assert!(c["est_t_draft_ms"].as_f64().unwrap() > 0.0);
        let alpha = c["est_alpha"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&alpha));
    }
    let direct_auto = generate(
        PROMPTS[0],
        &[
            "--max-tokens",
            "24",
            "--gamma",
            "auto",
            "--coordinator",
            &direct.url,
        ],
    );
    // Without the link the estimate drops by about the link's 20 ms (what is left is gRPC and
    // scheduling, which a loaded machine inflates for both alike).
    let direct_rtt_ms = direct_auto["est_rtt_ms"].as_f64().unwrap();
    assert!(
        direct_rtt_ms < link_rtt_ms - 10.0,
        "estimated RTT {direct_rtt_ms} ms direct, {link_rtt_ms} ms through a 20 ms link"
    );
    // Target-only decoding streams through the link: it pays the delay once per response, not
    // once per token (the text travels with the tokens: no detokenize round trip per event).
    // Compared with the same request without the link, in the same run (the compute cancels; the
    // faster of two runs each keeps a noisy machine's stalls out): paying 20 ms per token would
    // add n × 20 ms.
    let target_only = |url: &str| {
        let runs = [0, 1].map(|_| {
            generate(
                PROMPTS[0],
                &[
                    "--max-tokens",
                    "48",
                    "--mode",
                    "target-only",
                    "--coordinator",
                    url,
                ],
            )
        });
        let wall = |r: &serde_json::Value| r["wall_ms"].as_f64().unwrap();
        let fastest = wall(&runs[0]).min(wall(&runs[1]));
        let [first, _] = runs;
        (first, fastest)
    };
    let (base, slow_ms) = target_only(&slow.url);
    let (direct_base, direct_ms) = target_only(&direct.url);
    let n = base["completion_tokens"].as_f64().unwrap();
    assert!(n >= 24.0, "{n} tokens");
    assert!(
        slow_ms - direct_ms < n * 10.0,
        "{slow_ms} ms through a 20 ms link, {direct_ms} ms without it, for {n} streamed tokens"
    );
    assert_eq!(base["text"], direct_base["text"]);
}

/// The coordinator's HTTP API (`--http-listen`) with the official `openai` Python client: the
/// checks `specd serve` passes (greedy output equal to `specd generate`, streaming, stop, seeds,
/// the extension object, errors, 429), through target-node and draft-node processes. The 429 check
/// cuts a stream mid-way: its ledger row says "cancelled" and no row stays "running".
/// A coordinator with its HTTP API too: the node and the HTTP port.
fn coordinator_with_http(target: &Node, draft: &Node, extra: &[&str]) -> (Node, u16) {
    let (port, http_port) = (free_port(), free_port());
    let (listen, http_listen) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{http_port}"),
    );
    let mut args = vec![
        "coordinator",
        "--listen",
        &listen,
        "--target",
        &target.url,
        "--draft",
        &draft.url,
        "--http-listen",
        &http_listen,
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&args, &[]);
    common::wait_http_ready(http_port, &mut proc);
    let node = Node {
        proc,
        url: format!("http://127.0.0.1:{port}"),
    };
    (node, http_port)
}

#[test]
fn openai_python_client_against_the_coordinator() {
    let t = target_node(&[]);
    let d = draft_node("smollm2-135m-q4_1");
    let (c, http_port) =
        coordinator_with_http(&t, &d, &["--max-running", "1", "--max-waiting", "1"]);
    common::openai_client_checks(http_port, "smollm2-135m-q8_0", true);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sessions = ledger(&rt, &c.url);
    let states: Vec<&str> = sessions.iter().map(|s| s.state.as_str()).collect();
    assert!(states.len() > 10, "{states:?}");
    assert!(!states.contains(&"running"), "{states:?}");
    assert!(states.contains(&"cancelled"), "{states:?}");
}

/// SIGTERM drains a node (what every Kubernetes rollout sends): `specd health` turns from SERVING
/// to NOT_SERVING, the running request finishes whole, a new session is refused with UNAVAILABLE,
/// and the process exits 0 once its sessions are closed.
#[test]
fn sigterm_drains_the_target_node() {
    let mut t = target_node(&["--drain-timeout", "120"]);
    let c = coordinator(&t, None);
    let health = |addr: &str| Command::new(bin()).args(["health", addr]).output().unwrap();
    let h = health(&t.url);
    assert!(h.status.success(), "{}", String::from_utf8_lossy(&h.stderr));
    assert!(String::from_utf8_lossy(&h.stdout).contains("SERVING"));
    let gen = Command::new(bin())
        .args([
            "generate",
            "--coordinator",
            &c.url,
            "--prompt",
            "Count from 1 to 1000, separated by commas.",
            "--chat",
            "--max-tokens",
            "120",
            "--mode",
            "target-only",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the request runs at the target.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let running = || {
        ledger(&rt, &c.url)
            .iter()
            .any(|s| s.state == "running" && s.completion_tokens > 0)
    };
    let start = Instant::now();
    while !running() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the request never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &t.proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Draining: NOT_SERVING, and no new session.
    let start = Instant::now();
    loop {
        let h = health(&t.url);
        if !h.status.success() {
            assert!(
                String::from_utf8_lossy(&h.stderr).contains("NOT_SERVING"),
                "{}",
                String::from_utf8_lossy(&h.stderr)
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "still SERVING");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = rt.block_on(async {
        TargetVerifierClient::connect(t.url.clone())
            .await
            .unwrap()
            .open_session(v1::OpenSessionRequest {
                prompt: "hi".into(),
                max_tokens: 4,
                ..Default::default()
            })
            .await
            .unwrap_err()
    });
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("shutting down"), "{refused:?}");
    // The running request finishes whole.
    let out = gen.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let j: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(j["completion_tokens"], 120, "{j}");
    // Then the node exits 0.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = t.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// Streams cut by their clients mid-way, 10 over gRPC and 10 over HTTP, while two others run:
/// every cut session is `cancelled` in the ledger and gone from the target at once (its `Info`
/// counts the sessions it holds), and the two others end with the very text they have alone.
#[test]
fn cut_streams_end_their_sessions_everywhere() {
    let t = target_node(&[]);
    let d = draft_node("smollm2-135m-q4_1");
    let (c, http_port) = coordinator_with_http(&t, &d, &["--max-running", "16"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let whole = |prompt: &str| {
        Command::new(bin())
            .args([
                "generate",
                "--coordinator",
                &c.url,
                "--prompt",
                prompt,
                "--chat",
                "--max-tokens",
                "48",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let text_of = |child: Child| {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let j: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
        j["text"].as_str().unwrap().to_owned()
    };
    let prompts = ["Name three rivers of Europe.", "What is a prime number?"];
    let alone: Vec<String> = prompts.iter().map(|p| text_of(whole(p))).collect();
    let others: Vec<Child> = prompts.iter().map(|p| whole(p)).collect();
    let long = "Count from 1 to 1000, separated by commas.";
    for _ in 0..10 {
        // gRPC: two events, then the stream is dropped.
        rt.block_on(async {
            let (_client, mut stream) = chat_stream(&c.url, long, 400).await;
            for _ in 0..2 {
                stream.message().await.unwrap().unwrap();
            }
        });
        // HTTP: two events, then the connection is closed.
        let body = serde_json::json!({
            "model": "smollm2-135m-q8_0", "max_tokens": 400, "temperature": 0, "stream": true,
            "messages": [{"role": "user", "content": long}]
        })
        .to_string();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap();
        use std::io::{BufRead, Write};
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut r = std::io::BufReader::new(s);
        let (mut events, mut line) = (0, String::new());
        while events < 3 {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0);
            events += line.starts_with("data: ") as usize;
        }
    }
    let texts: Vec<String> = others.into_iter().map(text_of).collect();
    assert_eq!(texts, alone, "the cut streams changed the others' output");
    // Within a few seconds: 20 cancelled rows, none running, no session left at the target.
    let start = Instant::now();
    loop {
        let rows = ledger(&rt, &c.url);
        let cancelled = rows.iter().filter(|r| r.state == "cancelled").count();
        let running = rows.iter().filter(|r| r.state == "running").count();
        let open = rt.block_on(async {
            TargetVerifierClient::connect(t.url.clone())
                .await
                .unwrap()
                .info(v1::InfoRequest {})
                .await
                .unwrap()
                .into_inner()
                .open_sessions
        });
        if cancelled == 20 && running == 0 && open == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{cancelled} cancelled, {running} running, {open} open at the target"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Health that tells the truth: a target-node is NOT_SERVING while its model loads, then SERVING
/// (never back); a coordinator's health follows its nodes, checked every second: the
/// `specd.v1.Drafter` service turns NOT_SERVING when its only draft-node dies (the coordinator
/// still serves: the target decodes alone), the whole coordinator and its HTTP `/health` when its
/// only target dies; a target restarted on the same address is found again and serves a request.
#[test]
fn health_follows_loading_and_the_nodes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://127.0.0.1:{port}");
    let start_target = || Proc::spawn(&["target-node", "--listen", &listen], &[]);
    let mut target = start_target();
    let mut seen = Vec::new();
    let start = Instant::now();
    while seen.last() != Some(&ServingStatus::Serving) {
        target.check_running();
        assert!(start.elapsed() < Duration::from_secs(120), "{seen:?}");
        if let Some(s) = grpc_health(&rt, &url, "") {
            if seen.last() != Some(&s) {
                seen.push(s);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        seen,
        [ServingStatus::NotServing, ServingStatus::Serving],
        "loading, then serving"
    );
    assert!(
        target.log().contains("loading the model"),
        "{}",
        target.log()
    );

    let dport = free_port();
    let dlisten = format!("127.0.0.1:{dport}");
    let draft = spawn(
        &["draft-node", "--listen", &dlisten, "--drafter", "ngram"],
        dport,
    );
    let t = Node { proc: target, url };
    let (c, http_port) = coordinator_with_http(&t, &draft, &[]);
    let until = |service: &str, want: ServingStatus| {
        let start = Instant::now();
        loop {
            let got = grpc_health(&rt, &c.url, service);
            if got == Some(want) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "coordinator health {service:?}: {got:?}, waiting for {want:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until("", ServingStatus::Serving);
    until("specd.v1.Drafter", ServingStatus::Serving);
    until("specd.v1.TargetVerifier", ServingStatus::Serving);

    drop(draft);
    until("specd.v1.Drafter", ServingStatus::NotServing);
    until("", ServingStatus::Serving);

    let Node { proc, .. } = t;
    drop(proc);
    until("", ServingStatus::NotServing);
    until("specd.v1.Coordinator", ServingStatus::NotServing);
    let (code, body) = common::http(http_port, "GET", "/health", "");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no target-node answers"), "{body}");

    let mut target = start_target();
    until("", ServingStatus::Serving);
    target.check_running();
    let (code, body) = common::http(
        http_port,
        "POST",
        "/v1/completions",
        r#"{"model": "smollm2-135m-q8_0", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        c.proc.log().contains("node answers SERVING"),
        "{}",
        c.proc.log()
    );
}

/// GET url/metrics through the Prometheus project's own text parser (prometheus-client):
/// {"name{labels}": value}.
/// A request traced end to end: an HTTP request with a W3C `traceparent` leaves its trace id in
/// the JSON log lines of all three processes (coordinator, draft-node, target-node), and the
/// nodes' `--metrics-listen` endpoints, read with a real Prometheus parser, count its rounds.
#[test]
fn one_trace_id_in_every_process_log_and_node_metrics_move() {
    let json = [("SPECD_LOG_FORMAT", "json")];
    let (tport, tmetrics, dport, dmetrics) = (free_port(), free_port(), free_port(), free_port());
    let (tl, tm, dl, dm) = (
        format!("127.0.0.1:{tport}"),
        format!("127.0.0.1:{tmetrics}"),
        format!("127.0.0.1:{dport}"),
        format!("127.0.0.1:{dmetrics}"),
    );
    let t = spawn_with(
        &["target-node", "--listen", &tl, "--metrics-listen", &tm],
        &json,
        tport,
    );
    let d = spawn_with(
        &[
            "draft-node",
            "--listen",
            &dl,
            "--model",
            "smollm2-135m-q4_1",
            "--metrics-listen",
            &dm,
        ],
        &json,
        dport,
    );
    let (hport, cport) = (free_port(), free_port());
    let (hl, cl) = (format!("127.0.0.1:{hport}"), format!("127.0.0.1:{cport}"));
    let mut coord = Proc::spawn(
        &[
            "coordinator",
            "--listen",
            &cl,
            "--target",
            &t.url,
            "--draft",
            &d.url,
            "--http-listen",
            &hl,
        ],
        &json,
    );
    common::wait_http_ready(hport, &mut coord);

    let before_t = prometheus(tmetrics);
    let before_d = prometheus(dmetrics);
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let body = serde_json::json!({
        "model": "smollm2-135m-q8_0",
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 24,
    })
    .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", hport)).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ntraceparent: 00-{trace_id}-b7ad6b7169203331-01\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains(trace_id),
        "the response carries the trace: {resp}"
    );

    // Every process logged the request under its trace id, as JSON lines.
    std::thread::sleep(Duration::from_millis(300));
    for (who, log) in [
        ("coordinator", coord.log()),
        ("draft-node", d.proc.log()),
        ("target-node", t.proc.log()),
    ] {
        let traced: Vec<serde_json::Value> = log
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("{who}: a log line is not JSON ({e}): {l}"))
            })
            .filter(|j| j.to_string().contains(trace_id))
            .collect();
        assert!(
            !traced.is_empty(),
            "{who} logged nothing of trace {trace_id}:\n{log}"
        );
        let on_span = |j: &serde_json::Value| {
            j["span"]["trace_id"] == trace_id || j["fields"]["trace_id"] == trace_id
        };
        assert!(traced.iter().all(on_span), "{who}: {traced:?}");
    }
    let other_traces = coord
        .log()
        .lines()
        .filter(|l| l.contains("\"trace_id\"") && !l.contains(trace_id))
        .count();
    assert_eq!(other_traces, 0, "one request, one trace");

    // The session closes and the draft loop ends just after the last event.
    let start = Instant::now();
    let (after_t, after_d) = loop {
        let (t, d) = (prometheus(tmetrics), prometheus(dmetrics));
        let idle = t["specd_target_sessions{}"] == 0.0 && d["specd_draft_loops_running{}"] == 0.0;
        if idle || start.elapsed() > Duration::from_secs(10) {
            break (t, d);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let grew = |before: &std::collections::HashMap<String, f64>,
                after: &std::collections::HashMap<String, f64>,
                name: &str| {
        let key = format!("{name}{{}}");
        let (b, a) = (before.get(&key).copied().unwrap_or(0.0), after[&key]);
        assert!(a > b, "{name}: {b} -> {a}");
    };
    grew(&before_t, &after_t, "specd_verify_duration_seconds_count");
    grew(
        &before_t,
        &after_t,
        "specd_spec_decode_num_draft_tokens_total",
    );
    grew(&before_t, &after_t, "specd_spec_decode_num_drafts_total");
    grew(&before_d, &after_d, "specd_draft_duration_seconds_count");
    grew(
        &before_d,
        &after_d,
        "specd_draft_target_round_trip_seconds_count",
    );
    assert_eq!(
        after_t["specd_target_sessions{}"], 0.0,
        "the session was closed"
    );
    assert_eq!(after_d["specd_draft_loops_running{}"], 0.0);
}

/// Target failover: the target-node holding a session is killed mid-request; the coordinator
/// re-opens the session on its other target from the committed tokens and the budget spent,
/// re-attaches the draft-node, and the client's stream goes on to the end with no token lost,
/// repeated or changed: the text equals an uninterrupted (embedded) run. The ledger row records
/// the move.
#[test]
fn a_target_lost_mid_request_is_replaced_with_nothing_lost() {
    let prompt = "Count from 1 to 1000, separated by commas.";
    let expected = generate(prompt, &["--max-tokens", "200"]);
    let mut targets = [Some(target_node(&[])), Some(target_node(&[]))];
    let d = draft_node("smollm2-135m-q4_1");
    let urls: Vec<String> = targets
        .iter()
        .map(|t| t.as_ref().unwrap().url.clone())
        .collect();
    let c = coordinator_with(&urls.join(","), &d.url, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut lost = None;
    let (ids, text, _) = stream_cut_midway(&rt, &c.url, prompt, |row| {
        let i = urls.iter().position(|u| *u == row.target_url).unwrap();
        drop(targets[i].take());
        lost = Some(i);
    });
    assert_eq!(
        ids,
        token_ids(&expected),
        "no token lost, repeated or changed"
    );
    assert_eq!(text, expected["text"].as_str().unwrap());
    let row = ended_row(&rt, &c.url);
    assert_eq!(row.state, "finished");
    assert_eq!(row.failovers, 1);
    assert_eq!(
        row.target_url,
        urls[1 - lost.unwrap()],
        "moved to the other target"
    );
    assert_ne!(row.target_session_id, row.session_id);
}

/// A draft-node lost mid-request is replaced by another: the coordinator takes the session back
/// (a replay-only Decode), relays what the lost draft had committed, and starts the other
/// draft-node from there; the text equals an uninterrupted run's and stays speculative.
#[test]
fn a_draft_lost_mid_request_is_replaced_with_nothing_lost() {
    let prompt = "Count from 1 to 1000, separated by commas.";
    let expected = generate(prompt, &["--max-tokens", "200"]);
    let t = target_node(&[]);
    let mut drafts = [
        Some(draft_node("smollm2-135m-q4_1")),
        Some(draft_node("smollm2-135m-q4_1")),
    ];
    let urls: Vec<String> = drafts
        .iter()
        .map(|d| d.as_ref().unwrap().url.clone())
        .collect();
    let c = coordinator_with(&t.url, &urls.join(","), &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut lost = None;
    let (ids, text, last) = stream_cut_midway(&rt, &c.url, prompt, |row| {
        let i = (urls.iter().position(|u| *u == row.draft_url))
            .unwrap_or_else(|| panic!("{row:?} drafts on none of {urls:?}"));
        drafts[i].as_mut().unwrap().proc.child.kill().unwrap();
        lost = Some(i);
    });
    assert_eq!(
        ids,
        token_ids(&expected),
        "no token lost, repeated or changed"
    );
    assert_eq!(text, expected["text"].as_str().unwrap());
    assert!(!last.fallback, "another draft-node drafted on: no fallback");
    let row = ended_row(&rt, &c.url);
    assert_eq!(row.state, "finished");
    assert_eq!((row.draft_failovers, row.failovers), (1, 0));
    assert!(!row.fallback);
    assert_eq!(
        row.draft_url,
        urls[1 - lost.unwrap()],
        "the other draft-node"
    );
    // A draft-node reports its statistics in its last event: the lost one never did.
    let drafted = last.stats.unwrap().drafted_tokens;
    assert!(
        drafted > 16,
        "the other draft-node drafted {drafted} tokens"
    );
}

/// A coordinator may start before its targets (a Kubernetes rollout, a StatefulSet whose HPA has
/// not started every pod it lists): with `--target-wait` it waits for the first one instead of
/// exiting, targets it cannot reach are marked down and used once they come up, and requests
/// decode as embedded meanwhile. Without the wait, none reachable is still a clear error.
#[test]
fn a_coordinator_waits_for_its_first_target_and_routes_around_absent_ones() {
    let prompt = PROMPTS[0];
    let expected = generate(prompt, &["--max-tokens", "24", "--mode", "target-only"]);
    let (late, absent, port) = (free_port(), free_port(), free_port());
    let targets = format!("http://127.0.0.1:{late},http://127.0.0.1:{absent}");
    let listen = format!("127.0.0.1:{port}");
    let mut c = Proc::spawn(
        &[
            "coordinator",
            "--listen",
            &listen,
            "--target",
            &targets,
            "--target-wait",
            "120",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_secs(2));
    c.check_running();
    let late_listen = format!("127.0.0.1:{late}");
    let _t = spawn(&["target-node", "--listen", &late_listen], late);
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url, &mut c);
    for _ in 0..2 {
        // Round-robin over both targets: the absent one is skipped.
        let got = generate(prompt, &["--max-tokens", "24", "--coordinator", &url]);
        assert_eq!(got["token_ids"], expected["token_ids"]);
    }
    assert!(
        c.log().contains(&format!(
            "target http://127.0.0.1:{absent} cannot be reached"
        )),
        "{}",
        c.log()
    );
}

/// New sessions go to the least loaded target: while a long request runs on one of two targets,
/// each short request lands on the other (round-robin would put one of three beside it).
#[test]
fn sessions_are_placed_on_the_least_loaded_target() {
    let (a, b) = (target_node(&[]), target_node(&[]));
    let c = coordinator_with(&format!("{},{}", a.url, b.url), "", &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut long = Command::new(bin())
        .args([
            "generate",
            "--prompt",
            "Count from 1 to 500, one number per line.",
            "--chat",
            "--max-tokens",
            "3000",
            "--mode",
            "target-only",
            "--coordinator",
            &c.url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let (busy, long_id) = loop {
        let rows = ledger(&rt, &c.url);
        if let Some(r) = rows.iter().find(|r| r.state == "running") {
            break (r.target_url.clone(), r.session_id.clone());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the long request never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for _ in 0..3 {
        run(&[
            "generate",
            "--prompt",
            "Hi",
            "--max-tokens",
            "2",
            "--coordinator",
            &c.url,
        ]);
    }
    // A row is marked ended just after its last event: wait for the short ones' marks.
    let start = Instant::now();
    let rows = loop {
        let rows = ledger(&rt, &c.url);
        let short_running = rows
            .iter()
            .any(|r| r.session_id != long_id && r.state == "running");
        if !short_running || start.elapsed() > Duration::from_secs(10) {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = long.kill();
    let _ = long.wait();
    let short: Vec<&str> = rows
        .iter()
        .filter(|r| r.session_id != long_id && r.state == "finished")
        .map(|r| r.target_url.as_str())
        .collect();
    assert_eq!(short.len(), 3, "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r.session_id == long_id && r.state == "running"),
        "the long request ended before the short ones: {rows:?}"
    );
    assert!(
        short.iter().all(|u| *u != busy),
        "a short request went to the busy target {busy}: {short:?}"
    );
}
