// The dashboard's shell: the API client with its session (login, CSRF),
// the router (#page/argument), and the live updates from the instance's
// event stream. The pages themselves are in pages.js.
"use strict";

/// At most one refresh of the visible page per this many milliseconds
/// (events may come hundreds a second under load).
const REFRESH_GAP_MS = 250;
/// A stream the server closed (a restarted instance forgot the session, or
/// refused a stream) is opened again after this long.
const STREAM_RETRY_MS = 3000;
/// Ranks of the roles: a button needs its page's role or a higher one.
const ROLE_RANK = { viewer: 1, operator: 2, admin: 3 };

const session = { role: null, csrf: "", loginRequired: false };

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/// One API call: JSON in and out, the dashboard's header, the CSRF token on
/// every change. A 401 shows the login page.
async function api(path, options) {
  const opts = Object.assign({ method: "GET" }, options || {});
  const headers = { "X-Claro": "dashboard" };
  if (opts.method !== "GET" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  let body;
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(opts.json);
  }
  let res;
  try {
    res = await fetch("/api/v1/" + path, { method: opts.method, headers, body, credentials: "same-origin" });
  } catch (e) {
    throw new ApiError("the instance does not answer (" + e.message + ")", 0);
  }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (res.status === 401 && path !== "login") {
    showLogin(data && data.error);
    throw new ApiError("log in first", 401);
  }
  if (!res.ok) throw new ApiError((data && data.error) || res.status + " " + res.statusText, res.status);
  return data;
}

function can(role) {
  return (ROLE_RANK[session.role] || 0) >= ROLE_RANK[role];
}

/// Shows or hides every element marked data-role by the session's role.
function applyRole() {
  for (const el of document.querySelectorAll("[data-role]")) el.hidden = !can(el.dataset.role);
  const role = $("role");
  role.hidden = !session.role;
  role.textContent = session.role || "";
  role.title = "You are logged in as " + (session.role || "nobody");
  $("logout").hidden = !session.loginRequired;
}

/// The cluster's name in the top bar (from any status answer).
function showClusterId(status) {
  const el = $("cluster-id");
  const id = status.cluster_id || "";
  el.textContent = id ? "cluster " + id.slice(0, 8) : "";
  el.title = "Cluster " + id + ", coordinator " + (status.coordinator || "none");
}

/// Asks the instance who we are: true when it answered with a session;
/// false on a 401 (the login page shows) or when it cannot be reached.
async function loadSession() {
  try {
    const s = await api("session");
    session.role = s.role;
    session.csrf = s.csrf || "";
    session.loginRequired = !!s.login_required;
    return true;
  } catch (e) {
    return false;
  }
}

function showLogin(reason) {
  session.role = null;
  applyRole();
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-login";
  $("nav").classList.add("disabled");
  $("login-error").textContent = reason && !/^log in/i.test(reason) ? reason : "";
  $("token").focus();
}

async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    const r = await api("login", { method: "POST", json: { token: $("token").value.trim() } });
    session.role = r.role;
    session.csrf = r.csrf;
    session.loginRequired = true;
    $("token").value = "";
    $("nav").classList.remove("disabled");
    applyRole();
    openStream();
    route();
    api("status").then(showClusterId, () => {});
  } catch (e) {
    $("login-error").textContent = e.message;
  }
}

async function logout() {
  try { await api("logout", { method: "POST" }); } catch (e) { /* the session ends anyway */ }
  session.csrf = "";
  closeStream();
  showLogin("");
}

// ---------------------------------------------------------------------------
// Router: #cluster, #jobs?state=failed, #job/ID, #hotfolders/NAME, #scripts/NAME, #settings.

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "cluster";
  const [path, query] = raw.split("?");
  const [page, ...rest] = path.split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  const params = new URLSearchParams(query || "");
  return { page: PAGES[page] ? page : "cluster", arg, params };
}

let current = null;

function route() {
  if (!session.role) return;
  const r = parseHash();
  const changed = !current || current.page !== r.page;
  current = r;
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + r.page;
  const navPage = r.page === "job" ? "jobs" : r.page;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === navPage);
  document.title = "claro · " + PAGES[r.page].title;
  if (changed && PAGES[r.page].enter) PAGES[r.page].enter(r);
  if (changed) schedulePoll();
  refreshNow();
}

// ---------------------------------------------------------------------------
// Refreshing: one at a time, at most one per REFRESH_GAP_MS.

let refreshing = false;
let again = false;
let timer = null;
let lastRefresh = 0;

function scheduleRefresh() {
  if (timer) return;
  const wait = Math.max(0, lastRefresh + REFRESH_GAP_MS - Date.now());
  timer = setTimeout(() => { timer = null; refreshNow(); }, wait);
}

async function refreshNow() {
  if (!current || !session.role) return;
  if (refreshing) { again = true; return; }
  refreshing = true;
  lastRefresh = Date.now();
  try {
    await PAGES[current.page].load(current);
  } catch (e) {
    if (e.status !== 401) setStale(e.message);
  } finally {
    refreshing = false;
    if (again) { again = false; scheduleRefresh(); }
  }
}

/// Pages with `pollMs` are also refreshed that often (as long as they show).
let pollTimer = null;
function schedulePoll() {
  clearTimeout(pollTimer);
  const page = current && PAGES[current.page];
  if (page && page.pollMs) pollTimer = setTimeout(() => { scheduleRefresh(); schedulePoll(); }, page.pollMs);
}

function setStale(message) {
  const live = $("live");
  if (live.dataset.state === "live") live.title = "Last refresh failed: " + message;
}

// ---------------------------------------------------------------------------
// Live: one event stream; EventSource reconnects by itself after a network
// error, but not after an answer it refuses (a 401 once the instance
// restarted and forgot the session): then the session is asked again.

let stream = null;
let retry = null;

function setLive(state, text) {
  const live = $("live");
  live.dataset.state = state;
  live.className = "pill pill-" + state;
  live.textContent = text;
  live.title = state === "live" ? "Updates arrive as they happen" : "The event stream is down; showing the last known state";
}

function openStream() {
  closeStream();
  setLive("wait", "connecting");
  stream = new EventSource("/api/v1/events");
  stream.onopen = () => { setLive("live", "live"); scheduleRefresh(); };
  stream.onerror = () => {
    setLive("down", "reconnecting");
    if (stream && stream.readyState === EventSource.CLOSED) {
      stream = null;
      clearTimeout(retry);
      retry = setTimeout(connect, STREAM_RETRY_MS);
    }
  };
  for (const name of ["job", "change", "server", "coordinator", "resync"]) {
    stream.addEventListener(name, (ev) => onEvent(name, ev));
  }
}

function closeStream() {
  clearTimeout(retry);
  if (stream) stream.close();
  stream = null;
}

function onEvent(name, ev) {
  let data = {};
  try { data = JSON.parse(ev.data); } catch (e) { /* an event without data still means "look again" */ }
  const page = current && PAGES[current.page];
  if (page && page.wants && !page.wants(name, data, current)) return;
  scheduleRefresh();
}

/// Asks who we are until the instance answers, then shows the page and
/// opens the event stream; a 401 shows the login form instead (a restarted
/// instance has forgotten its sessions).
async function connect() {
  clearTimeout(retry);
  if (await loadSession()) {
    applyRole();
    openStream();
    route();
    api("status").then(showClusterId, () => {});
  } else if ($("page-login").hidden) {
    setLive("down", "reconnecting");
    retry = setTimeout(connect, STREAM_RETRY_MS);
  }
}

function start() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  for (const p of Object.values(PAGES)) if (p.init) p.init();
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => scheduleRefresh());
  connect();
}

document.addEventListener("DOMContentLoaded", start);
