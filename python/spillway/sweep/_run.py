"""Running the cells a store lacks: in this process, in a local process pool, or as Ray
tasks. Records are written by the driver as they arrive, so a stop at any point keeps
every finished cell and a re-run measures only the rest."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TextIO

from ._cell import run_cell
from ._spec import Cell, Sweep
from ._store import Store


@dataclass
class Outcome:
    """What a run did: cells measured (ok, failed), kept from the store, left unrun."""
    to_run: int = 0
    ok: int = 0
    failed: int = 0
    kept: int = 0
    left: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    cell_seconds: list[float] = field(default_factory=list)


class Progress:
    """One line per finished cell: a bar, done/total, the cell, its time and the ETA."""

    def __init__(self, total: int, out: TextIO = sys.stderr):
        self.total, self.out = total, out
        self.done, self.t0 = 0, time.time()

    def __call__(self, cell: Cell, record: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.time() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        width = 20
        fill = round(width * self.done / self.total) if self.total else width
        secs = record.get("provenance", {}).get("seconds", 0.0)
        status = "ok" if record["status"] == "ok" else f"FAILED ({record['error']})"
        print(f"[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
              f"{cell.label()}: {status}, {secs:.1f} s; elapsed {_hms(elapsed)}, "
              f"ETA {_hms(eta)}", file=self.out, flush=True)


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


def _lost(cell: Cell, why: str) -> dict[str, Any]:
    return {"key": cell.key, "cell": cell.to_dict(), "status": "failed", "error": why,
            "figures": [], "arrays": {}, "provenance": {}}


def _run_serial(cells: list[Cell], done: Callable, **_) -> None:
    for cell in cells:
        done(cell, run_cell(cell.to_dict()))


def _pool_init() -> None:
    # The driver handles Ctrl-C (it stops the workers); a worker does not die of it
    # half-way through writing a pipe message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_pool(pool: cf.ProcessPoolExecutor) -> None:
    # A cell's forward passes run in C++ without returning to Python for seconds; stopping
    # the sweep must not wait for them. ProcessPoolExecutor has no public way to kill its
    # workers, so they are signalled directly.
    for p in list(getattr(pool, "_processes", {}).values()):
        try:
            p.kill()
        except (OSError, AttributeError):
            pass
    pool.shutdown(wait=True, cancel_futures=True)


def _run_pool(cells: list[Cell], done: Callable, jobs: int, max_retries: int, **_) -> None:
    """At most `jobs` cells in flight, each in a worker process (spawned: no fork of a
    threaded process). A worker that dies (killed, out of memory) breaks the pool: the cells
    it may have held go back to the queue, up to max_retries times each, in a new pool."""
    queue = collections.deque(cells)
    attempts: dict[str, int] = collections.Counter()
    ctx = multiprocessing.get_context("spawn")

    def lost_worker(cell: Cell) -> None:
        attempts[cell.key] += 1
        if attempts[cell.key] > max_retries:
            done(cell, _lost(cell, f"the worker process running it died "
                                   f"{attempts[cell.key]} times"))
        else:
            queue.appendleft(cell)

    while queue:
        pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_pool_init)
        flight: dict[cf.Future, Cell] = {}
        broken = False
        try:
            while queue or flight:
                while queue and len(flight) < jobs and not broken:
                    cell = queue.popleft()
                    try:
                        flight[pool.submit(run_cell, cell.to_dict())] = cell
                    except BrokenProcessPool:
                        queue.appendleft(cell)
                        broken = True
                if not flight:
                    break
                finished, _ = cf.wait(flight, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    cell = flight.pop(fut)
                    try:
                        record = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        lost_worker(cell)
                        continue
                    except Exception as e:  # raised past run_cell: the record cannot travel
                        record = _lost(cell, f"{type(e).__name__}: {e}")
                    done(cell, record)
                if broken:
                    # Every cell still in flight was in the broken pool.
                    for fut, cell in list(flight.items()):
                        flight.pop(fut)
                        lost_worker(cell)
                    break
        except BaseException:
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True)


def _run_ray(cells: list[Cell], done: Callable, ray_address: str, max_retries: int,
             threads: int, isa: str, jobs: int, **_) -> None:
    """Each cell a Ray task declaring `threads` CPUs; Ray retries a task whose worker died
    (max_retries). Records come back to the driver, which writes them: the nodes need the
    models and texts at the same paths (checked by sha256), not a shared store."""
    try:
        import ray
    except ImportError:
        raise SystemExit("spillway-sweep: --ray needs Ray: pip install 'spillway[sweep]'") \
            from None
    env = {"SPILLWAY_ISA": isa}
    started_here = ray_address == "local"
    runtime_env = {"env_vars": env}
    if started_here:
        # A local instance for this sweep only: the CPUs it may use, no dashboard.
        ray.init(num_cpus=max(jobs, 1) * threads, include_dashboard=False,
                 runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(address=ray_address, runtime_env=runtime_env, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=threads, max_retries=max_retries,
                          retry_exceptions=False)(run_cell)
        refs = {task.remote(cell.to_dict()): cell for cell in cells}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    cell = refs.pop(ref)
                    try:
                        record = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                        record = _lost(cell, f"{type(e).__name__} after {max_retries} "
                                             f"retries: {first}")
                    done(cell, record)
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started_here:
            ray.shutdown()


def run_sweep(sweep: Sweep, store: Store, *, jobs: int = 1, ray_address: Optional[str] = None,
              retry_failed: bool = False, out: TextIO = sys.stderr) -> Outcome:
    """Measures the cells of `sweep` that `store` lacks (and the failed ones with
    retry_failed) and stores each record as it arrives. jobs: cells at once on this
    machine (1 without Ray: in this process). Ctrl-C stops it; finished cells stay."""
    t0 = time.time()
    outcome = Outcome()
    todo = []
    failed_kept = 0
    for cell in sweep.cells:
        rec = store.get(cell.key)
        if rec is None or (retry_failed and rec["status"] != "ok"):
            todo.append(cell)
        else:
            outcome.kept += 1
            failed_kept += rec["status"] != "ok"
    outcome.to_run = len(todo)
    note = f" ({failed_kept} failed cells kept: --retry-failed runs them again)" \
        if failed_kept else ""
    print(f"{len(todo)} cells to run{note}", file=out, flush=True)
    if not todo:
        outcome.seconds = time.time() - t0
        return outcome
    progress = Progress(len(todo), out)

    def done(cell: Cell, record: dict[str, Any]) -> None:
        store.put(record)
        if record["status"] == "ok":
            outcome.ok += 1
        else:
            outcome.failed += 1
        outcome.cell_seconds.append(record.get("provenance", {}).get("seconds", 0.0))
        progress(cell, record)

    old_isa = os.environ.get("SPILLWAY_ISA")
    os.environ["SPILLWAY_ISA"] = sweep.isa  # pool workers inherit it
    try:
        if ray_address:
            _run_ray(todo, done, ray_address=ray_address, max_retries=sweep.max_retries,
                     threads=sweep.threads, isa=sweep.isa, jobs=jobs)
        elif jobs > 1:
            _run_pool(todo, done, jobs=jobs, max_retries=sweep.max_retries)
        else:
            _run_serial(todo, done)
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        if old_isa is None:
            os.environ.pop("SPILLWAY_ISA", None)
        else:
            os.environ["SPILLWAY_ISA"] = old_isa
    outcome.left = outcome.to_run - outcome.ok - outcome.failed
    outcome.seconds = time.time() - t0
    return outcome
