"""Faults injected into `spillway serve` (loopback, bounded in count and time).

One server with small limits takes, at once or in turn: more clients than its connection
cap, clients that vanish mid-stream, clients that send half a request and stall, an
oversized body, bytes that are not UTF-8, a prompt far longer than the cache, one
conversation id used by two clients at once, and requests during SIGTERM's drain. After
the faults it still answers a normal request exactly as before them, is healthy, holds
no more memory than its model, its KV budget and a stated margin, and exits 0.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import socket
import threading
import time
import urllib.request

from conftest import CORPUS, MODEL, _need
from serve_util import Server, request

MAX_CONNECTIONS = 12
KV_BUDGET = 256 << 20
RSS_MARGIN = 384 << 20  # allocator, HTTP threads, forward buffers, tokenizer tables
NORMAL = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
          "max_tokens": 16, "temperature": 0}


def raw(port: int, data: bytes, read: bool = True, timeout: float = 30) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return b""
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def post_bytes(url: str, body: bytes, headers=None, timeout=120):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json",
                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def stream_tokens(url: str, body: dict, headers=None, stop_after: int | None = None):
    """Streams a chat answer; with stop_after, closes the connection after that many chunks."""
    body = dict(body, stream=True)
    host, port = url.split("//")[1].split(":")
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    s = socket.create_connection((host, int(port)), timeout=120)
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n".encode() + data)
    seen, buf = 0, b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            seen = buf.count(b"data: ")
            if stop_after is not None and seen >= stop_after:
                s.close()  # vanish mid-stream
                return buf.split(b"\r\n", 1)[0], seen
    finally:
        s.close()
    return buf.split(b"\r\n", 1)[0], seen


def test_serve_survives_injected_faults(cli, tmp_path):
    _need(MODEL, "model")
    _need(CORPUS, "corpus")
    log = tmp_path / "serve.log"
    args = ["--threads", "2", "--max-connections", str(MAX_CONNECTIONS), "--read-timeout", "2",
            "--write-timeout", "5", "--idle-timeout", "60", "--kv-budget", str(KV_BUDGET),
            "--max-sessions", "8", "--max-active", "8", "--policy", "sink:4+252",
            "--max-prompt-bytes", "200000", "--shutdown-grace", "20"]
    with Server(cli, MODEL, *args, log=log) as srv:
        url = srv.url
        status, _, before = request(url + "/v1/chat/completions", NORMAL)
        assert status == 200
        reference = before["choices"][0]["message"]["content"]

        # 1. More clients at once than the cap: each is answered, 200 or 503 + Retry-After.
        def streamer(i):
            return stream_tokens(url, {"messages": [{"role": "user", "content": f"Count to {i}."}],
                                       "max_tokens": 24, "temperature": 0.7, "seed": i})
        with cf.ThreadPoolExecutor(3 * MAX_CONNECTIONS) as ex:
            outcomes = list(ex.map(streamer, range(3 * MAX_CONNECTIONS)))
        codes = [o[0].split()[1] for o in outcomes]
        assert set(codes) <= {b"200", b"503"}, codes
        assert codes.count(b"200") >= MAX_CONNECTIONS // 2, codes
        assert b"503" in codes, "no connection was refused past the cap"
        status, headers, body = post_bytes(url + "/v1/chat/completions", b"{}")  # fresh: served
        assert status == 400
        # A 503 of the cap carries Retry-After.
        holders = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(MAX_CONNECTIONS)]
        try:
            for h in holders:  # each holds a worker: a request's headers, half sent
                h.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            time.sleep(0.3)
            over = raw(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert over.startswith(b"HTTP/1.1 503"), over[:200]
            assert b"Retry-After: 1" in over and b"overloaded" in over
        finally:
            for h in holders:
                h.close()

        # 2. Clients that vanish mid-stream: their requests are cancelled.
        cancelled = request(url + "/metrics")[2]["cancelled_total"]
        with cf.ThreadPoolExecutor(8) as ex:
            gone = list(ex.map(lambda i: stream_tokens(
                url, {"messages": [{"role": "user", "content": f"Tell a long story number {i}."}],
                      "max_tokens": 400}, stop_after=3), range(8)))
        assert all(o[0].split()[1] == b"200" for o in gone)
        for _ in range(100):  # the scheduler notices at its next step
            if request(url + "/metrics")[2]["cancelled_total"] >= cancelled + 8:
                break
            time.sleep(0.1)
        assert request(url + "/metrics")[2]["cancelled_total"] >= cancelled + 8

        # 3. Half a request, then silence: dropped after --read-timeout (2 s).
        t0 = time.time()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"messa")
            answer = s.recv(65536)  # the server closes (perhaps with a 400 first)
        assert time.time() - t0 < 15, "a stalled request was held too long"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]

        # 4. An oversized body: 413, read no further than the limit.
        status, _, body = post_bytes(url + "/v1/chat/completions", b"{\"messages\": \"" + b"x" * 1_000_000 + b"\"}")
        assert status == 413

        # 5. Bytes that are not UTF-8: a clear 400, or an answer with the bytes replaced.
        bad = b'{"messages": [{"role": "user", "content": "caf\xe9 \xff\xfe"}], "max_tokens": 4}'
        status, _, body = post_bytes(url + "/v1/chat/completions", bad)
        assert status in (200, 400), body
        if status == 400:
            assert json.loads(body)["error"]["message"]

        # 6. A prompt far longer than the cache (256 tokens): streamed through it.
        text = CORPUS.read_text(encoding="utf-8")[:40000]
        status, _, body = request(url + "/v1/completions", {"prompt": text, "max_tokens": 8})
        assert status == 200 and body["usage"]["prompt_tokens"] > 20 * 256

        # 7. One conversation id from two clients at once: the second waits, both answer.
        def turn(i):
            return request(url + "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": f"Say {i}."}], "max_tokens": 8},
                           headers={"X-Conversation-Id": "shared-1"})
        with cf.ThreadPoolExecutor(2) as ex:
            both = list(ex.map(turn, range(2)))
        assert [b[0] for b in both] == [200, 200]

        # After the faults: the same answer as before, healthy, memory within bounds.
        time.sleep(0.5)
        status, _, after = request(url + "/v1/chat/completions", NORMAL)
        assert status == 200 and after["choices"][0]["message"]["content"] == reference
        assert request(url + "/health")[2] == {"status": "ok"}
        # The metrics are refreshed by the decode thread after its step: an answer can
        # reach its client just before the step that ends its request is counted.
        for _ in range(100):
            status, _, m = request(url + "/metrics")
            if m["active_requests"] == 0 and m["queued_requests"] == 0:
                break
            time.sleep(0.1)
        assert m["kv_bytes"] <= KV_BUDGET, m
        limit = MODEL.stat().st_size + KV_BUDGET + RSS_MARGIN
        assert m["rss_bytes"] <= limit, f"RSS {m['rss_bytes'] >> 20} MiB over {limit >> 20} MiB"
        assert m["active_requests"] == 0 and m["queued_requests"] == 0, m

        # 8. SIGTERM while requests run and more arrive: those in flight finish, the late
        # ones are refused (503, or the connection refused), and the server exits 0.
        results = []

        def late(i):
            time.sleep(0.05 * i)
            try:
                results.append(request(url + "/v1/chat/completions",
                                       dict(NORMAL, max_tokens=48), timeout=60)[0])
            except OSError:
                results.append("refused")
        threads = [threading.Thread(target=late, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(90)
        assert srv.proc.wait(60) == 0, log.read_text()[-3000:]
        assert results and set(results) <= {200, 503, "refused"}, results
        assert 200 in results, results


def test_requests_queued_past_the_idle_timeout_fail_with_503(cli, tmp_path):
    """--max-active 1: a second request waits behind a long one (a prompt of some 3,500
    tokens to encode); past --idle-timeout it is cancelled with 503 "timeout" and
    Retry-After, and the server goes on."""
    _need(MODEL, "model")
    _need(CORPUS, "corpus")
    text = CORPUS.read_text(encoding="utf-8")[:15000]
    with Server(cli, MODEL, "--threads", "2", "--max-active", "1", "--idle-timeout", "1.5",
                "--max-prompt-bytes", "200000", log=tmp_path / "serve.log") as srv:
        long_one = threading.Thread(target=request, args=(
            srv.url + "/v1/completions", {"prompt": text, "max_tokens": 1}))
        long_one.start()
        time.sleep(0.5)
        t0 = time.time()
        status, headers, body = request(srv.url + "/v1/chat/completions", NORMAL, timeout=60)
        waited = time.time() - t0
        assert status == 503 and body["error"]["code"] == "timeout", body
        assert headers.get("Retry-After") == "5"
        assert 1.4 < waited < 10, waited
        long_one.join(120)
        status, _, body = request(srv.url + "/v1/chat/completions", NORMAL)
        assert status == 200
