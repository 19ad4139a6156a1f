"""
spillway: streaming LLM inference with a sink-aware KV cache (C++ core)
"""

from collections.abc import Callable, Sequence
import os
from typing import Annotated, Any

import numpy
from numpy.typing import ArrayLike, NDArray

from ._policy import Policy


class Error(Exception):
    """Base of every error spillway raises on purpose (spillway::Error)."""

class IoError(Error, OSError):
    """A file could not be opened, mapped or read (also an OSError)."""

class FormatError(Error):
    """A file's content does not follow its format (GGUF structure, metadata, tensor shapes)."""

class UnsupportedError(Error):
    """Well-formed input this build does not support (architecture, quant type)."""

class InvalidArgument(Error, ValueError):
    """A bad argument: policy spec, option value, token id, a prompt that does not fit the cache (also a ValueError)."""

class PlanBuilder:
    """
    What a Python policy's plan(n0, count, out) fills: one add() per stream token n0 .. n0+count-1, in order. Valid only during that call.
    """

    @property
    def n0(self) -> int:
        """Stream index of the first token of this plan() call."""

    @property
    def count(self) -> int:
        """Tokens this plan() call must add."""

    @property
    def added(self) -> int:
        """Tokens added so far."""

    def add(self, write_slot: int, key_pos: int, ranges: Sequence[tuple[int, int, int] | tuple[int, int, int, bool]], virtual_sink: bool = False) -> None:
        """
        Plans the next token (stream index n0 + added): its K/V go to slot `write_slot`, its key is rotated at position `key_pos`, and its query attends to `ranges`, a sequence of (begin, end, query_pos) or (begin, end, query_pos, sink) tuples: slots [begin, end) scored with the query rotated at query_pos; sink=True marks a run kept as attention sinks (analyses may drop it). The ranges may include the token's own slot and slots written earlier in the same call.
        """

    def move(self, from_slot: int, to_slot: int) -> None:
        """
        Before this step's tokens are stored, copy the K/V of slot `from_slot` to `to_slot` (every layer the policy governs; a copy, not a re-rotation).
        """

class Tokenizer:
    """
    The model's tokenizer (byte-level BPE or SentencePiece, from GGUF metadata). Ids match llama.cpp's.
    """

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None, parse_special: bool = False) -> NDArray[numpy.int32]:
        """
        Token ids of `text` (int32 array). add_bos / add_eos: None follows the model's metadata. parse_special: read control tokens written in the text ('<|im_start|>') as single ids.
        """

    def decode(self, ids: ArrayLike, keep_control: bool = False) -> str:
        """
        Text of the ids (BOS/EOS and other control tokens skipped unless keep_control; incomplete UTF-8 becomes U+FFFD).
        """

    def token_bytes(self, id: int) -> bytes:
        """The raw bytes one token stands for."""

    def piece(self, id: int) -> str:
        """The vocabulary entry as stored in the file ('Ġthe')."""

    def find(self, text: str) -> int | None:
        """Id of the token written exactly as `text`, or None."""

    def is_eog(self, id: int) -> bool:
        """Whether the id ends generation (EOS, EOT, <|im_end|>, ...)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def model_name(self) -> str:
        """'gpt2' (byte-level BPE) or 'llama' (SentencePiece)."""

    @property
    def pre_name(self) -> str: ...

    @property
    def bos(self) -> int | None: ...

    @property
    def eos(self) -> int | None: ...

    @property
    def add_bos(self) -> bool: ...

    def __len__(self) -> int: ...

    def __repr__(self) -> str: ...

class Model:
    """
    A GGUF model, memory-mapped and validated; immutable and shareable by any number of sessions and threads. Make one with Model.load(path).
    """

    @staticmethod
    def load(path: str | os.PathLike) -> Model:
        """
        Opens and validates a GGUF file and binds it with the architecture its metadata names. Raises IoError (cannot read), FormatError (bad structure, missing or mis-shaped tensor), UnsupportedError (architecture or type not supported).
        """

    @property
    def path(self) -> str: ...

    @property
    def architecture(self) -> str: ...

    @property
    def config(self) -> dict:
        """
        Hyperparameters (a new dict each time): architecture, name, n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx_train, rms_eps, tied_output, layer_windows (0: global layer, else its native window).
        """

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def n_vocab(self) -> int: ...

    @property
    def chat_template(self) -> str | None: ...

    @property
    def weight_bytes_per_token(self) -> int: ...

    def tokenize(self, text: str, add_bos: bool | None = None, parse_special: bool = False) -> NDArray[numpy.int32]:
        """
        Token ids of `text` as an int32 array (as `spillway tokenize` gives them).
        """

    def detokenize(self, ids: ArrayLike, keep_control: bool = False) -> str:
        """Text of the ids."""

    def __repr__(self) -> str: ...

class Checkpoint:
    """A copy of a session's stream state (Session.checkpoint())."""

class Session:
    """
    One token stream through a model under a KV-cache policy.

    Session(model, policy="full", threads=0, max_batch=64, max_stream=0, cache_options="")

    policy: a spec string ("full", "window:W", "sink:S+W", "recompute:W", "h2o:H+W", ...,
    optionally with ",positions=absolute", ",kv=f16", ",local=policy"), or a spillway.Policy
    instance written in Python (the session plans with its own deep copy of it; kv= and
    local= then come from cache_options, e.g. "kv=f16").
    threads: threads of the session's own pool (0: all cores).
    max_batch: most tokens one forward pass takes when feed() gets many.
    max_stream: expected stream length (pre-sizes a growing cache such as "full"; 0: unknown).

    A session belongs to one thread at a time; many sessions may share one Model, each on its
    own thread. Forward passes release the GIL.
    """

    def __init__(self, model: Model, policy: str | Policy = 'full', threads: int = 0, max_batch: int = 64, max_stream: int = 0, cache_options: str = '') -> None: ...

    def feed(self, ids: ArrayLike, all_logits: bool = False) -> NDArray[numpy.float32]:
        """
        Feeds token ids in order (the GIL is released during the forward passes). Returns the logits after the last token ([n_vocab] float32), or with all_logits=True every token's logits ([len(ids), n_vocab]); row i predicts the token after ids[i].
        """

    def advance(self, ids: ArrayLike) -> None:
        """
        Feeds tokens whose logits nobody needs (their K/V still go into the cache); `logits` is not updated.
        """

    @property
    def logits(self) -> NDArray[numpy.float32] | None:
        """Logits after the last fed token ([n_vocab] float32, a copy), or None."""

    def reset(self) -> None:
        """Forgets the stream: the next token is stream index 0."""

    @property
    def n_past(self) -> int:
        """Tokens fed since the last reset."""

    @property
    def kv_bytes(self) -> int:
        """Bytes of KV storage now."""

    @property
    def kv_bytes_peak(self) -> int: ...

    @property
    def spec(self) -> str:
        """The cache's policy in words."""

    @property
    def capacity(self) -> int | None:
        """Tokens a query attends to at most (None: unbounded)."""

    @property
    def n_slots(self) -> int: ...

    @property
    def policy_object(self) -> Policy | None:
        """The session's copy of its Python policy (None for a spec string)."""

    def slot_contents(self) -> NDArray[numpy.int64]:
        """Stream index held by each slot of the policy (-1: empty), int64."""

    def set_observer(self, observer: AttentionObserver | None) -> None:
        """
        Attaches a spillway.AttentionStats to every forward pass (None detaches); the session keeps it alive while attached.
        """

    def checkpoint(self) -> Checkpoint:
        """
        A copy of the stream's state (cache, policies, position, logits); costs a copy of the KV storage.
        """

    def restore(self, checkpoint: Checkpoint) -> None:
        """Returns to a checkpoint of this session."""

    def __repr__(self) -> str: ...

class PerplexityResult:
    """One policy's streaming perplexity (spillway.perplexity)."""

    @property
    def spec(self) -> str:
        """The policy in words."""

    @property
    def tokens(self) -> int:
        """Tokens scored."""

    @property
    def first_target(self) -> int:
        """Stream index of the first scored token."""

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood (nats)."""

    @property
    def ppl(self) -> float:
        """exp(mean_nll)."""

    @property
    def seconds(self) -> float: ...

    @property
    def tokens_per_s(self) -> float:
        """Stream tokens per second."""

    @property
    def kv_bytes_peak(self) -> int: ...

    @property
    def kv_slots(self) -> int: ...

    @property
    def capacity(self) -> int | None: ...

    @property
    def nll(self) -> Annotated[NDArray[numpy.float32], dict(shape=(None,), writable=False)]:
        """
        Per-token NLL (float32, read-only): nll[k] = -log p(token first_target+k | the cache at the token before it).
        """

    @property
    def reference(self) -> str:
        """The reference policy of perplexity(reference=...), or ''."""

    @property
    def kl_mean(self) -> float:
        """Mean KL(reference || policy) of the next-token distributions, nats (NaN without a reference)."""

    @property
    def top1_agree(self) -> float:
        """Share of tokens where policy and reference put the most mass on the same token."""

    @property
    def reference_mean_nll(self) -> float: ...

    @property
    def kl(self) -> Annotated[NDArray[numpy.float32], dict(shape=(None,), writable=False)]:
        """Per-token KL(reference || policy) (float32, read-only; empty without a reference)."""

    def __repr__(self) -> str: ...

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict (nll included), e.g. for pandas.DataFrame."""

def _generate(session: Session, prompt: str | ArrayLike, max_new_tokens: int, temperature: float, top_k: int, top_p: float, min_p: float, repeat_penalty: float, repeat_last_n: int, seed: int, stop_at_eog: bool, stop: Sequence[str]) -> Generator: ...

def perplexity(model: Model, ids: ArrayLike, policies: str | Policy | Sequence[str | Policy] = 'full', chunk: int = 128, score_from: int = 1, threads: int = 0, progress: Callable[[int, int], object] | None = None, reference: str | None = None) -> list[PerplexityResult]:
    """
    Streaming perplexity of `ids` under each policy (the library's evaluator, the
    GIL released). `policies`: one policy or a list (spec strings and/or spillway.Policy
    instances). chunk: tokens per forward pass (1: per-token decode; every chunk size gives
    the same NLLs). score_from: first scored stream index. progress: called as
    progress(done, total) after each chunk. reference: a policy spec (e.g. "full") run in
    lockstep; each result then holds kl, kl_mean and top1_agree, the divergence of its
    next-token distributions from the reference's. Returns a list of PerplexityResult, one
    per policy, in order.
    """

class Generator:
    """
    Iterator of generated text pieces (spillway.generate); `tokens` and `stop_reason` tell what happened.
    """

    def __iter__(self) -> Generator: ...

    def __next__(self) -> str: ...

    @property
    def tokens(self) -> NDArray[numpy.int32]:
        """Ids generated so far (int32)."""

    @property
    def stop_reason(self) -> str:
        """
        'length', 'eog' (end-of-generation token), 'stop' (a stop string), or '' while running.
        """

    @property
    def session_obj(self) -> Session:
        """The session generating."""

class AttentionObserver:
    """Base of what Session.set_observer accepts."""

class AttentionStats(AttentionObserver):
    """
    Attention statistics of a stream (analysis/attention_stats.h): where each query head
    puts its probability by key stream index and by cache rank, residual-stream norms
    (massive activations), key/value norms, and un-rotated keys of the first tokens.

    AttentionStats(model, first=0, count=None, attention=True, key_tokens=16), then
    Session.set_observer(stats) before feeding; or spillway.attention_stats(...) in one call.
    Records the queries of stream indices [first, first+count). Not for replaying policies
    (recompute).
    """

    def __init__(self, model: Model, first: int = 0, count: int | None = None, attention: bool = True, key_tokens: int = 16) -> None: ...

    @property
    def n_layer(self) -> int: ...

    @property
    def n_head(self) -> int: ...

    @property
    def n_head_kv(self) -> int: ...

    @property
    def head_dim(self) -> int: ...

    @property
    def first(self) -> int: ...

    @property
    def n_queries(self) -> int:
        """Queries recorded so far."""

    @property
    def n_keys(self) -> int:
        """Keys (stream indices) seen so far."""

    def mass_by_stream(self) -> NDArray[numpy.float64]:
        """
        [n_layer, n_head, n_keys] float64: summed over the recorded queries, the probability each head put on key stream index k.
        """

    def mass_by_rank(self) -> NDArray[numpy.float64]:
        """
        [n_layer, n_head, max_rank] float64: the same by rank of the key in the query's span (0 = oldest); zero past a layer's longest span.
        """

    def queries_by_rank(self) -> NDArray[numpy.int64]:
        """[n_layer, max_rank] int64: recorded queries whose span reached rank r."""

    def sink_range_mass(self) -> NDArray[numpy.float64]:
        """[n_layer, n_head]: summed probability on the plan's sink ranges."""

    def sink_range_queries(self) -> NDArray[numpy.int64]:
        """[n_layer]: recorded queries that had a sink range."""

    def sink_scores(self, k: int = 0) -> NDArray[numpy.float64]:
        """
        [n_layer, n_head]: Gu et al.'s sink score alpha_k, the mean over recorded queries i >= k of A[i][k] (NaN where no recorded query is at or after k).
        """

    def hidden_norm(self) -> NDArray[numpy.float64]:
        """
        [n_layer+1, n_queries]: L2 norm of the residual stream of each recorded token entering layer l (l = n_layer: leaving the last one).
        """

    def hidden_max(self) -> NDArray[numpy.float64]:
        """
        [n_layer+1, n_queries]: max |x| of the same residual streams (massive activations).
        """

    def key_norm(self) -> NDArray[numpy.float64]:
        """
        [n_layer, n_queries, n_head_kv]: L2 norms of the recorded tokens' keys.
        """

    def value_norm(self) -> NDArray[numpy.float64]:
        """[n_layer, n_queries, n_head_kv]: L2 norms of their values."""

    def key(self, layer: int, kv_head: int, k: int) -> NDArray[numpy.float32]:
        """
        Un-rotated key of stream index k < key_tokens ([head_dim] float32; empty if k was not recorded).
        """

    def mean_key(self, layer: int, kv_head: int) -> NDArray[numpy.float32]:
        """
        Mean un-rotated key of the recorded tokens from stream index key_tokens on.
        """

def build_info() -> dict[str, str]:
    """
    What build is running: the library's version, the source commit it was built from (git describe; 'unknown' outside a checkout) and the kernel family this process chose (SPILLWAY_ISA or the widest the CPU runs). Results record it as their provenance.
    """

def sink_rate(scores: ArrayLike, eps: float = 0.3) -> float:
    """
    Percentage of (layer, head) scores above eps (NaN counts as not), Gu et al.'s sink rate.
    """

class AblationResult:
    """Causal sink dependence per layer and head (spillway.ablate_sinks)."""

    @property
    def n_layer(self) -> int: ...

    @property
    def n_head(self) -> int: ...

    @property
    def scored(self) -> int:
        """Targets per run."""

    @property
    def base_nll(self) -> float:
        """Mean NLL of the scored targets, nothing ablated."""

    @property
    def all_heads_delta(self) -> float:
        """Mean NLL change with every head's sinks dropped."""

    @property
    def seconds(self) -> float: ...

    @property
    def base_token_nll(self) -> NDArray[numpy.float32]: ...

    @property
    def layer_delta(self) -> NDArray[numpy.float64]:
        """[n_layer] mean NLL change with a layer's sinks dropped (NaN: not run)."""

    @property
    def head_delta(self) -> NDArray[numpy.float64]:
        """[n_layer, n_head] the same per head (NaN: not run)."""

    @property
    def sink_mass(self) -> NDArray[numpy.float64]:
        """[n_layer, n_head] mean probability on the sink slots (baseline run)."""

    @property
    def sink_hidden_ratio(self) -> NDArray[numpy.float64]: ...

    @property
    def spearman_heads(self) -> dict[str, float]:
        """
        Spearman rank correlations over heads: {'pairs', 'delta_vs_mass', 'delta_vs_hidden', 'mass_vs_hidden'} (NaN without a per-head pass).
        """

    @property
    def spearman_layers(self) -> dict[str, float]:
        """The same over layers (each layer's mean sink mass; NaN without a per-layer pass)."""

def ablate_sinks(model: Model, ids: ArrayLike, policy: str = 'sink:4+252', score_from: int = 0, chunk: int = 64, threads: int = 0, per_layer: bool = True, per_head: bool = True, layers: Sequence[int] = [], heads: Sequence[tuple[int, int]] = []) -> AblationResult:
    """
    Causal sink dependence (analysis/sinks.h): the targets from score_from on predicted once as they are and once per ablation (a head, or every head of a layer, whose softmax leaves out the sink slots). The GIL is released.
    """

class SinkReport:
    """
    Where a model's heads dump their attention surplus over one stream (spillway.sink_report; `spillway sinks` prints the same).
    """

    @property
    def n_layer(self) -> int: ...

    @property
    def n_head(self) -> int: ...

    @property
    def tokens(self) -> int:
        """Stream tokens recorded (N)."""

    @property
    def first_tokens(self) -> int:
        """T = min(64, N): the full-attention prefix of Gu et al.'s sink rate."""

    @property
    def eps(self) -> float: ...

    @property
    def sink_rate_first(self) -> float:
        """% of heads with alpha_1 > eps over the first T tokens, full cache."""

    @property
    def sink_rate_stream(self) -> float:
        """% of heads with alpha_1 > eps over the N tokens under the policy."""

    @property
    def alpha1(self) -> NDArray[numpy.float64]:
        """[n_layer, n_head] the first token's sink score."""

    @property
    def alpha1_first(self) -> NDArray[numpy.float64]:
        """[n_layer, n_head] the same over the first T tokens."""

    @property
    def alpha_k(self) -> NDArray[numpy.float64]:
        """[K, n_layer, n_head] sink scores of stream indices 1..K (K = min(8, N) - 1)."""

    @property
    def detected_sinks(self) -> NDArray[numpy.int64]:
        """[n, 2] int64: (stream index, heads whose score exceeds eps) of each detected sink."""

    @property
    def local_window(self) -> NDArray[numpy.float64]:
        """[n_layer] each layer's native window (0: global)."""

    @property
    def alpha1_mean(self) -> NDArray[numpy.float64]: ...

    @property
    def first_token_norm_ratio(self) -> NDArray[numpy.float64]:
        """[n_layer] token 0's residual norm over the median token's (massive activation)."""

    @property
    def hidden_norm_median(self) -> NDArray[numpy.float64]: ...

    @property
    def first_token_value_norm(self) -> NDArray[numpy.float64]: ...

    @property
    def other_value_norm_median(self) -> NDArray[numpy.float64]: ...

    @property
    def key0_cos_mean_key(self) -> NDArray[numpy.float64]:
        """[n_layer, n_head_kv] cosine of token 0's key with the mean key (NaN: not recorded)."""

    @property
    def top_stream(self) -> list[list[tuple[int, float]]]:
        """Per layer: (stream index, share of the layer's attention), largest first."""

    @property
    def top_rank(self) -> list[list[tuple[int, float]]]:
        """Per layer: (cache position, share of the layer's attention), largest first."""

    @property
    def mass_by_stream(self) -> NDArray[numpy.float64]:
        """[n_layer, N] share of each layer's attention by key stream index."""

    @property
    def mass_by_rank(self) -> NDArray[numpy.float64]:
        """[n_layer, positions] the same by cache position (zero-padded)."""

    @property
    def hidden_norm(self) -> NDArray[numpy.float64]:
        """[n_layer + 1, N] residual-stream norms entering each layer and after the last."""

def sink_report(model: Model, ids: ArrayLike, policy: str = 'full', tokens: int = 64, eps: float = 0.3, top: int = 3, chunk: int = 64, threads: int = 0) -> SinkReport:
    """
    The sink report of the first `tokens` ids under `policy` (analysis/sink_report.h), as `spillway sinks` computes it. The GIL is released.
    """

def recall(model: Model, filler: ArrayLike, policies: str | Sequence[str], probe: str = 'copy', distances: Sequence[int] = [64, 128, 256, 512, 1024, 2048, 4096], seeds: int = 3, span: int = 32, lead: int = 64, chunk: int = 128, threads: int = 0) -> list[dict[str, Any]]:
    """
    What a cache policy remembers (analysis/recall.h): probes streamed through each policy at each distance, seeds per distance. filler: token ids of real text (model.tokenize). probe: 'copy' (a random span of `span` tokens seen again after `distance` filler tokens; recall = 1 - NLL(again)/NLL(first)), 'passkey' or 'lines' (greedy answers; accuracy). Returns one dict per (policy, distance), as `spillway recall --json` rows. The GIL is released.
    """
