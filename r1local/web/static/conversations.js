// Conversations live in this browser's localStorage, one JSON list; nothing is sent
// anywhere but the prompt itself.

const KEY = "r1local.conversations";
const CURRENT = "r1local.current";

export const DEFAULT_SETTINGS = Object.freeze({
  system: "", temperature: null, top_p: null, think_budget: null, num_ctx: null,
  num_predict: null,
});

function newId() {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

export function loadAll() {
  try {
    const list = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];  // a damaged entry: start afresh rather than break the page
  }
}

export function saveAll(list) {
  localStorage.setItem(KEY, JSON.stringify(list));
}

export function currentId() { return localStorage.getItem(CURRENT); }
export function setCurrentId(id) { localStorage.setItem(CURRENT, id); }

export function create(model) {
  const now = Date.now();
  return { id: newId(), title: "New chat", created: now, updated: now, model: model || "",
           settings: { ...DEFAULT_SETTINGS }, messages: [] };
}

/** A title from the first question: its first line, cut at 48 characters. */
export function titleFrom(text) {
  const line = text.trim().split("\n")[0];
  return line.length > 48 ? `${line.slice(0, 47)}…` : line || "New chat";
}

export function toMarkdown(conv) {
  const parts = [`# ${conv.title}`, ""];
  if (conv.settings.system) parts.push(`**System:** ${conv.settings.system}`, "");
  for (const m of conv.messages) {
    if (m.role === "user") {
      parts.push("## You", "", m.content, "");
    } else {
      parts.push(`## ${conv.model || "Assistant"}`, "");
      if (m.thinking) {
        parts.push("<details><summary>Reasoning</summary>", "", m.thinking, "", "</details>", "");
      }
      parts.push(m.content, "");
    }
  }
  return parts.join("\n");
}

export function download(filename, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function fileName(conv, ext) {
  const base = conv.title.replace(/[^\w.-]+/g, "-").replace(/^-+|-+$/g, "") || "chat";
  return `${base.slice(0, 60)}.${ext}`;
}
