#!/usr/bin/env bash
# CLI test of `spillway chat`. $1 = spillway binary, $2 = source directory.
set -uo pipefail
BIN=$1
SRC=$2
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$BIN" chat --model "$MODEL" --policy "sink:4" </dev/null >/dev/null 2>&1
check "bad policy exits 2" 2 $?
"$BIN" chat --model "$MODEL" --policy "sink:4+8,evict=message" </dev/null >/dev/null 2>&1
check "bad evict option exits 2" 2 $?
"$BIN" chat --model "$MODEL" -n 0 </dev/null >/dev/null 2>&1
check "-n 0 exits 2" 2 $?
"$BIN" chat --model "$MODEL" --min-p 2 </dev/null >/dev/null 2>&1
check "min-p above 1 exits 2" 2 $?
"$BIN" chat --model "$MODEL" --script "$TMP/none.txt" </dev/null >/dev/null 2>"$TMP/err"
check "missing script exits 1" 1 $?
check "missing script message" 1 "$(grep -c "^error: .*none.txt: cannot open the chat script" "$TMP/err")"
"$BIN" chat --model "$TMP/none.gguf" </dev/null >/dev/null 2>&1
check "missing model exits 1" 1 $?

if [[ ! -f $MODEL ]]; then
  echo "skip: model checks ($MODEL missing; run scripts/setup.sh)"
  exit $fail
fi

GEMMA=${SPILLWAY_GEMMA3_MODEL:-$SRC/models/gemma-3-270m-q4_k_m.gguf}
if [[ -f $GEMMA ]]; then
  "$BIN" chat --model "$GEMMA" </dev/null >/dev/null 2>"$TMP/err"
  check "base model without template exits 1" 1 $?
  check "base model message" 1 "$(grep -c "^error: .*no chat template.*base model" "$TMP/err")"
fi

# Piped turns and commands; the conversation ends at the end of input.
out=$(printf 'Hi!\n/stats\n/bogus\n/reset\n/stats\nBye.\n' |
  "$BIN" chat --model "$MODEL" -n 8 -t 2 2>/dev/null)
check "piped chat exits 0" 0 $?
check "two stats lines" 2 "$(grep -c '^\[.* tokens in the stream, .* in the cache' <<<"$out")"
check "stats after reset" 1 "$(grep -c '^\[0 tokens in the stream' <<<"$out")"
check "unknown command" 1 "$(grep -c '^\[unknown command /bogus' <<<"$out")"
check "reset" 1 "$(grep -c '^\[conversation reset\]' <<<"$out")"

# Characters of several tokens come out whole (on screen and in the JSON), and a stop string
# across a token boundary ends the answer before it. The stop string is taken from the
# answer itself (a word's last letters, the space, the next word's first), so the check
# holds whatever the model answers.
printf 'Reply with only this emoji: 😀\n' >"$TMP/emoji.txt"
"$BIN" chat --model "$MODEL" --script "$TMP/emoji.txt" -n 40 -t 2 --json "$TMP/emoji.json" \
  >"$TMP/emoji.out" 2>/dev/null
check "emoji answer: whole characters, printed as in the JSON" "True True" "$(python3 - "$TMP/emoji.json" "$TMP/emoji.out" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["turns"][0]
ans = t["answer"] if t["stop"] != "length" else t["answer"].rstrip("\ufffd")  # a cut may end inside one
shown = open(sys.argv[2], encoding="utf-8").read()
print("\ufffd" not in ans, ("assistant: " + t["answer"] + "\n") in shown)
PY
)"
printf 'Tell me about the weather in London.\n' >"$TMP/stop.txt"
"$BIN" chat --model "$MODEL" --script "$TMP/stop.txt" -n 40 -t 2 --json "$TMP/nostop.json" >/dev/null 2>&1
stop=$(python3 - "$TMP/nostop.json" <<'PY'
import json, re, sys
a = json.load(open(sys.argv[1]))["turns"][0]["answer"]
m = re.search(r"[A-Za-z]{3} [A-Za-z]", a[4:])
print(a[4 + m.start() + 1:4 + m.end()] if m else "")
PY
)
check "a stop string taken from the answer" 1 "$([[ ${#stop} -eq 4 ]] && echo 1)"
check "the stop string spans tokens" 1 \
  "$("$BIN" tokenize --model "$MODEL" --text "$stop" --no-bos --json | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["count"] >= 2))')"
"$BIN" chat --model "$MODEL" --script "$TMP/stop.txt" -n 40 -t 2 --stop "$stop" \
  --json "$TMP/stopped.json" >/dev/null 2>&1
check "stop string: the answer up to it" "True stop" "$(python3 - "$TMP/nostop.json" "$TMP/stopped.json" "$stop" <<'PY'
import json, sys
whole = json.load(open(sys.argv[1]))["turns"][0]["answer"]
cut = json.load(open(sys.argv[2]))["turns"][0]
at = whole.find(sys.argv[3])
print(at > 0 and cut["answer"] == whole[:at], cut["stop"])
PY
)"

# A script (plain and JSON lines) under a small cache: never more than S+W tokens held.
for i in $(seq 1 30); do
  if ((i % 2)); then echo "Tell me about the number $i."; else echo "{\"user\": \"What is $i plus $i?\"}"; fi
done >"$TMP/script.txt"
"$BIN" chat --model "$MODEL" --policy sink:4+60 -n 8 -t 2 --script "$TMP/script.txt" \
  --json "$TMP/out.json" >"$TMP/out.txt" 2>/dev/null
check "script exits 0" 0 $?
check "30 turns printed" 30 "$(grep -c '^user: ' "$TMP/out.txt")"
check "30 turns in the JSON" 30 "$(grep -c '"prompt_tokens"' "$TMP/out.json")"
max=$(grep '"cache_tokens"' "$TMP/out.json" | tr -dc '0-9\n' | sort -n | tail -1)
check "cache never over 64 tokens" 64 "$max"
check "tokens evicted" 1 "$(grep '"evicted"' "$TMP/out.json" | tail -1 | tr -dc '0-9' | awk '{print ($1 > 300)}')"
check "policy in the JSON" 1 "$(grep -c '"policy": "sink:4+60"' "$TMP/out.json")"
"$BIN" chat --model "$MODEL" --policy sink:4+60,evict=turn -n 8 -t 2 --script "$TMP/script.txt" \
  --json "$TMP/turn.json" >/dev/null 2>&1
check "evict=turn script exits 0" 0 $?
check "evict=turn: no partial message" 30 "$(grep -c '"messages_partial": 0' "$TMP/turn.json")"
echo '{"usr": "typo"}' >"$TMP/bad.txt"
"$BIN" chat --model "$MODEL" -n 4 --script "$TMP/bad.txt" >/dev/null 2>"$TMP/err"
check "bad JSON line exits 1" 1 $?
check "bad JSON line message" 1 "$(grep -c 'bad.txt:1: expected {"user": "..."}' "$TMP/err")"

# Ctrl-C stops the answer, not the chat; twice at the prompt ends it.
mkfifo "$TMP/in"
# (a background job: the chat installs its own SIGINT handler)
"$BIN" chat --model "$MODEL" --policy sink:4+124 -n 100000 --ignore-eos -t 2 \
  <"$TMP/in" >"$TMP/int.txt" 2>/dev/null &
pid=$!
(sleep 120 && kill -9 $pid) </dev/null >/dev/null 2>&1 &
watchdog=$!
exec 3>"$TMP/in"
echo "Count from 1 to 2000, one number per line." >&3
for _ in $(seq 1 100); do
  [[ $(wc -c <"$TMP/int.txt") -gt 40 ]] && break
  sleep 0.2
done
kill -INT $pid
for _ in $(seq 1 50); do
  grep -q '\[stopped\]' "$TMP/int.txt" && break
  sleep 0.2
done
echo "/stats" >&3
for _ in $(seq 1 100); do  # the chat is back at its prompt once /stats has answered
  grep -q 'tokens in the stream' "$TMP/int.txt" && break
  sleep 0.2
done
kill -INT $pid
sleep 0.5
kill -INT $pid
wait $pid
check "Ctrl-C twice at the prompt exits 0" 0 $?
pkill -P $watchdog 2>/dev/null
kill $watchdog 2>/dev/null
exec 3>&-
check "Ctrl-C stopped the answer" 1 "$(grep -c '\[stopped\]' "$TMP/int.txt")"
check "the chat went on after Ctrl-C" 1 "$(grep -c 'tokens in the stream' "$TMP/int.txt")"
exit $fail
