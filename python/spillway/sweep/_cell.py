"""Running one cell, in whatever process holds it (the driver, a pool worker, a Ray
worker): models and texts are read once per process and checked against the sha256 the
cell was keyed by; a cell that fails for a reason of its own (a bad spec, a missing file)
returns a failed record rather than raising, so that the sweep goes on."""

from __future__ import annotations

import collections
import importlib
import math
import os
import platform
import socket
import time
import traceback
from typing import Any

import numpy as np

import spillway

from ._spec import MEASURES, file_sha256

# Per process: the models loaded (the last two; a sweep usually walks one model at a
# time), the sha256 of each file read, by (path, size, mtime).
_MODELS: "collections.OrderedDict[tuple[str, str], spillway.Model]" = collections.OrderedDict()
_HASHES: dict[tuple[str, int, int], str] = {}
_KEEP_MODELS = 2
# And the token ids of each text under each model (a 4 MB text takes about half a second
# to tokenize, a tenth of a short cell).
_IDS: "collections.OrderedDict[tuple, np.ndarray]" = collections.OrderedDict()
_KEEP_TEXTS = 4


class CellError(Exception):
    """A cell that cannot be measured, for a reason the record states."""


def _checked(path: str, sha256: str, what: str) -> str:
    """The sha256 of the file at `path` now (computed once per size and mtime), which must
    be `sha256` when that is given."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise CellError(f"{what} {path}: {e.strerror}") from None
    k = (path, st.st_size, st.st_mtime_ns)
    if k not in _HASHES:
        _HASHES[k] = file_sha256(path)
    if sha256 and _HASHES[k] != sha256:
        raise CellError(f"{what} {path} on {socket.gethostname()} has sha256 {_HASHES[k]}, "
                        f"the cell was keyed for {sha256}")
    return _HASHES[k]


def _model(path: str, sha256: str) -> tuple[spillway.Model, str]:
    # Keyed by content: a file replaced at the same path is loaded anew.
    k = (path, _checked(path, sha256, "model"))
    if k in _MODELS:
        _MODELS.move_to_end(k)
        return _MODELS[k], k[1]
    m = spillway.Model.load(path)
    _MODELS[k] = m
    while len(_MODELS) > _KEEP_MODELS:
        _MODELS.popitem(last=False)
    return m, k[1]


def _text_ids(model: spillway.Model, model_sha256: str, path: str, sha256: str,
              max_tokens: int) -> np.ndarray:
    k = (model_sha256, path, _checked(path, sha256, "text"))
    if k in _IDS:
        _IDS.move_to_end(k)
        ids = _IDS[k]
    else:
        with open(path, encoding="utf-8", errors="strict") as f:
            text = f.read()
        if not text.strip():
            raise CellError(f"text {path} is empty")
        ids = model.tokenize(text)
        ids.flags.writeable = False
        _IDS[k] = ids
        while len(_IDS) > _KEEP_TEXTS:
            _IDS.popitem(last=False)
    if max_tokens:
        if len(ids) < max_tokens:
            raise CellError(f"text {path} has {len(ids)} tokens, the cell asks for {max_tokens}")
        ids = ids[:max_tokens]
    return ids


def _finite(x: float) -> Any:
    x = float(x)
    return x if math.isfinite(x) else None


def _measure_ppl(model, ids, spec, o, threads):
    if o["replace_head"]:
        head = model.tokenize(o["replace_head"], add_bos=False)
        if not 1 <= len(head) < len(ids):
            raise CellError(f"replace_head gives {len(head)} tokens; it must give between 1 "
                            f"and {len(ids) - 1}")
        ids = ids.copy()
        ids[:len(head)] = head
    r = spillway.perplexity(model, ids, [spec], chunk=o["chunk"], score_from=o["score_from"],
                            threads=threads, reference=o["reference"])[0]
    figures = {"ppl": r.ppl, "mean_nll": r.mean_nll, "tokens": r.tokens,
               "tokens_per_s": r.tokens_per_s, "kv_bytes_peak": r.kv_bytes_peak,
               "kv_slots": r.kv_slots, "seconds": r.seconds}
    arrays = {"nll": r.nll.tolist()}
    if o["reference"]:
        figures.update(kl_mean=r.kl_mean, top1_agree=r.top1_agree,
                       reference_mean_nll=r.reference_mean_nll)
        arrays["kl"] = r.kl.tolist()
    return [(k, None, v) for k, v in figures.items()], arrays


def _measure_recall(model, ids, spec, o, threads):
    rows = spillway.recall(model, ids, [spec], probe=o["probe"], distances=o["distances"],
                           seeds=o["seeds"], span=o["span"], lead=o["lead"], chunk=o["chunk"],
                           threads=threads)
    out = []
    for row in rows:
        for k in ("recall", "accuracy", "nll_first", "nll_repeat", "kv_slots", "kv_bytes_peak"):
            if k in row and row[k] is not None:
                out.append((k, row["distance"], row[k]))
    return out, {"rows": rows}


def _measure_sinks(model, ids, spec, o, threads):
    r = spillway.sink_report(model, ids, spec, tokens=o["tokens"], eps=o["eps"],
                             chunk=o["chunk"], threads=threads)
    out = [("sink_rate_first", None, r.sink_rate_first),
           ("sink_rate_stream", None, r.sink_rate_stream)]
    out += [("alpha1_mean", layer, v) for layer, v in enumerate(r.alpha1_mean.tolist())]
    return out, {"alpha1": r.alpha1.tolist(), "detected_sinks": r.detected_sinks.tolist()}


def _measure_ablate(model, ids, spec, o, threads):
    r = spillway.ablate_sinks(model, ids, spec, score_from=o["score_from"], chunk=o["chunk"],
                              threads=threads, per_layer=True, per_head=o["per_head"])
    out = [("base_nll", None, r.base_nll), ("all_heads_delta", None, r.all_heads_delta)]
    out += [("layer_delta", layer, v) for layer, v in enumerate(r.layer_delta.tolist())]
    arrays = {"head_delta": r.head_delta.tolist()} if o["per_head"] else {}
    return out, arrays


_BUILTIN = {"ppl": _measure_ppl, "recall": _measure_recall, "sinks": _measure_sinks,
            "ablate": _measure_ablate}


def _custom(name: str):
    _, module, function = name.split(":")
    try:
        fn = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        raise CellError(f"measure {name}: {e}") from None
    return fn


def _run_custom(fn, model, ids, spec, o, threads):
    """FUNCTION(model, ids, spec, options, threads) returns {figure: value} or
    {"figures": {figure: value or {point: value}}, "arrays": {...}}."""
    got = fn(model, ids, spec, dict(o), threads)
    if not isinstance(got, dict):
        raise CellError(f"the measure returned {type(got).__name__}, not a dict")
    figures, arrays = (got["figures"], got.get("arrays", {})) if "figures" in got else (got, {})
    out = []
    for k, v in figures.items():
        if isinstance(v, dict):
            out += [(k, p, pv) for p, pv in v.items()]
        else:
            out.append((k, None, v))
    return out, arrays


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Measures one cell (Cell.to_dict()) and returns its record; never raises for a
    failure of the cell itself."""
    t0 = time.time()
    info = spillway.build_info()
    record: dict[str, Any] = {"key": cell["key"], "cell": cell, "status": "ok", "error": None,
                              "figures": [], "arrays": {}}
    try:
        if info["kernel_isa"] != cell["kernel_isa"]:
            raise CellError(
                f"this process runs {info['kernel_isa']} kernels (host "
                f"{socket.gethostname()}), the cell was keyed for {cell['kernel_isa']}: "
                f"set SPILLWAY_ISA or the sweep's isa to a family every node runs")
        o = cell["options"]
        model, model_sha256 = _model(cell["model_path"], cell["model_sha256"])
        max_tokens = o.get("max_tokens", 0) if cell["measure"] != "sinks" else o["tokens"]
        ids = _text_ids(model, model_sha256, cell["text_path"], cell["text_sha256"],
                        max_tokens or 0)
        if cell["measure"] in MEASURES:
            figures, arrays = _BUILTIN[cell["measure"]](model, ids, cell["spec"], o,
                                                        cell["threads"])
        else:
            figures, arrays = _run_custom(_custom(cell["measure"]), model, ids, cell["spec"], o,
                                          cell["threads"])
        record["figures"] = [{"figure": str(k), "point": p, "value": _finite(v)}
                             for k, p, v in figures]
        record["arrays"] = arrays
    except Exception as e:  # the cell's own failure (Ctrl-C and exits pass through)
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        if not isinstance(e, (spillway.Error, CellError, OSError)):
            record["traceback"] = traceback.format_exc(limit=6)
    record["provenance"] = {
        "version": info["version"], "commit": info["commit"], "kernel_isa": info["kernel_isa"],
        "threads": cell["threads"], "host": socket.gethostname(), "pid": os.getpid(),
        "python": platform.python_version(), "started": t0,
        "seconds": round(time.time() - t0, 3)}
    return record
