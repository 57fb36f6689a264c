//! `specd coordinator --target dns:///NAME:PORT`: a name that stands for every target-node it
//! resolves to, as a Kubernetes headless Service does, followed as it changes. The coordinator
//! runs in a mount namespace of its own whose /etc/hosts the test writes (root needed, as in CI;
//! SPECD_TEST_NETNS=skip skips it elsewhere, saying so); the two targets listen on 127.0.0.1 and
//! 127.0.0.2, the same port.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod common;

use common::cluster::{generate, ledger, wait_ready, Node};
use common::{free_port, Proc};

fn hosts(path: &std::path::Path, addrs: &[&str]) {
    let mut text = String::from("127.0.0.1 localhost\n");
    for a in addrs {
        text.push_str(&format!("{a} specd-targets\n"));
    }
    // Written in place: the coordinator's bind mount sees the same file.
    std::fs::write(path, text).unwrap();
}

fn target_on(ip: &str, port: u16) -> Node {
    let listen = format!("{ip}:{port}");
    let mut proc = Proc::spawn(&["target-node", "--listen", &listen], &[]);
    let url = format!("http://{listen}");
    wait_ready(&url, &mut proc);
    Node { proc, url }
}

#[test]
fn a_dns_name_stands_for_every_target_it_resolves_to() {
    let probe = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = format!("{probe:?}");
        if std::env::var("SPECD_TEST_NETNS").as_deref() == Ok("skip") {
            eprintln!("SKIPPED (SPECD_TEST_NETNS=skip): no mount namespaces here: {why}");
            return;
        }
        panic!("this test makes a mount namespace, which needs root: {why} (SPECD_TEST_NETNS=skip skips it)");
    }
    let prompt = "Why do cats purr?";
    let expected = generate(prompt, &["--max-tokens", "8"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts");
    hosts(&file, &["127.0.0.1"]);
    let port = free_port();
    let (one, two) = (target_on("127.0.0.1", port), target_on("127.0.0.2", port));
    let cport = free_port();
    let listen = format!("127.0.0.1:{cport}");
    let name = format!("dns:///specd-targets:{port}");
    let file_s = file.to_str().unwrap();
    let mut proc = Proc::spawn_under(
        &[
            "unshare",
            "-m",
            "sh",
            "-c",
            r#"mount --bind "$SPECD_HOSTS" /etc/hosts && exec "$0" "$@""#,
        ],
        &[
            "coordinator",
            "--listen",
            &listen,
            "--target",
            &name,
            "--dns-refresh",
            "0.3",
        ],
        &[("SPECD_HOSTS", file_s)],
    );
    let url = format!("http://{listen}");
    wait_ready(&url, &mut proc);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ask = |n: usize| -> BTreeSet<String> {
        let before = ledger(&rt, &url).len();
        for _ in 0..n {
            let out = generate(prompt, &["--max-tokens", "8", "--coordinator", &url]);
            assert_eq!(out["token_ids"], expected["token_ids"]);
        }
        let mut rows = ledger(&rt, &url);
        rows.sort_by_key(|r| r.seq);
        rows[before..]
            .iter()
            .map(|r| r.target_url.clone())
            .collect()
    };
    let only = |n: &Node| BTreeSet::from([n.url.clone()]);
    assert_eq!(ask(2), only(&one), "the name resolves to 127.0.0.1 only");
    // A pod joins the Service: the next resolution finds it, and idle targets take turns.
    hosts(&file, &["127.0.0.1", "127.0.0.2"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        ask(4),
        BTreeSet::from([one.url.clone(), two.url.clone()]),
        "both addresses are targets"
    );
    // One leaves: new sessions go to the one that stays.
    hosts(&file, &["127.0.0.2"]);
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ask(3), only(&two), "after {:?}", start.elapsed());
    let log = proc.log();
    assert!(log.contains("target found by DNS"), "{log}");
    assert!(log.contains("target no longer in DNS"), "{log}");
    drop(one);
}
