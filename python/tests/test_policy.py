"""Policies written in Python: the plan contract, equivalence with the built-in sink:S+W,
and errors from a policy's own code."""

from __future__ import annotations

import numpy as np
import pytest

import spillway

from sink_policy import PySinkWindow


@pytest.mark.parametrize("chunk", [1, 64])
def test_python_sink_policy_equals_builtin_bit_for_bit(model, stream, chunk):
    # 256 tokens through a 64-token cache: the window wraps its ring several times.
    ids = stream[:220] if chunk == 1 else stream
    builtin, python = spillway.perplexity(
        model, ids, [f"sink:4+60", PySinkWindow(4, 60)], chunk=chunk, threads=2
    )
    assert python.spec == "pysink:4+60"
    assert python.tokens == builtin.tokens == len(ids) - 1
    assert python.capacity == 64
    np.testing.assert_array_equal(python.nll, builtin.nll)
    assert python.mean_nll == builtin.mean_nll
    # Eviction happened: the sink policy differs from a full cache past token 64.
    (full,) = spillway.perplexity(model, ids, "full", chunk=chunk, threads=2)
    assert not np.array_equal(full.nll[70:], builtin.nll[70:])


def test_python_policy_in_a_session_equals_builtin_logits(model, stream):
    a = spillway.Session(model, policy="sink:2+30", threads=2, max_batch=16)
    b = spillway.Session(model, policy=PySinkWindow(2, 30), threads=2, max_batch=16)
    la = a.feed(stream[:100], all_logits=True)
    lb = b.feed(stream[:100], all_logits=True)
    np.testing.assert_array_equal(la, lb)
    assert b.spec == "pysink:2+30"
    assert b.capacity == 32
    np.testing.assert_array_equal(a.slot_contents(), b.slot_contents())
    # The session plans with its own copy, set up for its max_batch.
    assert isinstance(b.policy_object, PySinkWindow)
    assert b.policy_object.ring == 30 + 16 - 1
    b.reset()
    assert b.policy_object.n_next == 0
    np.testing.assert_array_equal(b.feed(stream[:10]), a.reset() or a.feed(stream[:10]))


def test_a_wrong_plan_is_an_error(model, stream):
    class Broken(PySinkWindow):
        def plan(self, n0, count, out):
            # Attends to a slot past the storage.
            for n in range(n0, n0 + count):
                out.add(self.slot_of(n), n, [(0, self.n_slots() + 5, n)])

    s = spillway.Session(model, policy=Broken(4, 60), threads=1)
    with pytest.raises(spillway.InvalidArgument, match="slot range"):
        s.feed(stream[:4])


def test_a_plan_with_too_few_tokens_is_an_error(model, stream):
    class Short(PySinkWindow):
        def plan(self, n0, count, out):
            super().plan(n0, count - 1, out)

    s = spillway.Session(model, policy=Short(4, 60), threads=1)
    with pytest.raises(spillway.InvalidArgument, match=r"added 3 token\(s\), expected 4"):
        s.feed(stream[:4])


def test_an_exception_in_plan_reaches_the_caller(model, stream):
    class Raising(PySinkWindow):
        def plan(self, n0, count, out):
            raise KeyError("from the policy")

    s = spillway.Session(model, policy=Raising(4, 60), threads=1)
    with pytest.raises(KeyError, match="from the policy"):
        s.feed(stream[:4])


def test_policy_must_be_a_spec_or_a_policy(model):
    with pytest.raises(TypeError, match="spillway.Policy"):
        spillway.Session(model, policy=42)
    with pytest.raises(spillway.InvalidArgument, match="cache_options"):
        spillway.Session(model, policy=PySinkWindow(4, 60), cache_options="positions=absolute")


def test_attention_reading_python_policy_sees_probabilities(model, stream):
    class Watch(PySinkWindow):
        def __init__(self):
            super().__init__(4, 28)
            self.seen = []

        def wants_attention(self):
            return True

        def observe(self, layer, probs, lse):
            self.seen.append((layer, [p.shape for p in probs], lse.shape,
                              [float(p.sum(axis=1).max()) for p in probs]))

    s = spillway.Session(model, policy=Watch(), threads=1)
    s.feed(stream[:40])
    seen = s.policy_object.seen
    cfg = model.config
    # One token per step while the policy reads attention: every layer of every token.
    assert len(seen) == 40 * cfg["n_layer"]
    layer, shapes, lse_shape, sums = seen[-1]
    assert layer == cfg["n_layer"] - 1
    assert shapes == [(cfg["n_head"], 32)] and lse_shape == (1, cfg["n_head"])
    assert abs(sums[0] - 1.0) < 1e-4


def test_a_cycle_through_a_python_policy_is_collected(model, stream):
    import gc

    freed = []

    class Holder(PySinkWindow):
        def __del__(self):
            freed.append(True)

    s = spillway.Session(model, policy=Holder(4, 60), threads=1)
    s.feed(stream[:8])
    s.policy_object.session = s  # session -> (C++) policy copy -> session
    del s
    gc.collect()
    # The prototype given to Session and the session's copy are both gone.
    assert len(freed) == 2
