// The status page: shows /status/tasks, kept up to date by the server-sent
// events of /status/events, a task's output from /status/logs/follow, and
// the restart/stop/start buttons for a viewer /status/access says may
// control.  It builds every element with textContent (never innerHTML), and
// its requests carry the bearer token the viewer gave, if any.
"use strict";

const TOKEN_KEY = "taskforce-token";
const MAX_LOG_LINES = 2000;
const page = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  control: false,
  tasks: {},
  streams: { tasks: null, logs: null },
  logTask: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function headers(extra) {
  const found = Object.assign({}, extra || {});
  if (page.token) found.Authorization = "Bearer " + page.token;
  return found;
}

function say(text, bad) {
  const box = $("message");
  box.textContent = text;
  box.className = bad ? "bad" : "";
  box.hidden = !text;
  clearTimeout(say.timer);
  if (text && !bad) say.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

// ------------------------------------------------------------ formatting

function bytes(n) {
  if (n === undefined || n === null) return "";
  const units = ["B", "K", "M", "G", "T"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : String(n)) + units[i];
}

function percent(p) {
  return p === undefined || p === null ? "" : p.toFixed(1) + "%";
}

function duration(seconds) {
  if (seconds < 0) seconds = 0;
  const s = Math.floor(seconds);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + String(Math.floor(s / 3600) % 24).padStart(2, "0") + "h";
}

function clock(t) {
  const d = new Date(t * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((v) => String(v).padStart(2, "0")).join(":");
}

const LIVE = new Set(["ready", "running", "starting", "stopping", "draining"]);

// ---------------------------------------------------------------- streams

// Read a text/event-stream with fetch (so the token goes in a header, which
// EventSource cannot send); reconnect after the server's retry, resuming
// from the last id.
function follow(url, handlers) {
  const control = new AbortController();
  let lastId = null;
  let retry = 2000;
  const run = async () => {
    while (!control.signal.aborted) {
      let stop = false;
      try {
        const asked = headers({ Accept: "text/event-stream" });
        if (lastId !== null) asked["Last-Event-ID"] = lastId;
        const response = await fetch(url, { headers: asked, signal: control.signal, cache: "no-store" });
        if (!response.ok) {
          stop = response.status >= 400 && response.status < 500;
          handlers.refused(response.status, (await response.text()).trim());
        } else {
          handlers.open();
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
            let end;
            while ((end = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              let type = "message";
              const data = [];
              for (const line of block.split("\n")) {
                if (!line || line.startsWith(":")) continue;
                const colon = line.indexOf(":");
                const field = colon < 0 ? line : line.slice(0, colon);
                const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
                if (field === "event") type = value;
                else if (field === "data") data.push(value);
                else if (field === "id") lastId = value;
                else if (field === "retry" && /^\d+$/.test(value)) retry = Number(value);
              }
              if (data.length) handlers.event(type, data.join("\n"));
            }
          }
        }
      } catch (err) {
        if (control.signal.aborted) return;
      }
      if (control.signal.aborted) return;
      handlers.closed();
      if (stop) return;
      await new Promise((resolve) => setTimeout(resolve, retry));
    }
  };
  run();
  return control;
}

function liveness(on, text) {
  const badge = $("live");
  badge.className = "live " + (on ? "on" : "off");
  badge.textContent = text;
}

function followTasks() {
  if (page.streams.tasks) page.streams.tasks.abort();
  page.streams.tasks = follow("status/events", {
    open: () => liveness(true, "live"),
    closed: () => liveness(false, "reconnecting"),
    refused: (code, text) => { liveness(false, "refused"); say(`status refused (${code}): ${text}`, true); },
    event: (type, data) => {
      if (type !== "tasks") return;
      page.tasks = JSON.parse(data);
      render();
    },
  });
}

// ------------------------------------------------------------- rendering

function actions(name, task) {
  if (!page.control || !task.in_scope) return null;
  const up = task.processes.some((slot) => LIVE.has(slot.state));
  const box = el("span", { class: "actions" });
  if (up) {
    box.append(el("button", { type: "button", "data-action": "restart", "data-target": name, title: "restart every slot" }, "restart"));
    box.append(el("button", { type: "button", class: "danger", "data-action": "stop", "data-target": name }, "stop"));
  } else {
    box.append(el("button", { type: "button", "data-action": "start", "data-target": name }, "start"));
  }
  return box;
}

function slotState(slot) {
  const words = [];
  if (slot.waiting_on && slot.waiting_on.length) words.push("on " + slot.waiting_on.join(", "));
  if (slot.surge) words.push("surge");
  if (slot.outdated) words.push("outdated");
  if (slot.intent) words.push(slot.intent);
  return el("td", { class: "state", "data-label": "state" },
    el("span", { class: "badge s-" + slot.state }, slot.state),
    words.length ? " " + words.join(" · ") : null,
    slot.status ? el("div", { class: "reason" }, slot.status) : null);
}

function slotRow(name, slot) {
  const target = `${name}:${slot.instance}`;
  const live = LIVE.has(slot.state) && slot.started_t;
  let why = slot.reason || "";
  if (slot.exit && !LIVE.has(slot.state) && !why.includes(slot.exit)) why = why ? `${why} (${slot.exit})` : slot.exit;
  if (slot.retry_t) why += ` · retry at ${clock(slot.retry_t)}`;
  const buttons = page.control && LIVE.has(slot.state)
    ? el("button", { type: "button", "data-action": "restart", "data-target": target }, "restart")
    : null;
  return el("tr", { class: "slot", "data-slot": target },
    el("td", { "data-label": "slot" }, String(slot.instance)),
    slotState(slot),
    el("td", { class: "num pid", "data-label": "pid" }, slot.pid || ""),
    el("td", { class: "num uptime", "data-label": "uptime", "data-since": live ? slot.started_t : undefined },
      live ? duration(Date.now() / 1000 - slot.started_t) : ""),
    el("td", { class: "num", "data-label": "restarts" }, String(slot.restarts)),
    el("td", { class: "num", "data-label": "CPU" }, percent(slot.cpu_percent)),
    el("td", { class: "num", "data-label": "memory" }, bytes(slot.memory_bytes)),
    el("td", { class: "reason", "data-label": "last start/stop" }, why),
    el("td", { "data-label": "" }, buttons));
}

function rolloutLine(task) {
  const r = task.rollout;
  if (!r) return null;
  if (r.halted) return el("p", { class: "rollout halted" }, `rollout halted: ${r.halted}`);
  return el("p", { class: "rollout" },
    `rolling out (${r.why}): ${r.replaced} of ${r.count} replaced` + (r.started_t ? `, since ${clock(r.started_t)}` : ""));
}

function taskCard(name, task) {
  const facts = [`${task.control}`, `count ${task.count}`];
  if (Object.keys(task.overrides || {}).length) {
    facts.push("override " + Object.entries(task.overrides).map(([k, v]) => `${k}=${v}`).join(", "));
  }
  if (task.requires && task.requires.length) facts.push("requires " + task.requires.join(", "));
  if (task.waiting_on && task.waiting_on.length) facts.push("waiting on " + task.waiting_on.join(", "));
  if (task.restarts) facts.push(`${task.restarts} restarts`);
  if (task.cpu_percent !== undefined) facts.push(`CPU ${percent(task.cpu_percent)}`);
  if (task.memory_bytes !== undefined) facts.push(`mem ${bytes(task.memory_bytes)}`);
  const head = el("div", { class: "task-head" },
    el("h2", {}, name),
    el("span", { class: "badge s-" + task.state }, task.state.replace(/_/g, " ")),
    el("span", { class: "facts" }, facts.join(" · ")),
    el("span", { class: "actions" },
      task.in_scope ? el("button", { type: "button", "data-action": "logs", "data-target": name }, "output") : null,
      actions(name, task)));
  const card = el("section", { class: "task", "data-task": name }, head, rolloutLine(task));
  if (task.processes.length) {
    const heads = ["slot", "state", "pid", "uptime", "restarts", "CPU", "memory", "last start/stop", ""];
    card.append(el("table", {},
      el("thead", {}, el("tr", {}, ...heads.map((h) => el("th", {}, h)))),
      el("tbody", {}, ...task.processes.map((slot) => slotRow(name, slot)))));
  }
  return card;
}

function render() {
  const main = $("tasks");
  const names = Object.keys(page.tasks).sort();
  if (!names.length) {
    main.replaceChildren(el("p", { class: "empty" }, "No tasks."));
    return;
  }
  main.replaceChildren(...names.map((name) => taskCard(name, page.tasks[name])));
}

function tickUptimes() {
  const now = Date.now() / 1000;
  for (const cell of document.querySelectorAll("td.uptime[data-since]")) {
    cell.textContent = duration(now - Number(cell.dataset.since));
  }
}

// --------------------------------------------------------------- control

async function manage(action, target) {
  let path;
  const form = new URLSearchParams();
  if (action === "restart") { path = "manage/restart"; form.set("task", target); }
  else if (action === "start") { path = "manage/start"; form.set("task", target); }
  else if (action === "stop") { path = "manage/control"; form.set(target, "off"); }
  else return;
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: headers({ "X-Taskforce-Request": "page", "Content-Type": "application/x-www-form-urlencoded" }),
      body: form.toString(),
      cache: "no-store",
    });
    const text = (await response.text()).trim();
    say(`${action} ${target}: ${text || response.status}`, !response.ok);
  } catch (err) {
    say(`${action} ${target}: ${err}`, true);
  }
}

// ------------------------------------------------------------------- logs

function logLine(line) {
  const stream = line.stream;
  const tag = `[${line.instance}]` + (stream === "stderr" ? " err" : stream === "stdout" ? " out" : "");
  return el("div", { class: "line" + (stream ? " " + stream : "") },
    el("span", { class: "at" }, clock(line.time)), " ",
    el("span", { class: "tag" }, tag), " ", line.text);
}

function openLogs(name) {
  closeLogs();
  page.logTask = name;
  $("logs-title").textContent = `output of ${name}`;
  const box = $("logs-lines");
  box.replaceChildren();
  $("logs").hidden = false;
  document.body.classList.add("with-logs");
  const url = `status/logs/follow?task=${encodeURIComponent(name)}&lines=200`;
  page.streams.logs = follow(url, {
    open: () => {},
    closed: () => box.append(el("div", { class: "line note" }, "(stream closed; reconnecting)")),
    refused: (code, text) => box.append(el("div", { class: "line note" }, `${code}: ${text}`)),
    event: (type, data) => {
      if (type !== "lines") return;
      const answer = JSON.parse(data);
      const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
      if (answer.dropped) box.append(el("div", { class: "line note" }, `(${answer.dropped} lines no longer kept)`));
      box.append(...answer.lines.map(logLine));
      while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
      if (atEnd) box.scrollTop = box.scrollHeight;
    },
  });
}

function closeLogs() {
  if (page.streams.logs) page.streams.logs.abort();
  page.streams.logs = null;
  page.logTask = null;
  $("logs").hidden = true;
  document.body.classList.remove("with-logs");
}

// ------------------------------------------------------------------ start

async function access() {
  try {
    const response = await fetch("status/access", { headers: headers(), cache: "no-store" });
    if (!response.ok) {
      say(`status refused (${response.status}): ${(await response.text()).trim()}`, true);
      $("login").open = true;
      return false;
    }
    const answer = await response.json();
    page.control = answer.control;
    $("who").textContent = `${answer.who} · ${answer.control ? "may control" : "read only"}`;
    return true;
  } catch (err) {
    say(`cannot reach taskforce: ${err}`, true);
    return false;
  }
}

async function version() {
  try {
    const response = await fetch("status/version", { headers: headers(), cache: "no-store" });
    if (response.ok) {
      const answer = await response.json();
      $("host").textContent = `${answer.taskforce} · ${answer.platform.system}`;
    }
  } catch (err) { /* shown by the other requests */ }
}

async function start() {
  if (await access()) {
    version();
    followTasks();
    if (page.logTask) openLogs(page.logTask);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("tasks").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const { action, target } = button.dataset;
    if (action === "logs") openLogs(target);
    else manage(action, target);
  });
  $("logs-close").addEventListener("click", closeLogs);
  $("logs-stderr-only").addEventListener("change", (event) => {
    $("logs-lines").classList.toggle("stderr-only", event.target.checked);
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    page.token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, page.token);
    $("token").value = "";
    $("login").open = false;
    say("");
    start();
  });
  $("forget").addEventListener("click", () => {
    page.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    start();
  });
  setInterval(tickUptimes, 1000);
  start();
});
