"""Reading a measured sweep back, for renderers of tables and plots: find a cell's record
by its spec, text and options; its per-token arrays; where its numbers came from."""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Optional

from ._spec import Cell, Sweep, load_sweep
from ._store import Store, write_atomic


class Results:
    """The records of a sweep's cells in a store. Missing or failed cells raise KeyError
    with the cell named, so a renderer never draws a table from part of a sweep."""

    def __init__(self, sweep: Sweep | str | os.PathLike, store: Store | str | os.PathLike):
        self.sweep = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
        self.store = store if isinstance(store, Store) else Store(store)
        self._records: dict[str, Optional[dict[str, Any]]] = {}

    def cells(self, spec: Optional[str] = None, *, text: Optional[str] = None,
              model: Optional[str] = None, measure: Optional[str] = None,
              **options: Any) -> list[Cell]:
        """The cells matching every criterion given (options: equal values)."""
        out = []
        for c in self.sweep.cells:
            if spec is not None and c.spec != spec:
                continue
            if text is not None and c.text.name != text:
                continue
            if model is not None and c.model.name != model:
                continue
            if measure is not None and c.measure != measure:
                continue
            if any(c.options.get(k, _ABSENT) != v for k, v in options.items()):
                continue
            out.append(c)
        return out

    def _get(self, cell: Cell) -> Optional[dict[str, Any]]:
        """The store's record of `cell`, read once."""
        if cell.key not in self._records:
            self._records[cell.key] = self.store.get(cell.key)
        return self._records[cell.key]

    def record(self, spec: Optional[str] = None, **criteria: Any) -> dict[str, Any]:
        """The one measured record matching; KeyError if none, several, or not measured."""
        found = self.cells(spec, **criteria)
        what = ", ".join([f"spec={spec}"] * (spec is not None) +
                         [f"{k}={v!r}" for k, v in criteria.items()])
        if len(found) != 1:
            raise KeyError(f"{len(found)} cells of {self.sweep.path} match {what}")
        cell = found[0]
        rec = self._get(cell)
        if rec is None:
            raise KeyError(f"cell {cell.label()} ({what}) is not in the store {self.store.root}:"
                           f" run the sweep")
        if rec["status"] != "ok":
            raise KeyError(f"cell {cell.label()} failed: {rec['error']}")
        return rec

    def figure(self, name: str, spec: Optional[str] = None, point: Any = None,
               **criteria: Any) -> float:
        for f in self.record(spec, **criteria)["figures"]:
            if f["figure"] == name and f["point"] == point:
                return f["value"]
        raise KeyError(f"no figure {name} (point {point}) for {spec} {criteria}")

    def series(self, spec: Optional[str] = None, **criteria: Any) -> "Series":
        """A ppl cell's per-token NLLs with the stream index of their first target."""
        rec = self.record(spec, measure="ppl", **criteria)
        opts = rec["cell"]["options"]
        figs = {f["figure"]: f["value"] for f in rec["figures"] if f["point"] is None}
        return Series(rec["cell"]["spec"], max(1, opts["score_from"]), rec["arrays"]["nll"],
                      figs, rec)

    def commands(self) -> list[str]:
        """The sweep's command and, for each ppl cell, the `spillway ppl` command that
        measures the same numbers (paths relative to the current folder)."""
        out = [f"spillway-sweep {_rel(self.sweep.path)} --out STORE"]
        for c in self.sweep.cells:
            if c.measure != "ppl":
                continue
            o = c.options
            cmd = ["spillway ppl", "-m", _rel(c.model.path), "-f", _rel(c.text.path),
                   "-t", str(c.threads)]
            cmd += ["--max-tokens", str(o["max_tokens"])] if o["max_tokens"] else []
            cmd += ["--score-from", str(o["score_from"])] if o["score_from"] != 1 else []
            cmd += ["--chunk", str(o["chunk"])] if o["chunk"] != 128 else []
            cmd += ["--reference", o["reference"]] if o["reference"] else []
            cmd += ["--replace-head", repr(o["replace_head"]).replace("'", "$'", 1)] \
                if o["replace_head"] else []
            cmd += ["-p", c.spec]
            out.append(f"{c.key}: {' '.join(cmd)}")
        return out

    def provenance_text(self) -> str:
        """"Measured at commit C, kernels K, N thread(s) per cell": for under a table."""
        p = self.provenance()
        return (f"Measured at commit {', '.join(p['commit'])}, kernels "
                f"{', '.join(p['kernel_isa'])}, {', '.join(map(str, p['threads']))} "
                f"thread(s) per cell")

    def write_page(self, out: str | os.PathLike, tables_name: str, tables: str,
                   summary: Any) -> None:
        """A rendered page's files in `out`, each written whole: the tables (markdown),
        summary.json and commands.txt (the sweep's command and each cell's)."""
        out = pathlib.Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / tables_name, tables.encode())
        write_atomic(out / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
        write_atomic(out / "commands.txt", ("\n".join(self.commands()) + "\n").encode())

    def provenance(self) -> dict[str, list]:
        """The commits, kernel families, hosts and threads the stored cells came from."""
        seen: dict[str, set] = {"commit": set(), "kernel_isa": set(), "host": set(),
                                "threads": set()}
        for c in self.sweep.cells:
            rec = self._get(c)
            if rec is None or rec["status"] != "ok":
                continue
            for k in seen:
                seen[k].add(rec.get("provenance", {}).get(k))
        return {k: sorted(v, key=str) for k, v in seen.items()}


_ABSENT = object()


def _rel(path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


class Series:
    """Per-token NLLs of targets first..first+len-1."""

    def __init__(self, spec: str, first: int, nll: list[float], figures: dict[str, Any],
                 record: dict[str, Any]):
        self.spec, self.first, self.nll, self.figures, self.record = spec, first, nll, \
            figures, record

    @property
    def tokens_per_s(self) -> float:
        return self.figures["tokens_per_s"]

    @property
    def seconds(self) -> float:
        return self.figures["seconds"]

    def covers(self, lo: int, hi: int) -> bool:
        return self.first <= lo and hi <= self.first + len(self.nll)

    def slice(self, lo: int, hi: int) -> list[float]:
        if not self.covers(lo, hi):
            raise KeyError(f"{self.spec} scores targets {self.first}..{self.first + len(self.nll) - 1}"
                           f", not {lo}..{hi - 1}")
        return self.nll[lo - self.first:hi - self.first]

    def mean_nll(self, lo: int, hi: int) -> float:
        xs = self.slice(lo, hi)
        return sum(xs) / len(xs)

    def ppl(self, lo: int, hi: int) -> float:
        return math.exp(self.mean_nll(lo, hi))


def paired(s: Series, r: Series, lo: int, hi: int) -> tuple[float, float]:
    """Mean per-token NLL difference s - r over targets [lo, hi) and its standard error."""
    d = [a - b for a, b in zip(s.slice(lo, hi), r.slice(lo, hi))]
    m = sum(d) / len(d)
    var = sum((x - m) ** 2 for x in d) / (len(d) - 1) if len(d) > 1 else 0.0
    return m, math.sqrt(var / len(d))
