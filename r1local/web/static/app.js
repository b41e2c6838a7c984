// The chat page: wires the model picker, the conversation list, the message view and the
// composer to api.js (the server), conversations.js (localStorage) and render.js.

import { ApiError, apiKey, getJson, setApiKey, streamChat, watchLoad } from "./api.js";
import * as store from "./conversations.js";
import { renderInto } from "./render.js";

const $ = (id) => document.getElementById(id);
const el = {
  model: $("model"), modelNote: $("model-note"), status: $("status"), messages: $("messages"),
  composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  list: $("conversations"), sidebar: $("sidebar"), toggleSidebar: $("toggle-sidebar"),
  settings: $("settings"), keyDialog: $("key-dialog"), keyInput: $("api-key"),
  keyReason: $("key-reason"),
};

// the settings dialog's inputs -> the conversation's settings fields
const SETTING_INPUTS = {
  system: "set-system", temperature: "set-temperature", top_p: "set-top-p",
  think_budget: "set-think-budget", num_ctx: "set-num-ctx", num_predict: "set-max-tokens",
};
const RETRY_MS = 5000;  // how often a page that lost the server looks for it again
const TICK_MS = 250;    // the "Thinking… N s" counter's refresh
const LOAD_GRACE_MS = 1000;  // how long a finished reply lets the load's stream end by itself

const state = {
  conversations: store.loadAll(),
  current: null,
  models: [],        // from /api/tags, with the planner's verdict from /web/models
  controller: null,  // the running reply's AbortController
  serverDown: false,
};

// ---- status line ---------------------------------------------------------------------

function showStatus(text, kind = "info") {
  el.status.hidden = !text;
  el.status.textContent = text || "";
  el.status.dataset.kind = kind;
}

// "Loading MODEL… 42%" with a bar: the fraction llama.cpp reports as it loads the model
function showLoading(model, fraction) {
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = fraction;
  bar.setAttribute("aria-label", `Loading ${model}`);
  el.status.replaceChildren(`Loading ${model}… ${Math.floor(fraction * 100)}%`, bar);
  el.status.hidden = false;
  el.status.dataset.kind = "info";
}

function explain(err) {
  if (err instanceof ApiError) {
    switch (err.kind) {
      case "down":
        return `The r1local server at ${location.host} cannot be reached: ${err.message}. ` +
               "Is “r1local serve” still running?";
      case "auth":
        return "The server refused the API key. Enter the key “r1local serve --api-key” was " +
               "started with.";
      case "context":
        return `The conversation no longer fits the model's context: ${err.message}. ` +
               "Start a new chat, or raise Context in Settings.";
      default:
        return `The server answered: ${err.message}`;
    }
  }
  return `Unexpected error: ${err.message || err}`;
}

function askForKey(reason) {
  if (reason) el.keyReason.textContent = reason;
  el.keyInput.value = apiKey();
  if (!el.keyDialog.open) el.keyDialog.showModal();
}

// ---- models --------------------------------------------------------------------------

async function loadModels() {
  let tags;
  try {
    tags = await getJson("/api/tags");
  } catch (err) {
    state.serverDown = err.kind === "down";
    showStatus(explain(err), "error");
    if (err.kind === "auth") askForKey(explain(err));
    if (state.serverDown) setTimeout(loadModels, RETRY_MS);
    return;
  }
  if (state.serverDown) showStatus("");
  state.serverDown = false;
  let verdicts = {};
  try {
    for (const v of (await getJson("/web/models")).models) verdicts[v.name] = v;
  } catch { verdicts = {}; }  // an older server: no verdicts, every model selectable
  state.models = tags.models.map((m) => ({ name: m.name, details: m.details,
                                           verdict: verdicts[m.name] }));
  el.model.replaceChildren(...state.models.map((m) => {
    const option = document.createElement("option");
    option.value = m.name;
    const fits = !m.verdict || m.verdict.fits;
    option.textContent = fits ? m.name : `${m.name} (does not fit)`;
    option.dataset.fits = String(fits);
    if (m.verdict) option.title = `${m.verdict.placement}: ${m.verdict.reason}`;
    return option;
  }));
  if (!state.models.length) {
    el.modelNote.textContent = "No models in the store: “r1local pull 7b” fetches one.";
    return;
  }
  const wanted = state.current?.model;
  const firstFit = state.models.find((m) => !m.verdict || m.verdict.fits) || state.models[0];
  el.model.value = state.models.some((m) => m.name === wanted) ? wanted : firstFit.name;
  noteModel();
}

function noteModel() {
  const m = state.models.find((x) => x.name === el.model.value);
  const v = m?.verdict;
  el.modelNote.dataset.fits = String(!v || v.fits);
  el.modelNote.textContent = !v ? "" : v.fits
    ? `${v.placement}, context ${v.context}`
    : `Does not fit this machine: ${v.reason}`;
}

// ---- conversations -------------------------------------------------------------------

function persist() {
  store.saveAll(state.conversations);
}

function selectConversation(conv) {
  state.current = conv;
  store.setCurrentId(conv.id);
  if (conv.model && state.models.some((m) => m.name === conv.model)) {
    el.model.value = conv.model;
    noteModel();
  }
  renderList();
  renderMessages();
}

function newConversation() {
  const conv = store.create(el.model.value);
  state.conversations.unshift(conv);
  persist();
  selectConversation(conv);
  el.prompt.focus();
}

function renderList() {
  el.list.replaceChildren(...state.conversations.map((conv) => {
    const li = document.createElement("li");
    li.className = conv === state.current ? "current" : "";
    const open = button(conv.title, () => { selectConversation(conv); closeSidebar(); },
                        "conv-title");
    if (conv === state.current) open.setAttribute("aria-current", "true");
    const rename = button("✎", () => {
      const title = prompt("New name for this chat", conv.title);
      if (title && title.trim()) { conv.title = title.trim(); persist(); renderList(); }
    }, "small");
    rename.setAttribute("aria-label", `Rename ${conv.title}`);
    rename.title = "Rename";
    const remove = button("✕", () => {
      if (!confirm(`Delete "${conv.title}"?`)) return;
      state.conversations = state.conversations.filter((c) => c !== conv);
      persist();
      if (conv === state.current) {
        if (state.conversations.length) selectConversation(state.conversations[0]);
        else newConversation();
      } else renderList();
    }, "small");
    remove.setAttribute("aria-label", `Delete ${conv.title}`);
    remove.title = "Delete";
    li.append(open, rename, remove);
    return li;
  }));
}

function button(label, onClick, className = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

// ---- messages ------------------------------------------------------------------------

function renderMessages() {
  el.messages.replaceChildren(...state.current.messages.map((m, i) => messageView(m, i)));
  el.messages.scrollTop = el.messages.scrollHeight;
}

function messageView(m, index) {
  const article = document.createElement("article");
  article.className = `message ${m.role}`;
  article.dataset.index = String(index);
  if (m.role === "user") {
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = m.content;
    const tools = document.createElement("div");
    tools.className = "tools";
    tools.append(button("Edit", () => editTurn(article, index), "small"));
    article.append(body, tools);
    return article;
  }
  const view = assistantView(article);
  fillAssistant(view, m, { streaming: false });
  if (index === state.current.messages.length - 1) {
    view.tools.append(button("Regenerate", () => regenerate(), "small"));
  }
  return article;
}

function assistantView(article) {
  const thinking = document.createElement("details");
  thinking.className = "thinking";
  const summary = document.createElement("summary");
  const thinkingText = document.createElement("div");
  thinkingText.className = "thinking-text";
  thinking.append(summary, thinkingText);
  thinking.hidden = true;
  const answer = document.createElement("div");
  answer.className = "body answer";
  const meta = document.createElement("div");
  meta.className = "meta";
  const error = document.createElement("div");
  error.className = "error";
  error.setAttribute("role", "alert");
  error.hidden = true;
  const tools = document.createElement("div");
  tools.className = "tools";
  article.append(thinking, answer, error, meta, tools);
  return { article, thinking, summary, thinkingText, answer, meta, error, tools };
}

// live: "Thinking… 3 s", counted from the first piece of reasoning; then "Thought for 3.2 s"
function thoughtLabel(m, streaming, thinkingFor) {
  if (streaming && m.thoughtSeconds == null) return `Thinking… ${Math.floor(thinkingFor)} s`;
  const s = m.thoughtSeconds ?? 0;
  return `Thought for ${s < 10 ? s.toFixed(1) : Math.round(s)} s${m.stopped && !m.content ? " (stopped)" : ""}`;
}

function fillAssistant(view, m, { streaming, thinkingFor = 0 }) {
  if (m.thinking) {
    view.thinking.hidden = false;
    view.thinkingText.textContent = m.thinking;
    view.summary.textContent = thoughtLabel(m, streaming, thinkingFor);
    view.thinking.open = streaming && m.thoughtSeconds == null;
  }
  renderInto(view.answer, m.content || "");
  view.meta.textContent = m.stats ? statsLine(m.stats) : "";
  view.error.hidden = !m.error;
  view.error.textContent = m.error || "";
}

function statsLine(s) {
  const parts = [`${s.eval_count} tokens`];
  if (s.tok_s) parts.push(`${s.tok_s.toFixed(1)} tok/s`);
  if (s.ctx_used) parts.push(`context ${s.ctx_used}${s.ctx_size ? ` of ${s.ctx_size}` : ""}`);
  return parts.join(" · ");
}

// ---- sending -------------------------------------------------------------------------

function requestBody(conv) {
  const s = conv.settings;
  const messages = [];
  if (s.system) messages.push({ role: "system", content: s.system });
  for (const m of conv.messages) {
    if (m.role === "user" || (m.role === "assistant" && m.content)) {
      messages.push({ role: m.role, content: m.content });
    }
  }
  const options = {};
  for (const key of ["temperature", "top_p", "num_ctx", "num_predict", "think_budget"]) {
    if (s[key] !== null && s[key] !== "" && s[key] !== undefined) options[key] = Number(s[key]);
  }
  const body = { model: conv.model, messages, options };
  if (options.think_budget === 0) body.think = false;  // no reasoning at all
  return body;
}

async function loadedModels() {
  try {
    return (await getJson("/api/ps")).models;
  } catch {
    return null;
  }
}

function slotOf(ps, model) {
  return ps?.find((p) => p.name === model || p.model === model);
}

async function contextSize(conv) {
  if (conv.settings.num_ctx) return Number(conv.settings.num_ctx);
  const slot = slotOf(await loadedModels(), conv.model);
  return slot ? slot.default_context_length || slot.context_length : 0;
}

// Whether this reply has to load the model first: not loaded, or a larger context asked for
function needsLoad(ps, conv) {
  if (!ps) return false;  // /api/ps unanswered: the chat request will say why
  const slot = slotOf(ps, conv.model);
  const want = Number(conv.settings.num_ctx) || 0;
  return !slot || want > slot.context_length;
}

// Show the model's load, each fraction llama.cpp reports, until its stream ends (the first
// piece of the reply can come a moment before the load's last line). ``phase()``: "waiting",
// "answering" or "finished" (then nothing more is shown).
function followLoad(model, signal, phase) {
  showLoading(model, 0);
  return watchLoad(model, {
    signal,
    onProgress(fraction) { if (phase() !== "finished") showLoading(model, fraction); },
  }).then((last) => {
    if (phase() === "finished" || el.status.dataset.kind !== "info") return;
    showStatus(last?.loaded && phase() === "waiting" ? `${model} is loaded; the reply starts…` : "");
  });
}

async function generate() {
  const conv = state.current;
  conv.model = el.model.value;
  if (!conv.model) {
    showStatus("Choose a model first (none is in the store: “r1local pull 7b”).", "error");
    return;
  }
  const reply = { role: "assistant", content: "", thinking: "", model: conv.model };
  conv.messages.push(reply);
  conv.updated = Date.now();
  persist();
  renderMessages();
  const article = el.messages.lastElementChild;
  article.replaceChildren();
  const view = assistantView(article);
  setBusy(true);

  const controller = new AbortController();
  state.controller = controller;
  const loadController = new AbortController();
  let phase = "waiting";
  let loadShown = false;  // the status line belongs to the load until its stream ends
  const loading = needsLoad(await loadedModels(), conv)
    ? followLoad(conv.model, loadController.signal, () => phase) : null;
  if (loading) {
    loadShown = true;
    loading.then(() => { loadShown = false; });
  }
  const started = performance.now();
  let thinkingStarted = null;
  let frame = 0;
  const thinkingFor = () => (performance.now() - (thinkingStarted ?? started)) / 1000;
  const redraw = () => {
    frame = 0;
    fillAssistant(view, reply, { streaming: true, thinkingFor: thinkingFor() });
    el.messages.scrollTop = el.messages.scrollHeight;
  };
  const ticker = setInterval(() => {  // the counter moves while the model reasons
    if (reply.thinking && reply.thoughtSeconds == null) {
      view.summary.textContent = thoughtLabel(reply, true, thinkingFor());
    }
  }, TICK_MS);
  try {
    const final = await streamChat(requestBody(conv), {
      signal: controller.signal,
      onPiece(thinking, content) {
        if (phase === "waiting" && !loadShown && el.status.dataset.kind === "info") showStatus("");
        phase = "answering";
        if (thinking) {
          thinkingStarted ??= performance.now();
          reply.thinking += thinking;
        }
        if (content) {
          if (reply.thinking && reply.thoughtSeconds == null) {
            reply.thoughtSeconds = thinkingFor();
          }
          reply.content += content;
        }
        frame ||= requestAnimationFrame(redraw);
      },
    });
    const seconds = final.eval_duration / 1e9;
    reply.stats = {
      eval_count: final.eval_count, prompt_eval_count: final.prompt_eval_count,
      tok_s: seconds > 0 ? final.eval_count / seconds : 0,
      ctx_used: (final.prompt_eval_count || 0) + (final.eval_count || 0),
      ctx_size: await contextSize(conv),
    };
    reply.done_reason = final.done_reason;
    if (final.done_reason === "length") reply.error = lengthMessage(conv, reply);
  } catch (err) {
    if (err.name === "AbortError") {
      reply.stopped = true;
      reply.error = "Stopped.";
    } else {
      reply.error = explain(err);
      if (err.kind === "auth") askForKey(reply.error);
      if (err.kind === "down") {  // say it at the top too, and look for the server again
        showStatus(reply.error, "error");
        state.serverDown = true;
        setTimeout(loadModels, RETRY_MS);
      }
    }
  } finally {
    clearInterval(ticker);
    if (frame) cancelAnimationFrame(frame);
    if (reply.thinking && reply.thoughtSeconds == null) reply.thoughtSeconds = thinkingFor();
    phase = "finished";  // no load line may show after this
    if (loading) {  // a load that failed or never began: stop following it, soon
      Promise.race([loading, new Promise((r) => { setTimeout(r, LOAD_GRACE_MS); })])
        .then(() => loadController.abort());
    }
    state.controller = null;
    if (el.status.dataset.kind === "info") showStatus("");
    setBusy(false);
    conv.updated = Date.now();
    persist();
    renderMessages();
  }
}

function lengthMessage(conv, reply) {
  const limit = Number(conv.settings.num_predict);
  if (limit && reply.stats.eval_count >= limit) {
    return `The reply reached the limit of ${limit} tokens (Max reply tokens in Settings).`;
  }
  return `The context is full (${reply.stats.ctx_used} tokens): the reply was cut off. ` +
         "Start a new chat, or raise Context in Settings.";
}

function setBusy(busy) {
  el.send.hidden = busy;
  el.stop.hidden = !busy;
  el.prompt.setAttribute("aria-busy", String(busy));
}

function stop() {
  state.controller?.abort();
}

function send(text) {
  if (state.controller || !text.trim()) return;
  const conv = state.current;
  conv.messages.push({ role: "user", content: text });
  if (conv.title === "New chat") conv.title = store.titleFrom(text);
  persist();
  renderList();
  generate();
}

function regenerate() {
  if (state.controller) return;
  const msgs = state.current.messages;
  if (msgs.length && msgs[msgs.length - 1].role === "assistant") msgs.pop();
  generate();
}

function editTurn(article, index) {
  if (state.controller) return;
  const m = state.current.messages[index];
  const area = document.createElement("textarea");
  area.value = m.content;
  area.rows = Math.min(10, m.content.split("\n").length + 1);
  area.setAttribute("aria-label", "Edit your message");
  const save = button("Save and send", () => {
    if (!area.value.trim()) return;
    state.current.messages.splice(index);  // this turn and every reply after it
    send(area.value);
  });
  const cancel = button("Cancel", () => renderMessages());
  area.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); save.click(); }
    if (e.key === "Escape") { e.preventDefault(); cancel.click(); }
  });
  article.replaceChildren(area, cancel, save);
  area.focus();
}

// ---- settings dialog -----------------------------------------------------------------

function openSettings() {
  const s = state.current.settings;
  for (const [key, id] of Object.entries(SETTING_INPUTS)) $(id).value = s[key] ?? "";
  el.settings.showModal();
}

function readSettings() {
  const s = state.current.settings;
  for (const [key, id] of Object.entries(SETTING_INPUTS)) {
    const v = $(id).value;
    s[key] = key === "system" ? v : (v === "" ? null : Number(v));
  }
  persist();
}

// ---- sidebar (a drawer at phone width) -------------------------------------------------

function closeSidebar() {
  el.sidebar.classList.remove("open");
  el.toggleSidebar.setAttribute("aria-expanded", "false");
}

// ---- start ---------------------------------------------------------------------------

function wire() {
  el.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = el.prompt.value;
    if (!text.trim() || state.controller) return;
    el.prompt.value = "";
    send(text);
  });
  el.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      el.composer.requestSubmit();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    if (state.controller) { e.preventDefault(); stop(); } else closeSidebar();
  });
  $("close-sidebar").addEventListener("click", () => { closeSidebar(); el.toggleSidebar.focus(); });
  el.stop.addEventListener("click", stop);
  el.model.addEventListener("change", () => {
    state.current.model = el.model.value;
    persist();
    noteModel();
  });
  $("new-chat").addEventListener("click", () => { newConversation(); closeSidebar(); });
  $("open-settings").addEventListener("click", openSettings);
  el.settings.addEventListener("close", readSettings);
  el.keyDialog.addEventListener("close", () => {
    if (el.keyDialog.returnValue === "save" && el.keyInput.value) {
      setApiKey(el.keyInput.value.trim());
      showStatus("");
      loadModels();
    }
  });
  $("export-json").addEventListener("click", () => store.download(
    store.fileName(state.current, "json"), JSON.stringify(state.current, null, 2),
    "application/json"));
  $("export-md").addEventListener("click", () => store.download(
    store.fileName(state.current, "md"), store.toMarkdown(state.current), "text/markdown"));
  el.toggleSidebar.addEventListener("click", () => {
    const open = el.sidebar.classList.toggle("open");
    el.toggleSidebar.setAttribute("aria-expanded", String(open));
  });
}

function start() {
  wire();
  const saved = state.conversations.find((c) => c.id === store.currentId());
  if (saved) selectConversation(saved);
  else if (state.conversations.length) selectConversation(state.conversations[0]);
  else newConversation();
  loadModels();
  el.prompt.focus();
}

start();
