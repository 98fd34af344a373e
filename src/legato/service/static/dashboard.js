// Legato dashboard: times, API actions with the bearer token, live updates over SSE.
//
// Live parts are re-rendered by the server: on an event the page asks a /ui/fragments/ route
// for the rows or figures that changed and swaps them in, so a live row is the same markup a
// reload would give. Fetches are batched and throttled: a burst of events costs one request.
"use strict";
(function () {
  const TOKEN_KEY = "legato.apiToken";
  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
  // Reads carry the token too when one is set: a service bound beyond loopback wants it.
  const authHeaders = () => (token() ? { "Authorization": `Bearer ${token()}` } : {});

  // --- times: relative in the text, absolute UTC (24-hour) in the title ----------------
  const pad = (n) => String(n).padStart(2, "0");
  function utcDate(seconds) {
    const d = new Date(seconds * 1000);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  }
  function utcClock(seconds) {
    const d = new Date(seconds * 1000);
    return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  }
  const utcFull = (seconds) => `${utcDate(seconds)} ${utcClock(seconds)} UTC`;
  function relative(seconds) {
    const ago = Date.now() / 1000 - seconds;
    const abs = Math.abs(ago);
    if (abs < 1) return "just now";
    const units = [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]];
    for (const [size, label] of units) {
      if (abs >= size) {
        const n = Math.floor(abs / size);
        return ago >= 0 ? `${n} ${label} ago` : `in ${n} ${label}`;
      }
    }
    return "";
  }
  // `<time data-ts>` shows how long ago; `<time data-ts data-clock>` (the event log) shows the
  // UTC clock time. Both carry the other form in their title.
  function refreshTimes(root) {
    (root || document).querySelectorAll("time[data-ts]").forEach((el) => {
      const ts = parseFloat(el.dataset.ts);
      el.dateTime = new Date(ts * 1000).toISOString();
      if (el.hasAttribute("data-clock")) {
        el.textContent = utcClock(ts);
        el.title = `${utcFull(ts)}, ${relative(ts)}`;
      } else {
        el.textContent = relative(ts);
        el.title = utcFull(ts);
      }
    });
  }

  // --- flash messages -------------------------------------------------------------------
  const flashBox = document.getElementById("flash");
  let flashTimer = null;
  function flash(text, bad) {
    flashBox.textContent = text;
    flashBox.className = bad ? "flash bad" : "flash";
    flashBox.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { flashBox.hidden = true; }, bad ? 8000 : 4000);
  }

  // --- token dialog ---------------------------------------------------------------------
  // An action clicked without a token opens the dialog and waits in `pendingAction`: saving
  // the token carries the action out, so the operator never has to click twice.
  const dialog = document.getElementById("token-dialog");
  const tokenInput = document.getElementById("token-input");
  const tokenButton = document.getElementById("token-button");
  let pendingAction = null;
  function showTokenState() {
    tokenButton.textContent = token() ? "API token ✓" : "API token";
    tokenButton.title = token()
      ? "An API token is set for this tab; click to change it"
      : "Set the API token that actions send";
  }
  function askForToken(action) {
    pendingAction = action;
    tokenInput.value = token();
    dialog.returnValue = "";
    dialog.showModal();
    tokenInput.focus();
  }
  tokenButton.addEventListener("click", () => askForToken(null));
  dialog.addEventListener("close", () => {
    const action = pendingAction;
    pendingAction = null;
    if (dialog.returnValue !== "ok") return;
    sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
    showTokenState();
    if (action && action.isConnected && token()) perform(action);
    else if (action) action.focus();
  });
  showTokenState();

  // --- actions: buttons with data-action call the JSON API ------------------------------
  async function perform(button) {
    button.disabled = true;
    try {
      const response = await fetch(button.dataset.action, {
        method: button.dataset.method || "POST",
        headers: { ...authHeaders(), "Content-Type": "application/json" },
        body: button.dataset.body || undefined,
      });
      if (response.ok) {
        flash(`${button.textContent.trim()}: done`);
        if (button.dataset.method === "DELETE") {
          button.closest("tr")?.remove();
          updateDeadLetterCount();
        }
      } else {
        const body = await response.json().catch(() => ({}));
        if (response.status === 401) {
          flash(`${body.error ? body.error.message : "unauthorized"}: check the API token`, true);
        } else {
          flash(body.error ? body.error.message : `HTTP ${response.status}`, true);
        }
      }
    } catch (error) {
      flash(`Request failed: ${error}`, true);
    } finally {
      button.disabled = false;
    }
  }
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    if (!token()) { askForToken(button); return; }
    perform(button);
  });

  // --- throughput chart: a bar per minute, inline SVG in pixel units --------------------
  const SVG = "http://www.w3.org/2000/svg";
  function svgElement(name, attributes, text) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    if (text !== undefined) element.textContent = text;
    return element;
  }
  // The smallest of 1, 2, 5, 10, 20, 50... at or above `value`: gridlines on round numbers.
  function roundCeiling(value) {
    let step = 1;
    for (;;) {
      for (const factor of [1, 2, 5]) if (step * factor >= value) return step * factor;
      step *= 10;
    }
  }
  function drawChart(svg) {
    const values = JSON.parse(svg.dataset.values || "[]");
    const width = Math.max(svg.clientWidth, 200);
    const height = Math.max(svg.clientHeight, 120);
    const left = 34, right = 6, top = 10, bottom = 22;
    const plotWidth = width - left - right, plotHeight = height - top - bottom;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.replaceChildren();
    const ceiling = roundCeiling(Math.max(1, ...values));
    for (const fraction of [0, 0.5, 1]) {
      const y = top + plotHeight * (1 - fraction);
      svg.appendChild(svgElement("line", { x1: left, x2: width - right, y1: y, y2: y,
        class: fraction === 0 ? "axis" : "grid" }));
      const tick = ceiling * fraction;
      if (Number.isInteger(tick)) {
        svg.appendChild(svgElement("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, String(tick)));
      }
    }
    if (!values.some((value) => value > 0)) {
      svg.appendChild(svgElement("text", { x: left + plotWidth / 2, y: top + plotHeight / 2,
        "text-anchor": "middle", class: "note" }, `No task finished in the last ${values.length} min`));
    }
    const slot = plotWidth / Math.max(values.length, 1);
    values.forEach((value, index) => {
      if (value <= 0) return;
      const barHeight = (value / ceiling) * plotHeight;
      const rect = svgElement("rect", {
        x: left + index * slot + 1, y: top + plotHeight - barHeight,
        width: Math.max(slot - 2, 1), height: barHeight, rx: 1.5,
      });
      const minutesAgo = values.length - 1 - index;
      rect.appendChild(svgElement("title", {},
        `${value} finished ${minutesAgo === 0 ? "this minute" : `${minutesAgo} min ago`}`));
      svg.appendChild(rect);
    });
    // Time axis: minutes before now, every 5 minutes, "now" at the right edge.
    for (let minutesAgo = values.length - 1; minutesAgo >= 0; minutesAgo--) {
      if (minutesAgo % 5 !== 0 && minutesAgo !== values.length - 1) continue;
      if (minutesAgo !== 0 && minutesAgo % 10 !== 0) continue;
      const index = values.length - 1 - minutesAgo;
      const x = left + index * slot + slot / 2;
      const anchor = minutesAgo === 0 ? "end" : "middle";
      svg.appendChild(svgElement("text", { x: minutesAgo === 0 ? width - right : x,
        y: height - 6, "text-anchor": anchor }, minutesAgo === 0 ? "now" : `−${minutesAgo} min`));
    }
  }
  function drawCharts() {
    document.querySelectorAll("svg#throughput-chart").forEach(drawChart);
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawCharts, 150);
  });

  // --- fragments: batched, throttled, one request in flight at a time --------------------
  // `load(ids)` returns a fragment's HTML for a batch of task ids (or for everything when the
  // refresher has no ids); `apply(html)` swaps it in.
  function refresher(load, apply, delay) {
    let ids = new Set();
    let timer = null, running = false;
    async function run() {
      timer = null;
      if (running) { timer = setTimeout(run, delay); return; }
      // The fragment routes take at most 200 ids; the rest go in the next request.
      const all = [...ids];
      const batch = all.slice(0, 200);
      ids = new Set(all.slice(200));
      running = true;
      try {
        const response = await fetch(load(batch), { headers: authHeaders() });
        if (response.ok) apply(await response.text());
      } catch (error) {
        // The stream's own reconnect shows the service is away; the next event retries.
      } finally {
        running = false;
        if (ids.size && timer === null) timer = setTimeout(run, delay);
      }
    }
    return (id) => {
      if (id !== undefined) ids.add(id);
      if (timer === null) timer = setTimeout(run, delay);
    };
  }
  function rowsOf(html) {
    const template = document.createElement("template");
    template.innerHTML = `<table><tbody>${html}</tbody></table>`;
    return [...template.content.querySelectorAll("tr[data-task]")];
  }
  // Rows are ordered newest first by data-sort (the DLQ: time of death) or else by task id;
  // a row that comes back re-rendered moves to where its new key puts it.
  const sortKey = (row) => Number(row.dataset.sort || row.dataset.task);
  function placeRow(tbody, row) {
    const existing = tbody.querySelector(`tr[data-task="${row.dataset.task}"]`);
    if (existing && sortKey(existing) === sortKey(row)) { existing.replaceWith(row); return; }
    existing?.remove();
    const after = [...tbody.rows].find((other) => sortKey(other) < sortKey(row));
    tbody.insertBefore(row, after || null);
    row.classList.add("flash-row");
  }

  // Overview: cards, chart, latency, queues and workers in one fragment.
  const overview = document.querySelector("[data-live-overview]");
  const refreshOverview = refresher(() => "/ui/fragments/overview", (html) => {
    overview.innerHTML = html;
    drawCharts();
    refreshTimes(overview);
  }, 1000);

  // Tasks page: new rows, and rows whose placement or actions changed.
  const taskTable = document.querySelector("table[data-live-tasks]");
  const refreshTaskRows = refresher(
    (ids) => `/ui/fragments/task-rows?ids=${ids.join(",")}`,
    (html) => {
      const filter = new URLSearchParams(location.search);
      for (const row of rowsOf(html)) {
        const wanted = (!filter.get("state") || row.querySelector("[data-state]")?.textContent === filter.get("state"))
          && (!filter.get("queue") || row.children[2].textContent === filter.get("queue"));
        const present = taskTable.querySelector(`tr[data-task="${row.dataset.task}"]`);
        if (!wanted && !present) continue;
        placeRow(taskTable.tBodies[0], row);
      }
      if (taskTable.tBodies[0].rows.length) {
        taskTable.hidden = false;
        document.querySelector("[data-live-tasks-empty]")?.remove();
      }
      refreshTimes(taskTable);
    }, 300);

  // Dead letters page: tasks that die while it is open, and the fate of replayed ones.
  const dlqTable = document.querySelector("table[data-live-dlq]");
  function updateDeadLetterCount() {
    if (!dlqTable) return;
    const dead = dlqTable.querySelectorAll("tr[data-task] .state-dead").length;
    document.querySelectorAll("[data-dlq-count]").forEach((el) => { el.textContent = dead; });
    const empty = dlqTable.tBodies[0].rows.length === 0;
    dlqTable.hidden = empty;
    document.querySelector("[data-dlq-empty]")?.toggleAttribute("hidden", !empty);
  }
  const refreshDeadLetters = refresher(
    (ids) => `/ui/fragments/dead-letter-rows?ids=${ids.join(",")}`,
    (html) => {
      for (const row of rowsOf(html)) placeRow(dlqTable.tBodies[0], row);
      refreshTimes(dlqTable);
      updateDeadLetterCount();
    }, 300);

  // Pages without a finer fragment (a task's detail, workers, loops) re-read themselves: the
  // region marked data-live-region="KIND" (and data-live-id, if set) follows KIND events.
  const region = document.querySelector("[data-live-region]");
  const refreshRegion = region && refresher(() => location.pathname + location.search, (html) => {
    const fresh = new DOMParser().parseFromString(html, "text/html").querySelector("[data-live-region]");
    if (!fresh) return;
    region.replaceChildren(...fresh.childNodes);
    refreshTimes(region);
  }, 1000);
  function followRegion(kind, id) {
    if (!region || region.dataset.liveRegion !== kind) return;
    if (region.dataset.liveId === undefined || region.dataset.liveId === String(id)) refreshRegion();
  }

  // --- live updates ---------------------------------------------------------------------
  function setState(container, state) {
    const badge = container.querySelector("[data-state]");
    if (!badge) return;
    badge.textContent = state;
    badge.className = `state state-${state}`;
  }
  // Only the actions that make sense in the task's state: cancel while it may still run,
  // retry once it is dead or cancelled. The row's refetch brings the same from the server.
  function setActions(row, data) {
    const cell = row.querySelector("td.actions");
    if (!cell) return;
    cell.replaceChildren();
    const add = (label, action, confirm) => {
      const button = document.createElement("button");
      button.className = "quiet small";
      button.dataset.action = `/tasks/${data.id}/${action}`;
      if (confirm) button.dataset.confirm = confirm;
      button.textContent = label;
      cell.appendChild(button);
    };
    if (["pending", "retrying", "running"].includes(data.state)) {
      add("Cancel", "cancel", `Cancel task ${data.id} (${data.name})?`);
    }
    if (["dead", "cancelled"].includes(data.state)) add("Retry", "retry");
  }
  // A dead letter that left the queue (replayed, retried) keeps its row, without its buttons.
  function leftDeadLetters(row, data) {
    const cell = row.querySelector("td.actions");
    if (!cell || cell.dataset.left) return;
    cell.dataset.left = "true";
    const note = document.createElement("a");
    note.href = `/ui/tasks/${data.id}`;
    note.textContent = "back in the queue: follow it";
    cell.replaceChildren(note);
  }

  const log = document.getElementById("event-log");
  function logEvent(kind, data) {
    if (!log) return;
    if (log.firstElementChild && log.firstElementChild.classList.contains("muted")) log.replaceChildren();
    const item = document.createElement("li");
    const at = typeof data.at === "number" ? data.at : Date.now() / 1000;
    const time = document.createElement("time");
    time.dataset.ts = at;
    time.setAttribute("data-clock", "");
    const text = document.createElement("span");
    text.textContent = kind === "task" ? `task ${data.id} ${data.name || ""} → ${data.state}${data.reason && data.reason !== data.state ? ` (${data.reason})` : ""}`
      : kind === "worker" ? `worker ${data.id} → ${data.state}${data.reason ? ` (${data.reason})` : ""}`
      : kind === "loop" ? `loop ${data.name} → ${data.state}`
      : `ALERT ${data.subject}: ${data.message}`;
    if (kind === "task") {
      const link = document.createElement("a");
      link.href = `/ui/tasks/${data.id}`;
      link.append(text);
      item.append(time, link);
    } else {
      item.append(time, text);
    }
    if (kind === "alert") item.className = "error";
    log.prepend(item);
    refreshTimes(item);
    while (log.children.length > 100) log.lastElementChild.remove();
  }
  function onTask(data) {
    logEvent("task", data);
    document.querySelectorAll(`[data-task="${data.id}"]`).forEach((el) => {
      setState(el, data.state);
      if (el.tagName === "TR" && el.closest("table[data-live-tasks]")) setActions(el, data);
      if (el.tagName === "TR" && el.closest("table[data-live-dlq]") && data.state !== "dead") {
        leftDeadLetters(el, data);
      }
      const attempts = el.querySelector("[data-attempts]");
      if (attempts) attempts.textContent = data.attempts;
      el.classList.remove("flash-row"); void el.offsetWidth; el.classList.add("flash-row");
    });
    if (data.state === "deleted") {
      document.querySelectorAll(`tr[data-task="${data.id}"]`).forEach((row) => row.remove());
      updateDeadLetterCount();
    } else {
      if (taskTable) refreshTaskRows(data.id);
      if (dlqTable && data.state === "dead") refreshDeadLetters(data.id);
      if (dlqTable) updateDeadLetterCount();
    }
    if (overview) refreshOverview();
    followRegion("task", data.id);
  }
  function onWorker(data) {
    logEvent("worker", data);
    document.querySelectorAll(`[data-worker="${CSS.escape(data.id)}"]`).forEach((el) => {
      setState(el, data.state);
      const reason = el.querySelector("[data-reason]");
      if (reason && data.reason) reason.textContent = data.reason;
    });
    if (overview) refreshOverview();
    followRegion("worker", data.id);
  }
  function onLoop(data) {
    logEvent("loop", data);
    document.querySelectorAll(`[data-loop="${CSS.escape(data.name)}"]`).forEach((el) => setState(el, data.state));
    followRegion("loop", data.name);
  }

  const live = document.getElementById("live");
  if (window.EventSource) {
    const source = new EventSource("/events");
    source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
    const parse = (handler) => (event) => handler(JSON.parse(event.data));
    source.addEventListener("task", parse(onTask));
    source.addEventListener("worker", parse(onWorker));
    source.addEventListener("loop", parse(onLoop));
    source.addEventListener("alert", parse((data) => { logEvent("alert", data); flash(`${data.subject}: ${data.message}`, true); }));
  } else {
    live.textContent = "no live updates in this browser";
  }
  drawCharts();
  refreshTimes();
  setInterval(() => refreshTimes(), 5000);
  // Loop lag and heartbeats move without events: refresh the overview's figures now and then.
  if (overview) setInterval(() => refreshOverview(), 15000);
})();
