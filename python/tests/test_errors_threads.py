"""Errors arrive as the library's types; sessions on threads share one model; the GIL is
released during forward passes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import spillway

from conftest import MODEL


def test_error_hierarchy():
    for cls in (spillway.IoError, spillway.FormatError, spillway.UnsupportedError, spillway.InvalidArgument):
        assert issubclass(cls, spillway.Error)
    assert issubclass(spillway.IoError, OSError)
    assert issubclass(spillway.InvalidArgument, ValueError)


def test_missing_file_is_an_io_error(tmp_path):
    missing = tmp_path / "missing.gguf"
    with pytest.raises(spillway.IoError, match="missing.gguf"):
        spillway.Model.load(missing)
    with pytest.raises(OSError):
        spillway.Model.load(str(missing))


def test_corrupt_gguf_is_a_format_error(tmp_path):
    head = MODEL.read_bytes()[:4096] if MODEL.exists() else b"GGUF" + bytes(4092)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(head)
    with pytest.raises(spillway.FormatError, match="truncated.gguf"):
        spillway.Model.load(truncated)
    bad_magic = tmp_path / "bad_magic.gguf"
    bad_magic.write_bytes(b"GGUX" + head[4:])
    with pytest.raises(spillway.FormatError, match="magic"):
        spillway.Model.load(bad_magic)


def test_bad_arguments_are_invalid_argument(model, stream):
    with pytest.raises(spillway.InvalidArgument, match="bad policy spec 'sink:4'"):
        spillway.Session(model, policy="sink:4")
    with pytest.raises(ValueError, match="unknown|bad policy"):
        spillway.perplexity(model, stream, ["full", "lru:5"])
    s = spillway.Session(model, threads=1)
    with pytest.raises(spillway.InvalidArgument, match="token id 49152 at index 1"):
        s.feed([1, 49152])
    with pytest.raises(spillway.InvalidArgument, match="integers"):
        s.feed([1.5, 2.0])
    with pytest.raises(spillway.InvalidArgument, match="no tokens"):
        s.feed([])
    assert s.n_past == 0  # nothing was fed
    with pytest.raises(spillway.InvalidArgument, match="at least 2 tokens"):
        spillway.perplexity(model, stream[:1])
    with pytest.raises(spillway.InvalidArgument, match="score_from"):
        spillway.perplexity(model, stream[:10], score_from=10)
    # int64 ids and lists are taken as they are.
    np.testing.assert_array_equal(s.feed(stream[:5].astype(np.int64)), spillway.Session(model, threads=1).feed(stream[:5].tolist()))


def test_sessions_on_threads_equal_sequential(model, stream):
    policies = ["sink:4+60", "window:64", "full", "h2o:8+56"]

    def run(policy):
        s = spillway.Session(model, policy=policy, threads=1)
        return s.feed(stream[:160], all_logits=True)

    sequential = [run(p) for p in policies]
    with ThreadPoolExecutor(max_workers=len(policies)) as ex:
        threaded = list(ex.map(run, policies))
    for a, b in zip(sequential, threaded):
        np.testing.assert_array_equal(a, b)
    # perplexity from several threads too.
    with ThreadPoolExecutor(max_workers=2) as ex:
        results = list(ex.map(lambda p: spillway.perplexity(model, stream, p, threads=1)[0], policies[:2]))
    for p, r in zip(policies[:2], results):
        np.testing.assert_array_equal(r.nll, spillway.perplexity(model, stream, p, threads=1)[0].nll)


def test_forward_passes_release_the_gil(model, stream):
    s = spillway.Session(model, policy="full", threads=1)
    window = {}

    def feed():
        window["start"] = time.perf_counter()
        s.feed(stream, all_logits=True)
        window["end"] = time.perf_counter()

    ticks = []
    t = threading.Thread(target=feed)
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    start, end = window["start"], window["end"]
    assert end - start > 0.05
    # This thread kept running in the middle of the pass: the GIL was free.
    inside = [x for x in ticks if start + 0.2 * (end - start) < x < end - 0.2 * (end - start)]
    assert len(inside) >= 5
