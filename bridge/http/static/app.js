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
  $("output").classList.toggle("live", running); // the cursor while tokens arrive
}

// -- the form, from the model's input schema ---------------------------------

function inputSchema(model) {
  const version = model.latest_version;
  return version ? version.openapi_schema.components.schemas.Input : { properties: {} };
}

function limits(prop) {
  const parts = [];
  if (prop.minimum !== undefined && prop.maximum !== undefined) {
    parts.push(`${prop.minimum} to ${prop.maximum}`);
  } else if (prop.minimum !== undefined) {
    parts.push(`at least ${prop.minimum}`);
  } else if (prop.maximum !== undefined) {
    parts.push(`at most ${prop.maximum}`);
  }
  if (prop.maxLength !== undefined) parts.push(`up to ${prop.maxLength} characters`);
  if (prop.enum) parts.push(`one of ${prop.enum.join(", ")}`);
  if (prop.default !== undefined && prop.default !== null) {
    parts.push(`default ${JSON.stringify(prop.default)}`);
  }
  return parts.join(" · ");
}

function renderInputs(model, values = {}) {
  const schema = inputSchema(model);
  const required = new Set(schema.required || []);
  // A bridged service's field is one box, by its proto name (its lowerCamel
  // spelling, which the API takes too, says x-alias-of).
  const properties = schema.properties || {};
  const names = Object.keys(properties).filter((name) => !properties[name]["x-alias-of"]).sort((a, b) => {
    if (a === "prompt") return -1; // the prompt box comes first
    if (b === "prompt") return 1;
    return (schema.properties[a]["x-order"] ?? 99) - (schema.properties[b]["x-order"] ?? 99);
  });
  const box = $("inputs");
  box.replaceChildren();
  if (model && model.description) {
    // Why the model serves nothing (its setup failed), as /v1/models says.
    const note = document.createElement("p");
    note.className = "model-note";
    note.textContent = model.description;
    box.append(note);
  }
  for (const name of names) {
    const prop = schema.properties[name];
    const label = document.createElement("label");
    label.className = "field";
    // As in Replicate's playground: the input's name (what the API takes),
    // its type, then what the schema says it is for and its limits.
    const caption = document.createElement("span");
    caption.className = "caption";
    const key = document.createElement("code");
    key.textContent = name;
    const kind = document.createElement("small");
    kind.textContent = (prop.type || "any") + (required.has(name) ? " · required" : "");
    caption.append(key, " ", kind);
    let control;
    if (prop.enum) {
      control = document.createElement("select");
      if (!required.has(name)) control.append(new Option("(default)", ""));
      for (const choice of prop.enum) control.append(new Option(String(choice), String(choice)));
    } else if (name === "prompt" || prop.type === "object" || prop.type === "array") {
      control = document.createElement("textarea");
      label.classList.add("wide");
      if (prop.type === "array") control.rows = 3;
    } else if (prop.type === "boolean") {
      control = document.createElement("input");
      control.type = "checkbox";
    } else {
      control = document.createElement("input");
      control.type = prop.type === "integer" || prop.type === "number" ? "number" : "text";
      if (prop.type === "number") control.step = "any";
      if (prop.minimum !== undefined) control.min = prop.minimum;
      if (prop.maximum !== undefined) control.max = prop.maximum;
    }
    control.name = name;
    control.dataset.type = prop.type || "string";
    control.required = required.has(name);
    // A placeholder that reads as one (styled apart), never as a value; the
    // description is the hint below, shown once.
    if (prop.type === "array") control.placeholder = "one item per line, exactly as typed; or a JSON array";
    const value = values[name] ?? prop.default;
    if (value !== undefined && value !== null) {
      if (prop.type === "boolean") control.checked = Boolean(value);
      else if (prop.type === "array") control.value = arrayText(value);
      else if (prop.type === "object") control.value = JSON.stringify(value);
      else control.value = value;
    }
    const hint = document.createElement("small");
    hint.className = "hint";
    hint.textContent = [prop.description, limits(prop)].filter(Boolean).join(" · ");
    label.append(caption, control, hint);
    box.append(label);
  }
}

// An array input: one item per line, each kept exactly (spaces and all), or
// a JSON array when the text is one (for items with line breaks, or not
// strings).
function arrayValue(text) {
  if (text.trim().startsWith("[")) {
    try {
      const value = JSON.parse(text);
      if (Array.isArray(value)) return value;
    } catch {
      // not JSON: lines
    }
  }
  return text.split("\n");
}

function arrayText(items) {
  // As lines when reading them back gives the same items, else as JSON.
  const lines = items.every((item) => typeof item === "string" && !item.includes("\n"))
    ? items.join("\n") : null;
  const same = lines !== null && lines !== "" && JSON.stringify(arrayValue(lines)) === JSON.stringify(items);
  return same ? lines : JSON.stringify(items);
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
    else if (type === "array") input[control.name] = arrayValue(control.value);
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
  $("logs-panel").hidden = false;
  $("ttft").textContent = "–";
  $("tps").textContent = "–";
  $("count").textContent = "0";
  $("copy-output").disabled = true;
  showError("");
  setStatus(prediction.status);
  const link = new URL(location.href);
  link.search = `?prediction=${prediction.id}`;
  $("link").value = link.href;
  $("share").hidden = false;
  history.replaceState(null, "", link.href);
  showCode(prediction);

  const mine = current;
  if (prediction.data_removed) {
    showError("This prediction's input and output were removed (data_removed).");
    refresh(mine);
    return;
  }
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
    $("copy-output").disabled = false;
    if (live) showRate();
  });
  source.addEventListener("logs", (event) => {
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
  if (!$("logs").textContent && prediction.logs) $("logs").textContent = prediction.logs;
  $("copy-output").disabled = !$("output").textContent;
  loadRecent();
}

// -- the code that reproduces it ------------------------------------------

function streams(model) {
  const version = model && model.latest_version;
  const output = version ? version.openapi_schema.components.schemas.Output : {};
  return !version || output["x-cog-array-type"] === "iterator";
}

function chatModel(model) {
  // A text model OpenAI's chat API reaches: it streams, and takes a prompt
  // or messages (how the bridge maps a chat onto a model's input).
  const version = model && model.latest_version;
  if (!version || !streams(model)) return false;
  const props = version.openapi_schema.components.schemas.Input.properties || {};
  return "prompt" in props || "messages" in props;
}

function python(value, indent = "") {
  // A Python literal for a JSON value (JSON's string escapes are Python's).
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) return `[${value.map((v) => python(v, indent)).join(", ")}]`;
  if (typeof value === "object") {
    const inner = indent + "    ";
    const items = Object.entries(value).map(([k, v]) => `${inner}${JSON.stringify(k)}: ${python(v, inner)},`);
    return items.length ? `{\n${items.join("\n")}\n${indent}}` : "{}";
  }
  return JSON.stringify(value);
}

function shellQuote(text) {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

const snippets = {
  curl(model, input, withToken) {
    const lines = [
      `curl -sN -X POST ${location.origin}/v1/models/${model}/predictions`,
      "  -H 'Content-Type: application/json'",
    ];
    if (streams(models.get(model))) lines.push("  -H 'Accept: text/event-stream'");
    else lines.push("  -H 'Prefer: wait'");
    if (withToken) lines.push('  -H "Authorization: Bearer $BRIDGE_TOKEN"');
    lines.push(`  -d ${shellQuote(JSON.stringify({ input }))}`);
    return lines.join(" \\\n");
  },
  python(model, input, withToken) {
    const auth = withToken ? 'os.environ["BRIDGE_TOKEN"]' : '"unused"';
    const head = withToken ? "import os\n\nimport replicate\n" : "import replicate\n";
    const call = streams(models.get(model))
      ? `for event in client.stream(${JSON.stringify(model)}, input=input):\n    print(str(event), end="", flush=True)`
      : `print(client.run(${JSON.stringify(model)}, input=input))`;
    return `${head}
client = replicate.Client(api_token=${auth}, base_url=${JSON.stringify(location.origin)})
input = ${python(input)}
${call}
`;
  },
  javascript(model, input, withToken) {
    const auth = withToken ? "process.env.BRIDGE_TOKEN" : '"unused"';
    const call = streams(models.get(model))
      ? `for await (const event of replicate.stream(${JSON.stringify(model)}, { input })) {
  if (event.event === "output") process.stdout.write(String(event));
}`
      : `console.log(await replicate.run(${JSON.stringify(model)}, { input }));`;
    return `import Replicate from "replicate";

const replicate = new Replicate({ auth: ${auth}, baseUrl: ${JSON.stringify(location.origin + "/v1")} });
const input = ${JSON.stringify(input, null, 2)};
${call}
`;
  },
  openai(model, input, withToken) {
    // The same prediction through OpenAI's chat API (openai-python).
    const auth = withToken ? 'os.environ["BRIDGE_TOKEN"]' : '"unused"';
    const head = withToken ? "import os\n\nfrom openai import OpenAI\n" : "from openai import OpenAI\n";
    const { prompt, system_prompt: system, messages, ...rest } = input;
    const said = messages || [
      ...(system === undefined ? [] : [{ role: "system", content: system }]),
      { role: "user", content: prompt },
    ];
    const extra = Object.keys(rest).length ? `    extra_body=${python(rest, "    ")},\n` : "";
    return `${head}
client = OpenAI(api_key=${auth}, base_url=${JSON.stringify(location.origin + "/v1")})
stream = client.chat.completions.create(
    model=${JSON.stringify(model)},
    messages=${python(said, "    ")},
    stream=True,
${extra})
for chunk in stream:
    print(chunk.choices[0].delta.content or "", end="", flush=True)
`;
  },
};

let codeLang = "curl";

function showCode(prediction) {
  $("code").hidden = false;
  $("code").dataset.model = prediction.model;
  $("code").dataset.input = JSON.stringify(prediction.input || {});
  renderCode();
}

function renderCode() {
  const box = $("code");
  if (box.hidden) return;
  const chat = chatModel(models.get(box.dataset.model));
  $("openai-tab").hidden = !chat;
  if (!chat && codeLang === "openai") codeLang = "python";
  const input = JSON.parse(box.dataset.input);
  $("snippet").textContent = snippets[codeLang](box.dataset.model, input, Boolean(token()));
  $("snippet").dataset.lang = codeLang;
  for (const tab of box.querySelectorAll("[role=tab]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.lang === codeLang));
  }
}

async function copy(text, what) {
  try {
    await navigator.clipboard.writeText(text);
    $("copied").textContent = `${what} copied`;
  } catch {
    $("copied").textContent = `Could not copy the ${what.toLowerCase()}`;
  }
}

// -- recent predictions ------------------------------------------------------

function summary(prediction) {
  const input = prediction.input || {};
  const text = typeof input.prompt === "string" ? input.prompt : JSON.stringify(input);
  return text.length > 60 ? `${text.slice(0, 59)}…` : text;
}

async function loadRecent() {
  let page;
  try {
    page = await api("/v1/predictions");
  } catch {
    return; // the list is a convenience; the page works without it
  }
  const list = $("recent-list");
  list.replaceChildren();
  for (const prediction of page.results.slice(0, 10)) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = `?prediction=${prediction.id}`;
    const pill = document.createElement("span");
    pill.className = "pill";
    pill.dataset.status = pill.textContent = prediction.status;
    const model = document.createElement("code");
    model.textContent = prediction.model;
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = prediction.data_removed ? "(data removed)" : summary(prediction);
    const when = document.createElement("time");
    when.dateTime = prediction.created_at;
    when.textContent = new Date(prediction.created_at).toLocaleTimeString();
    link.append(pill, " ", model, " ", what, " ", when);
    item.append(link);
    list.append(item);
  }
  if (!page.results.length) {
    const empty = document.createElement("li");
    empty.className = "stat";
    empty.textContent = "None yet.";
    list.append(empty);
  }
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
    loadRecent();
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
  loadRecent();
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
  $("copy-link").addEventListener("click", () => copy($("link").value, "Link"));
  $("copy-output").addEventListener("click", () => copy($("output").textContent, "Output"));
  $("copy-code").addEventListener("click", () => copy($("snippet").textContent, "Code"));
  $("link").addEventListener("focus", () => $("link").select());
  for (const tab of $("code").querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => {
      codeLang = tab.dataset.lang;
      renderCode();
    });
  }
  load();
}

main();
