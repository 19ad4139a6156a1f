"""The web page of `spillway serve`, driven in headless Chromium (Debian's chromium and
chromium-driver, through Selenium; nothing is downloaded).

One server with an API key: the page asks for the key, streams an answer, shows the cache
of a sink:4+60 conversation with exactly 4 sinks and 60 window tokens once it is past 64
tokens, shows a bad policy's error, switches to window:32, stops an answer, continues a
text in completion mode, and shows model text as text (a <script> in the conversation
stays text). Screenshots go to build-py/artifacts/ (SPILLWAY_DOC_SCREENSHOT=PATH writes
the first one there too, for the docs).
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from conftest import MODEL, ROOT, _need
from serve_util import Server, browser, request, wait_for  # noqa: F401 (browser: a fixture)

ARTIFACTS = ROOT / "build-py/artifacts"
KEY = "test-key-7f3a"


@pytest.fixture(scope="module")
def server(cli, tmp_path_factory):
    _need(MODEL, "model")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with Server(cli, MODEL, "--threads", "2", "--api-key", KEY, log=log) as s:
        yield s
    assert s.proc.returncode == 0, log.read_text()[-2000:]


def text(d, id_):
    return d.find_element("id", id_).text


def settled_view(d, timeout=30):
    """Waits for the view of a request that has ended (its last one), then reads the
    numbers the page shows and the state spans, in one script run (the page draws each view
    whole, so they come from one view)."""
    wait_for(d, lambda d: d.execute_script("return !!state.view && !state.view.busy"), timeout,
             "the last view")
    return d.execute_script("""
      const n = (id) => Number(document.getElementById(id).textContent);
      const spans = (s) => document.querySelectorAll('#tokens .tok.' + s).length;
      return {n_past: n('n-past'), capacity: document.getElementById('capacity').textContent,
              counts: {sink: n('count-sink'), window: n('count-window'), kept: n('count-kept'),
                       evicted: n('count-evicted')},
              spans: {sink: spans('sink'), window: spans('window'), kept: spans('kept'),
                      evicted: spans('evicted')}};""")


def shot(d, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    d.save_screenshot(str(path))
    return path


def set_value(d, id_, value):
    el = d.find_element("id", id_)
    el.clear()
    el.send_keys(value)


def send(d, message, max_tokens):
    set_value(d, "max-tokens", str(max_tokens))
    set_value(d, "prompt", message)
    d.find_element("id", "send").click()


def idle(d):
    return not d.find_element("id", "send").get_attribute("disabled")


def test_page_chat_and_live_cache_view(browser, server):
    d = browser
    # The page itself needs no key; everything it asks the API for does.
    status, _, body = request(server.url + "/v1/info")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    d.get(server.url + "/")
    wait_for(d, lambda d: d.find_element("id", "key-dialog").is_displayed(), 30, "the key dialog")
    set_value(d, "api-key", "wrong")
    d.find_element("css selector", "#key-form button").click()
    wait_for(d, lambda d: "refused" in text(d, "key-error"), 30, "the refusal")
    set_value(d, "api-key", KEY)
    d.find_element("css selector", "#key-form button").click()
    wait_for(d, lambda d: re.fullmatch(r"conv-[0-9a-f]{32}", text(d, "conv-id")), 30, "a conversation")
    assert text(d, "model") == MODEL.stem

    # sink:4+60: past 64 tokens the view holds 4 sinks and 60 window tokens.
    set_value(d, "policy", "sink:4+60")
    d.find_element("id", "new-conv").click()
    wait_for(d, lambda d: text(d, "conv-policy") == "sink:4+60", 30, "the new policy")
    first_id = text(d, "conv-id")
    message = ("Tell me about the rivers of France, <script>window.__xss = 1</script> "
               "and <b>which</b> cities stand on them.")
    send(d, message, 48)
    wait_for(d, lambda d: not idle(d), 30, "the answer to start")
    wait_for(d, idle, 120, "the answer to end")
    answer = d.find_elements("css selector", ".msg.assistant .body")[-1].text
    assert answer.strip(), "no answer streamed"
    assert float(text(d, "tps")) > 0
    v = settled_view(d)
    n = v["n_past"]
    assert n > 64, v
    assert v["counts"] == {"sink": 4, "window": 60, "kept": 0, "evicted": n - 64}
    assert v["spans"] == {"sink": 4, "window": 60, "kept": 0, "evicted": n - 64}
    assert v["capacity"] == "64"
    # Hovering a sink shows its slot, key position and the distance it is scored at.
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(d).move_to_element(d.find_elements("css selector", "#tokens .tok.sink")[1]).perform()
    wait_for(d, lambda d: text(d, "tok-info").startswith("token 1 "), 10, "the hover info")
    assert "slot 1" in text(d, "tok-info") and "position 1" in text(d, "tok-info")
    assert "distance 62" in text(d, "tok-info")  # the query copy at S+W-1 = 63
    # The heatmap has the last token's attention (layer x head).
    assert d.execute_script("return state.view.attention.sink_mass.length") == 30
    # Markup in the conversation is text: nothing ran, and the tags show as written.
    assert d.execute_script("return window.__xss === undefined")
    assert "<script>window.__xss = 1</script>" in d.find_elements("css selector", ".msg.user .body")[-1].text
    tokens_text = d.execute_script(
        "return Array.from(document.querySelectorAll('#tokens .tok')).map(s => s.textContent).join('')")
    assert "<script>" in tokens_text and "<b>" in tokens_text
    assert not d.find_elements("css selector", "#tokens b, #messages b, #tokens script, #messages script")
    path = shot(d, "serve-page-sink.png")
    if os.environ.get("SPILLWAY_DOC_SCREENSHOT"):
        shutil.copyfile(path, os.environ["SPILLWAY_DOC_SCREENSHOT"])

    # The same view from the JSON endpoint: a script sees what the page shows.
    status, _, view = request(f"{server.url}/v1/conversations/{first_id}/cache",
                              headers={"Authorization": "Bearer " + KEY})
    assert status == 200 and view["counts"]["sink"] == 4 and view["policy"] == "sink:4+60"
    status, _, _ = request(f"{server.url}/v1/conversations/{first_id}/cache")
    assert status == 401
    status, _, err = request(f"{server.url}/v1/conversations/conv-{'0' * 32}/cache",
                             headers={"Authorization": "Bearer " + KEY})
    assert status == 404 and err["error"]["code"] == "conversation_not_found"

    # A bad policy: the server's message on the page, the conversation unchanged.
    set_value(d, "policy", "sink:abc")
    d.find_element("id", "new-conv").click()
    wait_for(d, lambda d: "bad policy spec" in text(d, "policy-error"), 30, "the policy error")
    assert text(d, "conv-id") == first_id
    set_value(d, "policy", "full")
    d.find_element("id", "new-conv").click()
    wait_for(d, lambda d: "--max-cache" in text(d, "policy-error"), 30, "the cache limit")

    # Switch to window:32.
    set_value(d, "policy", "window:32")
    d.find_element("id", "new-conv").click()
    wait_for(d, lambda d: text(d, "conv-policy") == "window:32", 30, "window:32")
    assert text(d, "conv-id") != first_id
    send(d, "Name three rivers of France and say where they rise, in two sentences each.", 40)
    wait_for(d, lambda d: not idle(d), 30)
    wait_for(d, idle, 120)
    v = settled_view(d)
    n = v["n_past"]
    assert n > 32, v
    assert v["counts"] == {"sink": 0, "window": 32, "kept": 0, "evicted": n - 32}
    assert v["spans"] == {"sink": 0, "window": 32, "kept": 0, "evicted": n - 32}
    shot(d, "serve-page-window.png")

    # Stop: the answer ends early, the server goes on serving. Past the end of text, so that
    # the answer cannot end by itself before the click (a model may well end a story at
    # 15 tokens under window:32).
    d.find_element("id", "ignore-eos").click()
    send(d, "Write a long story about a boat on the Loire.", 400)
    wait_for(d, lambda d: len(d.find_elements("css selector", ".msg.assistant .body")[-1].text) > 10, 60)
    d.find_element("id", "stop").click()
    wait_for(d, idle, 30, "the stop")
    assert text(d, "status") == "stopped"
    stopped = settled_view(d)["n_past"]
    assert n < stopped < n + 300, (n, stopped)  # the 400 tokens were cut short
    d.find_element("id", "ignore-eos").click()
    status, _, health = request(server.url + "/health")
    assert status == 200 and health["status"] == "ok"

    # Completion mode: the text itself is continued.
    from selenium.webdriver.support.ui import Select

    Select(d.find_element("id", "mode-select")).select_by_value("completion")
    wait_for(d, lambda d: not d.find_elements("css selector", ".msg"), 30, "a fresh conversation")
    send(d, "The river Seine flows through", 16)
    wait_for(d, lambda d: not idle(d), 30)
    wait_for(d, idle, 60)
    body = d.find_elements("css selector", ".msg.text .body")[-1].text
    assert body.startswith("The river Seine flows through") and len(body) > 30, body
    shot(d, "serve-page-completion.png")
