// The bridge's page: pick a model, fill its input, watch the output stream in.
// Plain JavaScript against the bridge's own API; no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const models = new Map(); // "owner/name" -> model object
let current = null; // { prediction, source, startedAt, firstAt, lastAt, count }

function token() {
  return $("token").value.trim();
}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const problem = body || { title: response.statusText, detail: "" };
    const fields = (problem.invalid_fields || []).map((f) => `• ${f.field}: ${f.description}`);
    throw new Error([`${problem.title}: ${problem.detail}`, ...fields].join("\n"));
  }
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(status) {
  $("status").textContent = status;
  $("status").dataset.status = status;
  const running = status === "starting" || status === "processing";
  $("cancel").disabled = !running;
  $("start").disabled = running;
}

// -- the form, from the model's input schema ---------------------------------

function inputSchema(model) {
  const version = model.latest_version;
  return version ? version.openapi_schema.components.schemas.Input : { properties: {} };
}

function renderInputs(model, values = {}) {
  const schema = inputSchema(model);
  const required = new Set(schema.required || []);
  const names = Object.keys(schema.properties || {}).sort((a, b) => {
    if (a === "prompt") return -1; // the prompt box comes first
    if (b === "prompt") return 1;
    return (schema.properties[a]["x-order"] ?? 99) - (schema.properties[b]["x-order"] ?? 99);
  });
  const box = $("inputs");
  box.replaceChildren();
  for (const name of names) {
    const prop = schema.properties[name];
    const label = document.createElement("label");
    label.className = "field";
    const caption = document.createElement("span");
    caption.textContent = (prop.title || name) + (required.has(name) ? " *" : "");
    let control;
    if (name === "prompt" || prop.type === "object") {
      control = document.createElement("textarea");
      label.classList.add("wide");
    } else if (prop.type === "boolean") {
      control = document.createElement("input");
      control.type = "checkbox";
    } else {
      control = document.createElement("input");
      control.type = prop.type === "integer" || prop.type === "number" ? "number" : "text";
      if (prop.type === "number") control.step = "any";
      if (prop.type === "array") control.placeholder = "comma, separated";
    }
    control.name = name;
    control.dataset.type = prop.type || "string";
    control.required = required.has(name);
    const value = values[name] ?? prop.default;
    if (value !== undefined && value !== null) {
      if (prop.type === "boolean") control.checked = Boolean(value);
      else if (prop.type === "array") control.value = value.join(", ");
      else if (prop.type === "object") control.value = JSON.stringify(value);
      else control.value = value;
    }
    if (name === "prompt" && !control.value) control.placeholder = "Tell me a story";
    label.append(caption, control);
    box.append(label);
  }
}

function readInputs() {
  const input = {};
  for (const control of $("inputs").querySelectorAll("[name]")) {
    const type = control.dataset.type;
    if (type === "boolean") {
      input[control.name] = control.checked;
      continue;
    }
    const raw = control.value.trim();
    if (raw === "") continue; // the model's default applies
    if (type === "integer") input[control.name] = parseInt(raw, 10);
    else if (type === "number") input[control.name] = parseFloat(raw);
    else if (type === "array") input[control.name] = raw.split(",").map((s) => s.trim());
    else if (type === "object") input[control.name] = JSON.parse(raw);
    else input[control.name] = control.value;
  }
  return input;
}

// -- one prediction, watched live ----------------------------------------

function formatSeconds(seconds) {
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
}

function showRate() {
  const { count, firstAt, lastAt } = current;
  if (count > 1 && lastAt > firstAt) {
    $("tps").textContent = ((count - 1) / ((lastAt - firstAt) / 1000)).toFixed(1);
  }
}

function watch(prediction, live) {
  if (current && current.source) current.source.close();
  current = { prediction, source: null, startedAt: performance.now(), firstAt: 0, lastAt: 0, count: 0 };
  $("output").textContent = "";
  $("logs").textContent = "";
  $("logs-box").hidden = true;
  $("ttft").textContent = "–";
  $("tps").textContent = "–";
  $("count").textContent = "0";
  showError("");
  setStatus(prediction.status);
  const link = new URL(location.href);
  link.search = `?prediction=${prediction.id}`;
  $("link").href = link.href;
  $("link").hidden = false;
  history.replaceState(null, "", link.href);

  const mine = current;
  const source = new EventSource(prediction.urls.stream);
  mine.source = source;
  source.addEventListener("output", (event) => {
    const now = performance.now();
    if (mine.count === 0) {
      mine.firstAt = now;
      setStatus("processing");
      if (live) $("ttft").textContent = formatSeconds((now - mine.startedAt) / 1000);
    }
    mine.lastAt = now;
    mine.count += 1;
    $("count").textContent = String(mine.count);
    $("output").textContent += event.data;
    if (live) showRate();
  });
  source.addEventListener("logs", (event) => {
    $("logs-box").hidden = false;
    $("logs").textContent += event.data + "\n";
  });
  source.addEventListener("error", (event) => {
    if (event.data) {
      // The prediction's own error event.
      showError(JSON.parse(event.data).detail);
    } else if (source.readyState === EventSource.CLOSED) {
      showError("The stream was lost; reopen the link to resume.");
    } // else the browser reconnects by itself, with Last-Event-ID
  });
  source.addEventListener("done", async () => {
    source.close();
    await refresh(mine);
  });
}

async function refresh(mine) {
  const prediction = await api(`/v1/predictions/${mine.prediction.id}`);
  if (current !== mine) return;
  setStatus(prediction.status);
  const metrics = prediction.metrics || {};
  if (metrics.time_to_first_token !== undefined) {
    $("ttft").textContent = formatSeconds(metrics.time_to_first_token);
  }
  if (metrics.tokens_per_second !== undefined) {
    $("tps").textContent = metrics.tokens_per_second.toFixed(1);
  }
  if (prediction.error) showError(prediction.error);
}

// -- wiring ----------------------------------------------------------------

async function loadModels() {
  const page = await api("/v1/models");
  $("model").replaceChildren();
  for (const model of page.results) {
    const name = `${model.owner}/${model.name}`;
    models.set(name, model);
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("model").append(option);
  }
}

async function start(event) {
  event.preventDefault();
  showError("");
  const name = $("model").value;
  try {
    setStatus("starting");
    const prediction = await api(`/v1/models/${name}/predictions`, {
      method: "POST",
      body: JSON.stringify({ input: readInputs() }),
    });
    watch(prediction, true);
  } catch (error) {
    setStatus("idle");
    showError(error.message);
  }
}

async function cancel() {
  if (!current) return;
  $("cancel").disabled = true;
  try {
    const prediction = await api(current.prediction.urls.cancel, { method: "POST" });
    setStatus(prediction.status);
  } catch (error) {
    showError(error.message);
  }
}

async function load() {
  try {
    await loadModels();
  } catch (error) {
    $("auth").open = true;
    showError(error.message);
    return;
  }
  showError("");
  const reopen = new URLSearchParams(location.search).get("prediction");
  if (reopen) {
    try {
      const prediction = await api(`/v1/predictions/${reopen}`);
      $("model").value = prediction.model;
      renderInputs(models.get(prediction.model), prediction.input);
      watch(prediction, false);
      return;
    } catch (error) {
      showError(error.message);
    }
  }
  if (models.has("demo/story")) $("model").value = "demo/story";
  renderInputs(models.get($("model").value));
}

function main() {
  $("token").value = localStorage.getItem("bridge-token") || "";
  $("token").addEventListener("change", () => {
    localStorage.setItem("bridge-token", token());
    load();
  });
  $("run").addEventListener("submit", start);
  $("cancel").addEventListener("click", cancel);
  $("model").addEventListener("change", () => renderInputs(models.get($("model").value)));
  load();
}

main();
