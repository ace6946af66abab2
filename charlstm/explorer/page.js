// The charlstm gate explorer: everything runs from the data blocks in this file, offline.
// META is the JSON document (charlstm/explorer/payload.py); the signal blocks are gzip+base64,
// decoded the first time a view needs them. The text is only ever set with textContent.
"use strict";

const META = JSON.parse(document.getElementById("meta").textContent);
const CHARS = Array.from(META.text); // one entry per code point, as Python indexes the text
const N = CHARS.length;
const L = META.config.layers;
const H = META.config.hidden;
const SIGNALS = META.signals;
const UNIT_SCALE = new Set(META.unit_scale);
const REACH = META.reach;
const K = REACH.lags;
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------------------------------
// Data blocks

const decoded = new Map();
const B64 = new Uint8Array(128);
"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".split("").forEach((c, i) => { B64[c.charCodeAt(0)] = i; });

function base64Bytes(text) {
  const s = text.replace(/[^A-Za-z0-9+/]/g, "");
  const out = new Uint8Array(Math.floor(s.length * 3 / 4));
  let o = 0;
  for (let i = 0; i < s.length; i += 4) {
    const a = B64[s.charCodeAt(i)], b = B64[s.charCodeAt(i + 1)];
    const c = i + 2 < s.length ? B64[s.charCodeAt(i + 2)] : 0, d = i + 3 < s.length ? B64[s.charCodeAt(i + 3)] : 0;
    const n = (a << 18) | (b << 12) | (c << 6) | d;
    if (o < out.length) out[o++] = n >> 16;
    if (o < out.length) out[o++] = (n >> 8) & 255;
    if (o < out.length) out[o++] = n & 255;
  }
  return out;
}

async function block(name) {
  if (!decoded.has(name)) {
    decoded.set(name, (async () => {
      const packed = base64Bytes($("data-" + name).textContent);
      const stream = new Blob([packed]).stream().pipeThrough(new DecompressionStream("gzip"));
      return new Uint8Array(await new Response(stream).arrayBuffer());
    })());
  }
  return decoded.get(name);
}

const keptIndex = META.kept.map((units) => new Map(units.map((u, k) => [u, k])));
const layerData = []; // per layer: {signal: Uint8Array (kept, N)} once decoded

async function ensureLayer(layer) {
  if (!layerData[layer]) {
    const entries = await Promise.all(SIGNALS.map(async (s) => [s, await block(META.blocks[`L${layer + 1}.${s}`])]));
    layerData[layer] = Object.fromEntries(entries);
  }
  return layerData[layer];
}

function value(code, signal) { return UNIT_SCALE.has(signal) ? code / 255 : code / 127.5 - 1; }
function hasData(unit) { return keptIndex[unit.layer].has(unit.index); }
function codeAt(unit, signal, t) {
  const row = keptIndex[unit.layer].get(unit.index);
  return layerData[unit.layer][signal][row * N + t];
}

let guessIds = null, guessProbs = null, reachCodes = null;

// ------------------------------------------------------------------------------------------
// Colour scales: viridis for i, f, o on [0, 1]; RdBu (blue -1, red +1) for g, tanh c, h;
// cividis for the reach's log scale. 256-entry tables interpolated from published stops.

function table(stops) {
  const rgb = stops.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
  const out = [];
  for (let q = 0; q < 256; q++) {
    const u = q / 255 * (rgb.length - 1), k = Math.min(Math.floor(u), rgb.length - 2), f = u - k;
    out.push(rgb[k].map((a, n) => Math.round(a + (rgb[k + 1][n] - a) * f)));
  }
  return out;
}
const SCALES = {
  viridis: table(["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]),
  rdbu: table(["#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f"]),
  cividis: table(["#00224e", "#123570", "#3b496c", "#575d6d", "#707173", "#8a8779", "#a69d75", "#c4b56c", "#e4cf5b", "#fee838"]),
};
const CSS = {}, INK = {}, PACKED = {};
for (const [name, lut] of Object.entries(SCALES)) {
  CSS[name] = lut.map(([r, g, b]) => `rgb(${r},${g},${b})`);
  INK[name] = lut.map(([r, g, b]) => (0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#000" : "#fff"));
  PACKED[name] = new Uint32Array(lut.map(([r, g, b]) => (255 << 24) | (b << 16) | (g << 8) | r));
}
function scaleOf(signal) { return UNIT_SCALE.has(signal) ? "viridis" : "rdbu"; }

function svg(tag, attrs, parent) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}
function svgText(parent, x, y, text, anchor) {
  const t = svg("text", { x, y, "text-anchor": anchor || "start" }, parent);
  t.textContent = text;
  return t;
}

function legendBar(scale, ticks, label) {
  const box = svg("svg", { width: 360, height: 34, role: "img", "aria-label": label });
  const id = "grad-" + scale;
  const grad = svg("linearGradient", { id }, svg("defs", {}, box));
  for (let q = 0; q <= 8; q++) svg("stop", { offset: q / 8, "stop-color": CSS[scale][Math.round(q / 8 * 255)] }, grad);
  svg("rect", { x: 10, y: 2, width: 200, height: 12, fill: `url(#${id})`, stroke: "#888" }, box);
  for (const [u, text] of ticks) {
    svg("line", { x1: 10 + 200 * u, x2: 10 + 200 * u, y1: 14, y2: 18, stroke: "#333" }, box);
    svgText(box, 10 + 200 * u, 29, text, "middle");
  }
  svgText(box, 214, 12, label);
  return box;
}

// ------------------------------------------------------------------------------------------
// State, kept in the URL hash: #unit=L2:7&signal=c&pos=12&colour=signal

const state = { unit: null, signal: "c", pos: 0, colour: "signal" };

function parseUnit(text) {
  const m = /^\s*L?(\d+)\s*:\s*(\d+)\s*$/i.exec(text || "");
  if (!m) return null;
  const layer = +m[1] - 1, index = +m[2];
  return layer >= 0 && layer < L && index >= 0 && index < H ? { layer, index } : null;
}
function unitName(u) { return `L${u.layer + 1}:${u.index}`; }

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const unit = parseUnit(params.get("unit"));
  if (unit) state.unit = unit;
  if (SIGNALS.includes(params.get("signal"))) state.signal = params.get("signal");
  const pos = parseInt(params.get("pos"), 10);
  if (pos >= 0 && pos < N) state.pos = pos;
  if (["signal", "reach"].includes(params.get("colour"))) state.colour = params.get("colour");
}
function writeHash() {
  const h = `#unit=${unitName(state.unit)}&signal=${state.signal}&pos=${state.pos}&colour=${state.colour}`;
  if (location.hash === h) return;
  try { history.replaceState(null, "", h); } catch (e) { location.hash = h; }
}

// ------------------------------------------------------------------------------------------
// Header: shape, bits per character, validation curve

function drawHeader() {
  const c = META.config;
  const bpc = META.bits_per_char === null ? "no prediction to score" : `${META.bits_per_char.toFixed(3)} bits per character on this text`;
  $("shape").textContent = `${META.model} · ${c.layers} layer${c.layers > 1 ? "s" : ""} × ${c.hidden} units · ${c.cell.toUpperCase()} · ` +
    `${c.vocab_size} characters · ${c.embed ? "embedding " + c.embed : "one-hot input"} · ${N.toLocaleString("en")} characters read` +
    (META.warmup_chars ? ` after ${META.warmup_chars} of warm-up` : "") + ` · ${bpc}`;
  const box = $("curve");
  const val = (META.curves && META.curves.validation) || [];
  if (val.length < 2) {
    box.textContent = val.length ? `validation loss ${val[0][1].toFixed(3)} at step ${val[0][0]}` : "no validation record in this checkpoint";
    box.className = "note";
    return;
  }
  const W = 260, Hh = 70, steps = val.map((p) => p[0]), loss = val.map((p) => p[1]);
  const x0 = Math.min(...steps), x1 = Math.max(...steps), y0 = Math.min(...loss), y1 = Math.max(...loss);
  const plot = svg("svg", { width: W + 60, height: Hh + 24, role: "img", "aria-label": "validation loss against the step" }, box);
  const px = (s) => 40 + (s - x0) / (x1 - x0 || 1) * W, py = (v) => 6 + (y1 - v) / (y1 - y0 || 1) * Hh;
  svg("polyline", { points: val.map((p) => `${px(p[0])},${py(p[1])}`).join(" "), fill: "none", stroke: "#7b3294", "stroke-width": 1.5 }, plot);
  svgText(plot, 36, py(y1) + 4, y1.toFixed(2), "end");
  svgText(plot, 36, py(y0) + 4, y0.toFixed(2), "end");
  svgText(plot, 40, Hh + 20, `step ${x0}`);
  svgText(plot, 40 + W, Hh + 20, `${x1} · validation loss (nats)`, "end");
}

// ------------------------------------------------------------------------------------------
// The text: one cell per character, newline, tab and space drawn visibly

const cells = [];
function drawText() {
  const box = $("text"), frag = document.createDocumentFragment();
  for (let t = 0; t < N; t++) {
    const ch = CHARS[t], span = document.createElement("span");
    span.dataset.pos = t;
    if (ch === "\n") { span.textContent = "⏎"; span.className = "ws"; }
    else if (ch === "\t") { span.textContent = "→"; span.className = "ws"; }
    else if (ch === " ") { span.textContent = "·"; span.className = "ws"; }
    else if (/\p{C}|\p{Zl}|\p{Zp}/u.test(ch)) { span.textContent = "▯"; span.className = "ws"; }
    else span.textContent = ch;
    frag.appendChild(span);
    cells.push(span);
    if (ch === "\n") frag.appendChild(document.createElement("br"));
  }
  box.appendChild(frag);
}

function describeChar(ch) {
  const names = { "\n": "newline", "\t": "tab", " ": "space" };
  return names[ch] || (/\p{C}/u.test(ch) ? "U+" + ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0") : `“${ch}”`);
}

let reachPainted = [];
function paintText() {
  for (const t of reachPainted) { cells[t].style.background = ""; cells[t].style.color = ""; }
  reachPainted = [];
  const unit = state.unit;
  if (state.colour === "reach") {
    for (const span of cells) { span.style.background = ""; span.style.color = ""; }
    paintReach();
    return;
  }
  if (!hasData(unit)) {
    for (const span of cells) { span.style.background = ""; span.style.color = ""; }
    return;
  }
  const scale = scaleOf(state.signal), row = keptIndex[unit.layer].get(unit.index) * N;
  const codes = layerData[unit.layer][state.signal], css = CSS[scale], ink = INK[scale];
  for (let t = 0; t < N; t++) {
    const q = codes[row + t];
    cells[t].style.background = css[q];
    cells[t].style.color = ink[q];
  }
}

function paintReach() {
  const t = state.pos;
  if (!reachCodes || t >= REACH.targets) return;
  for (let k = 0; k <= K && t - k >= 0; k++) {
    const q = reachCodes[t * (K + 1) + k];
    if (!q) continue;
    const level = Math.round((q - 1) / 254 * 255);
    cells[t - k].style.background = CSS.cividis[level];
    cells[t - k].style.color = INK.cividis[level];
    reachPainted.push(t - k);
  }
}

function reachAt(t, k) {
  const q = reachCodes[t * (K + 1) + k];
  if (!q) return null;
  const [lo, hi] = REACH.domain;
  return Math.exp(Math.log(lo) + (q - 1) / 254 * (Math.log(hi) - Math.log(lo)));
}

// ------------------------------------------------------------------------------------------
// Cursor and tooltip

function moveCursor(t, focusText) {
  t = Math.max(0, Math.min(N - 1, t));
  cells[state.pos].classList.remove("cursor");
  state.pos = t;
  cells[t].classList.add("cursor");
  if (focusText) cells[t].scrollIntoView({ block: "nearest" });
  if (state.colour === "reach") paintText();
  showTooltip();
  writeHash();
}

function showTooltip() {
  const tip = $("tooltip"), t = state.pos, unit = state.unit;
  tip.replaceChildren();
  const head = document.createElement("div");
  const strong = document.createElement("strong");
  strong.textContent = describeChar(CHARS[t]);
  head.append(strong, ` at position ${t}`);
  tip.appendChild(head);
  const tableEl = document.createElement("table");
  if (hasData(unit)) {
    for (const s of SIGNALS) {
      const v = value(codeAt(unit, s, t), s), tr = tableEl.insertRow();
      tr.dataset.signal = s;
      tr.dataset.value = v.toFixed(6);
      tr.insertCell().textContent = s === "c" ? "tanh c" : s;
      tr.insertCell().textContent = v.toFixed(3);
      tr.insertCell().textContent = META.signal_roles[s];
    }
    const cap = tableEl.createCaption();
    cap.textContent = `unit ${unitName(unit)}`;
    cap.style.textAlign = "left";
  } else {
    const tr = tableEl.insertRow();
    tr.insertCell().textContent = `no per-character data for ${unitName(unit)} in this page`;
  }
  tip.appendChild(tableEl);
  const bits = META.bits[t];
  const surprise = document.createElement("div");
  surprise.textContent = bits === null ? "surprise: not scored (no prediction before this character)" : `surprise at this character: ${bits.toFixed(2)} bits`;
  tip.appendChild(surprise);
  if (guessIds) {
    const top = META.guesses.top, guesses = document.createElement("div");
    const parts = [];
    for (let k = 0; k < top; k++) {
      const id = guessIds[t * top + k], p = guessProbs[t * top + k] / 65535;
      parts.push(`${describeChar(META.vocab[id])} ${(100 * p).toFixed(1)}%`);
    }
    guesses.textContent = "next, the model's best guesses: " + parts.join(", ");
    guesses.dataset.role = "guesses";
    tip.appendChild(guesses);
  }
  if (reachCodes && t < REACH.targets) {
    const r = document.createElement("div");
    const one = reachAt(t, 0), ten = t >= 10 && K >= 10 ? reachAt(t, 10) : null;
    r.textContent = `reach: ‖∂ log p(next) / ∂ input‖ = ${one.toExponential(2)} here` + (ten === null ? "" : `, ${ten.toExponential(2)} ten back`);
    tip.appendChild(r);
  }
  tip.hidden = false;
  const rect = cells[t].getBoundingClientRect();
  const top = window.scrollY + rect.bottom + 6;
  const left = Math.min(window.scrollX + rect.left, window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 8);
  tip.style.top = `${top}px`;
  tip.style.left = `${Math.max(0, left)}px`;
}

function lineStart(t) { while (t > 0 && CHARS[t - 1] !== "\n") t--; return t; }
function keyMove(event) {
  const t = state.pos;
  let next = null;
  if (event.key === "ArrowLeft") next = t - 1;
  else if (event.key === "ArrowRight") next = t + 1;
  else if (event.key === "Home") next = 0;
  else if (event.key === "End") next = N - 1;
  else if (event.key === "ArrowUp" || event.key === "ArrowDown") {
    const start = lineStart(t), column = t - start;
    if (event.key === "ArrowUp") {
      if (start === 0) return;
      const prev = lineStart(start - 1);
      next = Math.min(prev + column, start - 1);
    } else {
      let end = t;
      while (end < N && CHARS[end] !== "\n") end++;
      if (end >= N - 1) return;
      let after = end + 1;
      while (after < N && after - (end + 1) < column && CHARS[after] !== "\n") after++;
      next = after;
    }
  } else if (event.key === "Escape") { $("tooltip").hidden = true; event.preventDefault(); return; }
  if (next === null) return;
  event.preventDefault();
  moveCursor(next, true);
}

// ------------------------------------------------------------------------------------------
// Signal buttons, unit input, legend

function drawControls() {
  const group = $("signal-buttons");
  for (const s of SIGNALS) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = s;
    b.title = META.signal_help[s];
    b.dataset.signal = s;
    b.addEventListener("click", () => selectSignal(s));
    group.appendChild(b);
  }
  $("unit-input").addEventListener("change", (e) => {
    const unit = parseUnit(e.target.value);
    if (unit) selectUnit(unit); else e.target.value = unitName(state.unit);
  });
  $("colour-mode").addEventListener("change", (e) => { state.colour = e.target.value; refresh(); });
}

function drawLegend() {
  const box = $("legend");
  box.replaceChildren();
  if (state.colour === "reach") {
    const [lo, hi] = REACH.domain, span = Math.log10(hi) - Math.log10(lo), ticks = [];
    for (let e = Math.ceil(Math.log10(lo)); e <= Math.floor(Math.log10(hi)); e++) ticks.push([(e - Math.log10(lo)) / span, `1e${e}`]);
    box.appendChild(legendBar("cividis", ticks, "‖∂ log p / ∂ input‖ (log)"));
  } else if (UNIT_SCALE.has(state.signal)) {
    box.appendChild(legendBar("viridis", [[0, "0 shut"], [0.5, "0.5"], [1, "1 open"]], state.signal));
  } else {
    box.appendChild(legendBar("rdbu", [[0, "-1"], [0.5, "0"], [1, "+1"]], state.signal === "c" ? "tanh c" : state.signal));
  }
  const help = document.createElement("span");
  help.className = "note";
  help.textContent = state.colour === "reach" ? " the fixed domain is the same for every position" : " " + META.signal_help[state.signal];
  box.appendChild(help);
}

async function selectUnit(unit) {
  state.unit = unit;
  await ensureLayer(unit.layer);
  refresh();
}
function selectSignal(signal) { state.signal = signal; refresh(); }

function refresh() {
  $("unit-input").value = unitName(state.unit);
  for (const b of $("signal-buttons").children) b.setAttribute("aria-pressed", String(b.dataset.signal === state.signal));
  $("colour-mode").value = state.colour;
  drawLegend();
  paintText();
  cells[state.pos].classList.add("cursor");
  if (!$("tooltip").hidden) showTooltip();
  markUnitRows();
  drawSaturation();
  writeHash();
}

// ------------------------------------------------------------------------------------------
// Heatmap: units x characters on a canvas that redraws what the scroll box shows

const ZOOMS = [[0.25, 1], [0.5, 1], [1, 2], [2, 3], [4, 5], [8, 8]]; // pixels per character, per unit row
let hmRows = [];

function setupHeatmap() {
  for (let l = 0; l < L; l++) $("hm-layer").add(new Option(`L${l + 1}`, l));
  $("hm-layer").value = L - 1;
  for (const s of SIGNALS) $("hm-signal").add(new Option(s === "c" ? "c (tanh c)" : s, s));
  $("hm-signal").value = META.ranked_signal;
  for (const [name, r] of Object.entries(META.rankings)) if (r.available) $("hm-order").add(new Option(name, name));
  $("hm-order").add(new Option("unit number", "index"));
  $("hm-order").value = META.default_ranking in META.rankings && META.rankings[META.default_ranking].available ? META.default_ranking : "index";
  for (const id of ["hm-layer", "hm-signal", "hm-order", "hm-zoom"]) $(id).addEventListener("input", () => drawHeatmap());
  $("hm-scroll").addEventListener("scroll", () => paintHeatmap());
  $("hm-canvas").addEventListener("click", (e) => {
    const [zx, zy] = ZOOMS[+$("hm-zoom").value], box = $("hm-scroll");
    const rect = $("hm-canvas").getBoundingClientRect();
    const row = Math.floor((e.clientY - rect.top + box.scrollTop) / zy), t = Math.floor((e.clientX - rect.left + box.scrollLeft) / zx);
    if (row < hmRows.length) {
      selectUnit({ layer: +$("hm-layer").value, index: hmRows[row] });
      if (t < N) moveCursor(t, false);
    }
  });
}

async function drawHeatmap() {
  const layer = +$("hm-layer").value, order = $("hm-order").value;
  await ensureLayer(layer);
  const kept = META.kept[layer];
  if (order === "index") hmRows = kept.slice();
  else {
    const ranked = META.rankings[order].rows.filter((r) => r[0] === layer && keptIndex[layer].has(r[1]));
    hmRows = ranked.map((r) => r[1]);
  }
  const [zx, zy] = ZOOMS[+$("hm-zoom").value];
  $("hm-space").style.width = `${Math.ceil(N * zx)}px`;
  $("hm-space").style.height = `${hmRows.length * zy}px`;
  $("hm-note").textContent = kept.length < H ? `${kept.length} of ${H} units of this layer have per-character data in this page` : "";
  paintHeatmap();
}

function paintHeatmap() {
  const canvas = $("hm-canvas"), box = $("hm-scroll"), layer = +$("hm-layer").value, signal = $("hm-signal").value;
  if (!layerData[layer]) return;
  const [zx, zy] = ZOOMS[+$("hm-zoom").value];
  const w = Math.max(1, Math.min(box.clientWidth, Math.ceil(N * zx))), h = Math.max(1, Math.min(box.clientHeight, hmRows.length * zy));
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const image = new ImageData(w, h), pixels = new Uint32Array(image.data.buffer);
  const lut = PACKED[scaleOf(signal)], codes = layerData[layer][signal];
  const x0 = box.scrollLeft, y0 = box.scrollTop;
  const columns = new Int32Array(w);
  for (let x = 0; x < w; x++) columns[x] = Math.min(N - 1, Math.floor((x0 + x) / zx));
  for (let y = 0; y < h; y++) {
    const r = Math.floor((y0 + y) / zy);
    if (r >= hmRows.length) break;
    const base = keptIndex[layer].get(hmRows[r]) * N, line = y * w;
    for (let x = 0; x < w; x++) pixels[line + x] = lut[codes[base + columns[x]]];
  }
  canvas.getContext("2d").putImageData(image, 0, 0);
}

// ------------------------------------------------------------------------------------------
// Unit table

function setupUnitTable() {
  const select = $("rank-select");
  for (const [name, r] of Object.entries(META.rankings)) {
    const label = r.custom ? `feature /${name}/` : name;
    select.add(new Option(r.available ? label : `${label} (not on this text)`, name));
  }
  select.value = META.default_ranking in META.rankings ? META.default_ranking : "variance";
  select.addEventListener("change", drawUnitTable);
  $("unit-table").addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-unit]");
    if (tr) selectUnit(parseUnit(tr.dataset.unit));
  });
}

function drawUnitTable() {
  const r = META.rankings[$("rank-select").value];
  const head = $("unit-table").tHead, body = $("unit-table").tBodies[0];
  head.replaceChildren();
  body.replaceChildren();
  if (!r.available) { $("rank-note").textContent = r.reason; return; }
  const feature = r.method === "feature";
  $("rank-note").textContent = r.description + (feature ? "; grey: |z| < 3 against the circular-shift null, which chance can give" : "");
  const hr = head.insertRow();
  for (const name of ["unit", "rank", "score", ...(feature ? ["r", "z"] : []), "data"]) {
    const th = document.createElement("th");
    th.textContent = name;
    hr.appendChild(th);
  }
  const frag = document.createDocumentFragment();
  r.rows.forEach((row, rank) => {
    const unit = { layer: row[0], index: row[1] }, tr = document.createElement("tr");
    tr.dataset.unit = unitName(unit);
    const values = [unitName(unit), rank + 1, row[2].toFixed(4)];
    if (feature) values.push(row[3].toFixed(3), row[4].toFixed(1));
    values.push(hasData(unit) ? "full" : "summary");
    for (const v of values) {
      const td = document.createElement("td");
      td.textContent = v;
      if (feature && row[5]) td.className = "chance";
      tr.appendChild(td);
    }
    frag.appendChild(tr);
  });
  body.appendChild(frag);
  markUnitRows();
}

function markUnitRows() {
  const name = unitName(state.unit);
  for (const tr of $("unit-table").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.unit === name);
}

// ------------------------------------------------------------------------------------------
// Saturation (Karpathy, Johnson & Fei-Fei 2015, Fig. 4): per layer and gate

function drawSaturation() {
  const box = $("saturation"), S = 150;
  box.replaceChildren();
  for (const el of document.querySelectorAll(".left-th")) el.textContent = META.thresholds.left;
  for (const el of document.querySelectorAll(".right-th")) el.textContent = META.thresholds.right;
  if (!META.saturation.gates.length) {
    box.textContent = "A plain RNN has no gates: nothing shuts or opens. The reach below shows how far back it still sees.";
    box.className = "note";
    return;
  }
  for (let l = 0; l < L; l++) {
    META.saturation.gates.forEach((gate, k) => {
      const plot = svg("svg", { width: S + 40, height: S + 40, role: "img", "aria-label": `layer ${l + 1} gate ${gate} saturation` }, box);
      svg("rect", { x: 30, y: 5, width: S, height: S, fill: "#fafafa", stroke: "#aaa" }, plot);
      svg("line", { x1: 30, y1: 5, x2: 30 + S, y2: 5 + S, stroke: "#ddd" }, plot);
      const left = META.saturation.left[l][k], right = META.saturation.right[l][k];
      for (let j = 0; j < H; j++) {
        svg("circle", { cx: 30 + left[j] * S, cy: 5 + (1 - right[j]) * S, r: 1.6, fill: "#3b528b", "fill-opacity": 0.5 }, plot);
      }
      if (state.unit && state.unit.layer === l) {
        const j = state.unit.index;
        svg("circle", { cx: 30 + left[j] * S, cy: 5 + (1 - right[j]) * S, r: 4, fill: "none", stroke: "#c0392b", "stroke-width": 2 }, plot);
      }
      svgText(plot, 30 + S / 2, S + 20, `L${l + 1} ${gate}: share shut →`, "middle");
      const t = svgText(plot, 12, 5 + S / 2, "open ↑", "middle");
      t.setAttribute("transform", `rotate(-90 12 ${5 + S / 2})`);
      svgText(plot, 30, S + 34, "0");
      svgText(plot, 30 + S, S + 34, "1", "end");
    });
  }
}

// ------------------------------------------------------------------------------------------
// Select and match (as LSTMVis): units on across a brushed range and off just outside it

let brush = null, dragFrom = null, matchedCells = [];

function setupBrush() {
  const box = $("text");
  box.addEventListener("mousedown", (e) => {
    const span = e.target.closest("span[data-pos]");
    if (span) { dragFrom = +span.dataset.pos; e.preventDefault(); }
  });
  box.addEventListener("mouseover", (e) => {
    const span = e.target.closest("span[data-pos]");
    if (!span) return;
    const t = +span.dataset.pos;
    if (dragFrom !== null) setBrush(Math.min(dragFrom, t), Math.max(dragFrom, t));
    if (t !== state.pos) moveCursor(t, false); else showTooltip();
  });
  document.addEventListener("mouseup", () => {
    if (dragFrom !== null) { dragFrom = null; if (brush) drawMatches(); }
  });
  box.addEventListener("mouseleave", () => { if (dragFrom === null) $("tooltip").hidden = true; });
  box.addEventListener("focus", () => showTooltip());
  box.addEventListener("keydown", keyMove);
  $("threshold").addEventListener("input", () => { $("threshold-value").textContent = (+$("threshold").value).toFixed(2); if (brush) drawMatches(); });
}

function setBrush(a, b) {
  if (brush) for (let t = brush[0]; t <= brush[1]; t++) cells[t].classList.remove("brushed");
  brush = [a, b];
  for (let t = a; t <= b; t++) cells[t].classList.add("brushed");
}

function unitsOn(layer, signal, a, b, theta) {
  const codes = layerData[layer][signal], out = [];
  META.kept[layer].forEach((unit, row) => {
    const base = row * N;
    for (let t = a; t <= b; t++) if (value(codes[base + t], signal) < theta) return;
    if (a > 0 && value(codes[base + a - 1], signal) >= theta) return;
    if (b < N - 1 && value(codes[base + b + 1], signal) >= theta) return;
    out.push(row);
  });
  return out;
}

async function drawMatches() {
  const layer = +$("hm-layer").value, signal = $("hm-signal").value, theta = +$("threshold").value;
  await ensureLayer(layer);
  const [a, b] = brush;
  $("brush-note").textContent = `range ${a}–${b} (${b - a + 1} characters), units of layer L${layer + 1}, signal ${signal} (the heatmap's)`;
  const rows = unitsOn(layer, signal, a, b, theta);
  const list = $("match-units");
  list.replaceChildren();
  for (const row of rows) {
    const unit = { layer, index: META.kept[layer][row] }, li = document.createElement("li"), btn = document.createElement("button");
    btn.textContent = unitName(unit);
    btn.dataset.unit = unitName(unit);
    btn.addEventListener("click", () => selectUnit(unit));
    li.appendChild(btn);
    list.appendChild(li);
  }
  if (!rows.length) list.textContent = "no unit at this threshold: lower it, or brush a shorter range";
  drawThresholdChart(layer, signal, a, b, theta);
  findMatches(layer, signal, rows, a, b, theta);
}

function drawThresholdChart(layer, signal, a, b, theta) {
  const box = $("threshold-chart");
  box.replaceChildren();
  const thetas = [];
  for (let q = 1; q <= 19; q++) thetas.push(q / 20);
  const counts = thetas.map((th) => unitsOn(layer, signal, a, b, th).length), top = Math.max(1, ...counts);
  const plot = svg("svg", { width: 420, height: 90, role: "img", "aria-label": "units selected at each threshold" }, box);
  thetas.forEach((th, k) => {
    const h = counts[k] / top * 60, x = 30 + k * 20;
    svg("rect", { x, y: 70 - h, width: 16, height: h, fill: Math.abs(th - theta) < 1e-9 ? "#c0392b" : "#8da0cb" }, plot);
    svgText(plot, x + 8, 68 - h, String(counts[k]), "middle");
    if (k % 2 === 0) svgText(plot, x + 8, 84, th.toFixed(1), "middle");
  });
  svgText(plot, 420, 12, "units selected per threshold", "end");
}

function findMatches(layer, signal, rows, a, b, theta) {
  for (const t of matchedCells) cells[t].classList.remove("matched");
  matchedCells = [];
  const list = $("matches");
  list.replaceChildren();
  if (!rows.length) return;
  const codes = layerData[layer][signal], need = Math.max(1, Math.ceil(rows.length / 2));
  const count = new Uint16Array(N);
  for (const row of rows) {
    const base = row * N;
    for (let t = 0; t < N; t++) if (value(codes[base + t], signal) >= theta) count[t]++;
  }
  const found = [], length = b - a + 1;
  for (let t = 0; t < N;) {
    if (count[t] < need) { t++; continue; }
    let end = t, sum = 0;
    while (end < N && count[end] >= need) sum += count[end++];
    const overlap = sum / (end - t) / rows.length, n = end - t;
    if (end - 1 < a || t > b) found.push({ start: t, end: end - 1, overlap, score: overlap * Math.min(n, length) / Math.max(n, length) });
    t = end;
  }
  found.sort((x, y) => y.score - x.score || x.start - y.start);
  for (const m of found.slice(0, 25)) {
    const li = document.createElement("li"), btn = document.createElement("button");
    btn.textContent = `@${m.start}: “${CHARS.slice(Math.max(0, m.start - 3), m.end + 2).join("").replace(/\n/g, "⏎")}” · ${(100 * m.overlap).toFixed(0)}% of the units, ${m.end - m.start + 1} chars`;
    btn.addEventListener("click", () => moveCursor(m.start, true));
    li.appendChild(btn);
    list.appendChild(li);
    for (let t = m.start; t <= m.end; t++) { cells[t].classList.add("matched"); matchedCells.push(t); }
  }
  if (!found.length) list.textContent = "nowhere else";
}

// ------------------------------------------------------------------------------------------
// Reach: decay of the sensitivity with the lag, beside the products of the keep gates (f, z)

function logPlot(parent, title, series, band, yLabel, mark) {
  const W = 380, Hh = 180, left = 52;
  const plot = svg("svg", { width: W + left + 20, height: Hh + 50, role: "img", "aria-label": title }, parent);
  const finite = [...series.flatMap((s) => s.values), ...(band ? [...band[0], ...band[1]] : [])].filter((v) => v !== null && v > 0);
  if (!finite.length) { svgText(plot, left, 20, `${title}: nothing to draw`); return; }
  let lo = Math.floor(Math.log10(Math.min(...finite))), hi = Math.ceil(Math.log10(Math.max(...finite)));
  if (hi === lo) hi = lo + 1;
  lo = Math.max(lo, hi - 40);
  const px = (k) => left + k / Math.max(1, K) * W, py = (v) => 10 + (hi - Math.log10(Math.max(v, 10 ** lo))) / (hi - lo) * Hh;
  svg("rect", { x: left, y: 10, width: W, height: Hh, fill: "none", stroke: "#aaa" }, plot);
  const stepE = Math.max(1, Math.ceil((hi - lo) / 8));
  for (let e = lo; e <= hi; e += stepE) {
    svg("line", { x1: left, x2: left + W, y1: py(10 ** e), y2: py(10 ** e), stroke: "#eee" }, plot);
    svgText(plot, left - 4, py(10 ** e) + 3, `1e${e}`, "end");
  }
  for (let k = 0; k <= K; k += Math.max(1, Math.round(K / 5))) svgText(plot, px(k), Hh + 24, String(k), "middle");
  svgText(plot, left + W / 2, Hh + 40, "lag k (characters back)", "middle");
  svgText(plot, left, 8, yLabel);
  if (band) {
    const upper = [], lower = [];
    for (let k = 0; k <= K; k++) if (band[0][k] > 0 && band[1][k] > 0) { upper.push(`${px(k)},${py(band[1][k])}`); lower.unshift(`${px(k)},${py(band[0][k])}`); }
    svg("polygon", { points: [...upper, ...lower].join(" "), fill: "#9ecae1", "fill-opacity": 0.6 }, plot);
  }
  const colours = ["#08519c", "#e6550d", "#31a354", "#756bb1"];
  series.forEach((s, n) => {
    const points = s.values.map((v, k) => (v > 0 ? `${px(k)},${py(v)}` : null)).filter(Boolean);
    svg("polyline", { points: points.join(" "), fill: "none", stroke: colours[n % 4], "stroke-width": 1.8 }, plot);
    svgText(plot, left + W - 4, 24 + 13 * n, s.label, "end").setAttribute("fill", colours[n % 4]);
  });
  if (mark !== null && mark <= K) {
    svg("line", { x1: px(mark), x2: px(mark), y1: 10, y2: 10 + Hh, stroke: "#c0392b", "stroke-dasharray": "4 3" }, plot);
    svgText(plot, px(mark) + 3, 20 + Hh - 14, `BPTT window ${mark}`);
  }
}

function drawReach() {
  const w = REACH.window;
  $("reach-note").textContent = `Each earlier character t−k coloured by ‖∂ log p(next character) / ∂ input at t−k‖₂, the input being the ${REACH.input}` +
    ` (choose "reach" as the text colour, then hover). Computed for the first ${REACH.targets} positions and lags up to ${K}. ` +
    "A gradient measures local sensitivity: how much a small change there would move the prediction, not how much of the prediction came from there." +
    (w ? ` The model was trained with truncated backpropagation over windows of ${w} characters${w > K ? ", beyond these lags" : ""}.` : "");
  const box = $("decay");
  logPlot(box, "sensitivity against the lag", [{ label: "median over positions", values: REACH.median }], [REACH.q1, REACH.q3],
    "‖∂ log p / ∂ input‖ (median, IQR band)", w);
  const keep = REACH.keep_gate;
  if (keep === null) {
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = "A plain RNN has no gate that keeps its state, so no direct path: every step multiplies the gradient by Wh and tanh′.";
    box.appendChild(note);
    return;
  }
  logPlot(box, "direct path through the cell", REACH.forget_product.map((v, l) => ({ label: `layer ${l + 1}`, values: v })), null,
    `direct path through the cell: median ∏ ${keep} over k steps`, w);
}

// ------------------------------------------------------------------------------------------
// Start

async function main() {
  drawHeader();
  drawText();
  drawControls();
  const first = META.rankings[META.default_ranking];
  const best = first && first.available ? first.rows.find((r) => keptIndex[r[0]].has(r[1])) : null;
  state.unit = best ? { layer: best[0], index: best[1] } : { layer: L - 1, index: META.kept[L - 1][0] || 0 };
  state.signal = META.ranked_signal;
  readHash();
  await ensureLayer(state.unit.layer);
  [guessIds, guessProbs, reachCodes] = await Promise.all([block(META.guesses.ids), block(META.guesses.probs), block(REACH.block)]);
  if (META.guesses.wide) guessIds = new Uint16Array(guessIds.buffer);
  guessProbs = new Uint16Array(guessProbs.buffer);
  setupBrush();
  setupUnitTable();
  drawUnitTable();
  setupHeatmap();
  drawReach();
  refresh();
  cells[state.pos].classList.add("cursor");
  await drawHeatmap();
  window.addEventListener("hashchange", async () => { readHash(); await ensureLayer(state.unit.layer); refresh(); });
  $("footer").textContent = `Signals are stored as 8-bit codes: i, f, o on [0, 1] (error ≤ 1/510), g, tanh c and h on [−1, 1] (error ≤ 1/255). ` +
    `Per-character data for ${META.kept.reduce((n, k) => n + k.length, 0)} of ${L * H} units. Made by charlstm inspect-gates.`;
  document.body.dataset.readyMs = String(Math.round(performance.now()));
  document.body.dataset.ready = "true";
}

main().catch((e) => { console.error(e); document.body.dataset.ready = "error"; });
