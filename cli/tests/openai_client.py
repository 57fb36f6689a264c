"""The official `openai` Python client against a running `specd serve` (driven by cli/tests/serve.rs).

Usage: openai_client.py BASE_URL MODEL EXPECTED_JSON [coordinator]
EXPECTED_JSON is `specd generate --json` of the same greedy request: HTTP must give the same text
and token count. `coordinator`: the server is a coordinator's HTTP API (the same checks: its
log-probabilities come from the target-node over gRPC). Every check asserts; the last line printed is "N passed, 0 failed".
"""

import json
import sys
import threading
import time
import urllib.request

try:
    import openai
    from openai import OpenAI
except ImportError:
    sys.exit("the `openai` Python package is missing: python3 -m pip install openai (.ci/run installs it)")

base, model, expected_path = sys.argv[1], sys.argv[2], sys.argv[3]
COORDINATOR = sys.argv[4:] == ["coordinator"]
expected = json.load(open(expected_path))
PROMPT = expected["prompt"]
TEXT = expected["text"]
N = expected["completion_tokens"]
MESSAGES = [{"role": "user", "content": PROMPT}]
client = OpenAI(base_url=base, api_key="not-needed", max_retries=0, timeout=120)
passed = []


def check(name):
    def run(f):
        f()
        passed.append(name)
        print(f"ok {name}", flush=True)
    return run


def status_of(call):
    try:
        call()
    except openai.APIStatusError as e:
        return e.status_code, e.body
    raise AssertionError("no error")


def spec(usage):
    return usage.model_extra["speculative"]


@check("models")
def _():
    assert [m.id for m in client.models.list().data] == [model]


@check("chat greedy equals specd generate")
def _():
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=N, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == TEXT, (r.choices[0].message.content, TEXT)
    assert r.usage.completion_tokens == N
    assert r.usage.total_tokens == r.usage.prompt_tokens + N
    s = spec(r.usage)
    assert s["mode"] == "speculative" and s["rule"] == "exact"
    assert s["drafted_tokens"] > 0 and 0 < s["accepted_tokens"] <= s["drafted_tokens"]
    assert 0 < s["acceptance_rate"] <= 1 and s["lossy_accepted_tokens"] == 0
    assert s["budget_spent"] == 0 and 0 < s["target_calls"] <= N


@check("chat streaming with usage equals the whole response")
def _():
    chunks = list(client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=N, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT, (text, TEXT)
    assert len([c for c in chunks if c.choices]) > 3, "streamed in several chunks"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"] or finishes == ["stop"], finishes
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == N
    assert all(c.usage is None for c in chunks[:-1])


@check("max_tokens ends with finish_reason length")
def _():
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    assert TEXT.startswith(r.choices[0].message.content)


@check("stop strings cut the text exactly and end the request")
def _():
    # A stop string from the middle of the greedy text, at its first occurrence.
    a = next(i for i in range(len(TEXT) // 3, len(TEXT) - 4) if TEXT.find(TEXT[i:i + 4]) == i)
    stop = TEXT[a:a + 4]
    r = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=N, temperature=0, stop=["\u2603never", stop])
    assert r.choices[0].message.content == TEXT[:a], (r.choices[0].message.content, TEXT[:a])
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < N
    chunks = list(client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=N, temperature=0, stop=stop, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT[:a], (text, TEXT[:a])


@check("a seed repeats a sampled request; speculative and target-only agree on it")
def _():
    def run(seed, **kw):
        return client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=24, temperature=0.9, top_p=0.95,
            seed=seed, **kw).choices[0].message.content
    a, b = run(11), run(11)
    assert a == b, (a, b)
    outs = {run(s) for s in range(12, 16)}
    assert len(outs) > 1, "different seeds give different samples"


@check("logprobs come from the target's distribution")
def _():
    r = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 12
    assert "".join(c.token for c in content) == r.choices[0].message.content
    for c in content:
        assert len(c.top_logprobs) == 3
        assert c.logprob <= 0
        # Greedy: the chosen token is the most likely one.
        assert c.top_logprobs[0].token == c.token and abs(c.top_logprobs[0].logprob - c.logprob) < 1e-6
        assert c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob >= c.top_logprobs[2].logprob
        assert bytes(c.bytes).decode() == c.token
    # Streamed: each chunk's log-probabilities name its tokens.
    chunks = list(client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2,
        stream=True))
    streamed = [c for ch in chunks if ch.choices and ch.choices[0].logprobs
                for c in ch.choices[0].logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]
    assert all(abs(a.logprob - b.logprob) < 1e-6 for a, b in zip(streamed, content))
    code, body = status_of(lambda: client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=2, logprobs=True, top_logprobs=21))
    assert code == 400 and body["param"] == "top_logprobs", body


@check("the speculative extension object")
def _():
    def run(**s):
        return client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=N, temperature=0,
            extra_body={"speculative": s})
    r = run(mode="target-only")
    assert r.choices[0].message.content == TEXT
    assert spec(r.usage)["drafted_tokens"] == 0 and spec(r.usage)["target_calls"] == N
    r = run(drafter="ngram", gamma=4)
    assert r.choices[0].message.content == TEXT
    assert spec(r.usage)["drafter"] == "ngram:2-4"
    r = run(rule="topk:5", budget=3, pacing="none", gamma="auto")
    s = spec(r.usage)
    assert s["rule"] == "topk:5" and s["budget_spent"] <= 3 + 1e-9 and s["gamma_policy"] == "auto"


@check("text completions, whole and streamed, with logprobs")
def _():
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8,
                                  temperature=0, logprobs=2)
    assert r.object == "text_completion" and r.usage.completion_tokens == 8
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 8 and all(len(t) == 2 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == r.choices[0].text
    chunks = list(client.completions.create(model=model, prompt="The capital of France is",
                                            max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text


@check("errors: OpenAI's error object and status")
def _():
    code, body = status_of(lambda: client.chat.completions.create(model="nope", messages=MESSAGES))
    assert code == 404 and body["code"] == "model_not_found", body
    code, body = status_of(lambda: client.chat.completions.create(model=model, messages=MESSAGES, n=2))
    assert code == 400 and body["param"] == "n" and body["type"] == "invalid_request_error", body
    code, body = status_of(lambda: client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=10_000_000))
    assert code == 400 and body["code"] == "context_length_exceeded", body
    # Streamed, the error comes as the status too, before any event.
    code, body = status_of(lambda: list(client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=10_000_000, stream=True)))
    assert code == 400 and body["code"] == "context_length_exceeded", body
    code, body = status_of(lambda: client.completions.create(
        model=model, prompt="x", max_tokens=2**64 - 1))
    assert code == 400 and body["code"] == "context_length_exceeded", body
    code, body = status_of(lambda: client.chat.completions.create(
        model=model, messages=MESSAGES, extra_body={"speculative": {"rule": "bogus"}}))
    assert code == 400 and body["param"] == "speculative.rule", body
    code, body = status_of(lambda: client.completions.create(model=model, prompt=["a", "b"]))
    assert code == 400 and body["param"] == "prompt", body


@check("past the waiting room: 429 with Retry-After")
def _():
    # The server runs with --max-running 1 --max-waiting 1: one request runs, one waits, the
    # third is refused.
    long = [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]
    first = client.chat.completions.create(model=model, messages=long, max_tokens=1000,
                                           temperature=0, stream=True)
    next(iter(first))  # running
    waiting = threading.Thread(target=lambda: client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=2, temperature=0))
    waiting.start()
    time.sleep(1.0)  # queued behind the first
    try:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, temperature=0)
        raise AssertionError("no 429 with one request running and one waiting")
    except openai.RateLimitError as e:
        assert e.response.headers["retry-after"] == "1"
        assert e.body["type"] == "rate_limit_error"
    # Closing the stream cancels the first request: the waiting one gets its turn.
    first.close()
    waiting.join(timeout=60)
    assert not waiting.is_alive()


@check("health")
def _():
    with urllib.request.urlopen(base.removesuffix("/v1") + "/health") as r:
        assert json.load(r)["status"] == "ok"


def scrape():
    """GET /metrics through prometheus_client's own text parser: {(name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(base.removesuffix("/v1") + "/metrics") as r:
        assert r.headers["content-type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


@check("metrics: Prometheus text that moves as requests run")
def _():
    before = scrape()
    get = lambda m, name, **labels: m.get((name, tuple(sorted(labels.items()))), 0.0)
    assert get(before, "specd_spec_decode_num_drafts_total") > 0
    assert get(before, "specd_spec_decode_num_accepted_tokens_per_pos_total", position="0") > 0
    assert get(before, "specd_num_requests_running") == 0
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=N, temperature=0,
                                       extra_body={"speculative": {"rule": "topk:5", "budget": 2}})
    after = scrape()
    s = spec(r.usage)
    assert get(after, "specd_generation_tokens_total") - get(before, "specd_generation_tokens_total") == N
    assert get(after, "specd_prompt_tokens_total") - get(before, "specd_prompt_tokens_total") == r.usage.prompt_tokens
    assert (get(after, "specd_spec_decode_num_draft_tokens_total")
            - get(before, "specd_spec_decode_num_draft_tokens_total")) == s["drafted_tokens"]
    assert (get(after, "specd_spec_decode_num_accepted_tokens_total")
            - get(before, "specd_spec_decode_num_accepted_tokens_total")) == s["accepted_tokens"]
    assert (get(after, "specd_lossy_accepted_tokens_total", rule="topk")
            - get(before, "specd_lossy_accepted_tokens_total", rule="topk")) == s["lossy_accepted_tokens"]
    assert abs(get(after, "specd_error_budget_spent_total")
               - get(before, "specd_error_budget_spent_total") - s["budget_spent"]) < 1e-9
    assert (get(after, "specd_e2e_request_latency_seconds_count")
            - get(before, "specd_e2e_request_latency_seconds_count")) == 1
    assert get(after, "specd_time_to_first_token_seconds_count") > get(before, "specd_time_to_first_token_seconds_count")


print(f"{len(passed)} passed, 0 failed")
