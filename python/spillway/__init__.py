"""spillway: streaming LLM inference with a sink-aware KV cache.

The C++ library for Python, with numpy at the boundary: GGUF models, sessions under
pluggable KV-cache policies (built-in specs or policies written in Python), streaming
perplexity, generation, and the attention statistics of attention sinks. Forward passes
release the GIL. See docs/python.md.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from ._policy import Policy
from ._spillway import (
    AblationResult,
    AttentionObserver,
    AttentionStats,
    Checkpoint,
    Error,
    FormatError,
    Generator,
    InvalidArgument,
    IoError,
    Model,
    PerplexityResult,
    PlanBuilder,
    Session,
    SinkReport,
    Tokenizer,
    UnsupportedError,
    ablate_sinks,
    build_info,
    perplexity,
    recall,
    sink_rate,
    sink_report,
)
from ._spillway import _generate

__version__ = "0.1.0"

__all__ = [
    "AblationResult",
    "AttentionObserver",
    "AttentionStats",
    "Checkpoint",
    "Error",
    "FormatError",
    "Generator",
    "InvalidArgument",
    "IoError",
    "Model",
    "PerplexityResult",
    "PlanBuilder",
    "Policy",
    "Session",
    "SinkReport",
    "Tokenizer",
    "UnsupportedError",
    "ablate_sinks",
    "attention_stats",
    "build_info",
    "generate",
    "perplexity",
    "recall",
    "sink_rate",
    "sink_report",
]


def generate(
    model_or_session: Union[Model, Session],
    prompt: Union[str, Sequence[int], np.ndarray],
    max_new_tokens: int = 64,
    *,
    policy: Union[str, Policy] = "sink:4+1020",
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repeat_penalty: float = 1.0,
    repeat_last_n: int = 64,
    seed: int = 0,
    stop_at_eog: bool = True,
    stop: Union[str, Sequence[str], None] = None,
    threads: int = 0,
) -> Generator:
    """Generates text from a prompt, as an iterator of text pieces::

        for piece in spillway.generate(model, "The capital of France is", 32):
            print(piece, end="", flush=True)

    ``model_or_session``: a Model (a new Session under ``policy`` with ``threads`` is made)
    or a Session (which must be fresh or continue the same stream). ``prompt``: text
    (tokenized with the model's tokenizer) or token ids. Sampling as the library's sampler
    chain (temperature 0: greedy); the same seed gives the same text. ``stop``: a string or
    strings where generation ends (the text before it is returned). The iterator's
    ``tokens`` and ``stop_reason`` ('length', 'eog', 'stop') tell what happened. The prompt
    is fed on the first ``next()``; the GIL is released during each forward pass. Pieces are
    whole UTF-8 characters: a character split across tokens comes out once complete.
    """
    if isinstance(model_or_session, Session):
        session = model_or_session
    elif isinstance(model_or_session, Model):
        session = Session(model_or_session, policy=policy, threads=threads)
    else:
        raise TypeError(
            f"generate: expected a spillway.Model or spillway.Session, got {type(model_or_session).__name__}"
        )
    return _generate(
        session,
        prompt,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty,
        repeat_last_n,
        seed,
        stop_at_eog,
        [stop] if isinstance(stop, str) else list(stop or []),
    )


def attention_stats(
    model: Model,
    ids: Union[Sequence[int], np.ndarray],
    policy: Union[str, Policy] = "full",
    *,
    first: int = 0,
    count: Optional[int] = None,
    attention: bool = True,
    key_tokens: int = 16,
    chunk: int = 64,
    threads: int = 0,
) -> AttentionStats:
    """Feeds ``ids`` through a new Session under ``policy`` with an AttentionStats attached
    and returns the statistics (queries of stream indices ``[first, first+count)``)::

        stats = spillway.attention_stats(model, ids, "sink:4+252")
        alpha = stats.sink_scores(0)          # [n_layer, n_head]
        spillway.sink_rate(alpha, 0.3)        # percent of heads that sink on token 0
    """
    stats = AttentionStats(model, first=first, count=count, attention=attention, key_tokens=key_tokens)
    session = Session(model, policy=policy, threads=threads, max_batch=chunk)
    session.set_observer(stats)
    session.advance(ids)
    session.set_observer(None)
    return stats


def _result_as_dict(self: PerplexityResult) -> dict[str, Any]:
    return {
        "spec": self.spec,
        "tokens": self.tokens,
        "first_target": self.first_target,
        "ppl": self.ppl,
        "mean_nll": self.mean_nll,
        "tokens_per_s": self.tokens_per_s,
        "seconds": self.seconds,
        "kv_bytes_peak": self.kv_bytes_peak,
        "kv_slots": self.kv_slots,
        "capacity": self.capacity,
        "nll": self.nll,
        "reference": self.reference,
        "kl_mean": self.kl_mean,
        "top1_agree": self.top1_agree,
    }


PerplexityResult.as_dict = _result_as_dict  # type: ignore[attr-defined]
