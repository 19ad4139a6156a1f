#!/usr/bin/env python3
"""Paired perplexity ratios from `spillway ppl --json`: each policy against the first.

Every policy of one `ppl` run scores the same tokens, so the ratio of two perplexities is
exp(mean over tokens of the NLL difference). Neighbouring tokens' differences are
correlated (a cache change moves a whole passage), so the 95 % interval comes from the
means of blocks of --block consecutive tokens (normal approximation over the blocks).

  spillway ppl -f data/austen.txt --max-tokens 4096 --score-from 1024 \\
      --policy sink:4+1020 --policy sink:4+1020,kv=q8_0 --json out.json
  bench/paired-ppl.py out.json [--block 64]
"""
import argparse
import json
import math
import statistics
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('json', help='output of spillway ppl --json')
    ap.add_argument('--block', type=int, default=64, help='tokens per block (default 64)')
    a = ap.parse_args()
    if a.block < 1:
        print('paired-ppl: error: --block must be at least 1', file=sys.stderr)
        return 2
    try:
        with open(a.json) as f:
            pols = json.load(f)['policies']
    except (OSError, ValueError, KeyError) as e:
        print(f'paired-ppl: error: cannot read policies from {a.json}: {e}', file=sys.stderr)
        return 1
    if len(pols) < 2:
        print(f'paired-ppl: error: {a.json} holds {len(pols)} policy; need 2 or more', file=sys.stderr)
        return 1
    base = pols[0]
    print(f"baseline {base['spec']}: ppl {base['ppl']:.4f} over {len(base['nll'])} tokens")
    print(f"{'policy':<34} {'ppl':>9} {'ratio':>8} {'95% interval':>20}  blocks of {a.block}")
    for p in pols[1:]:
        if len(p['nll']) != len(base['nll']) or p.get('first_target') != base.get('first_target'):
            print(f"paired-ppl: error: {p['spec']} scored other tokens than {base['spec']}",
                  file=sys.stderr)
            return 1
        d = [x - y for x, y in zip(p['nll'], base['nll'])]
        blocks = [statistics.fmean(d[i:i + a.block]) for i in range(0, len(d) - a.block + 1, a.block)]
        mean = statistics.fmean(d)
        if len(blocks) >= 2:
            se = statistics.stdev(blocks) / math.sqrt(len(blocks))
            iv = f'[{math.exp(mean - 1.96 * se):.5f}, {math.exp(mean + 1.96 * se):.5f}]'
        else:
            iv = 'n/a (one block)'
        print(f"{p['spec']:<34} {p['ppl']:>9.4f} {math.exp(mean):>8.5f} {iv:>20}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
