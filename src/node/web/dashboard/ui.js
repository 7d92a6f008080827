// The dashboard's building blocks: elements, badges, bars, times, toasts
// and SVG charts. Every value from the server enters the page as text
// (textContent or a text node), never as HTML: job names, logs, file names
// and scripts may hold markup.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
/// How long a toast stays, in milliseconds (an error longer).
const TOAST_MS = 4000;
const TOAST_ERROR_MS = 9000;
/// Toasts shown at once at most (the oldest goes first).
const TOASTS_MAX = 4;
/// How long an armed "are you sure" button waits for its second click.
const CONFIRM_MS = 4000;

/// An element: `props` are DOM properties (className, href, title, onclick,
/// type, value, ...), `kids` strings (as text) or nodes; null kids skipped.
function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el[k] = v;
  }
  append(el, kids);
  return el;
}

function append(el, kids) {
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    el.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}

/// Replaces the children of element `id` (or an element) with `kids`.
function fill(target, ...kids) {
  const el = typeof target === "string" ? $(target) : target;
  el.replaceChildren();
  return append(el, kids);
}

function svg(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const k of kids) el.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
  return el;
}

/// A class-safe token of a server-given word (state names and the like).
function token(word) {
  return String(word || "none").toLowerCase().replace(/[^a-z0-9]/g, "");
}

function badge(text, kind) {
  return h("span", { className: "badge b-" + token(kind || text) }, text);
}

function yesNo(flag, yes, no) {
  return badge(flag ? yes || "yes" : no || "no", flag ? "yes" : "no");
}

/// A small bar of `value` out of `max`, with its figure beside it.
function meter(value, max, label) {
  const share = max > 0 ? Math.min(1, value / max) : 0;
  const fillEl = h("span", { className: "meter-fill" + (share >= 0.9 ? " high" : "") });
  fillEl.style.width = (share * 100).toFixed(1) + "%";
  return h("span", { className: "meter" }, h("span", { className: "meter-track" }, fillEl), h("span", { className: "meter-label" }, label));
}

/// A progress bar: determinate with a share in 0..1, else moving.
function progressBar(share) {
  const bar = h("span", { className: "progress" + (share === null ? " indeterminate" : "") });
  const inner = h("span", { className: "progress-fill" });
  if (share !== null) inner.style.width = (Math.max(0, Math.min(1, share)) * 100).toFixed(1) + "%";
  bar.appendChild(inner);
  return bar;
}

function parseTime(text) {
  if (!text) return null;
  const t = Date.parse(text);
  return Number.isNaN(t) ? null : t;
}

function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return "";
  if (ms < 1000) return Math.round(ms) + " ms";
  const s = ms / 1000;
  if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + " s";
  const m = Math.floor(s / 60);
  const rest = Math.round(s - m * 60);
  if (m < 60) return m + " min" + (rest ? " " + rest + " s" : "");
  const hr = Math.floor(m / 60);
  return hr + " h" + (m - hr * 60 ? " " + (m - hr * 60) + " min" : "");
}

function ago(text) {
  const t = parseTime(text);
  if (t === null) return "";
  const ms = Date.now() - t;
  if (ms < 5000) return "just now";
  return duration(ms).replace(/ \d+ (s|min)$/, "") + " ago";
}

/// A time shown relative ("3 min ago"), the exact one on hover.
function when(text) {
  if (!text) return h("span", { className: "muted" }, "—");
  const t = parseTime(text);
  return h("time", { dateTime: text, title: t === null ? text : new Date(t).toLocaleString() }, ago(text));
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function toast(message, kind) {
  const el = h("div", { className: "toast toast-" + (kind || "info"), role: kind === "error" ? "alert" : "status" }, message);
  el.addEventListener("click", () => el.remove());
  const box = $("toasts");
  box.appendChild(el);
  while (box.children.length > TOASTS_MAX) box.firstChild.remove();
  setTimeout(() => el.remove(), kind === "error" ? TOAST_ERROR_MS : TOAST_MS);
}

/// What each table was last drawn from: a refresh that brings the same
/// data leaves the page alone (hover, selection and focus stay).
const drawnFrom = new Map();

function unchanged(key, data) {
  const text = JSON.stringify(data);
  if (drawnFrom.get(key) === text) return true;
  drawnFrom.set(key, text);
  return false;
}

/// Until when (ms) each armed confirmation waits, by key: a table drawn
/// again by a live refresh keeps a button armed between its two clicks.
const armedUntil = new Map();

/// A button that runs `action` (async); with `confirmText`, the first click
/// arms it and a second one within CONFIRM_MS runs it (no modal dialogs).
/// `key` names what it acts on (unique on the page).
function actionButton(label, cls, action, confirmText, key) {
  const b = h("button", { type: "button", className: "btn btn-small " + (cls || "") }, label);
  const k = key || label;
  const arm = (until) => {
    armedUntil.set(k, until);
    b.textContent = confirmText;
    b.classList.add("armed");
    setTimeout(() => {
      if ((armedUntil.get(k) || 0) > Date.now()) return;
      armedUntil.delete(k);
      b.textContent = label;
      b.classList.remove("armed");
    }, until - Date.now() + 10);
  };
  if (confirmText && (armedUntil.get(k) || 0) > Date.now()) arm(armedUntil.get(k));
  b.addEventListener("click", async (ev) => {
    ev.stopPropagation();
    if (confirmText && !((armedUntil.get(k) || 0) > Date.now())) return arm(Date.now() + CONFIRM_MS);
    armedUntil.delete(k);
    b.disabled = true;
    b.textContent = label;
    b.classList.remove("armed");
    try {
      await action();
    } catch (e) {
      toast(e.message, "error");
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

function emptyRow(columns, text) {
  return h("tr", { className: "empty" }, h("td", { colSpan: columns }, text));
}

// ---------------------------------------------------------------------------
// Charts: inline SVG drawn to the container's width.

const CHART_HEIGHT_PX = 180;
const CHART_PAD = { left: 44, right: 12, top: 10, bottom: 24 };
/// Room one time label on the x axis takes, in pixels.
const CHART_LABEL_PX = 80;
const SERIES_COLOURS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#db2777", "#4d7c0f"];
/// The window the charts show, in milliseconds (the stats keep one hour),
/// and the least they show while the history is younger.
const CHART_SPAN_MS = 3600 * 1000;
const CHART_SPAN_MIN_MS = 2 * 60 * 1000;

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/// Decimals that show `step` exactly (at most 3).
function decimalsOf(step) {
  for (let d = 0; d < 3; d++) if (Math.abs(step * 10 ** d - Math.round(step * 10 ** d)) < 1e-9) return d;
  return 3;
}

/// The time window a chart shows: the last CHART_SPAN_MS, or less while the
/// history is younger (an instance that just started), but at least
/// CHART_SPAN_MIN_MS.
function chartWindow(series, now) {
  const first = Math.min(...series.flatMap((s) => s.points.map((p) => p[0])), now);
  const span = Math.min(CHART_SPAN_MS, Math.max(CHART_SPAN_MIN_MS, now - first));
  return { t0: now - span, span };
}

/// Draws `series` ([{name, points: [[ms, value]...]}]) as lines into
/// `container`, y ticks by `unit` ("" or "%"), the legend's values by
/// `format`.
function lineChart(container, series, opts) {
  const o = Object.assign({ format: (v) => String(v), unit: "", area: false, yMax: null, now: Date.now() }, opts || {});
  const width = Math.max(280, container.clientWidth || 480);
  const height = CHART_HEIGHT_PX;
  const plotW = width - CHART_PAD.left - CHART_PAD.right;
  const plotH = height - CHART_PAD.top - CHART_PAD.bottom;
  const { t0, span } = chartWindow(series, o.now);
  const all = series.flatMap((s) => s.points.map((p) => p[1]));
  const yMax = o.yMax || niceMax(Math.max(0, ...all));
  const decimals = decimalsOf(yMax / 4);
  const x = (t) => CHART_PAD.left + ((t - t0) / span) * plotW;
  const y = (v) => CHART_PAD.top + plotH - (Math.min(v, yMax) / yMax) * plotH;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img" });
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    root.appendChild(svg("line", { x1: CHART_PAD.left, x2: width - CHART_PAD.right, y1: y(v), y2: y(v), class: i ? "grid" : "axis" }));
    root.appendChild(svg("text", { x: CHART_PAD.left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, v.toFixed(decimals) + o.unit));
  }
  const clockOpts = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
  if (span < 10 * 60000) clockOpts.second = "2-digit";
  const gaps = Math.max(2, Math.min(4, Math.floor(plotW / CHART_LABEL_PX)));
  for (let i = 0; i <= gaps; i++) {
    const t = t0 + (span * i) / gaps;
    const label = i === gaps ? "now" : new Date(t).toLocaleTimeString([], clockOpts);
    root.appendChild(svg("text", { x: x(t), y: height - 6, "text-anchor": i === 0 ? "start" : i === gaps ? "end" : "middle", class: "tick" }, label));
  }
  series.forEach((s, i) => drawSeries(root, s, i, o, x, y, t0));
  const legend = series.length > 1 || o.legend
    ? h("div", { className: "legend" }, series.map((s, i) => {
      const dot = h("span", { className: "legend-dot" });
      dot.style.background = s.colour || SERIES_COLOURS[i % SERIES_COLOURS.length];
      const lastValue = s.points.length ? o.format(s.points[s.points.length - 1][1]) : "—";
      return h("span", { className: "legend-item" }, dot, s.name + " ", h("b", {}, lastValue));
    }))
    : null;
  fill(container, root, legend);
  return span;
}

function drawSeries(root, s, i, o, x, y, t0) {
  const colour = s.colour || SERIES_COLOURS[i % SERIES_COLOURS.length];
  const pts = s.points.filter((p) => p[0] >= t0);
  if (!pts.length) return;
  const line = pts.map((p, j) => (j ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1)).join(" ");
  if (o.area) {
    const last = pts[pts.length - 1], first = pts[0];
    const shape = line + ` L${x(last[0]).toFixed(1)} ${y(0)} L${x(first[0]).toFixed(1)} ${y(0)} Z`;
    root.appendChild(svg("path", { d: shape, fill: colour, "fill-opacity": 0.12, stroke: "none" }));
  }
  root.appendChild(svg("path", { d: line, fill: "none", stroke: colour, "stroke-width": 2, "stroke-linejoin": "round", "stroke-linecap": "round" }));
  const end = pts[pts.length - 1];
  root.appendChild(svg("circle", { cx: x(end[0]), cy: y(end[1]), r: 3, fill: colour }, svg("title", {}, s.name + ": " + o.format(end[1]))));
}
