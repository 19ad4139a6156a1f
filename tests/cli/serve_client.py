"""Client side of tests/cli/serve.sh, with the official `openai` package.

  python serve_client.py BASE_URL API_KEY SPILLWAY_BIN MODEL POLICY SECONDS CLIENTS KV_BUDGET

1. Concurrency: CLIENTS threads stream chat completions for SECONDS seconds (sampled,
   each thread its own conversation id, now and then a one-off request and a client that
   hangs up mid-stream); no request may fail; p50/p99 latency and tokens/s are printed;
   the server's RSS may not grow past the KV budget and its sessions stay within limits.
2. While that load runs: a greedy conversation of several turns through the server, each
   turn equal to `spillway generate --chat --messages` on the same messages in a fresh
   session (no server, no batching, no prefix reuse).
Exits 1 on any failure.
"""
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import openai

base_url, api_key, spillway, model, policy = sys.argv[1:6]
seconds, n_clients, kv_budget = float(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
failures = []


def metrics():
    req = urllib.request.Request(base_url.rsplit("/v1", 1)[0] + "/metrics",
                                 headers={"Authorization": f"Bearer {api_key}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f"\n  {detail}"), flush=True)
    if not ok:
        failures.append(name)


m0 = metrics()
rss_start = m0["rss_bytes"]

# --- load -----------------------------------------------------------------------------
latencies, tokens, errors = [], [], []
lock = threading.Lock()
stop_at = time.time() + seconds
topics = ["the sea", "a small town", "music", "winter", "a cat", "bread", "rivers", "the moon"]


def worker(k):
    rng = random.Random(k)
    history = []
    i = 0
    # Even-numbered clients hang up on their second request, which they make however long
    # the first took (a sanitizer build on a loaded machine may take the whole load window
    # for one request).
    while time.time() < stop_at or (k % 2 == 0 and i < 2):
        i += 1
        one_off = i % 3 == 0
        hang_up = i == 2 and k % 2 == 0
        if len(history) > 6 or one_off:
            history = []
        msgs = history + [{"role": "user", "content": f"Tell me one thing about {rng.choice(topics)}."}]
        t0 = time.time()
        text, n = "", 0
        try:
            stream = client.chat.completions.create(
                model="spillway", messages=msgs, max_tokens=200 if hang_up else 24,
                temperature=0.8,
                seed=rng.randrange(1 << 30), stream=True,
                extra_headers={} if one_off else {"X-Conversation-Id": f"load-{k}"})
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                    n += 1
                    if hang_up and n == 3:
                        break
            stream.close()
        except Exception as e:  # noqa: BLE001 - any failure counts
            with lock:
                errors.append(repr(e))
            continue
        if hang_up:
            continue
        with lock:
            latencies.append(time.time() - t0)
            tokens.append(n)
        if not one_off:
            history = msgs + [{"role": "assistant", "content": text}]


threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_clients)]
t_load = time.time()
for t in threads:
    t.start()

# --- greedy conversation against the single-session reference, under load ----------------
# The three turns go back to back, and the single-session references are computed after
# them: while a reference runs (a second or more), the load clients' one-off requests can
# fill --max-sessions and evict the idle conversation, which is the server doing its job,
# not a failure of prefix reuse.
turns = ["What is the capital of France?", "And of Italy?", "Name one river in that country."]
msgs = []
reuse = []
asked = []  # (messages sent, reply) per turn
for user in turns:
    msgs.append({"role": "user", "content": user})
    raw = client.chat.completions.with_raw_response.create(
        model="spillway", messages=msgs, max_tokens=24, temperature=0,
        extra_headers={"X-Conversation-Id": "greedy-reference"})
    reuse.append(raw.headers.get("x-conversation-reuse"))
    parsed = raw.parse()
    got = parsed.choices[0].message.content
    asked.append((list(msgs), got, parsed.usage.completion_tokens))
    msgs.append({"role": "assistant", "content": got})


def tokens_of(text):
    out = subprocess.run([spillway, "tokenize", "--model", model, "--text", text, "--no-bos",
                          "--json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["count"]


# A turn can reuse the conversation's session only when the previous answer, sent back as
# text, tokenizes to the tokens that were generated (greedy decoding of a small model may
# produce a split that the tokenizer would not, e.g. " I" "on" for " Ion"): then the
# server must feed only the new suffix; otherwise it must start over.
want = ["new"]
for _, got, n_generated in asked[:-1]:
    want.append("prefix" if tokens_of(got) == n_generated else "reset")
check("a turn after an answer that tokenizes back to its own tokens feeds only the new suffix",
      reuse == want, f"X-Conversation-Reuse: {reuse}, expected {want}")
check("some turn reused the conversation's session", "prefix" in reuse, f"{reuse}")
for turn, (sent, got, _) in enumerate(asked):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(sent, f)
    ref = subprocess.run([spillway, "generate", "--model", model, "--chat", "--messages", f.name,
                          "-n", "24", "--policy", policy, "-t", "1"],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    ref = ref[:-1] if ref.endswith("\n") else ref
    check(f"greedy turn {turn + 1} equals the single-session reference", got == ref,
          f"server: {got!r}\n  reference: {ref!r}")

for t in threads:
    t.join()
elapsed = time.time() - t_load
m1 = metrics()
check("no failed request under load", not errors, "; ".join(errors[:3]))
check("requests completed under load", len(latencies) >= n_clients, f"{len(latencies)} requests")
if latencies:
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    print(f"load: {n_clients} clients, {len(latencies)} requests in {elapsed:.1f}s, "
          f"{sum(tokens)} streamed chunks ({sum(tokens) / elapsed:.1f}/s); latency "
          f"p50 {statistics.median(latencies):.2f}s p99 {q[98]:.2f}s; server "
          f"{m1['completion_tokens_total'] - m0['completion_tokens_total']} tokens")
check("client hang-ups cancelled their requests", m1["cancelled_total"] > m0["cancelled_total"],
      f"cancelled_total {m1['cancelled_total']}")
check("sessions within --max-sessions and KV within --kv-budget",
      m1["kv_bytes"] <= kv_budget, f"kv_bytes {m1['kv_bytes']} budget {kv_budget}")
growth = m1["rss_bytes"] - rss_start
check("RSS growth under load stays within the KV budget", growth <= kv_budget + (64 << 20),
      f"RSS {rss_start} -> {m1['rss_bytes']} (+{growth}), budget {kv_budget}")
print(f"rss {rss_start >> 20} MiB -> {m1['rss_bytes'] >> 20} MiB; kv {m1['kv_bytes'] >> 20} MiB in "
      f"{m1['sessions']} sessions; evictions {m1['session_evictions_total']}; "
      f"prefix reuses {m1['conversation_prefix_reuse_total']}, resets {m1['conversation_reset_total']}")
sys.exit(1 if failures else 0)
