// trainfleet ui: three pages (#/fleet, #/jobs, #/job/ID) over the JSON of the server.
// Everything the fleet or a job sends is shown with textContent, never as HTML: a job's
// output is whatever its script printed.
"use strict";

// The token comes in the URL `trainfleet ui` printed; it is kept for this tab only (a
// reload keeps working; no cookie, which every port on 127.0.0.1 would be sent) and taken
// out of the address bar. Every request sends it in a header, the streams too.
const TOKEN = new URLSearchParams(location.search).get("token") || sessionStorage.getItem("tf-token") || "";
if (TOKEN) sessionStorage.setItem("tf-token", TOKEN);
history.replaceState(null, "", location.pathname + location.hash);
const page = document.getElementById("page");
let leave = () => {};  // what the current page stops when another is shown

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// Server-sent events over fetch (EventSource cannot send a header): `onData` gets each
// event's JSON, `onEnd` the `end` event. Returns what closes the stream.
function stream(path, onData, onEnd) {
  const aborted = new AbortController();
  (async () => {
    const response = await fetch(path, {headers: {"X-Trainfleet-Token": TOKEN}, signal: aborted.signal});
    if (!response.ok || !response.body) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let held = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      held += value;
      let cut;
      while ((cut = held.indexOf("\n\n")) >= 0) {
        const event = held.slice(0, cut);
        held = held.slice(cut + 2);
        const kind = (event.match(/^event: (.*)$/m) || [])[1];
        const data = event.split("\n").filter(l => l.startsWith("data: ")).map(l => l.slice(6)).join("\n");
        if (kind === "end") { aborted.abort(); onEnd(); return; }
        if (data) onData(JSON.parse(data));
      }
    }
  })().catch(() => {});  // (aborted when the page is left, or the server went)
  return () => aborted.abort();
}

async function api(path, options) {
  const response = await fetch(path, {...(options || {}), headers: {"X-Trainfleet-Token": TOKEN}});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function every(seconds, work) {
  let stopped = false, timer = null;
  const tick = async () => {
    try { await work(); } catch (err) { document.getElementById("live").textContent = "not answering: " + err.message; }
    if (!stopped) timer = setTimeout(tick, seconds * 1000);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

const when = (t) => t ? new Date(t * 1000).toLocaleString() : "-";
const gib = (b) => (b / 2 ** 30).toFixed(1);
function duration(start, end) {
  const s = Math.max(0, Math.round((end || Date.now() / 1000) - start));
  return s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${Math.floor(s / 3600)}h ${Math.floor(s / 60) % 60}m`;
}
function stamp(text) { document.getElementById("live").textContent = text; }

// ---- the fleet ------------------------------------------------------------------------

function fleetPage() {
  const nodes = el("div", {id: "nodes"}), findings = el("div", {id: "findings"}), heat = el("div", {id: "heatmap"});
  page.replaceChildren(el("h2", {}, "Nodes"), nodes, el("h2", {}, "Doctor"), findings,
                       el("h2", {}, "Point-to-point bandwidth"), heat);
  return every(2, async () => {
    const fleet = await api("/api/fleet");
    const name = document.getElementById("fleet-name");  // the file's name; its path on hover
    name.textContent = fleet.fleet.split("/").pop();
    name.title = fleet.fleet;
    stamp("looked at " + new Date(fleet.looked * 1000).toLocaleTimeString());
    nodes.replaceChildren(nodeTable(fleet.nodes));
    findings.replaceChildren(...doctorPart(fleet));
    heat.replaceChildren(heatmap(fleet.heatmap));
  });
}

function nodeTable(nodes) {
  const head = el("tr", {}, ["node", "host", "state", "cpu", "memory", "GPUs", "training network", "jobs"].map(h => el("th", {}, h)));
  return el("table", {}, head, nodes.map(n => el("tr", {class: "node", "data-node": n.name},
    el("td", {}, n.name), el("td", {}, n.host),
    el("td", {class: n.reachable ? "" : "down"}, n.reachable ? "reachable" : "unreachable: " + n.error),
    el("td", {}, n.reachable ? n.cpu_percent + "%" : "-"),
    el("td", {}, n.reachable ? `${gib(n.memory_used)} / ${gib(n.memory_total)} GiB` : "-"),
    el("td", {}, n.reachable ? (n.gpus.length ? n.gpus.map(g => `${g.index}: ${g.util.toFixed(0)}% ${gib(g.memory_used)}G`).join(", ") : "none") : "-"),
    el("td", {}, [n.network.interface, n.network.address].filter(Boolean).join(" ") || "-"),
    el("td", {}, (n.jobs || []).map(j => `${j.job_id} (${j.processes} procs${j.steps_per_s ? ", " + j.steps_per_s.toFixed(2) + " steps/s" : ""})`).join(", ") || "-"))));
}

function doctorPart(fleet) {
  const run = el("button", {id: "run-doctor", onclick: async () => { run.disabled = true; await api("/api/doctor", {method: "POST"}); }},
                 fleet.doctor_running ? "doctor is running…" : "Run doctor now");
  run.disabled = fleet.doctor_running;
  if (!fleet.doctor) return [el("p", {class: "muted"}, "No doctor report yet. "), run];
  const items = fleet.doctor.items;
  return [el("p", {class: "muted"}, `Last run ${when(fleet.doctor.saved)}: ` + (items.length ? `${items.length} finding(s)` : "nothing wrong") + " "), run,
          ...items.map(f => el("div", {class: "finding " + f.verdict},
            el("strong", {}, `${f.verdict.toUpperCase()} ${f.check}`), " ", f.nodes.join(", "), el("div", {}, f.summary),
            f.remedy ? el("div", {class: "fix"}, "fix: " + f.remedy) : null))];
}

function heatmap(heat) {
  if (!heat) return el("p", {class: "muted"}, "No measurement yet: `trainfleet bench net` measures every pair of nodes.");
  const values = heat.cells.flat().filter(v => v !== null);
  const top = Math.max(...values), low = Math.min(...values);
  const colour = (v) => { const f = top === low ? 1 : (v - low) / (top - low); return `hsl(${Math.round(f * 120)}, 70%, ${88 - f * 30}%)`; };
  const slow = heat.slowest;
  return el("div", {},
    el("p", {}, `Slowest link: ${slow.src} → ${slow.dst} at ${slow.gbit_s.toFixed(2)} Gbit/s `,
       el("span", {class: "muted"}, `(Gbit/s, row sends to column; measured by ${heat.source} ${when(heat.saved)}` +
          (heat.source === "doctor" ? "; doctor measures each node to the next, `trainfleet bench net` every pair)" : ")"))),
    el("table", {class: "heat"}, el("tr", {}, el("th", {}, "from \\ to"), heat.nodes.map(n => el("th", {}, n))),
      heat.nodes.map((src, i) => el("tr", {}, el("th", {}, src), heat.cells[i].map((v, j) => {
        const slowest = src === slow.src && heat.nodes[j] === slow.dst;
        return el("td", {class: "cell" + (slowest ? " slowest" : ""), style: v === null ? "background:#eee" : `background:${colour(v)}`,
                         title: v === null ? "" : `${src} → ${heat.nodes[j]}: ${v.toFixed(2)} Gbit/s`},
                  v === null ? "–" : v.toFixed(2));
      })))));
}

// ---- the jobs -------------------------------------------------------------------------

function jobsPage() {
  const list = el("div", {id: "jobs"});
  page.replaceChildren(el("h2", {}, "Jobs"), list);
  return every(3, async () => {
    const {jobs} = await api("/api/jobs");
    stamp("jobs as of " + new Date().toLocaleTimeString());
    if (!jobs.length) { list.replaceChildren(el("p", {class: "muted"}, "No jobs on this fleet's nodes yet: `trainfleet run SCRIPT`.")); return; }
    const head = el("tr", {}, ["job", "state", "nodes", "launcher", "started", "duration", "root cause", ""].map(h => el("th", {}, h)));
    list.replaceChildren(el("table", {}, head, jobs.map(j => el("tr", {class: "job", "data-job": j.job_id, "data-state": j.state},
      el("td", {}, el("a", {href: "#/job/" + encodeURIComponent(j.job_id)}, j.job_id)),
      el("td", {class: "state-" + j.state}, j.state),
      el("td", {}, Object.keys(j.nodes).sort().join(", ")),
      el("td", {}, j.launcher || "-"), el("td", {}, when(j.started)), el("td", {}, duration(j.started, j.ended)),
      el("td", {}, j.root_cause ? j.root_cause.summary : (j.reason || "")),
      el("td", {}, ["running", "starting"].includes(j.state) ? stopButton(j.job_id) : null)))));
  });
}

const stopping = {};  // job -> what its stop button says while the stop is under way (pages redraw meanwhile)

function stopButton(jobId) {
  const button = el("button", {class: "stop", "data-job": jobId, onclick: async () => {
    if (!confirm(`Stop job ${jobId} on every node?`)) return;
    button.disabled = true; button.textContent = stopping[jobId] = "stopping…";
    try { await api(`/api/jobs/${encodeURIComponent(jobId)}/stop`, {method: "POST"}); stopping[jobId] = "stopped"; }
    catch (err) { stopping[jobId] = "could not stop: " + err.message; }
    button.textContent = stopping[jobId];
  }}, stopping[jobId] || "Stop");
  button.disabled = jobId in stopping && stopping[jobId] !== undefined && !stopping[jobId].startsWith("could not");
  return button;
}

// ---- one job --------------------------------------------------------------------------

const GROUPS = [
  ["loss", (m) => m.includes("loss") || m === "ppl" || m === "perplexity"],
  ["throughput", (m) => ["tokens/s", "tok/s", "samples/s", "samples_per_second", "train_samples_per_second", "throughput", "it/s"].includes(m)],
  ["step time", (m) => ["time", "dt", "step_time"].includes(m)],
  ["learning rate", (m) => m === "lr" || m === "learning_rate"],
];
const COLOURS = ["#1463d8", "#c0262d", "#19834a", "#8a2be2", "#d89b00", "#0f8b8d", "#e0529c", "#555"];
const LINE = 18;

function jobPage(jobId) {
  const head = el("div", {id: "job-head"}), events = el("ul", {class: "timeline"}), charts = el("div", {class: "charts", id: "charts"});
  const nodeSel = el("select", {id: "filter-node"}, el("option", {value: ""}, "every node"));
  const rankSel = el("select", {id: "filter-rank"}, el("option", {value: ""}, "every rank"));
  const search = el("input", {id: "filter-text", type: "search", placeholder: "search the log"});
  const count = el("span", {class: "muted", id: "log-count"});
  const log = el("div", {id: "log"}), spacer = el("div", {class: "spacer"});
  log.append(spacer);
  page.replaceChildren(head, el("h2", {}, "Timeline"), events, el("h2", {}, "Metrics"), charts,
                       el("h2", {}, "Output"), el("div", {class: "filters"}, nodeSel, rankSel, search, count), log);

  const lines = [];      // [time, node, rank, text]
  let shown = [];        // indices into lines that pass the filters
  const series = {};     // group -> key -> Map(step -> value)
  const plots = {};      // group -> {plot, keys}
  let points = 0, follow = true, dirty = false;
  const nodes = new Set(), ranks = new Set();

  const passes = (line) => {
    const [, node, rank, text] = line;
    return (!nodeSel.value || node === nodeSel.value) && (!rankSel.value || String(rank) === rankSel.value) &&
           (!search.value || text.toLowerCase().includes(search.value.toLowerCase()));
  };
  const refilter = () => { shown = []; lines.forEach((l, i) => { if (passes(l)) shown.push(i); }); draw(true); };
  [nodeSel, rankSel].forEach(s => s.addEventListener("change", refilter));
  search.addEventListener("input", refilter);
  log.addEventListener("scroll", () => { follow = log.scrollTop + log.clientHeight >= spacer.offsetHeight - LINE; draw(false); });

  function draw(toEnd) {
    spacer.style.height = shown.length * LINE + "px";
    if (toEnd && follow) log.scrollTop = spacer.offsetHeight;
    const first = Math.max(0, Math.floor(log.scrollTop / LINE) - 10);
    const last = Math.min(shown.length, first + Math.ceil(log.clientHeight / LINE) + 20);
    const rows = [];
    for (let k = first; k < last; k++) {
      const [, node, rank, text] = lines[shown[k]];
      rows.push(el("div", {class: "line", style: `top:${k * LINE}px`, "data-rank": rank === null ? "" : rank},
                   el("span", {class: "who"}, rank === null ? `[${node}] ` : `[${node}:${rank}] `), text));
    }
    spacer.replaceChildren(...rows);
    count.textContent = `${shown.length} of ${lines.length} lines`;
  }

  function addOption(select, set, value, label) {
    if (value === null || set.has(value)) return;
    set.add(value);
    select.append(el("option", {value: String(value)}, label));
  }

  function take(batch) {
    const before = lines.length;
    const late = batch.lines.length && before && batch.lines[0][0] < lines[before - 1][0];
    for (const line of batch.lines) {
      lines.push(line);
      addOption(nodeSel, nodes, line[1], line[1]);
      addOption(rankSel, ranks, line[2], line[2] === null ? "" : "rank " + line[2]);
    }
    if (late) { lines.sort((a, b) => a[0] - b[0]); refilter(); }  // a node's history arrived after another's
    else { for (let i = before; i < lines.length; i++) if (passes(lines[i])) shown.push(i); draw(true); }
    for (const [node, rank, step, values] of batch.points) {
      for (const [metric, value] of Object.entries(values)) {
        const group = GROUPS.find(([, fits]) => fits(metric));
        if (!group) continue;
        const key = rank === null ? `${metric} ${node}` : `${metric} ${node}:${rank}`;
        ((series[group[0]] ||= {})[key] ||= new Map()).set(step, value);
      }
    }
    points += batch.points.length;
    dirty = true;
  }

  function chart() {
    if (!dirty) return;
    dirty = false;
    for (const [group] of GROUPS) {
      const bykey = series[group];
      if (!bykey) continue;
      const keys = Object.keys(bykey).sort();
      const steps = [...new Set(keys.flatMap(k => [...bykey[k].keys()]))].sort((a, b) => a - b);
      const data = [steps, ...keys.map(k => steps.map(s => bykey[k].has(s) ? bykey[k].get(s) : null))];
      let made = plots[group];
      if (!made || made.keys.join() !== keys.join()) {
        if (made) made.box.remove();
        const box = el("div", {class: "chart", "data-group": group}, el("h3", {}));
        charts.append(box);
        const plot = new uPlot({width: 460, height: 220, scales: {x: {time: false}},
          axes: [{label: "step"}, {label: group === "step time" ? "seconds" : group, size: 70}],
          series: [{label: "step"}, ...keys.map((k, i) => ({label: k, stroke: COLOURS[i % COLOURS.length], spanGaps: true, points: {show: false}}))]},
          data, box);
        made = plots[group] = {plot, keys, box};
      } else {
        made.plot.setData(data);
      }
      const count = steps.length;
      made.box.dataset.points = String(count);
      made.box.querySelector("h3").textContent = `${group}: ${count} step(s), ${keys.length} series`;
    }
    if (!Object.keys(series).length) charts.replaceChildren(el("p", {class: "muted"}, "No metrics in the output yet (loss, tokens/s, lr… are read from the lines the job prints)."));
    else charts.querySelector("p.muted")?.remove();
  }

  const close = stream(`/api/jobs/${encodeURIComponent(jobId)}/stream`, take,
                      () => { stamp("the job has ended"); chart(); });
  const charting = setInterval(chart, 1000);
  const stopLooking = every(3, async () => {
    const job = await api(`/api/jobs/${encodeURIComponent(jobId)}`);
    head.replaceChildren(el("h2", {}, `Job ${job.job_id} `, el("span", {class: "state-" + job.state, id: "job-state"}, job.state)),
      el("p", {}, `${job.launcher || "?"} on ${Object.keys(job.nodes).sort().join(", ")}, started ${when(job.started)}, ` +
                  `${job.ended ? "ran" : "running for"} ${duration(job.started, job.ended)} `,
         ["running", "starting"].includes(job.state) ? stopButton(job.job_id) : null),
      job.root_cause ? el("p", {class: "finding"}, job.root_cause.summary) : "",
      job.straggler && ["running", "starting"].includes(job.state) ? el("p", {class: "finding", id: "straggler"}, job.straggler) : "");
    events.replaceChildren(...job.timeline.map(e => el("li", {}, `${new Date(e.time * 1000).toLocaleTimeString()} `,
                                                       e.node ? el("strong", {}, e.node + " ") : "", e.text)));
  });
  return () => { close(); clearInterval(charting); stopLooking(); };
}

// ---- routing --------------------------------------------------------------------------

function route() {
  leave();
  const hash = location.hash || "#/fleet";
  document.getElementById("nav-fleet").className = hash.startsWith("#/fleet") ? "here" : "";
  document.getElementById("nav-jobs").className = hash.startsWith("#/job") ? "here" : "";
  if (hash.startsWith("#/job/")) leave = jobPage(decodeURIComponent(hash.slice(6)));
  else if (hash.startsWith("#/jobs")) leave = jobsPage();
  else leave = fleetPage();
}
if (TOKEN) {
  window.addEventListener("hashchange", route);
  route();
} else {
  page.replaceChildren(el("p", {class: "finding"}, "Open the URL `trainfleet ui` printed: it carries this dashboard's token."));
}
