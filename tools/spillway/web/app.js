// The page of `spillway serve`: a chat over the server's own OpenAI endpoints, and the
// live view of the conversation's cache (/v1/conversations/{id}/cache/events). Every text
// that comes from the model or the user goes into the page as text (textContent), never
// as markup.
'use strict';

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem('spillway.api_key') || '',
  info: null,
  mode: 'chat',         // or 'completion': the text continued as it is
  conv: null,           // {id, policy}
  messages: [],         // chat mode: the conversation so far
  text: '',             // completion mode: the text so far
  abort: null,          // the answer being streamed
  watch: null,          // the cache view's stream
  history: [],          // [{n, held, kv}] for the occupancy chart
  view: null,           // the last cache view
};

// ---- HTTP ----

let keyWaiters = null;
function askKey(message) {
  $('key-error').textContent = message || '';
  $('key-dialog').hidden = false;
  $('api-key').focus();
  if (!keyWaiters) keyWaiters = [];
  return new Promise((resolve) => keyWaiters.push(resolve));
}
$('key-form').addEventListener('submit', (e) => {
  e.preventDefault();
  state.key = $('api-key').value.trim();
  sessionStorage.setItem('spillway.api_key', state.key);
  $('key-dialog').hidden = true;
  const waiters = keyWaiters || [];
  keyWaiters = null;
  waiters.forEach((w) => w());
});

async function api(path, opts = {}) {
  for (;;) {
    const headers = Object.assign({}, opts.headers || {});
    if (opts.body) headers['Content-Type'] = 'application/json';
    if (state.key) headers['Authorization'] = 'Bearer ' + state.key;
    const r = await fetch(path, Object.assign({}, opts, { headers }));
    if (r.status !== 401) return r;
    await askKey(state.key ? 'That key was refused.' : '');
  }
}

async function errorMessage(r) {
  try {
    const j = await r.json();
    if (j && j.error && j.error.message) return j.error.message;
  } catch (e) { /* not JSON */ }
  return `HTTP ${r.status}`;
}

// Server-sent events from a fetch response: yields {event, data}.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) yield { event, data: data.join('\n') };
    }
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- chat ----

function addMessage(role, text) {
  const div = document.createElement('div');
  div.className = 'msg ' + role;
  const label = document.createElement('span');
  label.className = 'role';
  label.textContent = role === 'text' ? 'text so far' : role;
  const body = document.createElement('span');
  body.className = 'body';
  body.textContent = text;
  div.append(label, body);
  $('messages').append(div);
  $('messages').scrollTop = $('messages').scrollHeight;
  return body;
}

function setBusy(busy) {
  $('send').disabled = busy;
  $('stop').disabled = !busy;
  $('new-conv').disabled = busy;
}

function setStatus(text, error = false) {
  $('status').textContent = text || '';
  $('status').classList.toggle('error', error);
}

async function send() {
  const text = $('prompt').value;
  if (!text.trim() || state.abort) return;
  setStatus('');
  if (!state.conv && !(await newConversation())) return;
  const chat = state.mode === 'chat';
  const maxTokens = parseInt($('max-tokens').value, 10) || 128;
  const temperature = parseFloat($('temperature').value) || 0;
  const ignoreEos = $('ignore-eos').checked;
  let path, body, bubble;
  if (chat) {
    state.messages.push({ role: 'user', content: text });
    addMessage('user', text);
    bubble = addMessage('assistant', '');
    path = '/v1/chat/completions';
    body = { messages: state.messages, stream: true, max_tokens: maxTokens, temperature,
             ignore_eos: ignoreEos, policy: state.conv.policy };
  } else {
    state.text += text;
    $('messages').replaceChildren();
    bubble = addMessage('text', state.text);
    path = '/v1/completions';
    body = { prompt: state.text, stream: true, max_tokens: maxTokens, temperature,
             ignore_eos: ignoreEos, policy: state.conv.policy };
  }
  $('prompt').value = '';
  const base = chat ? '' : state.text;
  let answer = '';
  state.abort = new AbortController();
  setBusy(true);
  const t0 = performance.now();
  let tFirst = 0, pieces = 0;
  try {
    const r = await api(path, {
      method: 'POST', body: JSON.stringify(body), signal: state.abort.signal,
      headers: { 'X-Conversation-Id': state.conv.id },
    });
    if (!r.ok) {
      setStatus(await errorMessage(r), true);
      if (chat) { state.messages.pop(); bubble.parentElement.remove(); }
      return;
    }
    for await (const ev of events(r)) {
      if (ev.data === '[DONE]') break;
      const j = JSON.parse(ev.data);
      if (j.error) { setStatus(j.error.message, true); break; }
      const c = j.choices && j.choices[0];
      const piece = c ? (chat ? (c.delta && c.delta.content) : c.text) : '';
      if (piece) {
        if (!tFirst) tFirst = performance.now();
        answer += piece;
        pieces++;
        bubble.textContent = base + answer;
        $('messages').scrollTop = $('messages').scrollHeight;
        const secs = (performance.now() - tFirst) / 1000;
        if (pieces > 1 && secs > 0) $('tps').textContent = ((pieces - 1) / secs).toFixed(1);
      }
      if (j.usage && tFirst) {
        const n = j.usage.completion_tokens;
        const secs = (performance.now() - tFirst) / 1000;
        if (n > 1 && secs > 0) $('tps').textContent = ((n - 1) / secs).toFixed(1);
        setStatus(`${n} tokens in ${((performance.now() - t0) / 1000).toFixed(2)} s; ` +
                  `${j.usage.prompt_tokens_details.cached_tokens} of ${j.usage.prompt_tokens} prompt tokens were in the cache`);
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') setStatus(e.message, true);
    else setStatus('stopped');
  } finally {
    if (chat) state.messages.push({ role: 'assistant', content: answer });
    else state.text += answer;
    state.abort = null;
    setBusy(false);
  }
}

$('composer').addEventListener('submit', (e) => { e.preventDefault(); send(); });
$('prompt').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); send(); }
});
$('stop').addEventListener('click', () => { if (state.abort) state.abort.abort(); });

// ---- conversations ----

// 128 random bits. The page names its conversation from the start, so that a balancer
// routing by X-Conversation-Id sends every request of it, the first included, to the same
// server; every request carries the policy too, so that another server taking the
// conversation over (the first one gone) makes it under the same policy.
function randomId() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return 'conv-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

async function newConversation() {
  $('policy-error').textContent = '';
  const policy = $('policy').value.trim();
  state.mode = $('mode-select').value;
  const r = await api('/v1/conversations', {
    method: 'POST', body: JSON.stringify(policy ? { policy } : {}),
    headers: { 'X-Conversation-Id': randomId() },
  });
  if (!r.ok) {
    $('policy-error').textContent = await errorMessage(r);
    return false;
  }
  const conv = await r.json();
  state.conv = conv;
  state.messages = [];
  state.text = '';
  state.history = [];
  state.view = null;
  $('messages').replaceChildren();
  $('conv-id').textContent = conv.id;
  $('conv-policy').textContent = conv.policy;
  $('tps').textContent = '–';
  $('prompt').placeholder = state.mode === 'chat'
    ? 'Message (Enter sends, Shift+Enter for a new line)'
    : 'Text to continue (Enter sends, Shift+Enter for a new line)';
  setStatus('');
  renderView(null);
  watch(conv);
  return true;
}

$('new-conv-form').addEventListener('submit', (e) => {
  e.preventDefault();
  if (!state.abort) newConversation();
});

// ---- the cache view ----

async function watch(conv) {
  if (state.watch) state.watch.abort();
  const ctl = new AbortController();
  state.watch = ctl;
  const path = `/v1/conversations/${encodeURIComponent(conv.id)}/cache/events`;
  while (!ctl.signal.aborted) {
    try {
      const r = await api(path, { signal: ctl.signal, headers: { 'X-Conversation-Id': conv.id } });
      if (r.status === 404) {
        // Evicted, or this server never had it (a balancer moved the conversation): the
        // next message makes it again.
        $('tok-info').textContent = await errorMessage(r);
        await sleep(2000);
        continue;
      }
      if (!r.ok) throw new Error(await errorMessage(r));
      for await (const ev of events(r)) {
        if (ctl.signal.aborted) return;
        if (ev.event === 'error') {
          $('tok-info').textContent = JSON.parse(ev.data).error.message;
          break;
        }
        renderView(JSON.parse(ev.data));
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    await sleep(1000);  // the stream ended (the server's watch ran out, a proxy cut it)
  }
}

function bytes(n) {
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(2) + ' GiB';
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + ' MiB';
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + ' KiB';
  return n + ' B';
}

function shown(text) {
  return text.replace(/\n/g, '\u21b5\n').replace(/\t/g, '\u2192');
}

function renderView(v) {
  state.view = v;
  const counts = v ? v.counts : { sink: 0, window: 0, kept: 0, evicted: 0 };
  for (const k of ['sink', 'window', 'kept', 'evicted']) $('count-' + k).textContent = counts[k];
  $('n-past').textContent = v ? v.n_past : 0;
  $('capacity').textContent = v && v.capacity !== null ? v.capacity : '–';
  $('kv-bytes').textContent = v ? bytes(v.kv_bytes) : '–';
  const box = $('tokens');
  const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  const frag = document.createDocumentFragment();
  if (v) {
    let next = 0;
    for (const t of v.tokens) {
      if (t.i > next) {
        const gap = document.createElement('span');
        gap.className = 'gap';
        gap.textContent = ` \u2026 ${t.i - next} evicted tokens not listed \u2026 `;
        frag.append(gap);
      }
      const span = document.createElement('span');
      span.className = 'tok ' + t.state;
      span.textContent = shown(t.text);
      span.dataset.i = t.i;
      frag.append(span);
      next = t.i + 1;
    }
  }
  box.replaceChildren(frag);
  if (atEnd) box.scrollTop = box.scrollHeight;
  if (v && (!state.history.length || state.history[state.history.length - 1].n !== v.n_past)) {
    state.history.push({ n: v.n_past, held: v.counts.sink + v.counts.window + v.counts.kept, kv: v.kv_bytes });
  }
  drawHeatmap();
  drawOccupancy();
}

function tokenInfo(t) {
  if (t.state === 'evicted') return `token ${t.i} ${JSON.stringify(t.text)}: evicted`;
  return `token ${t.i} ${JSON.stringify(t.text)}: ${t.state}, slot ${t.slot}, key rotated at ` +
         `position ${t.key_pos}, scored at distance ${t.query_pos - t.key_pos}`;
}

$('tokens').addEventListener('mouseover', (e) => {
  const span = e.target.closest('.tok');
  if (!span || !state.view) return;
  const i = Number(span.dataset.i);
  const t = state.view.tokens.find((x) => x.i === i);
  if (t) $('tok-info').textContent = tokenInfo(t);
  document.querySelectorAll('.tok.hover').forEach((s) => s.classList.remove('hover'));
  span.classList.add('hover');
});

function heatGeometry(a, canvas) {
  const left = 34, top = 16;
  const cw = Math.max(4, Math.floor((canvas.width - left - 6) / a.n_head));
  const ch = Math.max(3, Math.floor((canvas.height - top - 4) / a.n_layer));
  return { left, top, cw, ch };
}

function drawHeatmap() {
  const canvas = $('heatmap');
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const a = state.view && state.view.attention;
  ctx.fillStyle = '#5d6670';
  ctx.font = '11px system-ui, sans-serif';
  if (!a) {
    ctx.fillText('recorded from the next decoded token on', 10, 20);
    return;
  }
  const grid = a[$('heat-kind').value];
  const g = heatGeometry(a, canvas);
  for (let l = 0; l < a.n_layer; l++) {
    for (let h = 0; h < a.n_head; h++) {
      const x = Math.max(0, Math.min(1, grid[l][h]));
      const shade = Math.round(255 * (1 - x));
      ctx.fillStyle = `rgb(255, ${shade}, ${Math.round(shade * 0.9)})`;
      ctx.fillRect(g.left + h * g.cw, g.top + l * g.ch, g.cw - 1, g.ch - 1);
    }
    if (l % 5 === 0) { ctx.fillStyle = '#5d6670'; ctx.fillText(String(l), 4, g.top + l * g.ch + g.ch); }
  }
  ctx.fillStyle = '#5d6670';
  ctx.fillText(`token ${a.stream_index}: head \u2192, layer \u2193`, g.left, 11);
}

$('heat-kind').addEventListener('change', drawHeatmap);
$('heatmap').addEventListener('mousemove', (e) => {
  const a = state.view && state.view.attention;
  if (!a) return;
  const canvas = $('heatmap');
  const rect = canvas.getBoundingClientRect();
  const x = (e.clientX - rect.left) * canvas.width / rect.width;
  const y = (e.clientY - rect.top) * canvas.height / rect.height;
  const g = heatGeometry(a, canvas);
  const h = Math.floor((x - g.left) / g.cw), l = Math.floor((y - g.top) / g.ch);
  if (h < 0 || h >= a.n_head || l < 0 || l >= a.n_layer) return;
  $('heat-info').textContent =
    `layer ${l} head ${h}: sinks ${a.sink_mass[l][h].toFixed(3)}, first ${a.first} tokens ` +
    `${a.first_mass[l][h].toFixed(3)}, newest ${a.recent} tokens ${a.recent_mass[l][h].toFixed(3)} ` +
    `(of ${a.span[l]} attended)`;
});

function drawOccupancy() {
  const canvas = $('occupancy');
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const hs = state.history;
  if (hs.length < 2) return;
  const pad = 28, w = canvas.width - 2 * pad, h = canvas.height - 2 * 14;
  const n0 = hs[0].n, n1 = hs[hs.length - 1].n || 1;
  const maxHeld = Math.max(...hs.map((p) => p.held), 1);
  const maxKv = Math.max(...hs.map((p) => p.kv), 1);
  const X = (n) => pad + (n1 === n0 ? 0 : (n - n0) / (n1 - n0)) * w;
  const line = (key, max, color) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    hs.forEach((p, i) => {
      const y = 14 + h - (p[key] / max) * h;
      if (i === 0) ctx.moveTo(X(p.n), y); else ctx.lineTo(X(p.n), y);
    });
    ctx.stroke();
  };
  const css = getComputedStyle(document.documentElement);
  line('held', maxHeld, css.getPropertyValue('--window'));
  line('kv', maxKv, css.getPropertyValue('--sink'));
  ctx.fillStyle = '#5d6670';
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillText(`${maxHeld} tokens`, 2, 11);
  ctx.fillText(bytes(maxKv), canvas.width - 70, 11);
  ctx.fillText(String(n0), pad, canvas.height - 2);
  ctx.fillText(String(n1), canvas.width - pad - 20, canvas.height - 2);
}

// ---- start ----

async function start() {
  const r = await api('/v1/info');
  if (!r.ok) { setStatus(await errorMessage(r), true); return; }
  const info = await r.json();
  state.info = info;
  $('model').textContent = info.model;
  $('conv-policy').textContent = info.policy;
  const modes = $('mode-select');
  if (!info.chat) {
    modes.value = 'completion';
    modes.querySelector('option[value=chat]').disabled = true;
    modes.title = 'the model has no chat template';
  }
  modes.addEventListener('change', () => { if (!state.abort) newConversation(); });
  $('policy').value = info.policy;
  const examples = new Set([info.policy, 'sink:4+1020', 'sink:4+252', 'window:1024', 'h2o:64+192',
                            'tova:256', 'detected:4+252', 'nullsink:256', 'recompute:256',
                            'sink:4+1020,evict=turn']);
  for (const k of info.policy_kinds) examples.add(k.usage);
  const list = $('policy-examples');
  for (const e of examples) {
    const o = document.createElement('option');
    o.value = e;
    list.append(o);
  }
  await newConversation();
}

start();
