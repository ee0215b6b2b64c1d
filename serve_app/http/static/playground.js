// The playground: one image, then a question, a caption, a streamed chat answer or ranked
// texts, through the same HTTP API clients use. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const features = new Set(
  document.querySelector('meta[name="blip2-features"]').content.split(" ").filter(Boolean)
);
const TOKEN_KEY = "blip2-playground-token"; // sessionStorage: this tab only
const MODES = {
  vqa: { label: "Question", button: "Ask", text: "How many circles are there?" },
  caption: { label: "Caption prefix (optional)", button: "Caption", text: "" },
  chat: { label: "Message (empty: describe the image)", button: "Send", text: "" },
  rank: { label: "Candidate texts, one per line", button: "Rank", text: "" },
};

let image = null; // {data: "data:image/...;base64,..."} or {url: "https://..."}
let mode = features.has("generation") ? "vqa" : "rank";
let modelName = null;

// ---- the image ----

function showPreview(src) {
  $("preview").src = src;
  $("preview").alt = "the chosen image";
  $("preview").hidden = false;
  $("drop-hint").hidden = true;
}

function useBlob(blob) {
  const reader = new FileReader();
  reader.onload = () => {
    image = { data: reader.result };
    $("url").value = "";
    showPreview(reader.result);
  };
  reader.readAsDataURL(blob);
}

function setUpImageInputs() {
  const drop = $("drop");
  $("file").addEventListener("change", () => {
    if ($("file").files.length) useBlob($("file").files[0]);
  });
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file").click();
    }
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) useBlob(file);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) useBlob(item.getAsFile());
  });
  $("url").addEventListener("change", () => {
    const url = $("url").value.trim();
    if (!url) return;
    image = { url };
    showPreview(url);
  });
  for (const button of document.querySelectorAll(".example")) {
    button.addEventListener("click", async () => {
      const response = await fetch(button.dataset.src);
      useBlob(await response.blob());
    });
  }
}

// ---- modes ----

function setMode(next) {
  mode = next;
  for (const tab of document.querySelectorAll(".modes button")) {
    tab.setAttribute("aria-selected", String(tab.dataset.mode === mode));
  }
  $("prompt-label").textContent = MODES[mode].label;
  $("prompt").value = MODES[mode].text;
  $("prompt").rows = mode === "rank" ? 5 : 2;
  $("send").textContent = MODES[mode].button;
}

function setUpModes() {
  for (const tab of document.querySelectorAll(".modes button")) {
    const needs = tab.dataset.mode === "rank" ? "retrieval" : "generation";
    tab.hidden = !features.has(needs);
    tab.addEventListener("click", () => setMode(tab.dataset.mode));
  }
  setMode(mode);
}

// ---- the API ----

function headers() {
  const result = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) result.Authorization = `Bearer ${token}`;
  return result;
}

function askForToken() {
  return new Promise((resolve) => {
    const dialog = $("token-dialog");
    $("token").value = "";
    dialog.addEventListener(
      "close",
      () => {
        sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
        resolve();
      },
      { once: true }
    );
    dialog.showModal();
  });
}

async function request(method, path, payload) {
  for (let attempt = 0; ; attempt += 1) {
    const response = await fetch(path, {
      method,
      headers: headers(),
      body: payload === undefined ? undefined : JSON.stringify(payload),
    });
    if (response.status !== 401 || attempt >= 2) return response;
    await askForToken();
  }
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    const error = body.error || {};
    const code = error.code || error.type || response.status;
    return `${error.message || response.statusText} (${code})`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function servedModel() {
  if (modelName) return modelName;
  const response = await request("GET", "/v1/models");
  if (!response.ok) throw new Error(await errorMessage(response));
  modelName = (await response.json()).data[0].id;
  return modelName;
}

function params() {
  const result = {
    max_new_tokens: Number($("max-tokens").value),
    num_beams: Number($("beams").value),
    do_sample: $("sample").checked,
  };
  if (result.do_sample) result.temperature = Number($("temperature").value);
  return result;
}

// ---- asking ----

function showStats(started, usage, extra = "") {
  const ms = Math.round(performance.now() - started);
  const tokens = usage ? ` · ${usage.prompt_tokens} prompt + ${usage.completion_tokens ?? 0} new tokens` : "";
  $("stats").textContent = `${ms} ms${tokens}${extra}`;
}

async function answerOnce(path, payload, field, started) {
  const response = await request("POST", path, payload);
  if (!response.ok) throw new Error(await errorMessage(response));
  const body = await response.json();
  $("answer").textContent = body[field];
  const batch = body.batch_size ? ` · batch of ${body.batch_size}` : "";
  showStats(started, body.usage, batch);
}

async function rank(started) {
  const texts = $("prompt").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const response = await request("POST", "/v1/rank", { image, texts });
  if (!response.ok) throw new Error(await errorMessage(response));
  const body = await response.json();
  const list = $("ranking");
  list.replaceChildren(
    ...body.results.map((result) => {
      const item = document.createElement("li");
      item.textContent = `${result.text} — match ${(result.itm * 100).toFixed(1)}%`;
      return item;
    })
  );
  list.hidden = false;
  showStats(started, null);
}

async function chat(started) {
  const text = $("prompt").value.trim();
  const generation = params();
  const payload = {
    model: await servedModel(),
    messages: [
      {
        role: "user",
        content: [
          ...(text ? [{ type: "text", text }] : []),
          { type: "image_url", image_url: { url: image.data || image.url } },
        ],
      },
    ],
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: generation.max_new_tokens,
  };
  if (generation.do_sample) payload.temperature = generation.temperature;
  const response = await request("POST", "/v1/chat/completions", payload);
  if (!response.ok) throw new Error(await errorMessage(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let answer = "";
  let updates = 0;
  let usage = null;
  let first = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(`${chunk.error.message} (${chunk.error.code || chunk.error.type})`);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
      if (delta) {
        first = first ?? performance.now();
        answer += delta;
        updates += 1;
        $("answer").textContent = answer;
        $("answer").dataset.updates = String(updates);
      }
      if (chunk.usage) usage = chunk.usage;
    }
  }
  const firstMs = first === null ? "" : ` · first token ${Math.round(first - started)} ms`;
  showStats(started, usage, `${firstMs} · streamed in ${updates} updates`);
}

async function send(event) {
  event.preventDefault();
  $("error").hidden = true;
  $("answer").textContent = "";
  $("ranking").hidden = true;
  $("stats").textContent = "";
  if (!image) {
    $("error").textContent = "Choose an image first.";
    $("error").hidden = false;
    return;
  }
  $("send").disabled = true;
  const started = performance.now();
  try {
    const text = $("prompt").value.trim();
    if (mode === "vqa") {
      await answerOnce("/v1/vqa", { image, question: text, params: params() }, "answer", started);
    } else if (mode === "caption") {
      const payload = { image, prompt: text || null, params: params() };
      await answerOnce("/v1/caption", payload, "caption", started);
    } else if (mode === "chat") {
      await chat(started);
    } else {
      await rank(started);
    }
  } catch (error) {
    $("error").textContent = error.message;
    $("error").hidden = false;
  } finally {
    $("send").disabled = false;
  }
}

setUpImageInputs();
setUpModes();
$("ask").addEventListener("submit", send);
