#!/usr/bin/env python3
"""Bench: N streams cut by their clients in a loop through a coordinator's HTTP API; the resident
memory of the coordinator, target-node and draft-node before and after (issue 12: within 10 %).

Usage: scripts/cancel-loop.py [--bin target/release/specd] [--n 1000] [--warmup 20] [--out FILE.json]

Starts the three nodes on 127.0.0.1 (default pair), warms up with WARMUP cut streams, reads each
process's VmRSS, cuts N streams (each: POST a streamed chat completion, read two events, close the
connection), waits 3 s for the last sessions to close, reads VmRSS again, and prints the ratios.
All traffic stays on loopback; the loop is bounded by N.
"""

import argparse
import json
import socket
import subprocess
import sys
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_tcp(port, proc, seconds=300):
    start = time.time()
    while time.time() - start < seconds:
        if proc.poll() is not None:
            sys.exit(f"a node exited early: {proc.args}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"port {port} not ready")


def cut_stream(port):
    body = json.dumps({
        "model": "smollm2-135m-q8_0", "max_tokens": 400, "temperature": 0, "stream": True,
        "messages": [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}],
    }).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    f = s.makefile("rb")
    events = 0
    while events < 3:
        line = f.readline()
        if not line:
            raise RuntimeError("stream ended early")
        events += line.startswith(b"data: ")
    f.close()
    s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/specd")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=20,
                    help="cut streams before the first reading (1100 fills the coordinator's ledger)")
    ap.add_argument("--out")
    a = ap.parse_args()
    tp, dp, cp, hp = free_port(), free_port(), free_port(), free_port()
    procs = []
    try:
        t = subprocess.Popen([a.bin, "target-node", "--listen", f"127.0.0.1:{tp}"],
                             stderr=subprocess.DEVNULL)
        procs.append(t)
        d = subprocess.Popen([a.bin, "draft-node", "--listen", f"127.0.0.1:{dp}"],
                             stderr=subprocess.DEVNULL)
        procs.append(d)
        wait_tcp(tp, t)
        wait_tcp(dp, d)
        c = subprocess.Popen([a.bin, "coordinator", "--listen", f"127.0.0.1:{cp}",
                              "--target", f"http://127.0.0.1:{tp}", "--draft", f"http://127.0.0.1:{dp}",
                              "--http-listen", f"127.0.0.1:{hp}"], stderr=subprocess.DEVNULL)
        procs.append(c)
        wait_tcp(hp, c)
        for _ in range(a.warmup):
            cut_stream(hp)
        time.sleep(3)
        names = {"coordinator": c.pid, "target-node": t.pid, "draft-node": d.pid}
        before = {k: rss_kib(p) for k, p in names.items()}
        start = time.time()
        for i in range(a.n):
            cut_stream(hp)
            if (i + 1) % 100 == 0:
                print(f"{i + 1} cut, {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        time.sleep(3)
        after = {k: rss_kib(p) for k, p in names.items()}
        result = {
            "streams_cut": a.n,
            "warmup": a.warmup,
            "seconds": round(time.time() - start, 1),
            "rss_kib_before": before,
            "rss_kib_after": after,
            "ratio": {k: round(after[k] / before[k], 4) for k in names},
        }
        print(json.dumps(result, indent=1))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


if __name__ == "__main__":
    main()
