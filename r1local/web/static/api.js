// The server's own APIs, same origin: Ollama's /api/chat stream (NDJSON; the reasoning
// arrives in message.thinking, apart from message.content), /api/tags, /api/ps, and
// /web/models (the planner's verdict per store model).

const KEY = "r1local.apiKey";

export class ApiError extends Error {
  constructor(kind, message, status = 0) {
    super(message);
    this.kind = kind;  // "down" | "auth" | "context" | "http" | "stream"
    this.status = status;
  }
}

export function apiKey() { return localStorage.getItem(KEY) || ""; }
export function setApiKey(key) { localStorage.setItem(KEY, key); }

function headers(extra = {}) {
  const key = apiKey();
  return { ...extra, ...(key ? { Authorization: `Bearer ${key}` } : {}) };
}

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = typeof body.error === "string" ? body.error : body.error?.message || message;
  } catch { /* not JSON: keep the status line */ }
  if (response.status === 401) return new ApiError("auth", message, 401);
  if (response.status === 400 && /context/i.test(message)) {
    return new ApiError("context", message, 400);
  }
  return new ApiError("http", message, response.status);
}

async function call(path, init = {}) {
  let response;
  try {
    response = await fetch(path, { ...init, headers: headers(init.headers) });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("down", "no answer on the network");
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function getJson(path) {
  return (await call(path)).json();
}

/**
 * Stream one chat reply. ``onPiece(thinking, content)`` gets each piece as it comes;
 * resolves with the final line (done_reason, counts, durations).
 */
export async function streamChat(body, { signal, onPiece }) {
  const response = await call("/api/chat", {
    method: "POST", body: JSON.stringify({ ...body, stream: true }), signal,
    headers: { "Content-Type": "application/json" },
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  let final = null;
  const handle = (line) => {
    if (!line.trim()) return;
    const obj = JSON.parse(line);
    if (obj.error) throw new ApiError(/context/i.test(obj.error) ? "context" : "stream", obj.error);
    const msg = obj.message || {};
    if (msg.thinking || msg.content) onPiece(msg.thinking || "", msg.content || "");
    if (obj.done) final = obj;
  };
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError("down", "the connection to the server was lost");
    }
    if (chunk.done) break;
    buffered += decoder.decode(chunk.value, { stream: true });
    const lines = buffered.split("\n");
    buffered = lines.pop();
    lines.forEach(handle);
  }
  handle(buffered);
  if (!final) throw new ApiError("down", "the reply ended early: the server may have stopped");
  return final;
}
