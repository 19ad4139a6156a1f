"""sink:S+W written in Python with spillway.Policy: the test of the plan contract (its NLLs
must equal the built-in policy's bit for bit), and the example docs/python.md shows."""

from __future__ import annotations

from typing import List

import spillway


class PySinkWindow(spillway.Policy):
    """The first `sinks` tokens plus a window of the last `window`, StreamingLLM positions:
    every key rotated once at its stream index; window ranges scored with the query at n,
    the sinks with a query copy at min(n, S+W-1)."""

    def __init__(self, sinks: int, window: int):
        self.sinks = sinks
        self.window = window
        self.ring = window
        self.n_next = 0

    def setup(self, max_batch: int, max_stream: int) -> None:
        super().setup(max_batch, max_stream)
        # A chunk of max_batch tokens must not overwrite a slot one of its own earlier
        # tokens still attends to.
        self.ring = self.window + max_batch - 1

    def spec(self) -> str:
        return f"pysink:{self.sinks}+{self.window}"

    def n_slots(self) -> int:
        return self.sinks + self.ring

    def capacity(self) -> int:
        return self.sinks + self.window

    def n_sinks(self) -> int:
        return self.sinks

    def slot_of(self, m: int) -> int:
        return m if m < self.sinks else self.sinks + (m - self.sinks) % self.ring

    def plan(self, n0: int, count: int, out: spillway.PlanBuilder) -> None:
        S, W, ring = self.sinks, self.window, self.ring
        for n in range(n0, n0 + count):
            if n < S + W:
                ranges = [(0, n + 1, n)]
            else:
                ranges = [(0, S, S + W - 1, True)] if S > 0 else []
                a = (n - W + 1 - S) % ring
                first = min(W, ring - a)
                ranges.append((S + a, S + a + first, n))
                if first < W:
                    ranges.append((S, S + W - first, n))
            out.add(self.slot_of(n), n, ranges)
        self.n_next = n0 + count

    def reset(self) -> None:
        self.n_next = 0

    def slot_contents(self) -> List[int]:
        slots = [-1] * self.n_slots()
        for m in range(min(self.sinks, self.n_next)):
            slots[self.slot_of(m)] = m
        for m in range(max(self.sinks, self.n_next - self.ring), self.n_next):
            slots[self.slot_of(m)] = m
        return slots
