#!/usr/bin/env bash
# spillway inspect: tables and JSON on a GGUF file, and exit status 1 with an "error:"
# line (never a crash) on truncated, garbled and random files.
# Usage: inspect.sh SPILLWAY_BINARY SOURCE_DIR
set -u
BIN=$1
SRC=$2
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# A small valid GGUF file written here, so the test runs without the real model.
python3 - "$TMP/small.gguf" <<'EOF'
import struct, sys

def s(x):
    b = x.encode()
    return struct.pack('<Q', len(b)) + b

kvs = [
    (s('general.architecture'), 8, s('llama')),
    (s('general.name'), 8, s('tiny')),
    (s('llama.block_count'), 4, struct.pack('<I', 2)),
    (s('llama.embedding_length'), 4, struct.pack('<I', 8)),
    (s('llama.rope.freq_base'), 6, struct.pack('<f', 10000.0)),
    (s('tokenizer.ggml.model'), 8, s('gpt2')),
    (s('tokenizer.ggml.tokens'), 9, struct.pack('<IQ', 8, 3) + s('<s>') + s('</s>') + s('a')),
    (s('tokenizer.ggml.bos_token_id'), 4, struct.pack('<I', 0)),
    (s('tokenizer.ggml.eos_token_id'), 4, struct.pack('<I', 1)),
]
tensors = [('token_embd.weight', [8, 3]), ('output_norm.weight', [8])]
out = b'GGUF' + struct.pack('<IQQ', 3, len(tensors), len(kvs))
for k, t, v in kvs:
    out += k + struct.pack('<I', t) + v
offset, datas = 0, []
for name, ne in tensors:
    n = 1
    for d in ne:
        n *= d
    out += s(name) + struct.pack('<I', len(ne)) + b''.join(struct.pack('<Q', d) for d in ne)
    out += struct.pack('<IQ', 0, offset)
    datas.append(struct.pack('<%df' % n, *[0.5] * n))
    offset += 4 * n
    offset = (offset + 31) // 32 * 32
out += b'\0' * ((-len(out)) % 32)
data = b''
for d in datas:
    data += b'\0' * ((-len(data)) % 32) + d
open(sys.argv[1], 'wb').write(out + data)
EOF
[ -s "$TMP/small.gguf" ] || die "could not write the small GGUF file"

# The small file: tables and JSON.
"$BIN" inspect "$TMP/small.gguf" >"$TMP/small.txt" 2>"$TMP/err.txt" || die "inspect small.gguf: $(cat "$TMP/err.txt")"
grep -q '^architecture  llama' "$TMP/small.txt" || die "no architecture line"
grep -q 'token_embd.weight' "$TMP/small.txt" || die "no tensor table"
grep -q "bos id *0 '<s>'" "$TMP/small.txt" || die "no bos token line"
"$BIN" inspect --model "$TMP/small.gguf" --json >"$TMP/small.json" || die "inspect --json small.gguf"
python3 - "$TMP/small.json" <<'EOF' || die "small.gguf JSON"
import json, sys
j = json.load(open(sys.argv[1]))
assert j['architecture'] == 'llama', j['architecture']
assert j['block_count'] == 2 and j['embedding_length'] == 8, j
assert j['rope.freq_base'] == 10000.0
assert j['vocab_size'] == 3, j['vocab_size']
assert j['tokenizer']['model'] == 'gpt2' and j['tokenizer']['tokens'] == 3
assert j['tokenizer']['bos_token_id'] == 0 and j['tokenizer']['bos_token'] == '<s>'
assert j['tokenizer']['eos_token'] == '</s>'
t = {x['name']: x for x in j['tensors']}
assert t['token_embd.weight'] == dict(t['token_embd.weight'], type='F32', shape=[8, 3], bytes=96)
assert t['output_norm.weight']['bytes'] == 32
assert j['totals_by_type'] == {'F32': dict(j['totals_by_type']['F32'], count=2, bytes=128)}
EOF

# The real model, when present.
model=$SRC/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$model" ]; then
  "$BIN" inspect "$model" >"$TMP/model.txt" || die "inspect model"
  grep -q 'block_count  *30' "$TMP/model.txt" || die "model: block_count"
  grep -q "bos id *1 '<|im_start|>'" "$TMP/model.txt" || die "model: bos"
  "$BIN" inspect "$model" --json >"$TMP/model.json" || die "inspect model --json"
  python3 - "$TMP/model.json" <<'EOF' || die "model JSON"
import json, sys
j = json.load(open(sys.argv[1]))
want = {'architecture': 'llama', 'block_count': 30, 'embedding_length': 576,
        'attention.head_count': 9, 'attention.head_count_kv': 3, 'feed_forward_length': 1536,
        'context_length': 8192, 'rope.freq_base': 100000.0, 'vocab_size': 49152}
for k, v in want.items():
    assert j[k] == v, (k, j[k], v)
tok = j['tokenizer']
assert tok['model'] == 'gpt2' and tok['pre'] == 'smollm', tok
assert tok['tokens'] == 49152 and tok['bos_token'] == '<|im_start|>' and tok['eos_token'] == '<|im_end|>'
assert tok['add_bos_token'] is False
assert len(j['tensors']) == 272
counts = {k: v['count'] for k, v in j['totals_by_type'].items()}
assert counts == {'Q4_1': 210, 'F32': 61, 'Q8_0': 1}, counts
assert sum(t['bytes'] for t in j['tensors']) == sum(v['bytes'] for v in j['totals_by_type'].values())
e = next(t for t in j['tensors'] if t['name'] == 'token_embd.weight')
assert e['type'] == 'Q8_0' and e['shape'] == [576, 49152], e
EOF
  base=$model
else
  echo "note: $model absent; corrupt copies are made from a small file"
  base=$TMP/small.gguf
fi

# Bad files: exit status 1 and an "error:" line, never a crash.
expect_error() {
  local f=$1 what=$2 rc
  "$BIN" inspect "$f" >/dev/null 2>"$TMP/err.txt"
  rc=$?
  [ "$rc" -eq 1 ] || die "$what: exit status $rc, expected 1 ($(head -c 300 "$TMP/err.txt"))"
  grep -q '^error: ' "$TMP/err.txt" || die "$what: no 'error:' line"
}

size=$(stat -c %s "$base")
for n in 0 3 15 23 $((size / 64)) $((size / 3)) $((size / 2)) $((size - 1)); do
  head -c "$n" "$base" >"$TMP/trunc.gguf"
  expect_error "$TMP/trunc.gguf" "truncated to $n bytes"
done

python3 - "$base" "$TMP" <<'EOF' || die "making garbled copies"
import random, sys
base, tmp = sys.argv[1], sys.argv[2]
head = bytearray(open(base, 'rb').read(65536))
rest_len = __import__('os').path.getsize(base) - len(head)
def write(name, header):
    with open(base, 'rb') as src, open(f'{tmp}/{name}', 'wb') as dst:
        src.seek(len(header))
        dst.write(header)
        dst.write(src.read())
g = bytearray(head); g[16:24] = b'\xff' * 8  # kv_count
write('garbled_count.gguf', g)
g = bytearray(head); g[0:4] = b'GGML'
write('garbled_magic.gguf', g)
g = bytearray(head); g[4:8] = (1).to_bytes(4, 'little')
write('garbled_version.gguf', g)
rng = random.Random(7)
with open(f'{tmp}/random.gguf', 'wb') as f:
    f.write(bytes(rng.randrange(256) for _ in range(4096)))
with open(f'{tmp}/random_magic.gguf', 'wb') as f:
    f.write(b'GGUF' + (3).to_bytes(4, 'little') + bytes(rng.randrange(256) for _ in range(4096)))
EOF
for f in garbled_count garbled_magic garbled_version random random_magic; do
  expect_error "$TMP/$f.gguf" "$f"
done
expect_error "$TMP/does-not-exist.gguf" "missing file"
grep -q 'cannot open' "$TMP/err.txt" || die "missing file: message"

echo "inspect.sh: ok"
