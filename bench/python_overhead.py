"""Python overhead: spillway.perplexity against `spillway ppl`, same stream, same policy.

    python bench/python_overhead.py [--rounds 5] [--tokens 1024] [--policy sink:4+252]
                                    [--threads 2] [--cli build/bin/spillway]

Alternates, round by round, the CLI (`spillway ppl --json`: the evaluator's own tokens/s,
model loading and tokenization excluded) and spillway.perplexity in this process (tokens/s
from the wall-clock time around the call: id conversion, thread pool, evaluation and the
result's conversion included), and prints the medians and their ratio. Run it with the
package installed (pip install .) and the CLI built.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import tempfile
import time

import spillway

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--file", default="data/austen.txt")
ap.add_argument("--cli", default="build/bin/spillway")
ap.add_argument("--policy", default="sink:4+252")
ap.add_argument("--tokens", type=int, default=1024)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--rounds", type=int, default=5)
args = ap.parse_args()

model = spillway.Model.load(args.model)
ids = model.tokenize(pathlib.Path(args.file).read_text(encoding="utf-8"))[: args.tokens]
cli_tps, py_tps = [], []
with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "ppl.json"
    for i in range(args.rounds):
        subprocess.run(
            [args.cli, "ppl", "--model", args.model, "--file", args.file, "--policy", args.policy,
             "--max-tokens", str(args.tokens), "--threads", str(args.threads), "--json", str(out)],
            check=True, capture_output=True)
        c = json.loads(out.read_text())["policies"][0]
        t0 = time.perf_counter()
        (r,) = spillway.perplexity(model, ids, args.policy, threads=args.threads)
        wall = time.perf_counter() - t0
        assert r.mean_nll == c["mean_nll"], "the two runs must compute the same thing"
        cli_tps.append(c["tokens_per_s"])
        py_tps.append((len(ids) - 1) / wall)
        print(f"round {i + 1}: cli {cli_tps[-1]:.1f} tokens/s, python {py_tps[-1]:.1f} tokens/s")
mc, mp = statistics.median(cli_tps), statistics.median(py_tps)
print(f"median: cli {mc:.1f}, python {mp:.1f} tokens/s; python / cli = {mp / mc:.4f}")
