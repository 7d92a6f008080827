// The dashboard: reads the JSON API of the instance that served it and
// refreshes on its event stream. Every value is put in the page as text
// (textContent), never as HTML.
"use strict";

let csrf = "";
const $ = (id) => document.getElementById(id);

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function badge(row, text) {
  const td = document.createElement("td");
  const span = document.createElement("span");
  span.className = "badge s-" + String(text).replace(/[^a-z]/g, "");
  span.textContent = text;
  td.appendChild(span);
  row.appendChild(td);
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  opts.headers["X-Claro"] = "dashboard";
  if (csrf) opts.headers["X-CSRF-Token"] = csrf;
  const res = await fetch("/api/v1/" + path, opts);
  if (res.status === 401) { $("login").hidden = false; throw new Error("log in"); }
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

async function loadCluster() {
  const s = await api("status");
  $("cluster-meta").textContent = "coordinator " + (s.coordinator || "none") + " · term " + s.term + " · answered by " + s.answered_by;
  const tbody = $("servers");
  tbody.replaceChildren();
  for (const v of s.servers) {
    const tr = document.createElement("tr");
    cell(tr, v.name + (v.name === s.coordinator ? " ★" : ""));
    cell(tr, v.address);
    cell(tr, v.role);
    badge(tr, v.state);
    badge(tr, v.connected ? "yes" : "no");
    badge(tr, v.synchronized ? "yes" : "no");
    cell(tr, v.applied_index);
    cell(tr, v.note, "wrap");
    tbody.appendChild(tr);
  }
}

function actionButton(label, path) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", async () => {
    try { await api(path, { method: "POST" }); refresh(); } catch (e) { alert(e.message); }
  });
  return b;
}

async function loadJobs() {
  const state = $("state-filter").value;
  const page = await api("jobs?limit=50" + (state ? "&state=" + state : ""));
  const tbody = $("job-rows");
  tbody.replaceChildren();
  for (const j of page.jobs) {
    const tr = document.createElement("tr");
    cell(tr, j.id);
    cell(tr, j.kind);
    badge(tr, j.state);
    cell(tr, j.attempt + "/" + j.max_attempts);
    cell(tr, j.instance);
    cell(tr, j.input, "wrap");
    cell(tr, j.created_at);
    cell(tr, j.error || j.result, "wrap");
    const td = document.createElement("td");
    if (["queued", "assigned", "running"].includes(j.state)) td.appendChild(actionButton("Cancel", "jobs/" + j.id + "/cancel"));
    if (["failed", "cancelled"].includes(j.state)) td.appendChild(actionButton("Retry", "jobs/" + j.id + "/retry"));
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
}

async function loadHotfolders() {
  const list = await api("hotfolders");
  const tbody = $("hotfolder-rows");
  tbody.replaceChildren();
  for (const h of list) {
    const tr = document.createElement("tr");
    cell(tr, h.name);
    badge(tr, h.paused ? "paused" : "active");
    cell(tr, h.waiting);
    cell(tr, h.in_progress);
    cell(tr, h.done_last_hour);
    cell(tr, h.failed_last_hour);
    const td = document.createElement("td");
    td.appendChild(actionButton(h.paused ? "Resume" : "Pause", "hotfolders/" + encodeURIComponent(h.name) + (h.paused ? "/resume" : "/pause")));
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
}

let pending = false;
async function refresh() {
  if (pending) return;
  pending = true;
  try {
    await Promise.all([loadCluster(), loadJobs(), loadHotfolders()]);
    $("login").hidden = true;
  } catch (e) {
    console.log(e.message);
  } finally {
    pending = false;
  }
}

function listen() {
  const events = new EventSource("/api/v1/events");
  const live = $("live");
  events.addEventListener("change", () => refresh());
  events.onopen = () => { live.textContent = "live"; live.className = "badge s-live"; refresh(); };
  events.onerror = () => { live.textContent = "reconnecting"; live.className = "badge s-reconnecting"; };
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const res = await fetch("/api/v1/login", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: $("token").value }) });
      const body = await res.json();
      if (!res.ok) throw new Error(body.error);
      csrf = body.csrf;
      $("login").hidden = true;
      refresh();
    } catch (e) { $("login-error").textContent = e.message; }
  });
  $("submit-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const job = await api("jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ script: $("script").value }) });
      $("submit-result").textContent = "submitted " + job.id;
      refresh();
    } catch (e) { $("submit-result").textContent = e.message; }
  });
  $("state-filter").addEventListener("change", () => loadJobs());
  listen();
  refresh();
});
