"""Two `spillway serve` backends behind nginx, routed by the X-Conversation-Id header
(docs/serve.md, "Behind a load balancer"). Loopback only; everything is stopped at the end.

Each conversation's follow-ups reach the backend that holds it (their cached_tokens prove
it). When one backend stops, its conversations move to the other and are encoded again
from the request's messages, without a failed request; from then on they stay there. The
page, a streamed answer and the cache view's event stream work through the balancer.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import MODEL, _need
from serve_util import Server, browser, need_program, request, wait_for  # noqa: F401 (browser: a fixture)

POLICY = "sink:4+60"
QUESTIONS = [
    "Name a river of France.", "What is the capital of Italy?", "Say hello in Spanish.",
    "Count to five.", "Name a color.", "What is two plus two?", "Name a fruit.",
    "What is the opposite of hot?", "Name a planet.", "Say a word that rhymes with cat.",
    "Name an animal that flies.", "What do bees make?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_conf(tmp, port: int, backends: list[int]) -> str:
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=60s;" for p in backends)
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {tmp}/access.log;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream spillway {{
    # Every request of a conversation to one backend; a backend that is down moves only
    # its own conversations.
    hash $http_x_conversation_id consistent;
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://spillway;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;          # stream tokens and cache views as they come
      proxy_read_timeout 300s;
      # A backend that refuses the connection (stopped): try the next one. POSTs too:
      # a completion the stopped backend never saw is safe to send again.
      proxy_next_upstream error timeout non_idempotent;
    }}
  }}
}}
"""


def chat(url, cid, messages, max_tokens=8):
    status, headers, body = request(
        url + "/v1/chat/completions",
        {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "policy": POLICY},
        headers={"X-Conversation-Id": cid})
    assert status == 200, body
    return headers, body


def holder(backends, cid) -> list[int]:
    """Indices of the backends that keep conversation cid."""
    return [i for i, b in enumerate(backends)
            if request(f"{b.url}/v1/conversations/{cid}/cache")[0] == 200]


def test_nginx_routes_by_conversation_and_moves_them_when_a_backend_stops(cli, tmp_path, browser):
    nginx = need_program("nginx", "the balancer test runs nginx on loopback")
    _need(MODEL, "model")
    with Server(cli, MODEL, "--threads", "1", log=tmp_path / "a.log") as a, \
         Server(cli, MODEL, "--threads", "1", log=tmp_path / "b.log") as b:
        backends = [a, b]
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(nginx_conf(tmp_path, port, [a.port, b.port]))
        proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    if request(url + "/health", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            else:
                pytest.fail("nginx did not start: " + proc.stderr.read().decode()[-2000:])
            run_through(url, backends, a, browser)
        finally:
            proc.terminate()
            proc.wait(10)


def run_through(url, backends, a, d):
    # Conversations named by the client from the start (as the page does).
    ids = ["conv-" + secrets.token_hex(16) for _ in QUESTIONS]
    history = {}
    for cid, q in zip(ids, QUESTIONS):
        status, _, body = request(url + "/v1/conversations", {"policy": POLICY},
                                  headers={"X-Conversation-Id": cid})
        assert status == 201 and body["id"] == cid and body["policy"] == POLICY
        headers, body = chat(url, cid, [{"role": "user", "content": q}])
        assert headers["X-Conversation-Reuse"] == "new"
        history[cid] = [{"role": "user", "content": q},
                        {"role": "assistant", "content": body["choices"][0]["message"]["content"]}]
    where = {cid: holder(backends, cid) for cid in ids}
    assert all(len(h) == 1 for h in where.values()), where
    on_a = [cid for cid in ids if where[cid] == [0]]
    assert on_a and len(on_a) < len(ids), f"the hash sent {len(on_a)} of {len(ids)} to one backend"

    # Follow-ups reach the same backend: the conversation's tokens are in its cache. (A
    # backend that had not seen it would say "new". "reset": the answer's text, rendered
    # back into the prompt, tokenizes otherwise than the tokens sampled, so the session
    # starts over there; most answers tokenize back the same.)
    prefix = 0
    for cid in ids:
        history[cid].append({"role": "user", "content": "And one more?"})
        headers, body = chat(url, cid, history[cid])
        reuse = headers["X-Conversation-Reuse"]
        assert reuse in ("prefix", "reset"), (cid, headers)
        if reuse == "prefix":
            assert body["usage"]["prompt_tokens_details"]["cached_tokens"] > 10
            prefix += 1
        history[cid].append(body["choices"][0]["message"])
        assert holder(backends, cid) == where[cid]
    assert prefix >= len(ids) // 2, f"only {prefix} of {len(ids)} follow-ups reused the cache"

    # The page, a streamed answer and the cache view's events through the balancer.
    with urllib.request.urlopen(url + "/", timeout=30) as r:
        assert r.status == 200 and b"app.js" in r.read()
    cid = ids[0]
    req = urllib.request.Request(f"{url}/v1/conversations/{cid}/cache/events",
                                 headers={"X-Conversation-Id": cid})
    with urllib.request.urlopen(req, timeout=30) as r:
        for line in r:
            if line.startswith(b"data: "):
                view = json.loads(line[6:])
                break
    assert view["id"] == cid and view["counts"]["sink"] + view["counts"]["window"] > 0
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps({"messages": history[cid] + [{"role": "user", "content": "Why?"}],
                         "max_tokens": 12, "stream": True, "policy": POLICY}).encode(),
        headers={"Content-Type": "application/json", "X-Conversation-Id": cid})
    with urllib.request.urlopen(req, timeout=60) as r:
        chunks = [line for line in r if line.startswith(b"data: ")]
    assert chunks[-1].strip() == b"data: [DONE]" and len(chunks) > 3

    # The page through the balancer: its conversation lives on one backend, and its view
    # shows the answer's tokens.
    d.get(url + "/")
    wait_for(d, lambda d: d.find_element("id", "conv-id").text.startswith("conv-"), 30, "the page")
    d.find_element("id", "prompt").send_keys("Name two rivers.")
    d.find_element("id", "send").click()
    wait_for(d, lambda d: d.find_element("id", "send").get_attribute("disabled"), 30, "the answer")
    wait_for(d, lambda d: not d.find_element("id", "send").get_attribute("disabled"), 120)
    wait_for(d, lambda d: int(d.find_element("id", "n-past").text) > 20, 30, "the cache view")
    page_conv = d.find_element("id", "conv-id").text
    assert len(holder(backends, page_conv)) == 1
    assert d.find_elements("css selector", ".msg.assistant .body")[-1].text.strip()

    # Backend a stops (SIGTERM: it drains and exits 0). Its conversations move to b and
    # are encoded again from the messages; no request fails.
    assert a.stop() == 0
    moved = 0
    for cid in ids:
        history[cid].append({"role": "user", "content": "Thanks."})
        headers, body = chat(url, cid, history[cid])
        if cid in on_a:
            assert headers["X-Conversation-Reuse"] == "new", (cid, headers)
            assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
            moved += 1
        else:
            assert headers["X-Conversation-Reuse"] in ("prefix", "reset"), (cid, headers)
        history[cid].append(body["choices"][0]["message"])
    assert moved == len(on_a)
    # From then on they stay on b, under the policy the requests name.
    for cid in on_a:
        history[cid].append({"role": "user", "content": "Bye."})
        headers, body = chat(url, cid, history[cid])
        assert headers["X-Conversation-Reuse"] in ("prefix", "reset"), (cid, headers)
        status, _, view = request(f"{backends[1].url}/v1/conversations/{cid}/cache")
        assert status == 200 and view["policy"] == POLICY
