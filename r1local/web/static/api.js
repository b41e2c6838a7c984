// The server's own APIs, same origin: Ollama's /api/chat stream (NDJSON; the reasoning
// arrives in message.thinking, apart from message.content), /api/tags, /api/ps,
// /web/models (the planner's verdict per model) and /web/loading (a model's load progress).

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

// Call ``handle`` with each line of an NDJSON body as it arrives. A lost connection rejects
// with ApiError "down", an abort with its AbortError, ``handle``'s own errors as they are.
async function eachLine(response, handle) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
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
    lines.forEach((line) => line.trim() && handle(JSON.parse(line)));
  }
  if (buffered.trim()) handle(JSON.parse(buffered));
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
  let final = null;
  await eachLine(response, (obj) => {
    if (obj.error) throw new ApiError(/context/i.test(obj.error) ? "context" : "stream", obj.error);
    const msg = obj.message || {};
    if (msg.thinking || msg.content) onPiece(msg.thinking || "", msg.content || "");
    if (obj.done) final = obj;
  });
  if (!final) throw new ApiError("down", "the reply ended early: the server may have stopped");
  return final;
}

/**
 * Follow a model's load (/web/loading): ``onProgress(fraction)`` for each fraction
 * llama.cpp reports; resolves with the last line ({done, loaded, progress, error?}), or
 * null when there is none (the chat request itself says what went wrong).
 */
export async function watchLoad(model, { signal, onProgress }) {
  let last = null;
  try {
    const response = await call(`/web/loading?model=${encodeURIComponent(model)}`, { signal });
    await eachLine(response, (obj) => {
      if (obj.done) last = obj;
      else if (typeof obj.progress === "number") onProgress(obj.progress);
    });
  } catch { /* aborted, refused or cut: the chat request reports what matters */ }
  return last;
}
