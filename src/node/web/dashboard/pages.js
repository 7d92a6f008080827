// The dashboard's pages. Each has `load(route)` (fetch and draw; called on
// entry and on every debounced event), optionally `init()` (wire its static
// controls once), `enter(route)` (on arrival) and `wants(event, data,
// route)` (whether an event concerns it).
"use strict";

/// Jobs shown per page of the jobs table.
const JOBS_PAGE_SIZE = 50;
/// The stats history changes once per sample: fetch it at most this often.
const STATS_REFETCH_MS = 5000;
/// A job that is not finished is looked at this often even without events:
/// its log and progress come live from the server running it (the event
/// stream carries state changes only).
const JOB_POLL_MS = 1000;
const ACTIVE_STATES = ["queued", "assigned", "running"];
const FINAL_STATES = ["succeeded", "failed", "cancelled"];

const enc = encodeURIComponent;

function jobLink(id) {
  return h("a", { href: "#job/" + enc(id), className: "mono" }, id);
}

function jobPath(j) {
  if (!j.input) return j.hotfolder ? j.hotfolder : null;
  return (j.hotfolder ? j.hotfolder + " / " : "") + j.input;
}

function runTime(j) {
  const start = parseTime(j.started_at);
  if (start === null) return null;
  const end = parseTime(j.finished_at);
  return (end === null ? Date.now() : end) - start;
}

/// A running job's elapsed time, kept current by the ticker (data-since).
function elapsed(j) {
  const el = h("span", { className: "elapsed" }, duration(runTime(j)));
  el.dataset.since = j.started_at || "";
  return el;
}

function progressCell(j) {
  if (j.state === "running") return h("div", { className: "progress-cell" }, progressBar(null), elapsed(j));
  if (j.state === "assigned") return h("span", { className: "muted" }, "starting on " + (j.instance || "?"));
  if (j.state === "queued") return h("span", { className: "muted" }, "waiting for a slot");
  const t = runTime(j);
  return h("span", { className: "muted" }, t === null ? "—" : "took " + duration(t));
}

function jobButtons(j, after) {
  const out = [];
  if (!can("operator")) return out;
  if (ACTIVE_STATES.includes(j.state)) {
    out.push(actionButton("Cancel", "btn-danger", async () => {
      await api("jobs/" + enc(j.id) + "/cancel", { method: "POST" });
      toast("Cancelled job " + j.id, "ok");
      after();
    }, "Cancel job?", "cancel/" + j.id));
  }
  if (["failed", "cancelled"].includes(j.state)) {
    out.push(actionButton("Retry", "", async () => {
      await api("jobs/" + enc(j.id) + "/retry", { method: "POST" });
      toast("Job " + j.id + " queued again", "ok");
      after();
    }));
  }
  return out;
}

/// One line of a long text for a table cell; the whole on hover.
function clip(text, cls) {
  if (text === null || text === undefined || text === "") return h("span", { className: "muted" }, "—");
  const s = String(text);
  const first = s.split("\n")[0];
  return h("span", { className: "clip " + (cls || ""), title: s }, first.length > 140 ? first.slice(0, 140) + "…" : first);
}

// ---------------------------------------------------------------------------
// Cluster

/// The jobs kept, by state, from the stats answer: "12 succeeded · 1 failed".
const JOB_STATES = ["queued", "assigned", "running", "succeeded", "failed", "cancelled"];
function jobsByState(stats) {
  const jobs = (stats && stats.jobs) || {};
  const parts = JOB_STATES.filter((s) => jobs[s]).map((s) => jobs[s] + " " + s);
  return parts.length ? parts.join(" · ") : "none kept";
}
function jobsTotal(stats) {
  const jobs = (stats && stats.jobs) || {};
  return String(Object.values(jobs).reduce((n, v) => n + v, 0));
}

const clusterPage = {
  title: "Cluster",
  stats: null,
  statsAt: 0,
  /// "Last heard" and the charts move on without events too.
  pollMs: 5000,

  enter() {
    this.statsAt = 0;
  },

  async load() {
    const now = Date.now();
    const wantStats = now - this.statsAt > STATS_REFETCH_MS;
    const [status, servers, stats] = await Promise.all([
      api("status"), api("servers"), wantStats ? api("stats") : Promise.resolve(this.stats),
    ]);
    if (wantStats) { this.stats = stats; this.statsAt = now; }
    this.drawHeader(status);
    this.drawCards(status, servers, stats);
    this.drawNotes(status);
    this.drawServers(status, servers);
    this.drawCharts(stats);
  },

  drawHeader(status) {
    showClusterId(status);
  },

  drawCards(status, servers, stats) {
    const connected = status.servers.filter((s) => s.connected).length;
    const last = stats && stats.samples.length ? stats.samples[stats.samples.length - 1] : null;
    // Running, Queued and Throughput come from one sample, the charts'
    // last point, so that the cards and the charts never disagree; the
    // servers' table below is live.
    const sampled = (f) => (last && last.servers ? Object.values(last.servers).reduce((n, l) => n + (f(l) || 0), 0) : null);
    const running = last ? last.running : servers.reduce((n, s) => n + (s.running || 0), 0);
    const slots = sampled((l) => l.slots) ?? servers.reduce((n, s) => n + (s.slots || 0), 0);
    const card = (label, value, sub, cls) => h("div", { className: "stat " + (cls || "") },
      h("div", { className: "stat-label" }, label), h("div", { className: "stat-value" }, value), h("div", { className: "stat-sub" }, sub));
    fill("cluster-cards",
      card("Coordinator", status.coordinator || "none", "term " + status.term, status.coordinator ? "" : "stat-bad"),
      card("Servers", connected + " / " + status.servers.length, "connected", connected === status.servers.length ? "" : "stat-warn"),
      card("Running", running + " / " + slots, h("span", {}, meter(running, slots, "slots in use"))),
      card("Queued", last ? String(last.queued) : "—", "jobs waiting for a slot"),
      card("Throughput", last ? last.jobs_per_s.toFixed(2) : "—", "jobs per second, last 10 s"),
      card("Jobs", jobsTotal(stats), jobsByState(stats)));
  },

  drawNotes(status) {
    const notes = status.servers.filter((s) => s.note);
    const box = $("cluster-notes");
    // Alerts (the same as `claro status` lists and Prometheus' rules fire):
    // a banner each, critical ones red.
    const alerts = (status.alerts || []).map((a) => h("div", { className: "callout " + (a.severity === "critical" ? "callout-bad" : "callout-warn"), dataset: { alert: a.name } },
      h("strong", {}, a.name.replace(/^Claro/, "") + " · " + a.subject), h("div", {}, a.message)));
    if (!status.coordinator && !alerts.length) notes.unshift({ name: "cluster", note: "no coordinator: changes wait until one is elected" });
    const list = notes.length ? [h("div", { className: "callout callout-warn" },
      h("strong", {}, "Notes"),
      h("ul", {}, notes.map((s) => h("li", {}, h("b", {}, s.name + ": "), s.note))))] : [];
    fill(box, ...alerts, ...list);
  },

  drawServers(status, servers) {
    const load = Object.fromEntries(servers.map((s) => [s.name, s]));
    $("servers-meta").textContent = "commit index " + status.commit_index + (status.from_coordinator ? "" : " · as seen by " + status.answered_by);
    const rows = status.servers.map((s) => {
      const l = load[s.name] || {};
      const isCoord = s.name === status.coordinator;
      return h("tr", { dataset: { server: s.name } },
        h("td", {}, h("div", { className: "server-name" }, s.name, isCoord ? badge("coordinator", "coord") : null),
          h("div", { className: "muted small" }, h("span", { className: "mono" }, s.address), s.role === "server" ? "" : " · " + s.role)),
        h("td", {}, badge(s.state)),
        h("td", {}, yesNo(s.connected)),
        h("td", {}, yesNo(s.synchronized)),
        h("td", {}, l.slots !== undefined ? meter(l.running, l.slots, l.running + " / " + l.slots) : "—"),
        h("td", {}, l.mode ? badge(l.mode) : "—"),
        h("td", { className: "num mono" }, s.applied_index),
        h("td", { className: "muted" }, s.heard_ago_ms === null || s.heard_ago_ms === undefined ? "never" : s.heard_ago_ms === 0 ? "now" : duration(s.heard_ago_ms) + " ago"),
        h("td", { className: "actions" }, this.buttons(s, l, isCoord)));
    });
    fill("servers", rows);
  },

  buttons(s, l, isCoord) {
    if (!can("admin")) return [];
    const post = (verb, done) => async () => {
      const r = await api("servers/" + enc(s.name) + "/" + verb, { method: "POST" });
      toast(done(r), "ok");
      scheduleRefresh();
    };
    const out = [];
    if (l.mode === "maintenance") {
      out.push(actionButton("Activate", "", post("activate", (r) => r.name + " takes jobs again")));
    } else {
      out.push(actionButton("Maintenance", "", post("maintenance", (r) => r.name + " in maintenance: no new jobs (" + r.running + " still running)"), "Stop new jobs?", "maintenance/" + s.name));
      out.push(actionButton("Drain", "", post("drain", (r) => r.name + " draining: " + r.running + " jobs still running"), "Drain " + s.name + "?", "drain/" + s.name));
    }
    // Only a connected, synchronized follower can take the role now.
    if (!isCoord && s.role === "server" && s.connected && s.synchronized && s.state === "follower") {
      out.push(actionButton("Make coordinator", "", async () => {
        const r = await api("coordinator/transfer", { method: "POST", json: { name: s.name } });
        toast(r.message || "coordinator moved to " + s.name, "ok");
        scheduleRefresh();
      }, "Move coordinator?", "transfer/" + s.name));
    }
    return out;
  },

  drawCharts(stats) {
    const samples = (stats && stats.samples) || [];
    const pts = (f) => samples.map((s) => [s.at_ms || parseTime(s.at), f(s)]);
    const none = (el) => fill(el, h("div", { className: "chart-empty" }, "Collecting: this instance samples every " + ((stats && stats.interval_s) || 10) + " s since it started."));
    if (!samples.length) {
      for (const id of ["chart-rate", "chart-queue", "chart-load"]) none($(id));
      return;
    }
    const span = lineChart($("chart-rate"), [{ name: "jobs/s", points: pts((s) => s.jobs_per_s) }], { area: true, format: (v) => v.toFixed(2) });
    lineChart($("chart-queue"), [
      { name: "queued", points: pts((s) => s.queued), colour: "#d97706" },
      { name: "running", points: pts((s) => s.running), colour: "#2563eb" },
    ], { format: (v) => String(Math.round(v)) });
    const spanText = span >= CHART_SPAN_MS ? "last hour" : "last " + duration(span);
    for (const el of document.querySelectorAll(".chart-span")) {
      el.textContent = spanText;
      el.title = span >= CHART_SPAN_MS ? "" : "The history starts when the instance this page talks to started";
    }
    const names = [...new Set(samples.flatMap((s) => Object.keys(s.servers || {})))].sort();
    lineChart($("chart-load"), names.map((n) => ({
      name: n,
      points: samples.filter((s) => s.servers && s.servers[n]).map((s) => {
        const l = s.servers[n];
        return [s.at_ms || parseTime(s.at), l.slots ? (100 * l.running) / l.slots : 0];
      }),
    })), { yMax: 100, unit: "%", legend: true, format: (v) => Math.round(v) + "%" });
  },
};

// ---------------------------------------------------------------------------
// Jobs

const jobsPage = {
  title: "Jobs",
  before: null,
  stack: [],
  filterKey: "",
  optionsAt: 0,

  init() {
    for (const f of ["state", "kind", "instance", "hotfolder"]) {
      $("f-" + f).addEventListener("change", () => this.setFilters());
    }
    $("f-clear").addEventListener("click", () => { location.hash = "#jobs"; });
    $("page-older").addEventListener("click", () => {
      if (!this.next) return;
      this.stack.push(this.before);
      this.before = this.next;
      refreshNow();
    });
    $("page-newer").addEventListener("click", () => {
      this.before = this.stack.length ? this.stack.pop() : null;
      refreshNow();
    });
    $("show-submit").addEventListener("click", () => this.openForm(true));
    $("hide-submit").addEventListener("click", () => this.openForm(false));
    $("submit-form").addEventListener("submit", (ev) => this.submit(ev));
  },

  openForm(open) {
    $("submit-form").hidden = !open;
    $("show-submit").hidden = open || !can("operator");
    if (open) $("submit-code").focus();
  },

  setFilters() {
    const p = new URLSearchParams();
    for (const f of ["state", "kind", "instance", "hotfolder"]) if ($("f-" + f).value) p.set(f, $("f-" + f).value);
    const q = p.toString();
    location.hash = "#jobs" + (q ? "?" + q : "");
  },

  enter() {
    this.optionsAt = 0;
  },

  async options() {
    if (Date.now() - this.optionsAt < 30000) return;
    this.optionsAt = Date.now();
    const [status, hotfolders] = await Promise.all([api("status"), api("hotfolders")]);
    const put = (id, names) => {
      const sel = $(id);
      const keep = sel.value;
      fill(sel, h("option", { value: "" }, "all"), names.map((n) => h("option", { value: n }, n)));
      sel.value = keep;
    };
    put("f-instance", status.servers.map((s) => s.name));
    put("f-hotfolder", hotfolders.map((f) => f.name));
  },

  async load(r) {
    const filters = {};
    for (const f of ["state", "kind", "instance", "hotfolder"]) {
      const v = r.params.get(f) || "";
      if (v) filters[f] = v;
    }
    const key = JSON.stringify(filters);
    if (key !== this.filterKey) { this.filterKey = key; this.before = null; this.stack = []; }
    await this.options();
    for (const f of ["state", "kind", "instance", "hotfolder"]) {
      const sel = $("f-" + f);
      if (filters[f] && ![...sel.options].some((o) => o.value === filters[f])) sel.appendChild(h("option", { value: filters[f] }, filters[f]));
      sel.value = filters[f] || "";
    }
    const q = new URLSearchParams(Object.assign({ limit: String(JOBS_PAGE_SIZE) }, filters));
    if (this.before) q.set("before", this.before);
    const page = await api("jobs?" + q.toString());
    this.next = page.next_before;
    if (unchanged("jobs", [page, this.stack.length, session.role, key])) return;
    this.draw(page.jobs, Object.keys(filters).length > 0);
  },

  draw(jobs, filtered) {
    const rows = jobs.map((j) => h("tr", { className: "job-row s-" + token(j.state), dataset: { id: j.id, state: j.state } },
      h("td", {}, jobLink(j.id)),
      h("td", {}, j.kind),
      h("td", {}, badge(j.state)),
      h("td", {}, progressCell(j)),
      h("td", {}, j.instance || h("span", { className: "muted" }, "—")),
      h("td", { className: "cell-input" }, clip(jobPath(j))),
      h("td", {}, when(j.created_at)),
      h("td", { className: "cell-result" }, j.error ? clip(j.error, "text-bad") : clip(j.result)),
      h("td", { className: "actions" }, jobButtons(j, scheduleRefresh))));
    fill("job-rows", rows.length ? rows : emptyRow(9, filtered ? "No job matches these filters." : "No jobs yet. Submit a script, or drop a file into a hotfolder."));
    const pageNo = this.stack.length + 1;
    $("page-info").textContent = "page " + pageNo;
    $("page-newer").disabled = pageNo === 1;
    $("page-older").disabled = !this.next;
    $("jobs-meta").textContent = jobs.length + (jobs.length === JOBS_PAGE_SIZE ? "+" : "") + " shown, newest first";
  },

  async submit(ev) {
    ev.preventDefault();
    const out = $("submit-result");
    fill(out);
    const body = { script: $("submit-code").value };
    const args = $("submit-args").value.split("\n").filter((a) => a !== "");
    if (args.length) body.args = args;
    const num = (id) => ($(id).value === "" ? null : Number($(id).value));
    if (num("submit-priority") !== null) body.priority = num("submit-priority");
    if (num("submit-attempts") !== null) body.max_attempts = num("submit-attempts");
    if (num("submit-timeout") !== null) body.timeout_s = num("submit-timeout");
    try {
      const job = await api("jobs", { method: "POST", json: body });
      out.className = "submit-result ok";
      fill(out, "Submitted job ", jobLink(job.id), h("span", { className: "muted" }, " — open it to follow its log"));
      scheduleRefresh();
    } catch (e) {
      out.className = "submit-result form-error";
      fill(out, e.message);
    }
  },
};

// ---------------------------------------------------------------------------
// One job

const jobPage = {
  title: "Job",
  poll: null,
  job: null,

  init() {
    $("job-cancel").addEventListener("click", () => this.act("cancel"));
    $("job-retry").addEventListener("click", () => this.act("retry"));
  },

  enter() {
    this.job = null;
    fill("job-log");
    fill("job-profile");
  },

  wants(name, data, r) {
    return name !== "job" || data.id === r.arg;
  },

  async act(verb) {
    const id = this.job && this.job.id;
    if (!id) return;
    const btn = $("job-" + verb);
    if (verb === "cancel" && !btn.classList.contains("armed")) {
      btn.classList.add("armed");
      btn.textContent = "Cancel job?";
      setTimeout(() => { btn.classList.remove("armed"); btn.textContent = "Cancel"; }, CONFIRM_MS);
      return;
    }
    btn.classList.remove("armed");
    btn.textContent = verb === "cancel" ? "Cancel" : "Retry";
    try {
      const j = await api("jobs/" + enc(id) + "/" + verb, { method: "POST" });
      toast(verb === "cancel" ? "Cancelled job " + id : "Job " + id + " queued again", "ok");
      this.draw(j);
    } catch (e) {
      toast(e.message, "error");
    }
    scheduleRefresh();
  },

  async load(r) {
    clearTimeout(this.poll);
    let j;
    try {
      j = await api("jobs/" + enc(r.arg || ""));
    } catch (e) {
      if (e.status === 404 || e.status === 400) return this.missing(r.arg, e.message);
      throw e;
    }
    if (current.page !== "job" || current.arg !== r.arg) return;
    this.draw(j);
    if (!FINAL_STATES.includes(j.state)) this.poll = setTimeout(scheduleRefresh, JOB_POLL_MS);
  },

  missing(id, message) {
    $("job-id").textContent = id || "";
    fill("job-state");
    fill("job-missing", message);
    $("job-missing").hidden = false;
    $("job-body").hidden = true;
    for (const b of ["job-cancel", "job-retry"]) $(b).hidden = true;
  },

  draw(j) {
    this.job = j;
    $("job-missing").hidden = true;
    $("job-body").hidden = false;
    $("job-id").textContent = j.id;
    fill("job-state", badge(j.state));
    $("job-cancel").hidden = !can("operator") || !ACTIVE_STATES.includes(j.state);
    $("job-retry").hidden = !can("operator") || !["failed", "cancelled"].includes(j.state);
    this.drawProgress(j);
    const field = (k, v) => [h("dt", {}, k), h("dd", {}, v === null || v === undefined || v === "" ? h("span", { className: "muted" }, "—") : v)];
    fill("job-fields",
      field("Kind", j.kind),
      field("Server", j.instance),
      field("Priority", String(j.priority)),
      field("Time limit", j.timeout_ms ? duration(j.timeout_ms) + " an attempt" : null),
      field("Created", when(j.created_at)),
      field("Started", when(j.started_at)),
      field("Finished", when(j.finished_at)),
      field("Run time", j.started_at ? (j.finished_at ? duration(runTime(j)) : elapsed(j)) : null),
      j.hotfolder ? field("Hotfolder", h("a", { href: "#hotfolders/" + enc(j.hotfolder) }, j.hotfolder)) : null,
      j.input ? field("File", h("span", { className: "mono" }, j.input)) : null);
    const outcome = [];
    if (j.error) outcome.push(h("div", { className: "outcome-label text-bad" }, "Error"), h("pre", { className: "pre pre-error" }, j.error));
    if (j.result !== null && j.result !== undefined) outcome.push(h("div", { className: "outcome-label" }, "Result"), h("pre", { className: "pre" }, j.result === "" ? "(empty)" : j.result));
    if (!outcome.length) outcome.push(h("p", { className: "muted" }, FINAL_STATES.includes(j.state) ? "No result." : "Not finished yet."));
    fill("job-outcome", outcome);
    this.drawAttempts(j);
    this.drawLog(j);
    this.drawProfile(j.profile);
  },

  drawProgress(j) {
    if (j.state !== "running") return fill("job-progress");
    const share = typeof j.progress === "number" ? j.progress / 100 : null;
    fill("job-progress", h("div", { className: "card progress-card" },
      h("span", {}, "Running on ", h("b", {}, j.instance || "?"), " for "), elapsed(j),
      progressBar(share), share === null ? h("span", { className: "muted" }, "no progress reported") : h("b", {}, Math.round(share * 100) + "%")));
  },

  drawAttempts(j) {
    const dots = [];
    for (let i = 1; i <= j.max_attempts; i++) {
      const cls = i < j.attempt ? "dot-failed" : i === j.attempt ? "dot-" + token(j.state) : "dot-left";
      dots.push(h("span", { className: "attempt-dot " + cls, title: "attempt " + i }));
    }
    const summary = h("div", { className: "attempts" }, dots,
      h("span", {}, j.attempt === 0 ? "not started yet" : "attempt " + j.attempt + " of " + j.max_attempts));
    const list = j.attempts || [];
    if (!list.length) return fill("job-attempts", summary);
    const none = () => h("span", { className: "muted" }, "—");
    const rows = list.map((a) => h("tr", { dataset: { attempt: String(a.attempt) } },
      h("td", { className: "num" }, String(a.attempt)),
      h("td", {}, a.instance || none()),
      h("td", {}, badge(a.outcome)),
      h("td", {}, a.started_at ? when(a.started_at) : none()),
      h("td", {}, a.ended_at ? when(a.ended_at) : none()),
      h("td", { className: "attempt-error" }, a.error || "")));
    fill("job-attempts", summary, h("table", { className: "table" },
      h("thead", {}, h("tr", {}, ["#", "Server", "Outcome", "Started", "Ended", "Error"].map((c, i) => h("th", { className: i ? "" : "num" }, c)))),
      h("tbody", {}, rows)));
  },

  drawLog(j) {
    const pre = $("job-log");
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    const text = j.log || "";
    if (pre.textContent !== text) {
      pre.textContent = text;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
    pre.classList.toggle("log-empty", !text);
    if (!text) pre.textContent = FINAL_STATES.includes(j.state) ? "(no log lines)" : "(no log lines yet)";
    const lines = text ? text.split("\n").filter((l) => l).length : 0;
    $("job-log-meta").textContent = lines + " line" + (lines === 1 ? "" : "s") + (FINAL_STATES.includes(j.state) ? "" : " · live");
  },

  drawProfile(rows) {
    if (!rows || !rows.length) return fill("job-profile", h("p", { className: "muted" }, "No profile: only script jobs that called host functions have one."));
    const top = Math.max(...rows.map((r) => r.total_us), 1);
    const ms = (us) => (us / 1000).toFixed(us < 10000 ? 2 : 0);
    fill("job-profile", h("table", { className: "table" },
      h("thead", {}, h("tr", {}, ["Function", "Calls", "Total ms", "", "Prepare ms", "Wait ms", "Receive ms"].map((c, i) => h("th", { className: i && i !== 3 ? "num" : "" }, c)))),
      h("tbody", {}, rows.map((r) => h("tr", {},
        h("td", { className: "mono" }, r.name),
        h("td", { className: "num" }, r.calls),
        h("td", { className: "num" }, ms(r.total_us)),
        h("td", { className: "bar-col neutral" }, meter(r.total_us, top, "")),
        h("td", { className: "num" }, ms(r.prepare_us)),
        h("td", { className: "num" }, ms(r.wait_us)),
        h("td", { className: "num" }, ms(r.receive_us)))))));
  },
};

// ---------------------------------------------------------------------------
// Hotfolders

const hotfoldersPage = {
  title: "Hotfolders",

  init() {
    $("show-add-hotfolder").addEventListener("click", () => this.openForm(null));
    $("hide-add-hotfolder").addEventListener("click", () => this.closeForm());
    $("hf-kind").addEventListener("change", () => this.showKind());
    $("hotfolder-form").addEventListener("submit", (ev) => this.save(ev));
  },

  showKind() {
    const script = $("hf-kind").value === "script";
    $("hf-script-field").hidden = !script;
    $("hf-template-field").hidden = script;
  },

  /// Opens the form empty (add) or with hotfolder `d`'s definition (edit).
  openForm(d) {
    const def = (d && d.definition) || {};
    const action = def.action || {};
    this.editing = d ? d.name : null;
    $("hotfolder-form-title").textContent = d ? "Edit hotfolder " + d.name : "Add a hotfolder";
    $("hf-name").value = d ? d.name : "";
    $("hf-name").readOnly = !!d;
    $("hf-kind").value = action.script ? "script" : "template";
    $("hf-template").value = (d && d.template) || "";
    $("hf-script").value = action.script ? action.script.code : "";
    $("hf-stable").value = def.stable_ms || 2000;
    $("hf-retries").value = def.max_attempts ? def.max_attempts - 1 : 0;
    $("hf-include").value = (def.include || []).join(", ");
    $("hf-allow-shell").checked = !!def.allow_shell;
    $("hf-trigger").value = def.trigger || "stable";
    $("hf-folders").checked = !!def.folders;
    $("hotfolder-error").hidden = true;
    this.showKind();
    $("hotfolder-form").hidden = false;
    $("show-add-hotfolder").hidden = true;
    (d ? $("hf-template") : $("hf-name")).focus();
  },

  closeForm() {
    $("hotfolder-form").hidden = true;
    $("show-add-hotfolder").hidden = !can("admin");
    this.editing = null;
  },

  /// The definition the form gives, in the API's words (the CLI's checks
  /// are the server's).
  formBody() {
    const body = {
      name: $("hf-name").value.trim(),
      stable_ms: Number($("hf-stable").value),
      retries: Number($("hf-retries").value),
      include: $("hf-include").value.split(",").map((g) => g.trim()).filter((g) => g),
      allow_shell: $("hf-allow-shell").checked,
      trigger: $("hf-trigger").value,
      folders: $("hf-folders").checked,
    };
    if ($("hf-kind").value === "script") body.script = $("hf-script").value;
    else body.template = $("hf-template").value;
    return body;
  },

  async save(ev) {
    ev.preventDefault();
    const err = $("hotfolder-error");
    err.hidden = true;
    const body = this.formBody();
    try {
      const d = this.editing
        ? await api("hotfolders/" + enc(this.editing), { method: "PUT", json: body })
        : await api("hotfolders", { method: "POST", json: body });
      toast((this.editing ? "Changed " : "Added ") + d.name + ": drop files into its in/ folder", "ok");
      this.closeForm();
      location.hash = "#hotfolders/" + enc(d.name);
      scheduleRefresh();
    } catch (e) {
      err.hidden = false;
      err.textContent = e.message;
    }
  },

  wants(name) {
    return name !== "server" && name !== "coordinator";
  },

  async load(r) {
    const [list, detail] = await Promise.all([
      api("hotfolders"),
      r.arg ? api("hotfolders/" + enc(r.arg)).catch((e) => ({ missing: e.message })) : Promise.resolve(null),
    ]);
    if (unchanged("hotfolders", [list, detail, r.arg, session.role])) return;
    const rows = list.map((f) => {
      const tr = h("tr", { className: "clickable" + (f.name === r.arg ? " selected" : ""), dataset: { hotfolder: f.name } },
        h("td", {}, h("a", { href: "#hotfolders/" + enc(f.name), className: "strong" }, f.name)),
        h("td", {}, badge(f.paused ? "paused" : "active")),
        h("td", { className: "num" }, f.waiting),
        h("td", { className: "num" }, f.in_progress),
        h("td", { className: "num" }, f.done_last_hour),
        h("td", { className: "num" + (f.failed_last_hour ? " text-bad strong" : "") }, f.failed_last_hour),
        h("td", { className: "actions" }, this.buttons(f)));
      tr.addEventListener("click", () => { location.hash = "#hotfolders/" + enc(f.name); });
      return tr;
    });
    fill("hotfolder-rows", rows.length ? rows : emptyRow(7, "No hotfolders. Declare one in ClaroServers.conf or add one with `claro hotfolder add`."));
    this.drawDetail(r.arg, detail);
  },

  buttons(f) {
    if (!can("operator")) return [];
    const verb = f.paused ? "resume" : "pause";
    return [actionButton(f.paused ? "Resume" : "Pause", f.paused ? "btn-primary" : "", async () => {
      await api("hotfolders/" + enc(f.name) + "/" + verb, { method: "POST" });
      toast(f.name + (f.paused ? " resumed" : " paused: files wait in in/"), "ok");
      scheduleRefresh();
    })];
  },

  drawDetail(name, d) {
    const box = $("hotfolder-detail");
    if (!name || !d) return fill(box);
    if (d.missing) return fill(box, h("div", { className: "callout callout-bad" }, d.missing));
    const def = d.definition || {};
    const action = def.action || {};
    const actionText = action.script ? action.script.code : d.template || JSON.stringify(action);
    const paused = d.paused
      ? h("div", { className: "callout callout-warn" }, "Paused: files dropped into in/ stay there, untouched, until the hotfolder is resumed.")
      : null;
    const fact = (k, v) => h("div", { className: "fact" }, h("span", { className: "muted" }, k), h("span", {}, v));
    fill(box,
      h("div", { className: "card" },
        h("div", { className: "card-head" }, h("h2", {}, "Hotfolder ", h("span", { className: "mono" }, d.name)), badge(d.paused ? "paused" : "active"),
          can("admin") ? actionButton("Edit", "", async () => this.openForm(d)) : null),
        paused,
        h("div", { className: "facts" },
          fact("Action", action.script ? "script" : "command"),
          fact("Takes", def.include && def.include.length ? def.include.join(", ") : "every file"),
          fact("Ignores", (def.ignore || []).join(", ") || "—"),
          fact("Stable after", duration(def.stable_ms)),
          fact("Taken when", { stable: "stable", ticket: "stable, with its ticket", marker: "stable, with its marker" }[def.trigger || "stable"]),
          fact("Job folders", def.folders ? "each folder in in/ is one job" : "no: folders are looked into"),
          fact("Retries of a failed action", String(Math.max(0, def.max_attempts - 1))),
          fact("Timeout", duration(def.timeout_ms)),
          fact("On success", def.on_success === "delete" ? "delete the input" : "move the input to done/")),
        h("pre", { className: "pre code-view" }, actionText)),
      h("div", { className: "card" },
        h("div", { className: "card-head" }, h("h2", {}, "Errors"), h("span", { className: "muted" }, d.errors.length ? "newest first, with each reason" : "")),
        d.errors.length ? this.errorTable(d.errors) : h("p", { className: "muted" }, "No failed files.")),
      h("div", { className: "card" },
        h("div", { className: "card-head" }, h("h2", {}, "Recent files"), h("span", { className: "muted" }, d.recent.length + " newest")),
        d.recent.length ? this.recentTable(d.recent) : h("p", { className: "muted" }, "No files yet: drop one into its in/ folder.")));
  },

  errorTable(errors) {
    return h("table", { className: "table" },
      h("thead", {}, h("tr", {}, h("th", {}, "File"), h("th", {}, "Reason"), h("th", {}, "Server"), h("th", {}, "Failed"), h("th", {}, "Job"))),
      h("tbody", {}, errors.map((j) => h("tr", { className: "error-row" },
        h("td", { className: "mono cell-file" }, j.input || "—"),
        h("td", { className: "cell-reason" }, h("div", { className: "reason" }, j.error || "(no reason recorded)")),
        h("td", {}, j.instance || "—"),
        h("td", {}, when(j.finished_at)),
        h("td", {}, jobLink(j.id))))));
  },

  recentTable(recent) {
    return h("table", { className: "table" },
      h("thead", {}, h("tr", {}, h("th", {}, "File"), h("th", {}, "State"), h("th", {}, "Server"), h("th", {}, "Progress"), h("th", {}, "Created"), h("th", {}, "Job"))),
      h("tbody", {}, recent.map((j) => h("tr", {},
        h("td", { className: "mono cell-file" }, j.input || "—"),
        h("td", {}, badge(j.state)),
        h("td", {}, j.instance || "—"),
        h("td", {}, progressCell(j)),
        h("td", {}, when(j.created_at)),
        h("td", {}, jobLink(j.id))))));
  },
};

// ---------------------------------------------------------------------------
// Scripts

const scriptsPage = {
  title: "Scripts",

  init() {
    const toggle = (open) => {
      $("script-form").hidden = !open;
      $("show-add-script").hidden = open || !can("admin");
      $("script-form").dataset.open = open ? "1" : "";
      if (open) $("script-name").focus();
    };
    $("show-add-script").addEventListener("click", () => toggle(true));
    $("hide-add-script").addEventListener("click", () => toggle(false));
    $("script-form").addEventListener("submit", (ev) => this.add(ev));
  },

  wants(name) {
    return name === "change" || name === "resync";
  },

  async add(ev) {
    ev.preventDefault();
    const err = $("script-error");
    err.hidden = true;
    const name = $("script-name").value.trim();
    try {
      const s = await api("scripts", { method: "POST", json: { name, code: $("script-code").value } });
      toast("Stored " + s.name + " version " + s.version, "ok");
      $("script-form").hidden = true;
      $("show-add-script").hidden = false;
      location.hash = "#scripts/" + enc(s.name);
      scheduleRefresh();
    } catch (e) {
      err.hidden = false;
      err.textContent = e.message;
    }
  },

  async load(r) {
    const [list, one] = await Promise.all([
      api("scripts"),
      r.arg ? api("scripts/" + enc(r.arg)).catch((e) => ({ missing: e.message })) : Promise.resolve(null),
    ]);
    if (unchanged("scripts", [list, one, r.arg, session.role])) return;
    $("scripts-meta").textContent = list.length + " stored";
    const rows = list.map((s) => {
      const tr = h("tr", { className: "clickable" + (s.name === r.arg ? " selected" : "") },
        h("td", {}, h("a", { href: "#scripts/" + enc(s.name), className: "mono strong" }, s.name)),
        h("td", { className: "num" }, s.version),
        h("td", {}, when(s.added_at)));
      tr.addEventListener("click", () => { location.hash = "#scripts/" + enc(s.name); });
      return tr;
    });
    fill("script-rows", rows.length ? rows : emptyRow(3, "No stored scripts yet."));
    this.drawOne(one);
  },

  drawOne(s) {
    const box = $("script-view");
    if (!s) return fill(box, h("div", { className: "placeholder" }, "Choose a script to see its code."));
    if (s.missing) return fill(box, h("div", { className: "form-error" }, s.missing));
    const buttons = [];
    if (can("operator")) {
      buttons.push(actionButton("Run", "btn-primary", async () => {
        const job = await api("jobs", { method: "POST", json: { stored: s.name } });
        toast(h("span", {}, "Started ", s.name, " as job ", jobLink(job.id)), "ok");
      }));
    }
    if (can("admin")) {
      buttons.push(actionButton("Delete", "btn-danger", async () => {
        await api("scripts/" + enc(s.name), { method: "DELETE" });
        toast("Removed " + s.name, "ok");
        location.hash = "#scripts";
      }, "Delete " + s.name + "?", "script/" + s.name));
    }
    fill(box,
      h("div", { className: "card-head" },
        h("h2", {}, h("span", { className: "mono" }, s.name), " ", h("span", { className: "muted" }, "version " + s.version)),
        h("div", { className: "head-actions" }, buttons)),
      h("div", { className: "muted small" }, "added ", when(s.added_at)),
      h("pre", { className: "pre code-view" }, s.code));
  },
};

// ---------------------------------------------------------------------------
// Settings and tokens

const settingsPage = {
  title: "Settings",

  init() {
    $("setting-form").addEventListener("submit", (ev) => this.put(ev));
    $("token-form").addEventListener("submit", (ev) => this.makeToken(ev));
  },

  wants(name) {
    return name === "change" || name === "resync";
  },

  async put(ev) {
    ev.preventDefault();
    $("setting-error").textContent = "";
    const key = $("setting-key").value.trim();
    try {
      await api("settings/" + enc(key), { method: "PUT", json: { value: $("setting-value").value } });
      toast("Set " + key, "ok");
      $("setting-value").value = "";
      scheduleRefresh();
    } catch (e) {
      $("setting-error").textContent = e.message;
    }
  },

  async makeToken(ev) {
    ev.preventDefault();
    try {
      const t = await api("tokens", { method: "POST", json: { name: $("token-name").value.trim(), role: $("token-role").value } });
      $("token-name").value = "";
      fill("token-made", h("div", { className: "callout callout-ok" },
        h("div", {}, "Token for ", h("b", {}, t.name), " (" + t.role + "). Copy it now: it is not shown again."),
        h("code", { className: "token-secret" }, t.token)));
      scheduleRefresh();
    } catch (e) {
      fill("token-made", h("div", { className: "form-error" }, e.message));
    }
  },

  async load() {
    const [settings, tokens] = await Promise.all([api("settings"), can("admin") ? api("tokens") : Promise.resolve(null)]);
    if (unchanged("settings", [settings, tokens, session.role])) return;
    $("settings-meta").textContent = settings.length + " key" + (settings.length === 1 ? "" : "s");
    const rows = settings.map((s) => h("tr", {},
      h("td", { className: "mono strong" }, s.key),
      h("td", { className: "cell-value" }, s.value === null
        ? h("span", {}, badge("binary", "muted"), " ", h("span", { className: "mono muted" }, s.value_hex.length > 96 ? s.value_hex.slice(0, 96) + "…" : s.value_hex))
        : h("span", { className: "mono value-text" }, s.value)),
      h("td", { className: "actions" }, can("admin") ? [
        actionButton("Edit", "", async () => {
          $("setting-key").value = s.key;
          $("setting-value").value = s.value === null ? "" : s.value;
          $("setting-value").focus();
        }),
        actionButton("Delete", "btn-danger", async () => {
          await api("settings/" + enc(s.key), { method: "DELETE" });
          toast("Removed " + s.key, "ok");
          scheduleRefresh();
        }, "Delete?", "setting/" + s.key),
      ] : [])));
    fill("setting-rows", rows.length ? rows : emptyRow(3, "No settings. Scripts read and write them with kv_get and kv_set."));
    if (tokens) this.drawTokens(tokens);
  },

  drawTokens(tokens) {
    const rows = tokens.map((t) => h("tr", {},
      h("td", { className: "mono strong" }, t.name),
      h("td", {}, badge(t.role, "role")),
      h("td", {}, when(t.created_at)),
      h("td", { className: "actions" }, actionButton("Revoke", "btn-danger", async () => {
        await api("tokens/" + enc(t.name), { method: "DELETE" });
        toast("Revoked " + t.name, "ok");
        scheduleRefresh();
      }, "Revoke?", "token/" + t.name))));
    fill("token-rows", rows.length ? rows : emptyRow(4, "No tokens."));
  },
};

const PAGES = {
  login: { title: "Log in", load: async () => {} },
  cluster: clusterPage,
  jobs: jobsPage,
  job: jobPage,
  hotfolders: hotfoldersPage,
  scripts: scriptsPage,
  settings: settingsPage,
};

/// Running jobs' elapsed times and relative times move on between refreshes.
setInterval(() => {
  for (const el of document.querySelectorAll("[data-since]")) {
    const t = parseTime(el.dataset.since);
    if (t !== null) el.textContent = duration(Date.now() - t);
  }
  for (const el of document.querySelectorAll("time[datetime]")) el.textContent = ago(el.dateTime);
}, 1000);
