"""Sweep files: what a sweep names (models, texts, grids of policies, cache sizes and
measurements) and the cells it expands to, each keyed by what determines its result."""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import operator
import os
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the sweep extra installs tomli there
    import tomli as tomllib


class SweepError(ValueError):
    """A sweep file that cannot be run: the message names the file and what is wrong."""


# Each measurement's options and their defaults. A cell's key covers every option, the
# defaults included, so that a default changing later cannot pass for a stored result.
MEASURES: dict[str, dict[str, Any]] = {
    # spillway.perplexity: the first max_tokens tokens of the text (0: all), targets from
    # score_from on; reference (a spec such as "full" or "recompute:{c}") adds the per-token
    # KL divergence and top-1 agreement with it.
    # replace_head: text whose tokens (no BOS) replace the stream's first tokens, e.g. four
    # newline tokens in the sink positions (`spillway ppl --replace-head`).
    "ppl": {"max_tokens": 0, "score_from": 1, "chunk": 128, "reference": None,
            "replace_head": None},
    # spillway.recall: a probe at each distance, seeds per distance, filler from the text.
    "recall": {"probe": "copy", "distances": [64, 128, 256, 512, 1024, 2048, 4096],
               "seeds": 3, "span": 32, "lead": 64, "chunk": 128, "max_tokens": 0},
    # spillway.sink_report over the first `tokens` tokens of the text under the policy.
    "sinks": {"tokens": 512, "eps": 0.3, "chunk": 64},
    # spillway.ablate_sinks: per-layer causal dependence on the sink slots.
    "ablate": {"max_tokens": 512, "score_from": 0, "chunk": 64, "per_head": False},
}
# The kernel families as spillway.build_info() names them (SPILLWAY_ISA also takes
# "avx512" for the last).
KERNEL_FAMILIES = ("scalar", "avx2", "avx512-vnni")
# measure = "python:MODULE:FUNCTION": a researcher's own measurement, called in the worker
# as FUNCTION(model, ids, spec, options, threads) (see run_cell); its options are free.
_PYTHON_PREFIX = "python:"


def _check_measure(name: str, where: str) -> None:
    if name in MEASURES:
        return
    if name.startswith(_PYTHON_PREFIX) and name.count(":") == 2 and all(name.split(":")[1:]):
        return
    raise SweepError(f"{where}: unknown measure '{name}' (one of {', '.join(MEASURES)}, "
                     f"or python:MODULE:FUNCTION)")


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def _eval_int(expr: str, env: dict[str, int], where: str) -> int:
    """An integer expression of a template ('c-4', 'c//4', 'c - c//4'): integers, the
    variables in env, + - * // % and parentheses; nothing else is evaluated."""

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            b = ev(node.right)
            if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and b == 0:
                raise SweepError(f"{where}: division by zero in '{{{expr}}}'")
            return _OPS[type(node.op)](ev(node.left), b)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise SweepError(f"{where}: '{{{expr}}}' is not an integer expression of "
                         f"{', '.join(sorted(env)) or 'no variables'} (+ - * // %)")

    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise SweepError(f"{where}: cannot read '{{{expr}}}'") from None
    return ev(tree)


def expand_template(text: str, env: dict[str, int], where: str) -> str:
    """'sink:4+{c-4}' with c=256 -> 'sink:4+252'. '{{' and '}}' are literal braces."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if text.startswith("{{", i) or text.startswith("}}", i):
            out.append(ch)
            i += 2
        elif ch == "{":
            j = text.find("}", i)
            if j < 0:
                raise SweepError(f"{where}: unclosed '{{' in '{text}'")
            out.append(str(_eval_int(text[i + 1:j], env, where)))
            i = j + 1
        elif ch == "}":
            raise SweepError(f"{where}: unmatched '}}' in '{text}'")
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def uses_cache(text: str) -> bool:
    return "{" in text.replace("{{", "")


def file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Input:
    """A model or a text of the sweep: its name there, its path, its content's sha256."""
    name: str
    path: str
    sha256: str


@dataclass
class Cell:
    """One measurement: a model, a text, a policy spec (a cache size filled in) and a
    measurement with all its options. `key` names its result in the store."""
    model: Input
    text: Input
    spec: str
    cache: Optional[int]
    measure: str
    options: dict[str, Any]
    threads: int
    isa: str
    version: str
    key: str = field(default="")
    # The grid's policy as written ("sink:4+{c-4}"): cells of one template are one line
    # across cache sizes in a plot.
    policy: str = field(default="")

    def identity(self) -> dict[str, Any]:
        """What determines the result. The names and paths of the inputs do not; their
        contents do. Threads do not (results are the same bits at any thread count)."""
        # A file missing when the sweep was read is keyed by its path, so that two missing
        # files stay two cells (each fails with the loader's message).
        return {"model_sha256": self.model.sha256 or f"missing:{self.model.path}",
                "text_sha256": self.text.sha256 or f"missing:{self.text.path}",
                "spec": self.spec, "measure": self.measure, "options": self.options,
                "version": self.version, "kernel_isa": self.isa}

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.name, "model_path": self.model.path,
                "model_sha256": self.model.sha256, "text": self.text.name,
                "text_path": self.text.path, "text_sha256": self.text.sha256,
                "spec": self.spec, "policy": self.policy, "cache": self.cache,
                "measure": self.measure,
                "options": self.options, "threads": self.threads, "kernel_isa": self.isa,
                "version": self.version, "key": self.key}

    def label(self) -> str:
        return f"{self.model.name} {self.text.name} {self.spec} {self.measure}"


def cell_key(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class Sweep:
    path: pathlib.Path
    name: str
    threads: int
    isa: str
    version: str
    max_retries: int
    cells: list[Cell]


def _table(obj: Any, what: str, where: str) -> dict:
    if not isinstance(obj, dict):
        raise SweepError(f"{where}: {what} must be a table")
    return obj


def _inputs(doc: dict, section: str, base: pathlib.Path, where: str) -> dict[str, dict]:
    raw = _table(doc.get(section, {}), f"[{section}]", where)
    if not raw:
        raise SweepError(f"{where}: [{section}] names nothing")
    out = {}
    for name, entry in raw.items():
        if isinstance(entry, str):
            entry = {"path": entry}
        entry = _table(entry, f"[{section}.{name}]", where)
        unknown = set(entry) - {"path", "sha256"}
        if unknown:
            raise SweepError(f"{where}: [{section}.{name}] has unknown keys {sorted(unknown)} "
                             f"(path, sha256)")
        if not isinstance(entry.get("path"), str) or not entry["path"]:
            raise SweepError(f"{where}: [{section}.{name}] has no path")
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and
                                    all(ch in "0123456789abcdefABCDEF" for ch in sha)):
            raise SweepError(f"{where}: [{section}.{name}] sha256 must be 64 hex digits")
        out[name] = {"path": str((base / os.path.expanduser(entry["path"])).resolve()
                                 if not os.path.isabs(entry["path"]) else entry["path"]),
                     "sha256": entry.get("sha256")}
    return out


def _resolve(name: str, entry: dict, section: str, where: str,
             hashes: dict[str, str]) -> Input:
    """The input with the sha256 its cells are keyed by: the one the sweep names, else the
    file's. A missing file is not an error here: its cells run and fail with the loader's
    message (and are keyed anew once the file exists); a file whose content is not the
    named sha256 fails its cells in the worker, which checks every file it reads."""
    path = entry["path"]
    if entry["sha256"]:
        return Input(name, path, entry["sha256"].lower())
    if path not in hashes:
        hashes[path] = file_sha256(pathlib.Path(path)) if os.path.isfile(path) else ""
    return Input(name, path, hashes[path])


def _names(grid: dict, key: str, known: dict, where: str) -> list[str]:
    names = grid.get(key, list(known))
    if isinstance(names, str):
        names = [names]
    for n in names:
        if n not in known:
            raise SweepError(f"{where}: {key} names '{n}', which the sweep does not define "
                             f"({', '.join(known)})")
    return list(names)


def _options(measure: str, given: dict, env: dict[str, int], where: str) -> dict[str, Any]:
    if measure in MEASURES:
        unknown = set(given) - set(MEASURES[measure])
        if unknown:
            raise SweepError(f"{where}: measure '{measure}' has no option(s) {sorted(unknown)} "
                             f"(it takes {', '.join(MEASURES[measure])})")
        opts = dict(MEASURES[measure])
    else:
        opts = {}
    for k, v in given.items():
        opts[k] = expand_template(v, env, where) if isinstance(v, str) else v
    return opts


def load_sweep(path: str | os.PathLike, *, isa: Optional[str] = None,
               hashes: Optional[dict[str, str]] = None) -> Sweep:
    """Reads a sweep file (TOML) and expands it to cells. isa: the kernel family the cells
    are keyed for (default: the sweep's `isa`, else the one this process chose)."""
    import spillway

    path = pathlib.Path(path)
    where = str(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise SweepError(f"{where}: cannot read the sweep file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{where}: not TOML: {e}") from None
    top = set(doc) - {"sweep", "models", "texts", "grid"}
    if top:
        raise SweepError(f"{where}: unknown section(s) {sorted(top)} "
                         f"(sweep, models, texts, grid)")
    head = _table(doc.get("sweep", {}), "[sweep]", where)
    unknown = set(head) - {"name", "threads", "isa", "max_retries"}
    if unknown:
        raise SweepError(f"{where}: [sweep] has unknown keys {sorted(unknown)} "
                         f"(name, threads, isa, max_retries)")
    threads = head.get("threads", 1)
    if type(threads) is not int or threads < 1:
        raise SweepError(f"{where}: [sweep] threads must be a positive integer")
    max_retries = head.get("max_retries", 2)
    if type(max_retries) is not int or max_retries < 0:
        raise SweepError(f"{where}: [sweep] max_retries must be an integer >= 0")
    info = spillway.build_info()
    isa = isa or head.get("isa") or info["kernel_isa"]
    isa = {"avx512": "avx512-vnni"}.get(isa, isa)
    if isa not in KERNEL_FAMILIES:
        raise SweepError(f"{where}: unknown kernel family '{isa}' "
                         f"({', '.join(KERNEL_FAMILIES)})")
    base = path.resolve().parent
    hashes = {} if hashes is None else hashes
    models = _inputs(doc, "models", base, where)
    texts = _inputs(doc, "texts", base, where)
    grids = doc.get("grid", [])
    if isinstance(grids, dict):
        grids = [grids]
    if not grids:
        raise SweepError(f"{where}: no [[grid]] block: nothing to measure")
    cells: list[Cell] = []
    seen: set[str] = set()
    resolved: dict[tuple[str, str], Input] = {}

    def get(section: str, name: str, entry: dict) -> Input:
        if (section, name) not in resolved:
            resolved[(section, name)] = _resolve(name, entry, section, where, hashes)
        return resolved[(section, name)]

    for gi, grid in enumerate(grids):
        gwhere = f"{where}: grid {gi + 1}"
        grid = _table(grid, "a [[grid]] block", gwhere)
        unknown = set(grid) - {"models", "texts", "policies", "caches", "measure", "options"}
        if unknown:
            raise SweepError(f"{gwhere}: unknown keys {sorted(unknown)} "
                             f"(models, texts, policies, caches, measure, options)")
        measures = grid.get("measure", "ppl")
        measures = [measures] if isinstance(measures, str) else list(measures)
        for m in measures:
            _check_measure(m, gwhere)
        policies = grid.get("policies", ["full"])
        policies = [policies] if isinstance(policies, str) else list(policies)
        caches = grid.get("caches", [])
        if any(type(c) is not int or c < 1 for c in caches):
            raise SweepError(f"{gwhere}: caches must be positive integers")
        given = _table(grid.get("options", {}), "options", gwhere)
        for mname, tname, measure, template in itertools.product(
                _names(grid, "models", models, gwhere), _names(grid, "texts", texts, gwhere),
                measures, policies):
            templated = uses_cache(template) or any(
                isinstance(v, str) and uses_cache(v) for v in given.values())
            if templated and not caches:
                raise SweepError(f"{gwhere}: '{template}' or an option uses {{c}} but the "
                                 f"grid has no caches")
            for c in (caches if templated else [None]):
                env = {"c": c} if c is not None else {}
                spec = expand_template(template, env, gwhere)
                cell = Cell(get("models", mname, models[mname]),
                            get("texts", tname, texts[tname]), spec,
                            c if uses_cache(template) else None, measure,
                            _options(measure, given, env, gwhere), threads, isa,
                            info["version"], policy=template)
                cell.key = cell_key(cell.identity())
                if cell.key not in seen:
                    seen.add(cell.key)
                    cells.append(cell)
    return Sweep(path, head.get("name", path.stem), threads, isa, info["version"],
                 max_retries, cells)
