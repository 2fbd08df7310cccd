// vdb dashboard: reads /stats, /dead-letters and the query routes; never writes.
"use strict";

const KEY_STORE = "vdb-dashboard-api-key";
const REFRESH_MS = 1000;
const DEAD_EVERY = 3;
const HISTORY = 120;

const state = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  collections: [],
  history: new Map(), // pipeline name -> [{t, rate, lag}]
  ticks: 0,
  busy: false,
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// -- formatting ---------------------------------------------------------------------------

function num(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  return Number(n).toLocaleString("en", { maximumFractionDigits: digits });
}
function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toLocaleString("en", { maximumFractionDigits: i ? 1 : 0 })} ${units[i]}`;
}
function ms(n) { return n === null || n === undefined ? "—" : `${num(n, n < 10 ? 2 : 0)} ms`; }
function ago(epochS) {
  if (!epochS) return "never";
  const s = Math.max(0, Date.now() / 1000 - epochS);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}
function score(s) { return Math.abs(s) >= 1000 ? s.toExponential(3) : s.toFixed(4); }
function json(value) { return value === undefined ? "" : JSON.stringify(value); }

// -- the API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, body) {
  const headers = { accept: "application/json" };
  if (state.key) headers["api-key"] = state.key;
  const init = { headers, cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST";
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const message = (data && data.status && data.status.error) || `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return data.result;
}

function setStatus(text, ok) {
  const node = $("#status");
  node.textContent = text;
  node.className = `status ${ok ? "ok" : "bad"}`;
}

function needKey(message) {
  $("#key-form").classList.add("needed");
  setStatus(message, false);
}

// -- rendering: database and collections ---------------------------------------------------

function card(label, value, figure) {
  return el("div", { class: "card", "data-figure": figure },
    el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

function renderOverview(stats) {
  const db = stats.database || {};
  const points = stats.collections.reduce((sum, c) => sum + (c.points || 0), 0);
  $("#version").textContent = `v${stats.vdb_version}`;
  $("#overview").replaceChildren(
    card("collections", num(stats.collections.length), "collections"),
    card("points", num(points), "points"),
    card("last seq", num(db.last_seq), "last_seq"),
    card("disk", bytes(db.disk_bytes), "disk_bytes"),
    card("WAL pending", num(db.wal_records_pending), "wal_records_pending"),
    card("last checkpoint", ago(db.last_checkpoint_at), "last_checkpoint"),
    card("apply queue", num(db.apply_queue_depth), "apply_queue_depth"),
    card("dead letters", num(db.dead_letters), "dead_letters"),
  );
}

function indexState(c) {
  if (c.fresh_points !== undefined || c.indexed_points !== undefined) {
    const parts = [`${num(c.indexed_points)} indexed`, `${num(c.fresh_points)} fresh`];
    if (c.indexing_rate !== undefined) parts.push(`${num(c.indexing_rate, 1)}/s`);
    if (c.backlog_age_s !== undefined && c.backlog_age_s !== null) {
      parts.push(`backlog ${num(c.backlog_age_s, 1)} s`);
    }
    const pill = c.fresh_points ? "warn" : "good";
    return el("span", {}, el("span", { class: `pill ${pill}` }, c.fresh_points ? "indexing" : "indexed"),
      " ", parts.join(" · "));
  }
  const good = !c.status || c.status === "green";
  return el("span", { class: `pill ${good ? "good" : "warn"}` }, good ? "indexed" : c.status);
}

function renderCollections(stats) {
  const rows = stats.collections.map((c) => el("tr", { "data-name": c.name },
    el("td", { class: "name" }, c.name),
    el("td", { class: "num points" }, num(c.points)),
    el("td", { class: "num" }, num(c.dim)),
    el("td", {}, c.metric),
    el("td", { class: "index" }, indexState(c)),
    el("td", { class: "num" }, c.disk_bytes !== undefined ? bytes(c.disk_bytes) : "—"),
    el("td", {}, c.embedder ? c.embedder.model : "—"),
  ));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 7, class: "muted" }, "No collections yet.")));
  $("#collections tbody").replaceChildren(...rows);
  const select = $("#search-collection");
  const names = stats.collections.map((c) => c.name);
  const current = [...select.options].map((o) => o.value);
  if (json(names) !== json(current)) {
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    if (names.includes(chosen)) select.value = chosen;
  }
  state.collections = stats.collections;
  updateTextMode();
}

// -- rendering: ingest ---------------------------------------------------------------------

function sparkline(points, key, label, unit) {
  const w = 300, h = 110, pad = 18;
  const values = points.map((p) => p[key]).filter((v) => v !== null && v !== undefined);
  const max = Math.max(1, ...values);
  const step = (w - pad) / Math.max(1, HISTORY - 1);
  const offset = HISTORY - points.length;
  const path = points.map((p, i) => {
    const v = p[key] === null || p[key] === undefined ? 0 : p[key];
    const x = pad + (offset + i) * step;
    const y = h - pad - (v / max) * (h - 2 * pad);
    return `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
  }).join(" ");
  const last = values.length ? values[values.length - 1] : null;
  return el("div", { class: "chart", "data-chart": key },
    el("div", { class: "caption" }, `${label}: ${num(last, 1)}${unit} (last ${HISTORY} s, max ${num(max, 1)})`),
    svg("svg", { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", role: "img", "aria-label": label },
      svg("line", { class: "axis", x1: pad, y1: h - pad, x2: w, y2: h - pad }),
      svg("line", { class: "axis", x1: pad, y1: pad, x2: pad, y2: h - pad }),
      svg("text", { x: 0, y: pad }, num(max, 0)),
      svg("text", { x: 0, y: h - pad }, "0"),
      svg("path", { class: "line", d: path || "M0,0" })));
}

function histogram(freshness) {
  const w = 300, h = 110, pad = 18;
  const buckets = Object.entries((freshness && freshness.buckets) || {});
  let previous = 0;
  const counts = buckets.map(([le, cumulative]) => {
    const c = cumulative - previous;
    previous = cumulative;
    return [le, c];
  });
  const max = Math.max(1, ...counts.map(([, c]) => c));
  const bw = (w - pad) / Math.max(1, counts.length);
  const bars = counts.map(([le, c], i) => {
    const bh = (c / max) * (h - 2 * pad);
    return svg("g", {},
      svg("rect", { class: "bar", x: pad + i * bw + 1, y: h - pad - bh, width: Math.max(1, bw - 2), height: bh },
        svg("title", {}, `≤ ${le} ms: ${c}`)),
      i % 2 === 0 ? svg("text", { x: pad + i * bw, y: h - 4 }, le === "+Inf" ? "∞" : le) : null);
  });
  const f = freshness || {};
  return el("div", { class: "chart", "data-chart": "freshness" },
    el("div", { class: "caption" },
      `freshness (producer → searchable), ms: p50 ${ms(f.p50_ms)}, p99 ${ms(f.p99_ms)}, n ${num(f.count)}`),
    svg("svg", { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", role: "img", "aria-label": "freshness histogram" },
      svg("line", { class: "axis", x1: pad, y1: h - pad, x2: w, y2: h - pad }), bars));
}

function renderIngest(stats, now) {
  const pipelines = stats.ingest || [];
  $("#ingest-empty").hidden = pipelines.length > 0;
  const blocks = pipelines.map((p) => {
    const history = state.history.get(p.name) || [];
    history.push({ t: now, rate: p.records_per_s, lag: p.lag });
    while (history.length > HISTORY) history.shift();
    state.history.set(p.name, history);
    const stateClass = p.state === "running" ? "good" : p.state === "failed" ? "bad" : "warn";
    const lat = p.batch_latency_ms || {};
    const fresh = p.freshness_ms || {};
    const partitions = Object.values(p.partitions || {}).map((q) => el("tr", { "data-partition": `${q.topic}/${q.partition}` },
      el("td", {}, q.topic), el("td", { class: "num" }, q.partition),
      el("td", {}, q.assigned ? "yes" : "no"),
      el("td", { class: "num" }, num(q.offset)), el("td", { class: "num" }, num(q.end_offset)),
      el("td", { class: "num lag" }, num(q.lag)), el("td", { class: "num" }, num(q.records_per_s, 1)),
      el("td", { class: "num" }, num(q.records)), el("td", { class: "num" }, num(q.dead_letters)),
      el("td", { class: "num" }, ms(q.batch_latency_ms_last)),
      el("td", {}, q.paused ? el("span", { class: "pill warn" }, "paused") : "no")));
    return el("div", { class: "pipeline", "data-name": p.name },
      el("h3", {}, `${p.name} `, el("span", { class: `pill ${stateClass}` }, p.state),
        p.paused ? el("span", { class: "pill warn" }, " paused") : null,
        p.error ? el("span", { class: "error" }, ` ${p.error}`) : null),
      el("div", { class: "cards" },
        card("records", num(p.records), "records"),
        card("rate", `${num(p.records_per_s, 1)}/s`, "records_per_s"),
        card("lag", num(p.lag), "lag"),
        card("dead letters", num(p.dead_letters), "ingest_dead_letters"),
        card("batch p50 / p99", `${ms(lat.p50)} / ${ms(lat.p99)}`, "batch_latency"),
        card("freshness p50 / p99", `${ms(fresh.p50_ms)} / ${ms(fresh.p99_ms)}`, "freshness"),
        card("batches", num(p.batches), "batches")),
      el("div", { class: "charts" },
        sparkline(history, "rate", "records/s", "/s"),
        sparkline(history, "lag", "lag", " records"),
        histogram(fresh)),
      el("div", { class: "scroll" }, el("table", { class: "partitions" },
        el("thead", {}, el("tr", {}, ...["topic", "partition", "assigned", "offset", "end", "lag", "rate/s",
          "records", "dead", "batch latency", "paused"].map((h, i) => el("th", { class: i && i !== 2 && i !== 10 ? "num" : "" }, h)))),
        el("tbody", {}, partitions))));
  });
  $("#ingest").replaceChildren(...blocks);
}

// -- rendering: dead letters ---------------------------------------------------------------

function renderDead(letters) {
  $("#dead-empty").hidden = letters.length > 0;
  $("#dead-letters").hidden = letters.length === 0;
  $("#dead-letters tbody").replaceChildren(...letters.map((d) => el("tr", {},
    el("td", {}, d.timestamp_ms ? new Date(d.timestamp_ms).toISOString().replace("T", " ").slice(0, 19) : "—"),
    el("td", {}, d.source), el("td", {}, d.topic),
    el("td", { class: "num" }, num(d.partition)), el("td", { class: "num" }, num(d.offset)),
    el("td", { class: "reason" }, d.reason))));
}

// -- search --------------------------------------------------------------------------------

function selectedCollection() {
  return state.collections.find((c) => c.name === $("#search-collection").value);
}

function updateTextMode() {
  // "text" is offered only for a collection whose info names an embedder
  const c = selectedCollection();
  const select = $("#search-mode");
  const has = Boolean(c && c.embedder);
  const option = select.querySelector('option[value="text"]');
  if (has && !option) select.append(el("option", { value: "text" }, `text (${c.embedder.model})`));
  if (has && option) option.textContent = `text (${c.embedder.model})`;
  if (!has && option) option.remove();
  placeholder();
}

function placeholder() {
  const mode = $("#search-mode").value;
  const c = selectedCollection();
  $("#search-input").placeholder = mode === "id" ? "a point id: 42 or a UUID"
    : mode === "text" ? "words to embed and search for"
      : `a JSON array of ${c ? c.dim : "…"} numbers`;
}

function parseId(text) {
  const t = text.trim();
  if (/^\d+$/.test(t)) return Number(t);
  try {
    const v = JSON.parse(t);
    if (typeof v === "number" || typeof v === "string") return v;
  } catch (e) { /* a bare string id */ }
  return t;
}

function renderHits(points) {
  const table = $("#search-results");
  table.hidden = false;
  const rows = points.map((p, i) => el("tr", { "data-id": String(p.id) },
    el("td", { class: "num" }, i + 1), el("td", { class: "hit-id" }, String(p.id)),
    el("td", { class: "num" }, score(p.score)), el("td", { class: "payload" }, json(p.payload))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 4, class: "muted" }, "No hits.")));
  table.querySelector("tbody").replaceChildren(...rows);
}

async function search(event) {
  event.preventDefault();
  const c = selectedCollection();
  const mode = $("#search-mode").value;
  const text = $("#search-input").value;
  const limit = Math.max(1, Math.min(100, Number($("#search-limit").value) || 10));
  $("#search-error").textContent = "";
  $("#search-point").replaceChildren();
  if (!c) { $("#search-error").textContent = "No collection to search."; return; }
  const base = `/collections/${encodeURIComponent(c.name)}`;
  let query;
  try {
    if (mode === "vector") {
      query = JSON.parse(text);
      if (!Array.isArray(query)) throw new Error("the vector must be a JSON array of numbers");
    } else if (mode === "id") {
      query = parseId(text);
      if (query === "") throw new Error("type a point id");
    } else {
      if (!text.trim()) throw new Error("type some text");
      query = { text, model: c.embedder.model };
    }
  } catch (e) {
    $("#search-error").textContent = `Bad input: ${e.message}`;
    return;
  }
  try {
    if (mode === "id") {
      const point = await api(`${base}/points/${encodeURIComponent(String(query))}`);
      $("#search-point").replaceChildren(el("div", { class: "point" },
        el("strong", {}, `point ${point.id}`), " payload ", el("code", {}, json(point.payload))));
    }
    const result = await api(`${base}/points/query`, { query, limit, with_payload: true });
    renderHits(result.points);
  } catch (e) {
    if (e.status === 401) needKey("API key needed");
    $("#search-error").textContent = e.message;
  }
}

// -- the loop ------------------------------------------------------------------------------

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const stats = await api("/stats");
    const now = Date.now();
    renderOverview(stats);
    renderCollections(stats);
    renderIngest(stats, now);
    if (state.ticks % DEAD_EVERY === 0) renderDead(await api("/dead-letters?limit=20"));
    state.ticks += 1;
    $("#key-form").classList.remove("needed");
    setStatus(`live · ${new Date(now).toLocaleTimeString("en-GB")}`, true);
  } catch (e) {
    if (e.status === 401) needKey("API key needed: enter it above");
    else if (e.status === 403) needKey("this key may not read");
    else setStatus(`offline: ${e.message}`, false);
  } finally {
    state.busy = false;
  }
}

function start() {
  $("#api-key").value = state.key;
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#api-key").value.trim();
    sessionStorage.setItem(KEY_STORE, state.key);
    state.ticks = 0;
    refresh();
  });
  $("#search-form").addEventListener("submit", search);
  $("#search-collection").addEventListener("change", updateTextMode);
  $("#search-mode").addEventListener("change", placeholder);
  refresh();
  setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);
