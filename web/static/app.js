// soundbus web view: one WebSocket in, the DOM and canvases out. No build step, no dependencies.
// Messages from the server (web/server.py, web/board.py):
//   {"t":"hello", bands, col_hz, ring, db:[floor, ceil], update_hz, store, idle_s}
//   {"t":"u", now_ns, s:{stream:{spec:{i,n,d}, f:{...}, st:{...}}}, gone:[...], ev:[...], stored:[...], health:{...}}
//   (spec: new spectrogram columns; f: level and labels, every update; st: counters and health, ~1/s)
//   {"t":"pong", n}   {"t":"error", why}
// Everything shown comes from the server's validated state and is written with textContent only.
"use strict";

const TIMELINE_S = 60;          // seconds of onsets/offsets shown per stream
const MAX_SPANS = 100;          // spans kept per stream
const MAX_HISTORY = 200;        // rows in the events table
const NS = 1e9;

const view = {
  cfg: null,
  streams: new Map(),           // name -> stream record (DOM + drawing state)
  history: new Map(),           // event id -> {row, e}
  ws: null,
  retry: 0,
  pingN: 0,
  pingSent: new Map(),
  updates: 0,
};
window.soundbus = view;          // for a person at the console (and the tests)

// ---- small helpers ---------------------------------------------------------------------------

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtTime(ns) {
  const d = new Date(ns / 1e6);
  return d.toLocaleTimeString([], {hour12: false}) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function fmtBytes(n) {
  return n >= 1024 ? (n / 1024).toFixed(1) + " kB" : Math.round(n) + " B";
}

function labelColour(label) {
  let h = 0;
  for (let i = 0; i < label.length; i++) h = (h * 31 + label.charCodeAt(i)) >>> 0;
  return `hsl(${h % 360}, 65%, 55%)`;
}

// A dark-to-bright colour map (256 entries) interpolated between a few anchors.
const LUT = (() => {
  const anchors = [[0, 0, 4], [28, 16, 68], [79, 18, 123], [129, 37, 129], [181, 54, 122],
                   [229, 80, 100], [251, 135, 97], [254, 194, 135], [252, 253, 191]];
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = i / 255 * (anchors.length - 1), k = Math.min(Math.floor(x), anchors.length - 2), f = x - k;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = anchors[k][c] + (anchors[k + 1][c] - anchors[k][c]) * f;
  }
  return lut;
})();

// ---- the connection --------------------------------------------------------------------------

function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  view.ws = ws;
  ws.onopen = () => { view.retry = 0; setConn(true); };
  ws.onmessage = (m) => {
    let msg;
    try { msg = JSON.parse(m.data); } catch (e) { console.warn("bad message from the server", e); return; }
    if (msg.t === "u") applyUpdate(msg);
    else if (msg.t === "hello") hello(msg);
    else if (msg.t === "pong") pong(msg);
    else if (msg.t === "error") console.warn("server:", msg.why);
  };
  ws.onclose = () => {
    setConn(false);
    const wait = Math.min(10, 2 ** view.retry++);
    setTimeout(connect, wait * 1000);
  };
}

function send(obj) {
  if (view.ws && view.ws.readyState === WebSocket.OPEN) view.ws.send(JSON.stringify(obj));
}

function setConn(up) {
  const c = document.getElementById("conn");
  c.textContent = up ? "live" : "disconnected: retrying";
  c.className = "conn " + (up ? "up" : "down");
}

function hello(msg) {
  view.cfg = msg;
  // a new connection sends every stream again from scratch
  for (const name of [...view.streams.keys()]) removeStream(name);
  const note = document.getElementById("history-note");
  note.textContent = msg.store ? "" : "Start soundbus web with --events-dir DIR (the event store's directory) " +
    "to see the stored history and play clips; events republished on the bus are listed below.";
  if (msg.store) loadHistory();
}

function pong(msg) {
  const t = view.pingSent.get(msg.n);
  if (t !== undefined) {
    view.pingSent.delete(msg.n);
    document.getElementById("rtt").textContent = `round trip ${(performance.now() - t).toFixed(0)} ms`;
  }
}

setInterval(() => {
  const n = ++view.pingN;
  view.pingSent.clear();
  view.pingSent.set(n, performance.now());
  send({t: "ping", n});
}, 5000);

document.addEventListener("visibilitychange", () => send({t: document.hidden ? "pause" : "resume"}));

// ---- updates ---------------------------------------------------------------------------------

function applyUpdate(m) {
  view.updates++;
  if (m.s) {
    for (const [name, entry] of Object.entries(m.s)) {
      const s = ensureStream(name);
      if (entry.spec) drawColumns(s, entry.spec);
      if (entry.st) applySlow(s, entry.st);
      if (entry.f) applyFast(s, entry.f);
    }
  }
  for (const name of m.gone || []) removeStream(name);
  for (const ev of m.ev || []) timelineEvent(ev);
  for (const e of m.stored || []) upsertHistory(e, true);
  if (m.health) renderHealth(m.health);
  for (const s of view.streams.values()) drawTimeline(s);
  document.getElementById("no-streams").hidden = view.streams.size > 0;
}

function ensureStream(name) {
  let s = view.streams.get(name);
  if (s) return s;
  const cfg = view.cfg;
  const card = el("div", "stream");
  card.dataset.stream = name;
  const head = el("div", "stream-head");
  const meta = el("span", "stream-meta");
  head.append(el("span", "stream-name", name), meta);
  const meter = el("div", "meter");
  const bar = el("div", "meter-bar"), rms = el("div", "meter-rms"), peak = el("div", "meter-peak");
  bar.append(rms, peak);
  const meterText = el("span", "meter-text", "no audio");
  meter.append(bar, meterText);
  const canvas = el("canvas", "spec");
  canvas.width = cfg.ring;
  canvas.height = cfg.bands;
  canvas.title = `log-mel spectrogram, ${cfg.bands} bands, ${cfg.ring / cfg.col_hz} s`;
  const ctx = canvas.getContext("2d", {willReadFrequently: false});
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const timeline = el("div", "timeline");
  const axis = el("div", "axis");
  axis.append(el("span", "", `−${TIMELINE_S} s`), el("span", "", "onsets / offsets"), el("span", "", "now"));
  const models = el("div", "models");
  const health = el("div", "stream-health");
  card.append(head, meter, canvas, timeline, axis, models, health);
  insertSorted(document.getElementById("streams"), card, name);
  s = {name, card, meta, rms, peak, meterText, canvas, ctx, timeline, models, health,
       nextCol: null, modelRows: new Map(), spans: [], open: new Map(), audioNs: 0, modelOrder: [], idle: false};
  view.streams.set(name, s);
  return s;
}

function insertSorted(parent, card, name) {
  for (const other of parent.children) {
    if (other.dataset.stream > name) { parent.insertBefore(card, other); return; }
  }
  parent.append(card);
}

function removeStream(name) {
  const s = view.streams.get(name);
  if (!s) return;
  s.card.remove();
  view.streams.delete(name);
}

// Columns arrive oldest first; column i of a stream is drawn at the right edge, the rest scrolls left.
function drawColumns(s, spec) {
  const cfg = view.cfg, W = s.canvas.width, B = cfg.bands;
  const bin = atob(spec.d);
  const n = spec.n;
  let gap = 0;
  if (s.nextCol !== null && spec.i > s.nextCol) gap = Math.min(spec.i - s.nextCol, W);  // skipped: a slow tab
  const shift = Math.min(n + gap, W);
  const ctx = s.ctx;
  ctx.drawImage(s.canvas, -shift, 0);
  const img = ctx.createImageData(n, B);
  const px = img.data;
  for (let x = 0; x < n; x++) {
    for (let b = 0; b < B; b++) {
      const v = bin.charCodeAt(x * B + b);
      const o = ((B - 1 - b) * n + x) * 4;    // low bands at the bottom
      px[o] = LUT[v * 3]; px[o + 1] = LUT[v * 3 + 1]; px[o + 2] = LUT[v * 3 + 2]; px[o + 3] = 255;
    }
  }
  if (gap > 0) {
    ctx.fillStyle = "#333";
    ctx.fillRect(W - shift, 0, shift - n, B);
  }
  ctx.putImageData(img, W - n, 0);
  s.nextCol = spec.i + n;
}

function applySlow(s, st) {
  const idle = st.ended || st.idle > view.cfg.idle_s;
  s.idle = idle;
  s.card.classList.toggle("idle", idle);
  const bits = [];
  if (st.rate) bits.push(`${st.rate / 1000} kHz × ${st.channels}`);
  if (st.source_state) bits.push(st.source_state);
  if (st.ended) bits.push("ended");
  else if (idle) bits.push(`idle ${Math.round(st.idle)} s`);
  if (st.source) bits.push(st.source);
  s.meta.textContent = bits.join(" · ");
  s.modelOrder = Object.keys(st.models).sort();
  renderStreamHealth(s, st);
}

function applyFast(s, f) {
  s.audioNs = Math.max(s.audioNs, f.audio_ns || 0);
  if (f.level && !s.idle) {
    const [rms, peak] = f.level;
    s.rms.style.width = `${Math.max(0, Math.min(100, (rms + 60) / 60 * 100))}%`;
    s.peak.style.left = `${Math.max(0, Math.min(100, (peak + 60) / 60 * 100))}%`;
    s.meterText.textContent = `rms ${rms.toFixed(1)} dBFS · peak ${peak.toFixed(1)}`;
  } else {
    s.rms.style.width = "0";
    s.meterText.textContent = "no audio";
  }
  for (const [model, [labels, on]] of Object.entries(f.models)) renderModel(s, model, labels, on);
  for (const [model, row] of s.modelRows) {
    if (!(model in f.models)) { row.remove(); s.modelRows.delete(model); }
  }
}

function renderModel(s, model, labels, on) {
  let row = s.modelRows.get(model);
  if (!row) {
    row = el("div", "model");
    row.dataset.model = model;
    s.modelRows.set(model, row);
    const names = [...s.modelRows.keys()].sort();
    const next = names[names.indexOf(model) + 1];
    const after = next !== undefined ? s.modelRows.get(next) : null;
    s.models.insertBefore(row, after && after.parentNode ? after : null);
  }
  row.replaceChildren(el("span", "model-name", model));
  const items = labels.slice();
  for (const name of Object.keys(on)) {
    if (!items.some(([n]) => n === name)) items.push([name, on[name][1]]);
  }
  const shown = new Set();
  for (const [name, score] of items) {
    if (shown.has(name)) continue;
    shown.add(name);
    const chip = el("span", "label" + (name in on ? " on" : ""));
    chip.dataset.label = name;
    const barEl = el("span", "bar");
    barEl.style.width = `${Math.round(score * 100)}%`;
    chip.append(barEl, el("span", "", `${name} ${score.toFixed(2)}`));
    row.append(chip);
  }
}

function renderStreamHealth(s, st) {
  const parts = [];
  const t = st.tensor;
  if (t.messages) {
    const p = el("span", t.gaps || t.lost_ms ? "bad" : "", `audio: ${t.gaps} gaps, ${t.lost_ms} ms lost`);
    parts.push(p);
  }
  for (const model of s.modelOrder) {
    const m = st.models[model];
    const bad = m.missing || m.lost_ms;
    const txt = `${model}: ${m.results} results, ${m.missing} missing, ${m.lost_ms} ms lost` +
      (m.age_ms !== null ? `, ${Math.round(m.age_ms)} ms behind the audio` : "");
    parts.push(el("span", bad ? "bad" : "", txt));
    if (m.latency.length) {
      parts.push(el("span", "", " · latency " + m.latency.map(([seg, mean, max]) =>
        `${seg} ${mean.toFixed(1)}/${max.toFixed(1)}`).join(", ") + " ms (mean/max)"));
    }
  }
  s.health.replaceChildren();
  parts.forEach((p, i) => { if (i) s.health.append(el("br")); s.health.append(p); });
}

// ---- the timeline: onsets and offsets of the last TIMELINE_S seconds -------------------------

function timelineEvent(ev) {
  const s = view.streams.get(ev.stream) || ensureStream(ev.stream);
  const key = ev.model + "\u0000" + ev.label;
  if (ev.state === "start") {
    const old = s.open.get(key);
    if (old) closeSpan(s, key, old, ev.t_ns);
    const span = makeSpan(s, ev, ev.t_ns, null);
    s.open.set(key, span);
  } else {
    const open = s.open.get(key);
    if (open) closeSpan(s, key, open, ev.t_ns);
    else makeSpan(s, ev, ev.since_ns, ev.t_ns);
  }
  s.audioNs = Math.max(s.audioNs, ev.t_ns);
}

function makeSpan(s, ev, start, end) {
  const e = el("div", "span " + (end === null ? "on" : "closed"));
  e.dataset.label = ev.label;
  e.dataset.model = ev.model;
  e.dataset.state = end === null ? "on" : "closed";
  e.style.background = labelColour(ev.label);
  e.title = `${ev.model}: ${ev.label} (${ev.score.toFixed(2)})`;
  s.timeline.append(e);
  const span = {el: e, model: ev.model, start, end};
  s.spans.push(span);
  while (s.spans.length > MAX_SPANS) s.spans.shift().el.remove();
  return span;
}

function closeSpan(s, key, span, end) {
  span.end = end;
  span.el.classList.replace("on", "closed");
  span.el.dataset.state = "closed";
  s.open.delete(key);
}

function drawTimeline(s) {
  const right = s.audioNs, left = right - TIMELINE_S * NS;
  const rows = s.modelOrder.length ? s.modelOrder : [...new Set(s.spans.map((x) => x.model))].sort();
  const rowH = Math.max(4, Math.floor(28 / Math.max(1, rows.length)));
  s.spans = s.spans.filter((sp) => {
    const end = sp.end === null ? right : sp.end;
    if (end < left) { sp.el.remove(); return false; }
    const x0 = Math.max(0, (sp.start - left) / (right - left)), x1 = Math.min(1, (end - left) / (right - left));
    sp.el.style.left = `${(x0 * 100).toFixed(2)}%`;
    sp.el.style.width = `${Math.max(0, (x1 - x0) * 100).toFixed(2)}%`;
    sp.el.style.top = `${1 + Math.max(0, rows.indexOf(sp.model)) * rowH}px`;
    sp.el.style.height = `${rowH - 2}px`;
    return true;
  });
}

// ---- the event history (the event store) -----------------------------------------------------

async function loadHistory() {
  try {
    const r = await fetch("/api/events?limit=100", {credentials: "same-origin"});
    if (!r.ok) {
      document.getElementById("history-note").textContent = `event store: ${await r.text()}`;
      return;
    }
    const body = await r.json();
    for (const e of body.events.reverse()) upsertHistory(e, false);
  } catch (e) {
    document.getElementById("history-note").textContent = "cannot load the event history: " + e;
  }
}

function upsertHistory(e, live) {
  let h = view.history.get(e.id);
  const tbody = document.querySelector("#history tbody");
  if (!h) {
    const row = el("tr");
    row.dataset.id = e.id;
    h = {row, cells: [], clip: null};
    for (let i = 0; i < 8; i++) { const td = el("td"); h.cells.push(td); row.append(td); }
    h.cells[0].className = h.cells[5].className = h.cells[6].className = "num";
    // newest first: before the first row with a smaller id
    let before = null;
    for (const other of tbody.children) { if (Number(other.dataset.id) < e.id) { before = other; break; } }
    tbody.insertBefore(row, before);
    view.history.set(e.id, h);
    if (live) { row.classList.add("fresh"); setTimeout(() => row.classList.remove("fresh"), 3000); }
    while (view.history.size > MAX_HISTORY) {
      const oldest = Math.min(...view.history.keys());
      view.history.get(oldest).row.remove();
      view.history.delete(oldest);
    }
  }
  const c = h.cells;
  c[0].textContent = e.id;
  c[1].textContent = fmtTime(e.start_ns);
  c[2].textContent = e.stream;
  c[3].textContent = e.model;
  c[4].textContent = e.label;
  c[5].textContent = e.end_ns ? `${((e.end_ns - e.start_ns) / NS).toFixed(2)} s` : "on";
  c[6].textContent = e.peak.toFixed(2);
  h.row.dataset.label = e.label;
  if (e.clip && view.cfg && view.cfg.store) {
    if (!h.clip) {
      const audio = el("audio");
      audio.controls = true;
      audio.preload = "none";
      audio.src = `/clips/${e.id}`;
      h.clip = audio;
      c[7].replaceChildren(audio);
    }
  } else if (!h.clip) {
    c[7].textContent = e.clip ? "clip (no --events-dir)" : (e.clip_status || (e.end_ns ? "pending" : "when it ends"));
  }
}

// ---- health ----------------------------------------------------------------------------------

function renderHealth(h) {
  const stages = document.querySelector("#stages tbody");
  stages.replaceChildren(...h.stages.map((st) => {
    const tr = el("tr");
    tr.dataset.stage = st.stage;
    tr.append(el("td", "", st.stage), el("td", "num", `${st.seen_s.toFixed(1)} s ago`),
              el("td", st.up ? "ok" : "bad", st.up ? "up" : "silent"));
    return tr;
  }));
  const files = document.querySelector("#files tbody");
  document.getElementById("files").hidden = document.getElementById("files-title").hidden = !h.files.length;
  files.replaceChildren(...h.files.map((f) => {
    const tr = el("tr");
    if (f.error) {
      tr.append(el("td", "", f.path), el("td", "bad", f.error));
      return tr;
    }
    tr.append(el("td", "", f.stage), el("td", f.ok ? "ok" : "bad", f.ok ? "ok" : (f.stale ? "stale" : "not ok")),
              el("td", "num", `${f.age_s} s ago`),
              el("td", "", f.input_connected ? `connected, ${f.seconds_since_input} s since input` : "not connected"),
              el("td", "num", `${f.messages_in} / ${f.messages_out}`), el("td", "num", String(f.bad)));
    return tr;
  }));
  const w = h.web;
  const sent = Object.values(w.sent_bytes_per_s).reduce((a, b) => a + b, 0);
  const nStreams = Object.keys(w.sent_bytes_per_s).length;
  const rows = [
    ["inputs", `${w.inputs_connected} connected: ${w.inputs.join(", ")}`],
    ["messages in", String(w.messages)],
    ["bad messages", Object.entries(w.bad).map(([k, v]) => `${k} ${v}`).join(", ") || "0"],
    ["dropped", Object.entries(w.drops).map(([k, v]) => `${k} ${v}`).join(", ") || "0"],
    ["gaps (messages missing)", String(w.gaps)],
    ["streams", String(w.streams)],
    ["browsers", `${w.clients} connected, ${w.clients_refused} refused, ${w.ws_bad} bad messages`],
    ["sent", `${fmtBytes(sent + w.sent_other_bytes_per_s)}/s` +
      (nStreams && w.clients ? ` (${fmtBytes(sent / nStreams / w.clients)}/s per stream per browser)` : "")],
    ["server CPU", `${w.cpu_pct}% of a core`],
    ["event store", w.store || "not given (--events-dir)"],
  ];
  document.getElementById("web-health").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", v)]));
  document.getElementById("summary").textContent =
    `${w.streams} stream(s) · ${w.clients} browser(s) · server ${w.cpu_pct}% CPU`;
}

connect();
