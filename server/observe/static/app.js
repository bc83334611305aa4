// fedstream dashboard: polls /api/run every second and redraws the header, cards, chart and tables.
"use strict";

const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
let lastOk = 0;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(x, digits) {
  return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
}

function bytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function ago(seconds) {
  if (typeof seconds !== "number") return "–";
  if (seconds < 1) return "now";
  if (seconds < 60) return Math.round(seconds) + " s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
  return Math.round(seconds / 3600) + " h ago";
}

function clock(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString([], {hour12: false});
}

function renderHeader(run) {
  const h = run.header;
  const isAsync = h.mode === "async";
  document.getElementById("run-title").textContent = "run" + (h.task ? " · " + h.task : "");
  document.title = "fedstream · " + (h.task || "run");
  const chips = document.getElementById("chips");
  chips.replaceChildren();
  const add = (label, value) => {
    if (value === undefined || value === null || value === "") return;
    const chip = el("span", {class: "chip"}, label + " ");
    chip.appendChild(el("b", {}, String(value)));
    chips.appendChild(chip);
  };
  add("mode", h.mode);
  add("strategy", h.strategy);
  if (isAsync) add("version", h.version !== undefined ? h.version : 0);
  else add("round", (h.round !== undefined ? h.round : 0) + (h.rounds ? " / " + h.rounds : ""));
  if (typeof h.epsilon === "number") add("ε", h.epsilon.toFixed(3) + (h.delta ? " (δ " + h.delta + ")" : ""));
  else if (h.dp) add("DP", h.dp);
  if (h.secure_aggregation !== undefined) add("secure aggregation", h.secure_aggregation ? "on" : "off");
  add("status", h.status);
  document.getElementById("round-label").textContent = isAsync ? "version" : "round";
}

function card(label, value, sub) {
  const node = el("div", {class: "card"});
  node.appendChild(el("div", {class: "label"}, label));
  node.appendChild(el("div", {class: "value"}, value));
  if (sub) node.appendChild(el("div", {class: "sub"}, sub));
  return node;
}

function renderCards(run) {
  const last = run.recent_rounds[0] || {};
  const c = run.clients, t = run.totals;
  const cards = document.getElementById("cards");
  cards.replaceChildren(
    card("accuracy", fmt(last.eval_accuracy, 4), last.round !== undefined ? "after round " + last.round : (last.version !== undefined ? "version " + last.version : "no round yet")),
    card("eval loss", fmt(last.eval_loss, 4), "train loss " + fmt(last.train_loss, 4)),
    card("clients connected", String(c.connected), c.total + " seen · " + c.counts.dropped + " dropped now"),
    card("uploads", String(t.uploads_accepted), t.uploads_refused + " refused · " + t.dropped + " dropped"),
    card("bytes up", bytes(t.bytes_up), "down " + bytes(t.bytes_down)),
    card("elapsed", ago(run.now - run.started).replace(" ago", ""), "since the server started"),
  );
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function renderChart(run) {
  const box = document.getElementById("chart");
  const pts = run.series;
  if (!pts.length) { box.replaceChildren(el("p", {class: "empty"}, "no round recorded yet")); return; }
  const W = Math.max(box.clientWidth, 320), H = Math.max(box.clientHeight, 200);
  const m = {l: 56, r: 60, t: 12, b: 40};
  const xs = pts.map(p => p.x);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const losses = pts.flatMap(p => [p.eval_loss, p.train_loss]).filter(v => typeof v === "number");
  const lossMax = niceMax(Math.max(0, ...losses));
  const X = x => m.l + (x - x0) / (x1 - x0) * (W - m.l - m.r);
  const YA = a => H - m.b - a * (H - m.t - m.b);
  const YL = l => H - m.b - l / lossMax * (H - m.t - m.b);
  const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "accuracy and loss per round"});
  for (let i = 0; i <= 5; i++) {
    const y = YA(i / 5);
    root.appendChild(svg("line", {x1: m.l, x2: W - m.r, y1: y, y2: y, class: "grid-line"}));
    root.appendChild(svg("text", {x: m.l - 8, y: y + 4, "text-anchor": "end", class: "axis-text"}, (i / 5).toFixed(1)));
    root.appendChild(svg("text", {x: W - m.r + 8, y: y + 4, "text-anchor": "start", class: "axis-text"}, +(lossMax * i / 5).toPrecision(3) + ""));
  }
  const span = x1 - x0, step = Math.max(1, Math.ceil(span / 10));
  for (let x = Math.ceil(x0); x <= x1; x += step) {
    root.appendChild(svg("line", {x1: X(x), x2: X(x), y1: H - m.b, y2: H - m.b + 4, stroke: "#9ca3af"}));
    root.appendChild(svg("text", {x: X(x), y: H - m.b + 17, "text-anchor": "middle", class: "axis-text"}, String(x)));
  }
  const isAsync = run.header.mode === "async";
  root.appendChild(svg("text", {x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle", class: "axis-text axis-title"}, isAsync ? "version" : "round"));
  root.appendChild(svg("text", {x: 14, y: (H - m.b + m.t) / 2, "text-anchor": "middle", class: "axis-title", fill: "#2563eb", transform: `rotate(-90 14 ${(H - m.b + m.t) / 2})`}, "accuracy"));
  root.appendChild(svg("text", {x: W - 12, y: (H - m.b + m.t) / 2, "text-anchor": "middle", class: "axis-title", fill: "#dc2626", transform: `rotate(90 ${W - 12} ${(H - m.b + m.t) / 2})`}, "loss"));
  const line = (key, Y, color, dash, cls) => {
    const good = pts.filter(p => typeof p[key] === "number");
    if (!good.length) return;
    const d = good.map((p, i) => (i ? "L" : "M") + X(p.x).toFixed(1) + "," + Y(p[key]).toFixed(1)).join(" ");
    root.appendChild(svg("path", {d, fill: "none", stroke: color, "stroke-width": 2.2, "stroke-dasharray": dash, class: "series " + cls}));
    if (good.length <= 60) for (const p of good) root.appendChild(svg("circle", {cx: X(p.x), cy: Y(p[key]), r: 3, fill: color}));
  };
  line("train_loss", YL, "#f59e0b", "4 3", "train-loss");
  line("eval_loss", YL, "#dc2626", "", "eval-loss");
  line("eval_accuracy", YA, "#2563eb", "", "eval-accuracy");
  box.replaceChildren(root);
}

function renderClients(run) {
  const c = run.clients;
  const counts = Object.entries(c.counts).filter(([, n]) => n > 0).map(([s, n]) => s + " " + n).join(" · ");
  document.getElementById("clients-summary").textContent =
    (c.shown < c.total ? `${c.shown} of ${c.total}, ${c.order}` : `${c.total} clients, ${c.order}`) + (counts ? " — " + counts : "");
  const body = document.querySelector("#clients tbody");
  body.replaceChildren(...c.rows.map(row => {
    const tr = el("tr", {class: "state-" + row.state, "data-client": row.id, "data-state": row.state});
    tr.appendChild(el("td", {class: "id"}, row.id));
    const state = el("td");
    state.appendChild(el("span", {class: "badge " + row.state}, row.state));
    if (row.reason) state.appendChild(el("span", {class: "reason"}, row.reason));
    tr.appendChild(state);
    tr.appendChild(el("td", {}, ago(run.now - row.last_contact)));
    tr.appendChild(el("td", {class: "num"}, String(row.rounds)));
    tr.appendChild(el("td", {class: "num"}, bytes(row.bytes_up)));
    tr.appendChild(el("td", {class: "num"}, bytes(row.bytes_down)));
    tr.appendChild(el("td", {class: "num"}, typeof row.train_seconds === "number" ? row.train_seconds.toFixed(2) + " s" : "–"));
    tr.appendChild(el("td", {}, row.device || "–"));
    return tr;
  }));
}

function renderEvents(run) {
  const list = document.getElementById("events");
  if (!run.events.length) { list.replaceChildren(el("li", {class: "muted"}, "nothing yet")); return; }
  list.replaceChildren(...run.events.map(ev => {
    const li = el("li", {"data-kind": ev.kind});
    li.appendChild(el("time", {}, clock(ev.time)));
    li.appendChild(el("span", {class: "kind " + ev.kind}, ev.kind));
    li.appendChild(el("span", {class: "text"}, ev.text));
    return li;
  }));
}

function renderRounds(run) {
  const body = document.querySelector("#rounds tbody");
  body.replaceChildren(...run.recent_rounds.map(r => {
    const n = r.round !== undefined ? r.round : r.version;
    const tr = el("tr", {"data-round": String(n)});
    const dropped = r.dropped && typeof r.dropped === "object" ? Object.entries(r.dropped) : [];
    const cells = [String(n), String(r.clients !== undefined ? r.clients : "–") + (r.selected ? " / " + r.selected : ""),
      fmt(r.eval_accuracy, 4), fmt(r.eval_loss, 4), fmt(r.train_loss, 4), bytes(r.bytes_up), bytes(r.bytes_down), fmt(r.seconds, 2)];
    cells.forEach((text, i) => tr.appendChild(el("td", i ? {class: "num"} : {}, text)));
    tr.appendChild(el("td", {}, dropped.length ? dropped.map(([id, why]) => id + " (" + why + ")").join(", ") : "–"));
    return tr;
  }));
}

function setLive(ok, text) {
  const live = document.getElementById("live");
  live.classList.toggle("stale", !ok);
  document.getElementById("live-text").textContent = text;
}

async function poll() {
  try {
    const response = await fetch("/api/run", {cache: "no-store", credentials: "same-origin"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const run = await response.json();
    renderHeader(run); renderCards(run); renderChart(run); renderClients(run); renderEvents(run); renderRounds(run);
    lastOk = Date.now();
    setLive(true, "live · " + clock(run.now));
  } catch (err) {
    setLive(false, lastOk ? "server not answering since " + new Date(lastOk).toLocaleTimeString([], {hour12: false}) : "cannot reach the server (" + err.message + ")");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", poll);
