// The /ui page: plain JS, no library. Now polls /ui/api/status; Explore posts /ui/api/explore (a user id
// with the read token, or else the admin token); Admin calls the API's guarded /rec/refresh and
// /rec/rollback with the admin token. Both tokens are kept in sessionStorage only. The page runs under a
// Content-Security-Policy of 'self': no inline script or style attribute here (element.style is fine).
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "mindstream-admin-token";
const READ_TOKEN_KEY = "mindstream-read-token";
const COLORS = ["#2f6fde", "#e0822b", "#2a9d5c", "#b5489b", "#7a5af0"];
const state = { status: null, chosen: [], timer: null, fetching: false, titles: 0 };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "-";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
  return Number(v.toFixed(digits === undefined ? 2 : digits)).toString();
}
const seconds = (v) => (v === null || v === undefined ? "-" : "\u2264 " + fmt(v) + " s");
const millis = (v) => (v === null || v === undefined ? "-" : "\u2264 " + fmt(v, 1) + " ms");
function age(s) {
  if (s === null || s === undefined) return "-";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return fmt(s / 3600, 1) + " h";
}
const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB");

// ------------------------------------------------------------------ tabs

function showTab(name) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".panel")) p.classList.toggle("active", p.id === name);
  if (history.replaceState) history.replaceState(null, "", "#" + name);
}
for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showTab(b.dataset.tab));

// ------------------------------------------------------------------ banners

function banners(list) {
  const box = $("banners");
  box.replaceChildren(...list.map(([cls, text]) => el("div", { class: "banner " + cls }, text)));
}

// ------------------------------------------------------------------ charts (SVG, written here)

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function chart(title, unit, t, lines, events, now, span, opts) {
  const W = 360, H = 130, L = 44, R = 8, T = 8, B = 18;
  const box = el("div", { class: "chart" });
  box.append(el("h2", {}, title + (unit ? " " : ""), unit ? el("span", { class: "muted" }, "(" + unit + ")") : null));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const values = lines.flatMap((l) => l.values.filter((v) => v !== null && v !== undefined));
  const x0 = now - span;
  const x = (tt) => L + ((tt - x0) / span) * (W - L - R);
  const fromZero = !(opts && opts.zero === false);
  let lo = values.length ? Math.min(fromZero ? 0 : Infinity, ...values) : 0;
  let hi = values.length ? Math.max(...values) : 1;
  if (hi <= lo) { hi = lo + 1; if (!fromZero) lo -= 1; }
  hi += (hi - lo) * 0.08;
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  root.append(svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "#fbfcfd", stroke: "#dde1e8" }));
  for (const frac of [0, 0.5, 1]) {
    const v = lo + (hi - lo) * frac;
    root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eceff3" }));
    const label = svg("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end", "font-size": 9, fill: "#6b7385" });
    label.textContent = fmt(v, v < 10 ? 2 : 0);
    root.append(label);
  }
  for (const [m, label] of [[15, "-15 min"], [10, "-10"], [5, "-5"], [0, "now"]]) {
    const text = svg("text", { x: x(now - m * 60), y: H - 5, "text-anchor": m === 15 ? "start" : m === 0 ? "end" : "middle", "font-size": 9, fill: "#6b7385" });
    text.textContent = label;
    root.append(text);
  }
  for (const e of events) {
    if (e.t < x0) continue;
    const color = e.kind === "rollback" ? "#d04545" : "#2a9d5c";
    root.append(svg("line", { x1: x(e.t), x2: x(e.t), y1: T, y2: H - B, stroke: color, "stroke-dasharray": "3 2" }));
  }
  lines.forEach((line) => {
    let d = "", pen = false, last = null, prev = null;
    for (let i = 0; i < t.length; i++) {
      const v = line.values[i];
      if (v === null || v === undefined || t[i] < x0) { pen = false; continue; }
      const px = x(t[i]).toFixed(1), py = y(v).toFixed(1);
      if (pen && line.step) d += "L" + px + "," + prev;  // a level holds until it changes
      d += (pen ? "L" : "M") + px + "," + py;
      pen = true;
      prev = py;
      last = [px, py];
    }
    if (d) root.append(svg("path", { d, fill: "none", stroke: line.color, "stroke-width": 1.6, "stroke-dasharray": line.dash || "" }));
    if (last) root.append(svg("circle", { cx: last[0], cy: last[1], r: 2.2, fill: line.color }));
  });
  if (!values.length) {
    const empty = svg("text", { x: (L + W - R) / 2, y: H / 2, "text-anchor": "middle", "font-size": 11, fill: "#6b7385" });
    empty.textContent = "no data yet";
    root.append(empty);
  }
  box.append(root);
  const legend = el("div", { class: "legend" });
  for (const line of lines) {
    const last = [...line.values].reverse().find((v) => v !== null && v !== undefined);
    const swatch = el("i", {});
    swatch.style.background = line.color;
    legend.append(el("span", {}, swatch, line.name + " " + (last === undefined ? "-" : fmt(last))));
  }
  box.append(legend);
  return box;
}

function drawCharts(s) {
  const t = s.series.t, S = s.series, ev = s.events, now = s.now, span = s.history_s;
  const c = (title, unit, lines, opts) => chart(title, unit, t, lines, ev, now, span, opts);
  const line = (name, key, color, dash) => ({ name, values: S[key], color, dash });
  const level = (name, key, color) => ({ name, values: S[key], color, step: true });
  $("charts").replaceChildren(
    c("Live version and fast-path generation", "", [level("version", "version", COLORS[0]), level("generation", "generation", COLORS[1])]),
    c("Model age", "s", [line("age", "age_s", COLORS[0])]),
    c("Items in the live collection", "rows", [level("items", "items", COLORS[0])], { zero: false }),
    c("Clicks applied", "per s", [line("clicks/s", "clicks_per_s", COLORS[0])]),
    c("Ingest consumer lag", "messages", [line("lag", "ingest_lag", COLORS[0])]),
    c("Freshness p99", "s", [
      line("user", "fresh_user_p99", COLORS[0]),
      line("new item", "fresh_new_item_p99", COLORS[1]),
      line("click->version", "fresh_click_version_p99", COLORS[2]),
    ]),
    c("Recall latency", "ms", [
      line("Kafka p99", "recall_kafka_p99_ms", COLORS[0]),
      line("Kafka p50", "recall_kafka_p50_ms", COLORS[0], "4 3"),
      line("HTTP p99", "recall_http_p99_ms", COLORS[1]),
      line("HTTP p50", "recall_http_p50_ms", COLORS[1], "4 3"),
    ]),
    c("Recall requests", "per s", [line("Kafka", "recall_kafka_per_s", COLORS[0]), line("HTTP", "recall_http_per_s", COLORS[1])]),
    c("Dead letters", "total", [line("DLQ", "dlq_total", "#d04545")]),
  );
}

// ------------------------------------------------------------------ Now

const WORKER_NAMES = { ingest: "ingest worker", refresh: "refresh worker", recall: "recall worker" };

function renderStatus(s) {
  state.status = s;
  if (window.uiFirstRender === undefined) window.uiFirstRender = performance.now();  // read by ui_probe
  const cur = s.current || {};
  const live = s.live;
  const notes = [];
  if (live.state === "none") notes.push(["", live.message]);
  if (live.state === "error") notes.push(["error", live.message]);
  for (const [w, info] of Object.entries(s.workers)) {
    if (!WORKER_NAMES[w]) continue;
    if (!info.configured) notes.push(["", `${WORKER_NAMES[w]}: no metrics endpoint configured here; its figures stay blank`]);
    else if (!info.up) notes.push(["error", `${WORKER_NAMES[w]} is not answering at ${info.url} (down or starting): its figures are blank`]);
  }
  banners(notes);
  $("clock").textContent = "updated " + clock(s.now);
  if (live.state === "live") {
    $("live-version").textContent = live.version || live.collection;
    $("live-details").replaceChildren(
      `age ${age(live.age_s)} \u00b7 generation ${live.generation === null ? "-" : live.generation}`,
      el("br"),
      `${live.collection} \u00b7 ${fmt(live.items)} items`,
    );
  } else {
    $("live-version").textContent = live.state === "none" ? "none yet" : "unknown";
    $("live-details").textContent = live.message;
  }
  const events = s.events;
  const swaps = events.filter((e) => e.kind === "swap").length;
  const rollbacks = events.length - swaps;
  $("swaps-count").textContent = `${swaps} / ${rollbacks}`;
  $("swaps-count").title = "swaps / rollbacks seen in the last hour";
  $("events").replaceChildren(
    ...(events.length
      ? events.slice().reverse().map((e) => el("li", { "data-kind": e.kind }, `${clock(e.t)} ${e.kind} ${e.from || "-"} \u2192 ${e.to || "-"}`))
      : [el("li", { class: "muted" }, "none yet" + (s.swaps_total !== null ? ` (refresh worker: ${fmt(s.swaps_total)} swaps since it started)` : ""))]),
  );
  const win = `(last ${fmt(s.window_s, 0)} s)`;
  $("fresh-window").textContent = win;
  $("recall-window").textContent = win;
  $("fresh-user").textContent = seconds(cur.fresh_user_p99);
  $("fresh-new-item").textContent = seconds(cur.fresh_new_item_p99);
  $("fresh-click-version").textContent = seconds(cur.fresh_click_version_p99);
  $("kafka-p50").textContent = millis(cur.recall_kafka_p50_ms);
  $("kafka-p99").textContent = millis(cur.recall_kafka_p99_ms);
  $("kafka-rate").textContent = fmt(cur.recall_kafka_per_s, 1);
  $("http-p50").textContent = millis(cur.recall_http_p50_ms);
  $("http-p99").textContent = millis(cur.recall_http_p99_ms);
  $("http-rate").textContent = fmt(cur.recall_http_per_s, 1);
  $("clicks-rate").textContent = fmt(cur.clicks_per_s, 0);
  $("ingest-lag").textContent = fmt(cur.ingest_lag, 0);
  $("dlq-total").textContent = fmt(s.dlq.total, 0);
  $("dlq-reasons").replaceChildren(
    ...s.dlq.reasons.map((r) => el("li", {}, `${r.reason}: ${fmt(r.count, 0)}` + (r.last_t ? ` (last ${clock(r.last_t)})` : ""))),
  );
  drawCharts(s);
  const sm = s.sampler;
  $("sampler").textContent = `Read from the workers' /metrics every ${fmt(s.sample_s)} s by the gateway `
    + `(${sm.samples} samples; ${fmt(sm.cpu_ms_mean)} ms CPU per sample). Quantiles are histogram bucket bounds.`;
}

async function poll() {
  if (state.fetching) return;
  state.fetching = true;
  let next = 5000;
  try {
    const r = await fetch("/ui/api/status", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    renderStatus(s);
    next = Math.max(1000, s.sample_s * 1000);
  } catch (err) {
    banners([["error", `The gateway's status is not answering (${err.message}): retrying.`]]);
  } finally {
    state.fetching = false;
    clearTimeout(state.timer);
    state.timer = setTimeout(tick, next);
  }
}
function tick() {
  if (document.hidden) { state.timer = setTimeout(tick, 1000); return; }
  poll();
}

// ------------------------------------------------------------------ Explore

function itemLine(item, extra) {
  const untitled = state.titles ? `new item ${item.key} (not in the catalogue)` : `item ${item.key}`;
  const title = item.title ? item.title + (item.year ? ` (${item.year})` : "") : untitled;
  const attrs = { ...(extra || {}) };
  if (item.available === false) attrs.class = "withdrawn";  // withdrawn on the items topic: never recommended
  return el("li", attrs,
    el("span", { class: "title" }, title), " ",
    el("span", { class: "muted" }, item.title ? `#${item.key}` : ""), " ",
    el("span", { class: "genres" }, (item.genres || []).join(", ")),
    item.available === false ? el("span", { class: "badge" }, " withdrawn") : null,
    item.score !== undefined ? el("span", { class: "score" }, "  " + item.score.toFixed(4)) : null);
}

function message(text) {
  const box = $("explore-message");
  box.hidden = !text;
  box.textContent = text || "";
}

function renderExplore(out) {
  message(out.message || "");
  $("explore-result").hidden = false;
  $("history").replaceChildren(...out.history.map((i) => itemLine(i)));
  const reply = out.reply;
  const popular = reply && reply.source && reply.source[0] === "popular";
  $("answered-by").textContent = !reply ? ""
    : popular ? `Answered by the fallback: the most clicked available items of the recent window (counts decayed), in ${fmt(reply.took_ms, 1)} ms; model ${reply.model_version} is live (the same engine as POST /rec/recall).`
    : `Answered by model ${reply.model_version}, generation ${reply.generation}, collection ${reply.collection}, in ${fmt(reply.took_ms, 1)} ms (the same engine as POST /rec/recall).`;
  $("answered-by").className = popular ? "fallback" : "";
  const items = out.items.map((item, rank) => ({ ...item, rank }));
  const k = out.interests;
  const tagged = k > 1 && items.length && items.every((i) => i.interest !== null);
  $("rec-note").textContent = tagged ? `(grouped by the interest that retrieved them, K = ${k})` : k > 1 ? `(K = ${k})` : "";
  const groups = [];
  if (tagged) {
    for (let g = 0; g < k; g++) groups.push({ name: `Interest ${g + 1}`, items: items.filter((i) => i.interest === g) });
  } else {
    groups.push({ name: "", items });
  }
  $("groups").replaceChildren(...groups.map((g) => el("div", { class: "group" },
    g.name ? el("h2", {}, g.name, el("span", { class: "muted" }, ` (${g.items.length})`)) : null,
    el("ol", { class: "items" }, ...g.items.map((i) => {
      const li = itemLine(i, { "data-rank": String(i.rank), "data-item": i.key });
      li.value = i.rank + 1;
      return li;
    })))));
  $("rec-ids").textContent = out.items.map((i) => i.key).join(", ");
}

// The filters typed into the page, as the request's "filters" (values separated by commas), or null.
function filters() {
  const out = {};
  for (const [id, field] of [["include-segments", "include_segments"], ["exclude-segments", "exclude_segments"],
    ["include-categories", "include_categories"], ["exclude-categories", "exclude_categories"]]) {
    const values = $(id).value.split(",").map((v) => v.trim()).filter((v) => v);
    if (values.length) out[field] = values;
  }
  return Object.keys(out).length ? out : null;
}

// ids travel as digit strings written into the JSON as they are: a JS number loses digits past 2^53
async function explore(source) {
  const topK = Math.max(1, Math.min(1000, Math.floor(Number($("top-k").value)) || 20));
  const lam = Number($("diversity").value);
  let options = Number.isFinite(lam) && lam > 0 ? `, "diversity": ${Math.min(lam, 1000)}` : "";
  if ($("exclude-seen").checked) options += `, "exclude_seen": true`;
  if ($("fallback").checked) options += `, "fallback": "popular"`;
  const chosen = filters();
  if (chosen) options += `, "filters": ${JSON.stringify(chosen)}`;
  const body = (source.user ? `{"user_id": ${source.user}` : `{"items": [${source.items.join(", ")}]`) + `, "top_k": ${topK}${options}}`;
  message("asking\u2026");
  const headers = { "Content-Type": "application/json" };
  const bearer = readToken() || token();  // a user's history needs one of them; items need none
  if (source.user && bearer) headers.Authorization = "Bearer " + bearer;
  try {
    const r = await fetch("/ui/api/explore", { method: "POST", headers, body });
    const out = await r.json();
    if (!r.ok) {
      const detail = out.message || (out.detail && JSON.stringify(out.detail)) || "";
      const hint = r.status === 401 || r.status === 403 ? " \u2192 Type the read token (or the admin token) into \u201cToken for user ids\u201d." : "";
      $("explore-result").hidden = true;
      message(`Not answered (HTTP ${r.status}): ${detail}${hint}`);
      return;
    }
    renderExplore(out);
  } catch (err) {
    message(`The gateway did not answer: ${err.message}`);
  }
}

function renderChosen() {
  $("chosen").replaceChildren(...state.chosen.map((item, n) => {
    const chip = el("span", { title: "remove", "data-item": item.key }, item.title ? `${item.title} #${item.key}` : `#${item.key}`);
    chip.addEventListener("click", () => { state.chosen.splice(n, 1); renderChosen(); });
    return chip;
  }));
}

let searchSeq = 0;
async function suggest() {
  const q = $("item-query").value.trim();
  const seq = ++searchSeq;
  if (!q || /^[\d,\s]+$/.test(q) && q.includes(",")) { $("suggestions").replaceChildren(); return; }
  try {
    const r = await fetch("/ui/api/items?" + new URLSearchParams({ q, limit: "12" }));
    const found = r.ok ? await r.json() : [];
    if (seq !== searchSeq) return;
    $("suggestions").replaceChildren(...found.map((item) => {
      const row = el("div", {}, item.title ? `${item.title}${item.year ? " (" + item.year + ")" : ""} #${item.key}` : `#${item.key}`);
      row.addEventListener("click", () => { state.chosen.push(item); renderChosen(); $("item-query").value = ""; $("suggestions").replaceChildren(); });
      return row;
    }));
  } catch (err) {
    $("suggestions").replaceChildren();
  }
}

$("explore-user").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = $("user-id").value.trim();
  if (!/^[1-9]\d*$/.test(id)) { message("Type a user id (a positive integer)."); return; }
  explore({ user: id });
});
$("explore-items").addEventListener("submit", (e) => {
  e.preventDefault();
  const typed = $("item-query").value.split(/[\s,]+/).filter((x) => /^[1-9]\d*$/.test(x));
  const ids = [...state.chosen.map((i) => i.key), ...typed];
  if (!ids.length) { message("Choose items (type words of a title and pick one) or type ids, newest last."); return; }
  $("suggestions").replaceChildren();
  explore({ items: ids });
});
$("items-clear").addEventListener("click", () => { state.chosen = []; renderChosen(); $("item-query").value = ""; });
$("item-query").addEventListener("input", suggest);

// ------------------------------------------------------------------ Admin

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
function readToken() { return sessionStorage.getItem(READ_TOKEN_KEY) || ""; }
function tokenState() {
  $("token-state").textContent = token() ? "a token is set for this session" : "no token set";
  $("read-token-state").textContent = readToken() ? "a token is set for this session"
    : token() ? "none: the admin token is used" : "none set: user ids need one, items do not";
}

async function admin(path, label) {
  $("admin-result").textContent = label + "\u2026";
  const headers = {};
  if (token()) headers.Authorization = "Bearer " + token();
  try {
    const r = await fetch(path, { method: "POST", headers });
    const text = await r.text();
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (err) { /* not JSON: shown as is */ }
    const verdict = r.ok ? "done" : r.status === 401 || r.status === 403 ? "refused" : "not done";
    $("admin-result").textContent = `${label}: ${verdict} (HTTP ${r.status})\n${shown}`;
    $("admin-result").dataset.status = String(r.status);
    if (r.ok) poll();
  } catch (err) {
    $("admin-result").textContent = `${label}: the gateway did not answer (${err.message})`;
  }
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  tokenState();
});
$("token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); tokenState(); });
$("read-token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(READ_TOKEN_KEY, $("read-token").value.trim());
  $("read-token").value = "";
  tokenState();
});
$("read-token-forget").addEventListener("click", () => { sessionStorage.removeItem(READ_TOKEN_KEY); tokenState(); });
$("admin-refresh").addEventListener("click", () => admin("/rec/refresh", "Refresh now"));
$("admin-rollback").addEventListener("click", () => admin("/rec/rollback", "Roll back"));

// ------------------------------------------------------------------ start

tokenState();
fetch("/ui/api/info").then((r) => (r.ok ? r.json() : {})).then((info) => { state.titles = info.titles || 0; }).catch(() => {});
const first = (location.hash || "#now").slice(1);
if (["now", "explore", "admin"].includes(first)) showTab(first);
poll();
