// The router's chat page (issue 15): plain JavaScript, no dependencies, nothing fetched from elsewhere.
// The conversation lives in this page only; each turn sends the whole history to
// v1/chat/completions with stream: true and reads the server-sent events as they arrive.
// Stop aborts the fetch; the router sees the client leave and cancels its upstream request.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), model: $("model"), reload: $("reload-models"), system: $("system"),
  temperature: $("temperature"), maxTokens: $("max-tokens"), apiKey: $("api-key"), clear: $("clear"),
  conversation: $("conversation"), composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
};
// Relative URLs, so the page also works behind a path prefix (a port-forward, a proxy).
const api = (path) => new URL(path, document.baseURI).href;

const history = []; // {role, content} of every finished turn
let inFlight = null; // the AbortController of the answer being streamed
let generation = 0; // bumped by "New conversation": an answer from an older one is dropped

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

function headers() {
  const h = { "content-type": "application/json" };
  const key = ui.apiKey.value.trim();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

async function errorText(resp) {
  const raw = await resp.text();
  try {
    const body = JSON.parse(raw);
    if (body && body.error) return body.error.message || JSON.stringify(body.error);
  } catch (_) { /* not JSON: show it as it is */ }
  return raw.trim() || resp.statusText;
}

async function loadModels() {
  setStatus("Loading models…");
  try {
    const resp = await fetch(api("v1/models"), { headers: headers() });
    if (!resp.ok) throw new Error(`${resp.status}: ${await errorText(resp)}`);
    const ids = ((await resp.json()).data || []).map((card) => card.id);
    const previous = ui.model.value;
    ui.model.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(previous)) ui.model.value = previous;
    setStatus(ids.length ? `${ids.length} model${ids.length > 1 ? "s" : ""} served` : "No model served yet: reload",
              !ids.length);
  } catch (err) {
    setStatus(`Could not list the models: ${err.message}`, true);
  }
}

function addMessage(role, text) {
  const item = document.createElement("div");
  item.className = `message ${role}`;
  const who = document.createElement("div");
  who.className = "role";
  who.textContent = role;
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text; // never innerHTML: answers are untrusted text
  const stats = document.createElement("div");
  stats.className = "stats";
  item.append(who, content, stats);
  ui.conversation.append(item);
  item.scrollIntoView({ block: "end" });
  return { item, content, stats };
}

function requestBody() {
  const messages = [];
  const system = ui.system.value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history);
  const body = { model: ui.model.value, messages, stream: true, stream_options: { include_usage: true } };
  const temperature = parseFloat(ui.temperature.value);
  if (Number.isFinite(temperature)) body.temperature = temperature;
  const maxTokens = parseInt(ui.maxTokens.value, 10);
  if (Number.isFinite(maxTokens) && maxTokens > 0) body.max_tokens = maxTokens;
  return body;
}

// Server-sent events: events end with a blank line; each `data:` line is one JSON payload or [DONE].
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = events.pop();
    for (const event of events) {
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

function describe(result) {
  // Decode speed: tokens after the first over the time after the first; one token: over the whole answer.
  const tokens = result.usage ? result.usage.completion_tokens : result.chunks;
  const span = tokens > 1 && result.firstAt ? (result.endAt - result.firstAt) / 1000 : (result.endAt - result.startAt) / 1000;
  const perSecond = tokens > 1 && result.firstAt ? (tokens - 1) / span : tokens / span;
  const parts = [`${tokens} token${tokens === 1 ? "" : "s"}${result.usage ? "" : " (counted from the stream)"}`];
  if (tokens > 0 && span > 0) parts.push(`${perSecond.toFixed(1)} tokens/s`);
  if (result.firstAt) parts.push(`first token after ${((result.firstAt - result.startAt) / 1000).toFixed(2)} s`);
  if (result.finish) parts.push(`finished: ${result.finish}`);
  if (result.stopped) parts.push("stopped");
  return { text: parts.join(" · "), perSecond: tokens > 0 && span > 0 ? perSecond : 0, tokens };
}

async function send() {
  const text = ui.prompt.value.trim();
  if (!text || inFlight) return;
  if (!ui.model.value) { setStatus("No model to ask: reload the models", true); return; }
  history.push({ role: "user", content: text });
  addMessage("user", text);
  ui.prompt.value = "";
  const answer = addMessage("assistant", "");
  answer.item.classList.add("streaming");
  const controller = new AbortController();
  const mine = generation;
  inFlight = controller;
  ui.send.disabled = true;
  ui.stop.disabled = false;
  setStatus("Streaming…");
  const result = { startAt: performance.now(), firstAt: 0, endAt: 0, chunks: 0, usage: null, finish: "", stopped: false };
  let reply = "";
  try {
    const resp = await fetch(api("v1/chat/completions"), {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!resp.ok) throw new Error(`${resp.status}: ${await errorText(resp)}`);
    for await (const event of sseData(resp.body)) {
      if (event.error) throw new Error(event.error.message || JSON.stringify(event.error));
      if (event.usage) result.usage = event.usage;
      const choice = (event.choices || [])[0];
      if (!choice) continue;
      if (choice.finish_reason) result.finish = choice.finish_reason;
      const piece = choice.delta && choice.delta.content;
      if (piece) {
        if (!result.firstAt) result.firstAt = performance.now();
        result.chunks += 1;
        reply += piece;
        answer.content.textContent = reply;
        answer.item.scrollIntoView({ block: "end" });
      }
    }
    setStatus("Done");
  } catch (err) {
    if (mine !== generation) return; // the conversation was cleared under it (finally still runs)
    if (err.name === "AbortError") {
      result.stopped = true;
      setStatus("Stopped");
    } else {
      answer.item.classList.add("error");
      answer.content.textContent = reply ? `${reply}\n\n[error: ${err.message}]` : `error: ${err.message}`;
      setStatus(`The answer failed: ${err.message}`, true);
    }
  } finally {
    result.endAt = performance.now();
    inFlight = null;
    ui.send.disabled = false;
    ui.stop.disabled = true;
    answer.item.classList.remove("streaming");
  }
  if (mine !== generation) return;
  if (reply) {
    history.push({ role: "assistant", content: reply }); // a stopped answer stays in the conversation, as shown
    const summary = describe(result);
    answer.stats.textContent = summary.text;
    answer.stats.dataset.tokensPerSecond = summary.perSecond.toFixed(2);
    answer.stats.dataset.tokens = String(summary.tokens);
  } else if (!answer.item.classList.contains("error")) {
    answer.content.textContent = result.stopped ? "(stopped before the first token)" : "(empty answer)";
  }
  if (!reply && history.length && history[history.length - 1].role === "user") {
    // Nothing came back: take the question out of the history and offer it again.
    ui.prompt.value = history.pop().content;
    answer.item.previousElementSibling.classList.add("unanswered");
  }
  ui.prompt.focus();
}

ui.composer.addEventListener("submit", (event) => { event.preventDefault(); send(); });
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send(); }
});
ui.stop.addEventListener("click", () => { if (inFlight) inFlight.abort(); });
ui.reload.addEventListener("click", loadModels);
ui.clear.addEventListener("click", () => {
  generation += 1;
  if (inFlight) inFlight.abort();
  history.length = 0;
  ui.conversation.replaceChildren();
  setStatus("New conversation");
  ui.prompt.focus();
});
loadModels();
