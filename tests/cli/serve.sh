#!/usr/bin/env bash
# CLI test of `spillway serve`. $1 = spillway binary, $2 = source directory.
# Starts the server on a free loopback port, then: curl requests (non-streaming and SSE,
# both completion endpoints), bad requests and their statuses, the API key, client
# hang-ups, and a Python client with the `openai` package (a venv under the build
# directory) for concurrency and greedy equality with a single-session reference; last,
# SIGTERM must stop the server with status 0.
# Environment: SERVE_LOAD_SECONDS (default 20), SERVE_CLIENTS (default 8).
set -uo pipefail
BIN=$1
SRC=$2
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$BIN" serve --model "$MODEL" --policy "window:x" >/dev/null 2>&1
check "bad policy exits 2" 2 $?
"$BIN" serve --model "$MODEL" --port 70000 >/dev/null 2>&1
check "bad port exits 2" 2 $?
"$BIN" serve --model "$TMP/none.gguf" --port 0 >/dev/null 2>&1
check "missing model exits 1" 1 $?
if [[ ! -f $MODEL ]]; then
  echo "skip: model checks ($MODEL missing; run scripts/setup.sh)"
  exit $fail
fi
command -v curl >/dev/null || {
  echo "FAIL curl is needed (scripts/setup.sh installs it)" >&2
  exit 1
}

KEY=test-key-123
# Sessions of sink:4+508 hold 24 MiB of KV each: room for the load's 8 conversations, the
# greedy one and a few one-off requests (eviction is tested on a second server below).
KV_BUDGET=$((14 * 24 << 20))
POLICY=sink:4+508
"$BIN" serve --model "$MODEL" --port 0 --api-key "$KEY" --policy "$POLICY" --max-sessions 14 \
  --kv-budget "$KV_BUDGET" --max-prompt-bytes 4096 --threads 2 2>"$TMP/server.log" &
PID=$!
PID2=
cleanup() {
  kill "$PID" $PID2 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
# wait_for_server PID LOG: prints the server's URL once /health answers
wait_for_server() {
  local port=
  for _ in $(seq 1 1200); do  # two minutes: a sanitizer build on a loaded machine
    port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$2")
    [[ -n $port ]] && break
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z $port ]]; then
    echo "FAIL the server did not start" >&2
    cat "$2" >&2
    exit 1
  fi
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.1
  done
  echo "http://127.0.0.1:$port"
}
URL=$(wait_for_server "$PID" "$TMP/server.log") || exit 1
check "health" '{"status":"ok"}' "$(curl -s "$URL/health")"

AUTH=(-H "Authorization: Bearer $KEY")
JSON=(-H "Content-Type: application/json")
# post PATH BODY [curl args...]: prints the status, body into $TMP/body, headers $TMP/hdr
post() {
  local path=$1 body=$2
  shift 2
  curl -s -o "$TMP/body" -D "$TMP/hdr" -w '%{http_code}' "$@" -d "$body" "$URL$path"
}
jq_py() { python3 -c "import json,sys; d=json.load(open('$TMP/body')); print($1)"; }

# --- non-streaming and streaming, both endpoints ----------------------------------------
CHAT='{"model":"spillway","messages":[{"role":"user","content":"What is 2+2?"}],"max_tokens":12,"temperature":0}'
check "chat: 200" 200 "$(post /v1/chat/completions "$CHAT" "${AUTH[@]}" "${JSON[@]}")"
check "chat: shape" "chat.completion assistant True" \
  "$(jq_py "d['object'], d['choices'][0]['message']['role'], d['choices'][0]['finish_reason'] in ('stop','length')")"
check "chat: usage adds up" True \
  "$(jq_py "d['usage']['total_tokens'] == d['usage']['prompt_tokens'] + d['usage']['completion_tokens'] > d['usage']['prompt_tokens'] > 0")"
chat_text=$(jq_py "d['choices'][0]['message']['content']")
[[ -n $chat_text ]]
check "chat: text" 0 $?

STREAM=${CHAT%\}},\"stream\":true}
check "chat stream: 200" 200 "$(post /v1/chat/completions "$STREAM" "${AUTH[@]}" "${JSON[@]}")"
check "chat stream: event-stream" 1 "$(grep -ci '^content-type: text/event-stream' "$TMP/hdr")"
check "chat stream: ends with [DONE]" "data: [DONE]" "$(grep -v '^$' "$TMP/body" | tail -1)"
check "chat stream: same text as non-streaming" "$chat_text" "$(python3 - "$TMP/body" <<'PY'
import json, sys
text = ""
for line in open(sys.argv[1]):
    if line.startswith("data: {"):
        d = json.loads(line[6:])
        assert d["object"] == "chat.completion.chunk"
        text += d["choices"][0]["delta"].get("content", "")
print(text)
PY
)"

COMP='{"prompt":"The capital of France is","max_tokens":4,"temperature":0}'
check "completion: 200" 200 "$(post /v1/completions "$COMP" "${AUTH[@]}" "${JSON[@]}")"
check "completion: greedy text" "text_completion| Paris." "$(jq_py "d['object'] + '|' + d['choices'][0]['text'].rstrip()")"
comp_text=$(jq_py "repr(d['choices'][0]['text'])")
check "completion stream: 200" 200 "$(post /v1/completions "${COMP%\}},\"stream\":true}" "${AUTH[@]}" "${JSON[@]}")"
check "completion stream: same text" "$comp_text [DONE]" "$(python3 - "$TMP/body" <<'PY'
import json, sys
text, last = "", ""
for line in open(sys.argv[1]):
    if line.startswith("data: "):
        last = line[6:].strip()
        if last.startswith("{"):
            text += json.loads(last)["choices"][0]["text"]
print(repr(text), last)
PY
)"
check "stop string" 200 "$(post /v1/completions '{"prompt":"1, 2, 3, 4,","max_tokens":16,"temperature":0,"stop":[" 7"]}' "${AUTH[@]}" "${JSON[@]}")"
check "stop string: cut before it" " 5, 6, stop" "$(jq_py "d['choices'][0]['text'] + ' ' + d['choices'][0]['finish_reason']")"
# A stop string across two tokens ("!" and " I") after a character of three tokens: every
# streamed piece is whole UTF-8 (no U+FFFD), the text ends before the stop string (the
# expectation from the same request without it).
WHOLE='{"prompt":"I love pizza 😀! I love pasta 😀! I love cake","max_tokens":12,"temperature":0}'
check "split stop and character: 200 without the stop" 200 "$(post /v1/completions "$WHOLE" "${AUTH[@]}" "${JSON[@]}")"
cp "$TMP/body" "$TMP/whole.json"
SPLIT='{"prompt":"I love pizza 😀! I love pasta 😀! I love cake","max_tokens":12,"temperature":0,"stop":["! I"],"stream":true}'
check "split stop and character: 200" 200 "$(post /v1/completions "$SPLIT" "${AUTH[@]}" "${JSON[@]}")"
check "split stop and character: whole pieces, cut before the stop" "True True True" "$(python3 - "$TMP/whole.json" "$TMP/body" <<'PY'
import json, sys
whole = json.load(open(sys.argv[1]))["choices"][0]["text"]
pieces, reason = [], None
for line in open(sys.argv[2], encoding="utf-8"):
    if line.startswith("data: {"):
        c = json.loads(line[6:])["choices"][0]
        pieces.append(c["text"])
        reason = c["finish_reason"] or reason
at = whole.find("! I")
want = (whole[:at], "stop") if at >= 0 else (whole, "length")
print("".join(pieces) == want[0], reason == want[1], all("\ufffd" not in p for p in pieces[:-1]))
PY
)"
check "max_tokens 0" "0 length" "$(post /v1/completions '{"prompt":"Hi","max_tokens":0}' "${AUTH[@]}" "${JSON[@]}" >/dev/null; jq_py "d['usage']['completion_tokens'], d['choices'][0]['finish_reason']")"

# A conversation's second turn feeds only what is new.
CONV='{"messages":[{"role":"user","content":"Hi"}],"max_tokens":8,"temperature":0,"conversation_id":"curl-1"}'
post /v1/chat/completions "$CONV" "${AUTH[@]}" "${JSON[@]}" >/dev/null
reply=$(jq_py "json.dumps(d['choices'][0]['message']['content'])")
check "conversation: first turn is new" 1 "$(grep -ci '^x-conversation-reuse: new' "$TMP/hdr")"
CONV2="{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":$reply},{\"role\":\"user\",\"content\":\"Bye\"}],\"max_tokens\":8,\"temperature\":0}"
post /v1/chat/completions "$CONV2" "${AUTH[@]}" "${JSON[@]}" -H "X-Conversation-Id: curl-1" >/dev/null
check "conversation: second turn reuses the prefix" 1 "$(grep -ci '^x-conversation-reuse: prefix' "$TMP/hdr")"
check "conversation: cached tokens reported" True "$(jq_py "d['usage']['prompt_tokens_details']['cached_tokens'] > 10")"
post /v1/chat/completions "${CONV/Hi/Hello}" "${AUTH[@]}" "${JSON[@]}" >/dev/null
check "conversation: a changed history resets" 1 "$(grep -ci '^x-conversation-reuse: reset' "$TMP/hdr")"

# --- bad requests -----------------------------------------------------------------------
error_shape() { jq_py "sorted(d['error']) == ['code', 'message', 'type']"; }
check "malformed JSON: 400" 400 "$(post /v1/chat/completions '{"messages": [' "${AUTH[@]}" "${JSON[@]}")"
check "malformed JSON: error shape" True "$(error_shape)"
check "unknown model: 404" 404 "$(post /v1/chat/completions '{"model":"gpt-4","messages":[{"role":"user","content":"x"}]}' "${AUTH[@]}" "${JSON[@]}")"
check "unknown model: code" model_not_found "$(jq_py "d['error']['code']")"
check "model by file name: 200" 200 "$(post /v1/completions "{\"model\":\"$(basename "$MODEL" .gguf)\",\"prompt\":\"a\",\"max_tokens\":1}" "${AUTH[@]}" "${JSON[@]}")"
check "negative max_tokens: 400" 400 "$(post /v1/completions '{"prompt":"a","max_tokens":-1}' "${AUTH[@]}" "${JSON[@]}")"
check "huge max_tokens: 400" 400 "$(post /v1/completions '{"prompt":"a","max_tokens":100000000000}' "${AUTH[@]}" "${JSON[@]}")"
check "missing messages: 400" 400 "$(post /v1/chat/completions '{"prompt":"a"}' "${AUTH[@]}" "${JSON[@]}")"
big=$(head -c 5000 /dev/zero | tr '\0' 'a')
check "prompt over --max-prompt-bytes: 413" 413 "$(post /v1/completions "{\"prompt\":\"$big\"}" "${AUTH[@]}" "${JSON[@]}")"
check "prompt over --max-prompt-bytes: error shape" True "$(error_shape)"
head -c 200000 /dev/zero | tr '\0' 'a' | sed 's/^/{"prompt":"/; s/$/"}/' >"$TMP/huge.json"
check "body far over the limit: 413" 413 "$(curl -s -o "$TMP/body" -w '%{http_code}' "${AUTH[@]}" "${JSON[@]}" --data-binary @"$TMP/huge.json" "$URL/v1/completions")"
check "body far over the limit: error shape" True "$(error_shape)"
check "wrong content type: 415" 415 "$(post /v1/completions '{"prompt":"a"}' "${AUTH[@]}" -H "Content-Type: text/plain")"
check "unknown route: 404" 404 "$(curl -s -o "$TMP/body" -w '%{http_code}' "${AUTH[@]}" "$URL/v1/nothing")"
check "unknown route: error shape" True "$(error_shape)"
check "GET on a POST route: 404" 404 "$(curl -s -o "$TMP/body" -w '%{http_code}' "${AUTH[@]}" "$URL/v1/completions")"
check "no API key: 401" 401 "$(post /v1/completions "$COMP" "${JSON[@]}")"
check "no API key: code" invalid_api_key "$(jq_py "d['error']['code']")"
check "wrong API key: 401" 401 "$(post /v1/completions "$COMP" "${JSON[@]}" -H "Authorization: Bearer nope")"
check "models: 401 without key" 401 "$(curl -s -o "$TMP/body" -w '%{http_code}' "$URL/v1/models")"
check "models: lists the model and its alias" "list $(basename "$MODEL" .gguf) spillway" \
  "$(curl -s -o "$TMP/body" "${AUTH[@]}" "$URL/v1/models"; jq_py "d['object'], *[m['id'] for m in d['data']]")"
check "health needs no key" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")"

# A client that hangs up mid-stream cancels its request.
curl -s -N --max-time 0.5 "${AUTH[@]}" "${JSON[@]}" -d '{"prompt":"Once upon a time","max_tokens":4000,"stream":true}' \
  "$URL/v1/completions" >/dev/null
# The server notices at its next token; a loaded machine (the sanitizer build) may take a
# while: poll for up to a minute.
for _ in $(seq 1 600); do
  curl -s -o "$TMP/body" "${AUTH[@]}" "$URL/metrics"
  [[ $(jq_py "d['cancelled_total'] >= 1, d['active_requests']") == "True 0" ]] && break
  sleep 0.1
done
check "hang-up cancelled, nothing left active" "True 0" "$(jq_py "d['cancelled_total'] >= 1, d['active_requests']")"
check "metrics: counted errors and requests" True "$(jq_py "d['errors_total'] >= 13 and d['requests_total'] > d['errors_total']")"
curl -s -o "$TMP/body" "${AUTH[@]}" "$URL/metrics?format=prometheus"
check "metrics: Prometheus text" 1 "$(grep -c '^spillway_tokens_per_s ' "$TMP/body")"
check "still serving after the bad requests" 200 "$(post /v1/completions "$COMP" "${AUTH[@]}" "${JSON[@]}")"

# --- eviction: a second server that keeps two sessions ----------------------------------------
"$BIN" serve --model "$MODEL" --port 0 --max-sessions 2 --threads 1 2>"$TMP/server2.log" &
PID2=$!
URL2=$(wait_for_server "$PID2" "$TMP/server2.log") || exit 1
turn() {  # turn ID: one token of conversation ID, prints X-Conversation-Reuse
  curl -s -o "$TMP/body" -D "$TMP/hdr" -H "Content-Type: application/json" -H "X-Conversation-Id: $1" \
    -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1}' "$URL2/v1/chat/completions"
  sed -n 's/^[Xx]-[Cc]onversation-[Rr]euse: \([a-z]*\).*/\1/p' "$TMP/hdr"
}
check "eviction: three conversations" "new new new" "$(turn a) $(turn b) $(turn c)"
check "eviction: the least recently used one was evicted" "new" "$(turn a)"
check "eviction: a kept one is still there (it is reset: same prompt, nothing new)" "reset" "$(turn c)"
curl -s -o "$TMP/body" "$URL2/metrics"
check "eviction: counted, at most 2 sessions" "2 2" "$(jq_py "d['session_evictions_total'], d['sessions']")"
kill -INT "$PID2"
wait "$PID2"
check "SIGINT: exit 0" 0 $?
PID2=

# --- Python client: concurrency and greedy equality ---------------------------------------
VENV=${SPILLWAY_SERVE_VENV:-$(dirname "$(dirname "$BIN")")/serve-venv}
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$VENV" >/dev/null 2>&1 && "$VENV/bin/pip" install -q openai >"$TMP/pip.log" 2>&1
fi
if "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  "$VENV/bin/python" "$SRC/tests/cli/serve_client.py" "$URL/v1" "$KEY" "$BIN" "$MODEL" "$POLICY" \
    "${SERVE_LOAD_SECONDS:-20}" "${SERVE_CLIENTS:-8}" "$KV_BUDGET"
  check "openai client: load and greedy reference" 0 $?
elif grep -qiE "connection|resolve|network|unreachable|timed out|No matching distribution" "$TMP/pip.log"; then
  echo "skip: the openai client tests (pip cannot reach PyPI: $(tail -1 "$TMP/pip.log"))"
else
  echo "FAIL installing the openai package into $VENV:" >&2
  cat "$TMP/pip.log" >&2
  fail=1
fi

# --- shutdown ---------------------------------------------------------------------------
kill -TERM "$PID"
wait "$PID"
check "SIGTERM: exit 0" 0 $?
check "SIGTERM: said so" 1 "$(grep -c 'SIGTERM received, shutting down' "$TMP/server.log")"
exit $fail
