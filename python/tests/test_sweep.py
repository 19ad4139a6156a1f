"""spillway.sweep and spillway-sweep: cells and keys, the store, the three ways to run
(this process, a local pool, a local Ray instance) giving the same numbers, retries of
killed workers, failed cells that do not stop a sweep, re-runs that measure nothing."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

import spillway
from spillway import sweep as sw

from conftest import CORPUS, MODEL, ROOT, _need

HERE = pathlib.Path(__file__).resolve().parent
REQUIRE_SWEEP = os.environ.get("SPILLWAY_REQUIRE_SWEEP") == "1"
pd = pytest.importorskip("pandas") if not REQUIRE_SWEEP else __import__("pandas")

# Figures that are timings, not results: they differ between any two runs.
TIMINGS = {"tokens_per_s", "seconds", "pid"}


def _write(tmp: pathlib.Path, body: str, name: str = "sweep.toml") -> pathlib.Path:
    _need(MODEL, "model")
    _need(CORPUS, "corpus")
    path = tmp / name
    path.write_text(f'[models.smol]\npath = "{MODEL}"\n\n[texts.austen]\npath = "{CORPUS}"\n\n'
                    + body)
    return path


SMALL = """
[sweep]
threads = 1

[[grid]]
measure = "ppl"
caches = [32, 48]
policies = ["window:{c}", "sink:4+{c-4}"]
options = { max_tokens = 96, score_from = 48, reference = "full" }

[[grid]]
measure = "recall"
policies = ["sink:4+60"]
options = { distances = [16, 96], seeds = 1, span = 8, lead = 16 }
"""


def _cli(args, *, env_extra=None, check=True, **kw):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    r = subprocess.run([sys.executable, "-m", "spillway.sweep", *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=600, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def _results(out: pathlib.Path):
    df = pd.read_csv(out / "results.csv")
    df = df[~df.figure.isin(TIMINGS)].drop(columns=["seconds", "host"])
    return df.sort_values(["key", "figure", "point"]).reset_index(drop=True)


def test_templates_and_their_errors():
    assert sw.expand_template("sink:4+{c-4}", {"c": 256}, "t") == "sink:4+252"
    assert sw.expand_template("h2o:{c//4}+{c - c//4}", {"c": 256}, "t") == "h2o:64+192"
    assert sw.expand_template("full", {}, "t") == "full"
    assert sw.expand_template("{{c}}", {"c": 1}, "t") == "{c}"
    for bad in ("window:{c", "window:{x}", "window:{__import__('os')}", "window:{c/2}",
                "window:{c//0}", "window:c}"):
        with pytest.raises(sw.SweepError):
            sw.expand_template(bad, {"c": 8}, "t")


def test_cells_keys_and_sweep_file_errors(tmp_path):
    s = sw.load_sweep(_write(tmp_path, SMALL))
    assert [c.spec for c in s.cells] == ["window:32", "window:48", "sink:4+28", "sink:4+44",
                                         "sink:4+60"]
    assert len({c.key for c in s.cells}) == 5
    # The key is what determines the result: the same file elsewhere keys the same, a
    # changed option or kernel family does not.
    again = sw.load_sweep(_write(tmp_path, SMALL, "copy.toml"))
    assert [c.key for c in again.cells] == [c.key for c in s.cells]
    other = sw.load_sweep(_write(tmp_path, SMALL.replace("score_from = 48", "score_from = 47"),
                                 "other.toml"))
    assert other.cells[0].key != s.cells[0].key and other.cells[4].key == s.cells[4].key
    scalar = sw.load_sweep(_write(tmp_path, SMALL, "isa.toml"), isa="scalar")
    assert not {c.key for c in scalar.cells} & {c.key for c in s.cells}
    assert s.cells[0].model.sha256 == sw._spec.file_sha256(MODEL)
    for body, words in [
        ("[[grid]]\nmeasure = 'perplexity'\n", "unknown measure 'perplexity'"),
        ("[[grid]]\noptions = { max_token = 5 }\n", "no option(s) ['max_token']"),
        ("[[grid]]\npolicies = ['window:{c}']\n", "has no caches"),
        ("[[grid]]\nmodels = ['nope']\n", "names 'nope'"),
        ("[[grid]]\ncaches = [0]\npolicies = ['window:{c}']\n", "positive integers"),
        ("[sweep]\nthreads = 0\n[[grid]]\n", "threads must be"),
        ("[[grid]]\nmeasure = 'ppl'\nextra = 1\n", "unknown keys ['extra']"),
        ("[[grid\n", "not TOML"),
        ("[models.x]\npath = 'x.gguf'\nsha256 = 5\n[[grid]]\n", "64 hex digits"),
        ("", "no [[grid]] block"),
    ]:
        with pytest.raises(sw.SweepError, match=pytest.escape(words) if hasattr(pytest, "escape")
                           else None) as e:
            sw.load_sweep(_write(tmp_path, body, "bad.toml"))
        assert words in str(e.value) and "bad.toml" in str(e.value)


def test_a_cell_measures_what_the_library_measures(tmp_path, model):
    s = sw.load_sweep(_write(tmp_path, SMALL))
    rec = sw.run_cell(s.cells[2].to_dict())
    assert rec["status"] == "ok", rec["error"]
    ids = model.tokenize(CORPUS.read_text(encoding="utf-8"))[:96]
    want = spillway.perplexity(model, ids, ["sink:4+28"], score_from=48, reference="full")[0]
    got = {f["figure"]: f["value"] for f in rec["figures"]}
    assert got["ppl"] == want.ppl and got["kl_mean"] == want.kl_mean
    assert rec["arrays"]["nll"] == want.nll.tolist()
    prov = rec["provenance"]
    assert prov["commit"] == spillway.build_info()["commit"] and prov["kernel_isa"]


def test_serial_pool_and_ray_give_the_same_numbers_and_a_rerun_measures_nothing(tmp_path):
    path = _write(tmp_path, SMALL)
    r = _cli([path, "--out", tmp_path / "serial", "--jobs", 1])
    assert "5 cells to run" in r.stderr
    serial = _results(tmp_path / "serial")
    assert set(serial.status) == {"ok"} and len(serial.key.unique()) == 5
    assert (tmp_path / "serial" / "results.parquet").exists() or \
        pytest.importorskip("pyarrow") is None
    _cli([path, "--out", tmp_path / "pool", "--jobs", 2])
    pd.testing.assert_frame_equal(serial, _results(tmp_path / "pool"))
    if not REQUIRE_SWEEP:
        pytest.importorskip("ray")
    _cli([path, "--out", tmp_path / "ray", "--ray", "local", "--jobs", 2])
    ray_df = _results(tmp_path / "ray")
    pd.testing.assert_frame_equal(serial, ray_df)
    # Re-runs: nothing to measure, the table the same, the records untouched.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "pool" / "cells").iterdir()}
    r = _cli([path, "--out", tmp_path / "pool", "--jobs", 2])
    assert "0 cells to run" in r.stderr
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "pool" / "cells").iterdir()}
    pd.testing.assert_frame_equal(serial, _results(tmp_path / "pool"))
    # A grown sweep measures only the new cells.
    grown = _write(tmp_path, SMALL.replace("caches = [32, 48]", "caches = [32, 48, 64]"),
                   "grown.toml")
    assert "2 cells to run" in _cli([grown, "--out", tmp_path / "pool"]).stderr


CRASH = """
[sweep]
max_retries = 2

[[grid]]
measure = "python:sweep_measures:crash_once"
policies = ["window:32"]
options = {{ marker = "{marker}", max_tokens = 40 }}

[[grid]]
measure = "ppl"
policies = ["window:32", "window:{{c}}"]
caches = [16]
options = {{ max_tokens = 64 }}

[[grid]]
measure = "ppl"
policies = ["window:0", "nosuch:8"]
options = {{ max_tokens = 64 }}

[[grid]]
measure = "python:sweep_measures:fails"
policies = ["full"]
"""


@pytest.mark.parametrize("how", ["pool", "ray"])
def test_killed_workers_are_retried_and_failed_cells_do_not_stop_the_sweep(tmp_path, how):
    if how == "ray" and not REQUIRE_SWEEP:
        pytest.importorskip("ray")
    marker = tmp_path / "crashed"
    path = _write(tmp_path, CRASH.format(marker=marker))
    args = [path, "--out", tmp_path / "out", "--jobs", 2] + (["--ray", "local"]
                                                              if how == "ray" else [])
    r = _cli(args, check=False)
    assert r.returncode == 1, r.stderr  # failed cells: exit 1, after every cell ran
    assert "6 cells to run" in r.stderr
    assert marker.exists()  # the first attempt did kill its worker
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    by_spec = df.groupby(["spec", "measure"]).status.first()
    assert by_spec[("window:32", "python:sweep_measures:crash_once")] == "ok"
    crashed_pid = int(marker.read_text())
    row = df[(df.measure == "python:sweep_measures:crash_once") & (df.figure == "pid")]
    assert int(row.value.iloc[0]) != crashed_pid  # measured by another process
    assert by_spec[("window:32", "ppl")] == "ok" and by_spec[("window:16", "ppl")] == "ok"
    assert by_spec[("window:0", "ppl")] == "failed"
    assert by_spec[("nosuch:8", "ppl")] == "failed"
    assert by_spec[("full", "python:sweep_measures:fails")] == "failed"
    errors = df[df.status == "failed"].set_index("spec").error
    assert "nosuch" in errors["nosuch:8"]
    assert "always fails" in errors["full"]
    # A re-run keeps the failed cells (their failure is the cell's own) unless asked.
    r = _cli(args, check=False)
    assert "0 cells to run (3 failed cells kept" in r.stderr
    assert r.returncode == 1  # the table still holds failed cells
    r = _cli(args + ["--retry-failed"], check=False)
    assert "3 cells to run" in r.stderr and r.returncode == 1


def test_two_missing_texts_are_two_cells(tmp_path):
    _need(MODEL, "model")
    path = tmp_path / "s.toml"
    path.write_text(f'[models.m]\npath = "{MODEL}"\n[texts.a]\npath = "a.txt"\n'
                    '[texts.b]\npath = "b.txt"\n[[grid]]\npolicies = ["window:16"]\n')
    cells = sw.load_sweep(path).cells
    assert len(cells) == 2 and cells[0].key != cells[1].key
    (tmp_path / "a.txt").write_text("Some text.")
    assert sw.load_sweep(path).cells[0].key != cells[0].key  # it exists now: a new cell


def test_a_missing_file_fails_its_cells_and_a_wrong_sha256_too(tmp_path):
    _need(MODEL, "model")
    path = tmp_path / "s.toml"
    path.write_text(f'[models.gone]\npath = "{tmp_path}/gone.gguf"\n'
                    f'[models.wrong]\npath = "{MODEL}"\nsha256 = "{"0" * 64}"\n'
                    f'[models.smol]\npath = "{MODEL}"\n'
                    f'[texts.austen]\npath = "{CORPUS}"\n'
                    '[[grid]]\nmeasure = "ppl"\npolicies = ["window:16"]\n'
                    'options = { max_tokens = 40 }\n')
    r = _cli([path, "--out", tmp_path / "out", "--jobs", 1], check=False)
    assert r.returncode == 1
    df = pd.read_csv(tmp_path / "out" / "results.csv").groupby("model").first()
    assert df.status.to_dict() == {"gone": "failed", "wrong": "failed", "smol": "ok"}
    assert "gone.gguf" in df.error["gone"] and "keyed for 000" in df.error["wrong"]


def test_ctrl_c_keeps_finished_cells(tmp_path):
    _need(MODEL, "model")
    path = _write(tmp_path, "[[grid]]\nmeasure = 'ppl'\ncaches = [16, 24, 32, 40, 48, 56]\n"
                            "policies = ['recompute:{c}']\noptions = { max_tokens = 400 }\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    # A shell's background job starts with SIGINT ignored, and Python then keeps ignoring
    # it; the sweep is a foreground command, so give it the default disposition.
    p = subprocess.Popen([sys.executable, "-m", "spillway.sweep", str(path), "--out",
                          str(tmp_path / "out"), "--jobs", "2"], env=env,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    cells = tmp_path / "out" / "cells"
    deadline = time.time() + 300
    while time.time() < deadline and not (cells.exists() and any(cells.glob("*.json"))):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    t0 = time.time()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert time.time() - t0 < 30  # workers stopped, not waited for
    kept = len(list(cells.glob("*.json")))
    assert 1 <= kept < 6 and "stopped" in err
    assert not list(cells.glob(".*.tmp"))
    r = _cli([path, "--out", tmp_path / "out", "--list"])
    assert r.stdout.count(" ok ") == kept and r.stdout.count("missing") == 6 - kept


def test_results_find_cells_and_the_cli_measures_the_same_bits(tmp_path, cli):
    path = _write(tmp_path, SMALL)
    store = tmp_path / "out"
    res = sw.Results(path, store)
    with pytest.raises(KeyError, match="not in the store"):
        res.series("sink:4+28")
    _cli([path, "--out", store, "--jobs", 1])
    res = sw.Results(path, store)
    s = res.series("sink:4+28", text="austen")
    assert s.first == 48 and len(s.nll) == 96 - 48
    assert s.ppl(48, 96) == pytest.approx(res.figure("ppl", "sink:4+28"), rel=1e-6)
    with pytest.raises(KeyError, match="4 cells"):  # ambiguous: every ppl cell matches
        res.record(measure="ppl", text="austen")
    with pytest.raises(KeyError, match="0 cells"):
        res.record("window:33")
    assert res.provenance()["commit"] == [spillway.build_info()["commit"]]
    # The command renderers list for a cell measures the same bits.
    line = next(c for c in res.commands() if c.endswith("-p sink:4+28"))
    args = line.split(": ", 1)[1].split()[2:]
    out = tmp_path / "cli.json"
    subprocess.run([str(cli), "ppl", *args, "--json", str(out)], check=True,
                   capture_output=True, cwd=os.getcwd())
    got = json.loads(out.read_text())["policies"][0]
    assert got["nll"] == s.nll and got["first_target"] == s.first


def test_the_example_sweeps_expand_and_the_smoke_sweep_runs(tmp_path):
    _need(MODEL, "model")
    examples = ROOT / "examples/sweeps"
    counts = {p.stem: len(sw.load_sweep(p).cells) for p in sorted(examples.glob("*.toml"))}
    assert counts == {"results": 23, "results-gemma": 22, "results-policies": 28, "smoke": 7}
    r = _cli([examples / "smoke.toml", "--out", tmp_path / "smoke", "--plot", "ppl", "--plot",
              "recall", "--plot", "nothing"])
    assert "7 cells to run" in r.stderr and "no figure 'nothing'" in r.stderr
    for png in ("ppl.png", "recall.png"):
        assert (tmp_path / "smoke" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    df = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert set(df.status) == {"ok"}
    ppl = df[df.figure == "ppl"].set_index("spec").value
    assert ppl["sink:4+60"] < ppl["window:64"]  # the mechanism, at a glance


def test_the_cli_forwards_spillway_sweep(tmp_path, cli):
    path = _write(tmp_path, SMALL)
    env = dict(os.environ, SPILLWAY_PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([str(cli), "sweep", str(path), "--out", str(tmp_path / "out"), "--list"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("missing") == 5 and "sink:4+28" in r.stdout
    r = subprocess.run([str(cli), "sweep", "--help"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "usage: spillway-sweep" in r.stdout
    env["SPILLWAY_PYTHON"] = str(tmp_path / "no-python")
    r = subprocess.run([str(cli), "sweep", str(path), "--out", str(tmp_path / "out")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "cannot run" in r.stderr and "SPILLWAY_PYTHON" in r.stderr


def test_a_model_replaced_at_its_path_is_loaded_again(tmp_path):
    gemma = ROOT / "models/gemma-3-270m-q4_k_m.gguf"
    _need(MODEL, "model")
    _need(gemma, "Gemma 3 model")
    path = tmp_path / "model.gguf"
    sweep = ('[models.m]\npath = "model.gguf"\n[texts.t]\npath = "' + str(CORPUS) + '"\n'
             '[[grid]]\npolicies = ["window:16"]\noptions = { max_tokens = 40 }\n')
    (tmp_path / "s.toml").write_text(sweep)
    got = []
    for src in (MODEL, gemma):  # the same path, another file: a long-lived worker's cache
        shutil.copyfile(src, path)  # (a symlink would resolve to another path)
        cell = sw.load_sweep(tmp_path / "s.toml").cells[0]
        rec = sw.run_cell(cell.to_dict())
        assert rec["status"] == "ok", rec["error"]
        got.append(rec["arrays"]["nll"])
    gem = spillway.Model.load(gemma)
    ids = gem.tokenize(CORPUS.read_text(encoding="utf-8"))[:40]
    assert got[1] == spillway.perplexity(gem, ids, ["window:16"])[0].nll.tolist()
    assert got[0] != got[1]
