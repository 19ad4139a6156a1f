"""spillway.Policy: KV-cache policies written in Python."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    import numpy as np

    from ._spillway import PlanBuilder


class Policy:
    """Base of KV-cache policies written in Python, with the plan contract of the C++
    ``spillway::kv::Policy`` (include/spillway/kv/policy.h).

    A policy owns slot metadata and nothing else. For a batch of stream tokens
    ``n0 .. n0+count-1`` its :meth:`plan` says, for each token in order, which slot its K/V
    go to (``write_slot``), at which position its key is rotated (``key_pos``), and which
    slot ranges ``[begin, end)`` its query attends to, each scored with the query rotated at
    its own ``query_pos``. RoPE scores depend only on the query-key distance, so a policy
    that keeps the StreamingLLM positions rotates each key once at its stream index and
    picks, for each range, the query position that makes every distance equal the rank
    distance inside the span.

    A Session (or spillway.perplexity) plans with its own ``copy.deepcopy`` of the instance
    it is given, after calling :meth:`setup` on that copy; so one instance can configure
    any number of sessions. Every method is called with the GIL held, from the thread that
    feeds the session.

    Subclasses implement :meth:`n_slots` and :meth:`plan`, and usually :meth:`spec`,
    :meth:`capacity`, :meth:`reset` and :meth:`slot_contents`.
    """

    #: Most tokens one plan() call may hold (set by setup() before the first plan).
    max_batch: int = 1
    #: Longest stream expected (0: unknown), set by setup().
    max_stream: int = 0

    def setup(self, max_batch: int, max_stream: int) -> None:
        """Called once on the session's copy before planning: size the cache here. A plan()
        call holds up to ``max_batch`` tokens, and every token of a batch must keep what it
        attends to, so a ring of W slots needs ``W + max_batch - 1`` slots."""
        self.max_batch = max_batch
        self.max_stream = max_stream

    def spec(self) -> str:
        """The policy in words (shown in results)."""
        return f"python:{type(self).__name__}"

    def n_slots(self) -> int:
        """Slots the storage must hold now (may grow between plan() calls)."""
        raise NotImplementedError(f"{type(self).__name__}.n_slots()")

    def capacity(self) -> Optional[int]:
        """Tokens a single query attends to at most; None when unbounded."""
        return None

    def n_sinks(self) -> int:
        """Tokens kept as attention sinks once the window has moved on (0: none)."""
        return 0

    def plan(self, n0: int, count: int, out: "PlanBuilder") -> None:
        """Plans stream tokens ``n0 .. n0+count-1``: call ``out.add(write_slot, key_pos,
        ranges)`` once per token, in order (``ranges``: (begin, end, query_pos) or
        (begin, end, query_pos, sink) tuples), and ``out.move(from_slot, to_slot)`` for
        K/V that must change slot before the step. ``n0`` always equals the number of
        tokens planned since the last reset."""
        raise NotImplementedError(f"{type(self).__name__}.plan()")

    def reset(self) -> None:
        """Forget every token (the stream restarts at 0)."""

    def slot_contents(self) -> List[int]:
        """Stream index held by each slot (-1: empty), for inspection."""
        return []

    def wants_attention(self) -> bool:
        """Return True to receive each layer's attention in :meth:`observe`. The session then
        feeds one token per step, so a plan may depend on the attention of the token
        before."""
        return False

    def observe(self, layer: int, probs: "List[np.ndarray]", lse: "np.ndarray") -> None:
        """With wants_attention(): after a layer's attention, per token of the step its
        probabilities ``[n_head, span]`` over its ranges concatenated in plan order, and
        ``lse`` ``[n_tokens, n_head]``, each head's log-sum-exp of its scaled scores."""
