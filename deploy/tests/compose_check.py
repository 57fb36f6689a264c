#!/usr/bin/env python3
"""Brings deploy/compose.yaml up with a given image, checks it against the embedded run, tears it down.

    python3 deploy/tests/compose_check.py --image specd:ci --specd target/release/specd

1. `docker-compose up`; waits for the coordinator's gRPC health and HTTP /health.
2. The same greedy request three ways: `specd generate` embedded (on the host), through the
   stack's gRPC coordinator (`specd generate --coordinator`), and through its HTTP API (the official
   `openai` client): the token ids (gRPC) and the texts must be equal.
3. The draft container is killed (SIGKILL) while a streamed HTTP request runs: the request must
   still finish, with the embedded run's text (the coordinator falls back to target-only
   decoding), and must have used the draft before the kill.
4. `docker-compose down -v`, also on failure (after printing the containers' logs).
Needs docker, docker-compose (v1) or `docker compose` (v2), the `openai` package, and the
default pair in SPECD_MODELS (default ~/.cache/specd/models; `specd models fetch` fills it).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def compose_cmd():
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


class Stack:
    def __init__(self, args):
        self.args = args
        self.env = dict(os.environ)
        if os.environ.get("SPECD_HOME") and not os.environ.get("SPECD_MODELS"):
            # The stack reads the models the host's embedded runs read.
            self.env["SPECD_MODELS"] = os.path.join(os.environ["SPECD_HOME"], "models")
        self.env.update(
            SPECD_IMAGE=args.image,
            HTTP_PORT=str(args.http_port),
            GRPC_PORT=str(args.grpc_port),
            TARGET_METRICS_PORT=str(args.grpc_port + 1),
            DRAFT_METRICS_PORT=str(args.grpc_port + 2),
        )
        self.base = compose_cmd() + ["-p", args.project, "-f", os.path.join(ROOT, "deploy", "compose.yaml")]

    def run(self, *cmd, check=True, capture=False):
        return subprocess.run(
            self.base + list(cmd), env=self.env, check=check, text=True,
            stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None,
        )

    def logs(self):
        print("---- container logs (last 40 lines each)", file=sys.stderr)
        self.run("logs", "--no-color", "--tail", "40", check=False)


def specd(args, *cmd):
    out = subprocess.run([args.specd, *cmd], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if out.returncode != 0:
        fail(f"specd {' '.join(cmd)} exited {out.returncode}:\n{out.stderr}")
    return json.loads(out.stdout)


def wait_ready(args, timeout=300):
    """Until the coordinator answers SERVING on gRPC and HTTP and sees a draft-node that serves."""
    deadline = time.time() + timeout
    grpc = f"127.0.0.1:{args.grpc_port}"
    checks = [
        [grpc],
        [grpc, "--service", "specd.v1.Drafter"],
        [f"http://127.0.0.1:{args.http_port}/health"],
    ]
    while time.time() < deadline:
        ok = all(
            subprocess.run([args.specd, "health", *c], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
            for c in checks
        )
        if ok:
            return
        time.sleep(1)
    raise SystemExit(f"compose_check: FAIL: the coordinator and its nodes did not answer SERVING within {timeout} s")


def metric(port, name):
    """Sum of a Prometheus metric's samples on http://127.0.0.1:PORT/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(name) and not line.startswith("#") and line[len(name)] in " {"
    )


def fail(msg):
    raise SystemExit(f"compose_check: FAIL: {msg}")


def check(args, stack):
    from openai import OpenAI

    wait_ready(args)
    client = OpenAI(base_url=f"http://127.0.0.1:{args.http_port}/v1", api_key="none")
    model = client.models.list().data[0].id
    gen = ["generate", "--prompt", PROMPT, "--chat", "--json"]

    # 2. embedded == gRPC == HTTP
    n = 48
    embedded = specd(args, *gen, "--max-tokens", str(n))
    remote = specd(args, *gen, "--max-tokens", str(n), "--coordinator", f"http://127.0.0.1:{args.grpc_port}")
    if remote["token_ids"] != embedded["token_ids"]:
        fail(f"gRPC through compose gave other tokens:\n{remote['token_ids']}\nembedded:\n{embedded['token_ids']}")
    if remote.get("drafted_tokens", 0) == 0:
        fail(f"the gRPC request drafted nothing: {remote}")
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=n
    )
    if r.choices[0].message.content != embedded["text"]:
        fail(f"HTTP through compose gave another text:\n{r.choices[0].message.content!r}\nembedded:\n{embedded['text']!r}")
    print(f"compose_check: embedded == gRPC == HTTP ({n} tokens, {remote['drafted_tokens']} drafted through the stack)")

    # 3. the draft container killed mid-request
    n = 256
    embedded = specd(args, *gen, "--max-tokens", str(n))
    drafted_before = metric(args.grpc_port + 1, "specd_spec_decode_num_draft_tokens_total")
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=n,
        stream=True, stream_options={"include_usage": True},
    )
    text, chunks, killed_at, usage, finish = "", 0, None, None, None
    for c in stream:
        if c.usage is not None:
            usage = c.usage
        for ch in c.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
        chunks += 1
        if chunks == 4:
            drafted_at_kill = metric(args.grpc_port + 1, "specd_spec_decode_num_draft_tokens_total")
            killed_at = len(text)
            stack.run("kill", "draft", capture=True)
    if killed_at is None:
        fail("the stream ended before the draft could be killed")
    if drafted_at_kill <= drafted_before:
        fail("the draft had proposed nothing before it was killed")
    if finish != "length" or text != embedded["text"]:
        fail(f"after the draft was killed: finish_reason {finish!r}, text\n{text!r}\nembedded:\n{embedded['text']!r}")
    state = stack.run("ps", "draft", capture=True).stdout
    if "Up" in state.split("\n", 2)[-1] and "Exit" not in state:
        fail(f"the draft container is still up:\n{state}")
    print(
        f"compose_check: draft killed after {killed_at} characters; the request finished with the embedded "
        f"text ({usage.completion_tokens if usage else '?'} tokens)"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="specd:dev")
    ap.add_argument("--specd", default=os.path.join(ROOT, "target", "release", "specd"))
    ap.add_argument("--project", default="specd-compose-check")
    ap.add_argument("--http-port", type=int, default=18000)
    ap.add_argument("--grpc-port", type=int, default=15050, help="also +1, +2: the nodes' metrics")
    args = ap.parse_args()
    stack = Stack(args)
    stack.run("down", "-v", check=False, capture=True)
    start = time.time()
    stack.run("up", "-d")
    ok = False
    try:
        check(args, stack)
        ok = True
    finally:
        if not ok:
            stack.logs()
        stack.run("down", "-v", check=False, capture=True)
    print(f"compose_check: ok ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
