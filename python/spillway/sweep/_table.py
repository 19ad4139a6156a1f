"""The tidy table of a sweep: one row per cell and measured figure, from the store."""

from __future__ import annotations

import importlib.util
import io
import json
import pathlib
from typing import Any, Optional

from ._spec import Sweep
from ._store import Store, write_atomic

COLUMNS = ["model", "text", "spec", "policy", "cache", "measure", "options", "figure", "point", "value",
           "status", "error", "key", "commit", "kernel_isa", "threads", "host", "seconds"]


def _need_pandas():
    try:
        import pandas
    except ImportError:
        raise SystemExit("spillway-sweep: the result table needs pandas: "
                         "pip install 'spillway[sweep]'") from None
    return pandas


def records(sweep: Sweep, store: Store) -> list[tuple[Any, Optional[dict[str, Any]]]]:
    """(cell, its stored record or None) for each cell of the sweep, in the sweep's order."""
    return [(cell, store.get(cell.key)) for cell in sweep.cells]


def rows(sweep: Sweep, store: Store) -> list[dict[str, Any]]:
    out = []
    for cell, rec in records(sweep, store):
        base = {"model": cell.model.name, "text": cell.text.name, "spec": cell.spec,
                "policy": cell.policy, "cache": cell.cache, "measure": cell.measure,
                "options": json.dumps(cell.options, sort_keys=True), "key": cell.key,
                "threads": cell.threads}
        if rec is None:
            out.append({**base, "status": "missing"})
            continue
        prov = rec.get("provenance", {})
        base.update(status=rec["status"], error=rec.get("error"), commit=prov.get("commit"),
                    kernel_isa=prov.get("kernel_isa"), host=prov.get("host"),
                    seconds=prov.get("seconds"))
        if rec["status"] != "ok" or not rec["figures"]:
            out.append(base)
            continue
        for f in rec["figures"]:
            out.append({**base, "figure": f["figure"], "point": f["point"], "value": f["value"]})
    return out


def table(sweep: Sweep, store: Store):
    """The tidy table as a pandas DataFrame (columns COLUMNS)."""
    pd = _need_pandas()
    df = pd.DataFrame(rows(sweep, store), columns=COLUMNS)
    df["cache"] = df["cache"].astype("Int64")
    df["threads"] = df["threads"].astype("Int64")
    df["value"] = df["value"].astype("float64")
    df["point"] = df["point"].astype("Int64") if df["point"].map(
        lambda p: p is None or p != p or isinstance(p, int)).all() else df["point"].astype(str)
    return df


def write_table(sweep: Sweep, store: Store, out: pathlib.Path, df=None) -> list[pathlib.Path]:
    """DIR/results.csv and, where pyarrow is installed, DIR/results.parquet (of `df`, the
    table already read, or read here)."""
    df = table(sweep, store) if df is None else df
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    written = [out / "results.csv"]
    write_atomic(written[0], buf.getvalue().encode())
    if importlib.util.find_spec("pyarrow") is None:
        return written
    pbuf = io.BytesIO()
    df.to_parquet(pbuf, index=False)
    written.append(out / "results.parquet")
    write_atomic(written[1], pbuf.getvalue())
    return written


def plot(df, figure: str, path: pathlib.Path, *, title: Optional[str] = None) -> bool:
    """Draws `figure` from the tidy table: for each model, text and measure a panel, in it
    a line per policy template across cache sizes (or, for figures with points such as
    recall by distance, a line per spec across the points). matplotlib; False when the
    table has no such figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = df[(df.figure == figure) & (df.status == "ok")]
    if d.empty:
        return False
    panels = list(d.groupby(["model", "text", "measure"], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, ((model, text, measure), p) in zip(axes[0], panels):
        by_point = p.point.notna().any()
        groups = p.groupby("spec" if by_point else "policy", sort=False)
        for name, g in groups:
            x = g.point if by_point else g.cache
            if x.isna().all():  # a policy without a cache size: a horizontal line
                ax.axhline(g.value.iloc[0], linestyle="--", linewidth=1, label=name,
                           color="grey")
                continue
            g = g.assign(_x=x.astype(float)).sort_values("_x")
            ax.plot(g._x, g.value, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("distance" if by_point else "cache size (slots)")
        ax.set_ylabel(figure)
        ax.set_title(f"{model} · {text} · {measure}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(pathlib.Path(path), buf.getvalue())
    return True
