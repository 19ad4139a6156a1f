#!/usr/bin/env bash
# Regenerates every table and plot of docs/results.md (StreamingLLM's experiments
# on the default SmolLM2-135M model) with `spillway ppl`, and prints the tables.
#
#   scripts/make-results.sh            run everything (about 40 minutes on 2 cores)
#   RESUME=1 scripts/make-results.sh   keep runs whose raw JSON already exists
#   SKIP_RUNS=1 scripts/make-results.sh  only rebuild tables and plots from raw JSON
#   ONLY='a-full|bcd' scripts/make-results.sh  only these runs (names as in
#       docs/results/commands.txt), no tables; e.g. to run parts in parallel
#
# Environment: SPILLWAY (binary, default build/bin/spillway), THREADS (default 2),
# RAW (per-token outputs, default build/results-raw; not committed), MODEL.
# Writes docs/results/: commands.txt, summary.json, tables.md and the PNG plots.
set -euo pipefail
cd "$(dirname "$0")/.."

SPILLWAY=${SPILLWAY:-build/bin/spillway}
THREADS=${THREADS:-2}
RAW=${RAW:-build/results-raw}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=docs/results
AUSTEN=data/austen.txt

# Experiment sizes (tokens). See docs/results.md for why these.
kLongStream=20000      # (a) window / sink over the long stream
kFullStream=9216       # (a) full: past the trained context of 8192, not to 20K (cost grows)
kRecFrom=19000         # (a) recompute scored on [kRecFrom, kRecFrom + kRecTokens)
kRecTokens=16
kShortStream=3072      # (b)-(f) streams
kOtherRecTokens=16     # (f) recompute scored on the last kOtherRecTokens of the short stream

if [[ ${SKIP_RUNS:-0} != 1 ]]; then
  [[ -x $SPILLWAY ]] || { echo "make-results.sh: no binary at $SPILLWAY (build spillway_cli or set SPILLWAY)" >&2; exit 1; }
  for f in "$MODEL" "$AUSTEN"; do
    [[ -f $f ]] || { echo "make-results.sh: missing $f (run scripts/setup.sh)" >&2; exit 1; }
  done
fi
scripts/make-other-texts.sh
mkdir -p "$RAW" "$OUT"

# run NAME ARGS...: one `spillway ppl` run writing $RAW/NAME.json; its command goes
# to $OUT/commands.txt.
declare -a kCommands=()
run() {
  local name=$1
  shift
  local -a cmd=("$SPILLWAY" ppl -m "$MODEL" -t "$THREADS" "$@" --json "$RAW/$name.json")
  local shown
  shown=$(printf '%q ' spillway ppl -t "$THREADS" "$@")
  shown=${shown//\\,/,}
  kCommands+=("$name: ${shown% }")
  if [[ ${SKIP_RUNS:-0} == 1 ]]; then return; fi
  if [[ -n ${ONLY:-} && ! $name =~ ^(${ONLY})$ ]]; then return; fi
  if [[ ${RESUME:-0} == 1 && -s $RAW/$name.json ]]; then
    echo "== $name: kept $RAW/$name.json"
    return
  fi
  echo "== $name: ${shown% }"
  local t0=$SECONDS
  "${cmd[@]}"
  echo "== $name: $((SECONDS - t0)) s"
}

# (a) Austen, past the trained context.
run a-stream -f "$AUSTEN" --max-tokens $kLongStream -p window:1024 -p sink:4+1020
run a-recompute -f "$AUSTEN" --max-tokens $((kRecFrom + kRecTokens)) --score-from $kRecFrom \
  -p recompute:1024
run a-full -f "$AUSTEN" --max-tokens $kFullStream -p full
# (f) Other texts: the same comparison on a short stream.
for t in licenses python; do
  run f-$t-stream -f data/other-$t.txt --max-tokens $kShortStream -p window:1024 -p sink:4+1020 -p full
  run f-$t-recompute -f data/other-$t.txt --max-tokens $kShortStream \
    --score-from $((kShortStream - kOtherRecTokens)) -p recompute:1024
done
# (b) number of sinks, (c) cache size, (d) positions, on the first kShortStream tokens.
# S=0 (window:1024) and S=4 (sink:4+1020) come from a-stream: a token's NLL depends only
# on the tokens before it, so the first kShortStream tokens of a-stream are this stream.
run b-sinks -f "$AUSTEN" --max-tokens $kShortStream -p sink:1+1023 -p sink:2+1022 -p sink:8+1016
run c-cache -f "$AUSTEN" --max-tokens $kShortStream \
  -p sink:4+252 -p window:256 -p sink:4+508 -p window:512 -p sink:4+2044 -p window:2048
run d-positions -f "$AUSTEN" --max-tokens $kShortStream -p sink:4+1020,positions=absolute
# (e) what the sinks hold: the first four tokens replaced by four newline tokens. In this
# BPE a run of newlines is one token ("\n\n\n\n" is token 22342), and no text encodes to
# four single "\n" (198) tokens, so sixteen newlines give four "\n\n\n\n" tokens.
run e-newlines -f "$AUSTEN" --max-tokens $kShortStream \
  --replace-head $'\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n' -p sink:4+1020

if [[ -n ${ONLY:-} ]]; then
  echo "make-results.sh: ran only '$ONLY'; run without ONLY (RESUME=1 or SKIP_RUNS=1) for the tables"
  exit 0
fi
printf '%s\n' "${kCommands[@]}" >"$OUT/commands.txt"

export RAW OUT kLongStream kFullStream kRecFrom kRecTokens kShortStream kOtherRecTokens
# Tables (python3 stdlib) and plots (scripts/plot-ppl.py) from the raw JSON.
THREADS=$THREADS python3 - <<'PY'
import csv, json, math, os, subprocess, sys

raw, out = os.environ["RAW"], os.environ["OUT"]
kLong = int(os.environ["kLongStream"])
kFull = int(os.environ["kFullStream"])
kRecFrom = int(os.environ["kRecFrom"])
kRecTokens = int(os.environ["kRecTokens"])
kShort = int(os.environ["kShortStream"])
kOtherRec = int(os.environ["kOtherRecTokens"])
kCtx = 8192
plot_script = os.path.join("scripts", "plot-ppl.py")

commands = {}
with open(os.path.join(out, "commands.txt")) as f:
    for line in f:
        name, _, cmd = line.rstrip("\n").partition(": ")
        commands[name] = cmd


all_series = []


class Series:
    def __init__(self, p, run):
        self.spec = p["spec"]
        self.first = p["first_target"]
        self.nll = p["nll"]
        self.tokens_per_s = p["tokens_per_s"]
        self.seconds = p["seconds"]
        self.run = run

    def covers(self, lo, hi):
        return self.first <= lo and hi <= self.first + len(self.nll)

    def mean_nll(self, lo, hi):
        if not self.covers(lo, hi):
            return None
        xs = self.nll[lo - self.first : hi - self.first]
        return sum(xs) / len(xs)

    def ppl(self, lo, hi):
        m = self.mean_nll(lo, hi)
        return None if m is None else math.exp(m)


def load(name):
    path = os.path.join(raw, name + ".json")
    try:
        with open(path) as f:
            j = json.load(f)
    except OSError as e:
        sys.exit("make-results.sh: cannot read %s: %s (run without SKIP_RUNS)" % (path, e.strerror))
    d = {p["spec"]: Series(p, name) for p in j["policies"]}
    all_series.extend(d.values())
    return d


a = load("a-stream")
a.update(load("a-recompute"))
a.update(load("a-full"))
bcd = load("b-sinks")
bcd.update(load("c-cache"))
bcd.update(load("d-positions"))
e = load("e-newlines")
other = {}
for t in ("licenses", "python"):
    other[t] = load("f-%s-stream" % t)
    other[t].update(load("f-%s-recompute" % t))

W, S, F, R = "window:1024", "sink:4+1020", "full", "recompute:1024"
summary = {"sizes": {"long_stream": kLong, "full_stream": kFull, "recompute_from": kRecFrom,
                     "recompute_tokens": kRecTokens, "short_stream": kShort,
                     "other_recompute_tokens": kOtherRec},
           "commands": commands, "tables": {}}
md = []


def fmt(x, digits=2):
    return "—" if x is None else ("%.*f" % (digits, x))


def rng(lo, hi):
    return "%s..%s" % (format(lo, ","), format(hi - 1, ","))


def table(key, title, cmds, header, rows, note=None):
    summary["tables"][key] = {"title": title, "header": header, "rows": rows}
    md.append("### %s\n" % title)
    if cmds:
        md.append("```\n" + "\n".join("$ " + commands[c] for c in cmds) + "\n```\n")
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "---|" * len(header))
    for r in rows:
        md.append("| " + " | ".join(r) + " |")
    if note:
        md.append("\n" + note)
    md.append("")


def paired(s, r, lo, hi):
    """Mean per-token NLL difference s - r on [lo, hi) and its standard error."""
    if not (s.covers(lo, hi) and r.covers(lo, hi)):
        return "—"
    d = [s.nll[i - s.first] - r.nll[i - r.first] for i in range(lo, hi)]
    m = sum(d) / len(d)
    var = sum((x - m) ** 2 for x in d) / (len(d) - 1) if len(d) > 1 else 0.0
    return "%+.4f ± %.4f" % (m, math.sqrt(var / len(d)))


def pct(x, y):
    return None if x is None or y is None else 100.0 * (x / y - 1.0)


# (a) long stream.
ranges = [(1024, kCtx), (kCtx, kFull), (kFull, kLong), (1024, kLong)]
rows = []
for spec in (W, S, F):
    s = a[spec]
    rows.append([spec] + [fmt(s.ppl(lo, hi)) for lo, hi in ranges] + [fmt(s.tokens_per_s, 1)])
rows.append(["window / sink"] + [fmt(None if a[W].ppl(lo, hi) is None or a[S].ppl(lo, hi) is None
                                     else a[W].ppl(lo, hi) / a[S].ppl(lo, hi)) for lo, hi in ranges] + [""])
table("a", "(a) Austen: perplexity by token range (targets, 0-based stream index)",
      ["a-stream", "a-full"], ["policy"] + [rng(lo, hi) for lo, hi in ranges] + ["tokens/s"], rows,
      "`full` runs %s tokens (its attention cost grows with the span); its cells past that are empty." % format(kFull, ","))

lo, hi = kRecFrom, kRecFrom + kRecTokens
rec = a[R].ppl(lo, hi)
rows = []
for spec in (R, S, W):
    p = a[spec].ppl(lo, hi)
    rows.append([spec, fmt(p, 3), fmt(a[spec].mean_nll(lo, hi), 4),
                 "" if spec == R else fmt(pct(p, rec), 1) + " %",
                 "" if spec == R else paired(a[spec], a[R], lo, hi)])
table("a_recompute", "(a) Austen: paired comparison with the recompute oracle on targets %s" % rng(lo, hi),
      ["a-stream", "a-recompute"], ["policy", "perplexity", "mean NLL", "vs recompute:1024", "per-token NLL − recompute's (mean ± s.e.)"], rows)

# (b) sinks.
lo, hi = 1024, kShort
b_rows = []
for n_sink, spec, src in ((0, W, a), (1, "sink:1+1023", bcd), (2, "sink:2+1022", bcd), (4, S, a), (8, "sink:8+1016", bcd)):
    b_rows.append([str(n_sink), spec, fmt(src[spec].ppl(lo, hi))])
table("b", "(b) Number of sinks at a total cache of 1024, Austen targets %s" % rng(lo, hi),
      ["b-sinks", "a-stream"], ["sinks S", "policy", "perplexity"], b_rows)

# (c) cache size.
lo, hi = 2048, kShort
rows = []
for n in (256, 512, 1024, 2048):
    sk, wn = "sink:4+%d" % (n - 4), "window:%d" % n
    src = a if n == 1024 else bcd
    ps, pw = src[sk].ppl(lo, hi), src[wn].ppl(lo, hi)
    rows.append([str(n), fmt(ps), fmt(pw), fmt(None if ps is None or pw is None else pw / ps)])
table("c", "(c) Cache size, Austen targets %s (past every cache)" % rng(lo, hi),
      ["c-cache", "a-stream"], ["cache", "sink:4+(cache-4)", "window:cache", "window / sink"], rows)

# (d) positions.
lo, hi = 1024, kShort
abs_spec = [k for k in bcd if k.startswith("sink:4+1020") and "absolute" in k][0]
rows = [["cache (StreamingLLM)", S, fmt(a[S].ppl(lo, hi))],
        ["absolute (stream index)", abs_spec, fmt(bcd[abs_spec].ppl(lo, hi))]]
table("d", "(d) RoPE positions of sink:4+1020, Austen targets %s" % rng(lo, hi),
      ["d-positions", "a-stream"], ["positions", "policy", "perplexity"], rows)

# (e) sink content.
rows = [["none (window:1024)", fmt(a[W].ppl(lo, hi))],
        ["the text's first 4 tokens", fmt(a[S].ppl(lo, hi))],
        ['4 newline tokens ("\\n\\n\\n\\n" ×4)', fmt(e[S].ppl(lo, hi))]]
table("e", "(e) What the 4 sinks hold, sink:4+1020, Austen targets %s" % rng(lo, hi),
      ["e-newlines", "a-stream"], ["sink tokens", "perplexity"], rows)

# (f) other texts.
rows = []
for t in ("licenses", "python"):
    o = other[t]
    lo, hi = 1024, kShort
    rlo, rhi = kShort - kOtherRec, kShort
    pr = o[R].ppl(rlo, rhi)
    rows.append([t, fmt(o[W].ppl(lo, hi)), fmt(o[S].ppl(lo, hi)), fmt(o[F].ppl(lo, hi)),
                 fmt(o[W].ppl(lo, hi) / o[S].ppl(lo, hi)),
                 fmt(pr, 3), fmt(o[S].ppl(rlo, rhi), 3), fmt(o[W].ppl(rlo, rhi), 3), fmt(o[F].ppl(rlo, rhi), 3),
                 fmt(pct(o[S].ppl(rlo, rhi), pr), 1) + " %", paired(o[S], o[R], rlo, rhi)])
table("f", "(f) Other texts: targets %s, and the recompute oracle on targets %s" % (rng(1024, kShort), rng(kShort - kOtherRec, kShort)),
      ["f-licenses-stream", "f-licenses-recompute", "f-python-stream", "f-python-recompute"],
      ["text", "window:1024", "sink:4+1020", "full", "window / sink",
       "recompute (sub)", "sink (sub)", "window (sub)", "full (sub)", "sink vs recompute",
       "sink − recompute NLL/token"], rows)

# The issue's criteria, as measured.
crit = []
ratio = a[W].ppl(1024, kLong) / a[S].ppl(1024, kLong)
crit.append(["Austen: window:1024 / sink:4+1020 past token 1,024", fmt(ratio) + "×"])
crit.append(["Austen: sink:4+1020 vs recompute:1024, targets %s" % rng(kRecFrom, kRecFrom + kRecTokens),
             fmt(pct(a[S].ppl(kRecFrom, kRecFrom + kRecTokens), rec), 1) + " %"])
for t in ("licenses", "python"):
    o = other[t]
    crit.append(["%s: window:1024 / sink:4+1020 past token 1,024" % t,
                 fmt(o[W].ppl(1024, kShort) / o[S].ppl(1024, kShort)) + "×"])
    crit.append(["%s: sink:4+1020 vs recompute:1024, targets %s" % (t, rng(kShort - kOtherRec, kShort)),
                 fmt(pct(o[S].ppl(kShort - kOtherRec, kShort), o[R].ppl(kShort - kOtherRec, kShort)), 1) + " %"])
summary["tables"]["criteria"] = {"rows": crit}
md.append("### The issue's criteria, as measured\n")
md.append("| quantity | value |\n|---|---|")
for r in crit:
    md.append("| %s | %s |" % tuple(r))
md.append("")

# Timing.
rows = [[s.run, s.spec, str(len(s.nll)), fmt(s.seconds, 0), fmt(s.tokens_per_s, 1),
         fmt(s.seconds / len(s.nll), 2)] for s in all_series]
table("timing", "Run times (%s threads, shared CPU)" % os.environ.get("THREADS", "2"),
      [], ["run", "policy", "scored", "seconds", "stream tokens / s", "s / scored token"], rows,
      "Stream tokens / s counts every token of the stream, also those before --score-from "
      "(which replaying policies skip), so for recompute read the last column.")

with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
    f.write("\n")
with open(os.path.join(out, "tables.md"), "w") as f:
    f.write("\n".join(md) + "\n")
print("\n".join(md))


def write_csv(path, cols):
    """cols: list of (label, Series, lo, hi)."""
    idx = sorted({i for _, s, lo, hi in cols for i in range(max(lo, s.first), min(hi, s.first + len(s.nll)))})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["token"] + [c[0] for c in cols])
        for i in idx:
            row = [i]
            for _, s, lo, hi in cols:
                k = i - s.first
                row.append("%.6f" % s.nll[k] if lo <= i < hi and 0 <= k < len(s.nll) else "")
            w.writerow(row)


def plot(name, cols, title, extra=()):
    c = os.path.join(raw, name + ".csv")
    write_csv(c, cols)
    subprocess.run([sys.executable, plot_script, c, os.path.join(out, name + ".png"), "--title", title] + list(extra),
                   check=True)


big = 10**9
plot("austen-stream", [(W, a[W], 0, big), (S, a[S], 0, big), (F, a[F], 0, big)],
     "SmolLM2-135M on Austen: %s tokens" % format(kLong, ","))
plot("austen-recompute", [(R, a[R], 0, big), (S, a[S], kRecFrom, kRecFrom + kRecTokens),
                          (W, a[W], kRecFrom, kRecFrom + kRecTokens)],
     "Austen targets %s, sliding mean of 8" % rng(kRecFrom, kRecFrom + kRecTokens), ["--window", "8"])
plot("austen-sinks", [("%s" % r[1], (a if r[1] in (W, S) else bcd)[r[1]], 0, kShort) for r in b_rows],
     "Number of sinks at a cache of 1024 (Austen)", ["--from", "768"])
plot("austen-cache", [(sp, (a if "1024" in sp or "1020" in sp else bcd)[sp], 0, kShort)
                      for n in (256, 512, 1024, 2048) for sp in ("sink:4+%d" % (n - 4), "window:%d" % n)],
     "Cache size: sink:4+(C-4) vs window:C (Austen)", ["--from", "200"])
plot("austen-positions-head", [(W, a[W], 0, kShort), (S, a[S], 0, kShort), (abs_spec, bcd[abs_spec], 0, kShort),
                               ("sink:4+1020, 4 newline tokens as sinks", e[S], 0, kShort)],
     "Sink positions and content, cache 1024 (Austen)", ["--from", "768"])
for t in ("licenses", "python"):
    o = other[t]
    plot("other-" + t, [(W, o[W], 0, big), (S, o[S], 0, big), (F, o[F], 0, big)],
         "SmolLM2-135M on other-%s.txt: %s tokens" % (t, format(kShort, ",")))
print("wrote %s/summary.json, %s/tables.md and the plots" % (out, out))
PY
