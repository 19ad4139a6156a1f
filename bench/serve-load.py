#!/usr/bin/env python3
"""Load test of an OpenAI-compatible server: N streaming clients at once, each sending
requests one after another; aggregate generated tokens per second, time to first token
and inter-token latency percentiles. Works against `spillway serve` and llama-server
alike (only /v1/chat/completions or /v1/completions with "stream": true).

    bench/serve-load.py URL [--clients 8] [--requests 4] [--max-tokens 64]
                        [--completion] [--watch] [--json OUT]

--watch also keeps one extra conversation's cache view open (spillway only: its
/v1/conversations/{id}/cache/events stream) while a client of its own chats in it, to
measure what watching costs the others. Tokens are counted from the streamed chunks
(one chunk per token on both servers) and checked against the final usage where the
server sends one. Loopback or a trusted network only: it sends what it is told to.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a river carves a canyon over millions of years.",
    "Describe a busy market in the morning, with its sounds and smells.",
    "Give advice to someone learning to cook for the first time.",
    "Tell the history of the bicycle in a few paragraphs.",
    "Describe the life cycle of a star like the Sun.",
    "Write a letter from a traveller to a friend at home.",
    "Explain why the sky is blue to a curious child.",
]


def stream_request(url: str, body: dict, headers: dict, timeout: float = 600):
    """Yields (seconds since the request was sent, chunk JSON) for each data line."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **headers})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for line in r:
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                return
            yield time.perf_counter() - t0, json.loads(payload)


def client(args, i: int, out: list, errors: list, conversation: str | None = None):
    path = "/v1/completions" if args.completion else "/v1/chat/completions"
    for k in range(args.requests):
        prompt = PROMPTS[(i + k) % len(PROMPTS)]
        body = {"max_tokens": args.max_tokens, "temperature": 0.8, "seed": 1000 * i + k,
                "stream": True, "ignore_eos": True}
        if args.completion:
            body["prompt"] = prompt
        else:
            body["messages"] = [{"role": "user", "content": prompt}]
        headers = {"X-Conversation-Id": conversation} if conversation else {}
        times = []
        usage = None
        try:
            for t, chunk in stream_request(args.url + path, body, headers):
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for c in chunk.get("choices", []):
                    piece = c.get("text") if args.completion else (c.get("delta") or {}).get("content")
                    if piece:
                        times.append(t)
        except Exception as e:  # noqa: BLE001 - a failed request is a result
            errors.append(f"client {i} request {k}: {e}")
            continue
        out.append({"client": i, "times": times, "end": time.perf_counter(),
                    "completion_tokens": usage["completion_tokens"] if usage else len(times)})


def watcher(args, conversation: str, stop: threading.Event, seen: list):
    req = urllib.request.Request(f"{args.url}/v1/conversations/{conversation}/cache/events",
                                 headers={"X-Conversation-Id": conversation})
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if line.startswith(b"data: "):
                seen.append(len(line))
            if stop.is_set():
                return


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--completion", action="store_true", help="/v1/completions instead of chat")
    ap.add_argument("--watch", action="store_true",
                    help="one more client whose conversation's cache view is watched")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    args.url = args.url.rstrip("/")

    results, errors, threads = [], [], []
    stop, seen = threading.Event(), []
    watch_thread = None
    if args.watch:
        req = urllib.request.Request(args.url + "/v1/conversations", data=b"{}",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            conv = json.loads(r.read())["id"]
        watch_thread = threading.Thread(target=watcher, args=(args, conv, stop, seen), daemon=True)
        watch_thread.start()
        watched_results: list = []
        threads.append(threading.Thread(target=client, args=(args, args.clients, watched_results,
                                                              errors, conv)))
    t0 = time.perf_counter()
    for i in range(args.clients):
        threads.append(threading.Thread(target=client, args=(args, i, results, errors)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()

    tokens = sum(r["completion_tokens"] for r in results)
    ttft = [r["times"][0] for r in results if r["times"]]
    itl = [b - a for r in results for a, b in zip(r["times"], r["times"][1:])]
    summary = {
        "url": args.url, "clients": args.clients, "requests": len(results),
        "max_tokens": args.max_tokens, "failed": len(errors), "wall_s": round(wall, 3),
        # Both servers are asked to ignore end-of-text tokens ("ignore_eos"), so this is
        # requests x max_tokens unless one of them stopped early.
        "completion_tokens": tokens,
        # The unwatched clients' tokens over the time until the last of them finished.
        "tokens_per_s": round(tokens / (max(r["end"] for r in results) - t0), 2) if results else 0,
        "ttft_p50_s": round(pct(ttft, 50), 4), "ttft_p90_s": round(pct(ttft, 90), 4),
        "itl_p50_ms": round(1000 * pct(itl, 50), 2), "itl_p90_ms": round(1000 * pct(itl, 90), 2),
        "itl_p99_ms": round(1000 * pct(itl, 99), 2),
    }
    if args.watch:
        summary["watched_views"] = len(seen)
        summary["watched_view_bytes_mean"] = round(statistics.mean(seen)) if seen else 0
    print(json.dumps(summary))
    for e in errors[:5]:
        print("error:", e, file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
