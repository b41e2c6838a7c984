"""The interactive chat: line editor, slash commands, history, context management.

Generation runs in a worker thread and this thread only renders: Ctrl-C then just sets
the engine's cancel event (llama.cpp is never interrupted half-way through a call), and
the prompt comes back as soon as the current token is done.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.markup import escape

from r1local.chat_view import NOTE_STYLE, ReplyView
from r1local.engine import Engine, GenerationSettings
from r1local.errors import R1LocalError
from r1local.units import fmt_bytes

PROMPT = ">>> "
CONTINUE = "... "
MULTILINE = '"""'

HELP = """\
/set temperature X | top_p X | top_k N | seed N|off | think-budget N|off
/set system TEXT | system off | context N      change a setting
/set samples K        answer K times at once and show the majority answer (1: off)
/think show|hide      show the reasoning after it ends, or only "Thought for …"
/show                 the model, how it was loaded, and the settings
/stats                speed and context use of the last reply
/retry                answer the last message again
/clear                forget the conversation
/save FILE, /load FILE  keep a conversation as JSON, and bring it back
/bye                  leave (also Ctrl-D)
Start and end a message with \"\"\" to write several lines. Ctrl-C stops a reply."""

# /set names -> GenerationSettings fields (both spellings accepted)
SET_FIELDS = {"temperature": "temperature", "temp": "temperature", "top_p": "top_p",
              "top-p": "top_p", "top_k": "top_k", "top-k": "top_k", "seed": "seed",
              "think-budget": "think_budget", "think_budget": "think_budget",
              "min_p": "min_p", "repeat_penalty": "repeat_penalty"}
INT_FIELDS = {"top_k", "seed", "think_budget"}
OPTIONAL_FIELDS = {"seed", "think_budget"}  # "off" clears them

# Keep this much of the context free for the reply when deciding to drop old turns.
REPLY_RESERVE_FRACTION = 4


class Repl:
    def __init__(self, engine: Engine, settings: GenerationSettings, *, console: Console | None = None,
                 system: str | None = None, show_thinking: bool = True,
                 reload: Callable[..., Engine] | None = None, describe: str = "",
                 history_path: Path | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.console = console or Console(highlight=False)
        self.system = system
        self.show_thinking = show_thinking
        self.reload = reload
        self.describe = describe
        self.history_path = history_path
        self.messages: list[dict] = []
        self.samples = 1  # /set samples K: K replies decoded together, the majority kept
        self.last_user: str | None = None
        self._session = None

    # ---- input -----------------------------------------------------------------------

    def _read_line(self, prompt: str) -> str:
        if self._session is None and sys.stdin.isatty() and sys.stdout.isatty():
            from prompt_toolkit import PromptSession
            from prompt_toolkit.history import FileHistory, InMemoryHistory

            history = InMemoryHistory()
            if self.history_path is not None:
                try:
                    self.history_path.parent.mkdir(parents=True, exist_ok=True)
                    history = FileHistory(str(self.history_path))
                except OSError:
                    pass  # an unwritable home must not stop the chat
            self._session = PromptSession(history=history)
        if self._session is not None:
            return self._session.prompt(prompt)
        return input(prompt)

    def read_message(self) -> str | None:
        """One message (several lines between \"\"\"), or None at end of input."""
        try:
            line = self._read_line(PROMPT)
        except EOFError:
            return None
        if not line.lstrip().startswith(MULTILINE):
            return line
        body = line.lstrip()[len(MULTILINE):]
        if body.rstrip().endswith(MULTILINE) and body.strip() != "":
            return body.rstrip()[: -len(MULTILINE)]
        lines = [body] if body else []
        while True:
            try:
                more = self._read_line(CONTINUE)
            except EOFError:
                break
            if more.rstrip().endswith(MULTILINE):
                lines.append(more.rstrip()[: -len(MULTILINE)])
                break
            lines.append(more)
        return "\n".join(lines).strip("\n")

    # ---- the loop --------------------------------------------------------------------

    def run(self) -> int:
        if self.describe:
            self.console.print(self.describe, style=NOTE_STYLE, soft_wrap=True)
        self.console.print("Type a message, /help for commands, Ctrl-D to leave.", style=NOTE_STYLE)
        while True:
            try:
                text = self.read_message()
            except KeyboardInterrupt:
                self.console.print("(Ctrl-D or /bye to leave)", style=NOTE_STYLE)
                continue
            if text is None:
                self.console.print()
                return 0
            if not text.strip():
                continue
            if text.startswith("/"):
                try:
                    if not self.command(text.strip()):
                        return 0
                except R1LocalError as err:
                    self.console.print(f"error: {escape(str(err))}", style="red")
                continue
            self.last_user = text
            self.messages.append({"role": "user", "content": text})
            self.reply()

    def conversation(self) -> list[dict]:
        sys_msg = [{"role": "system", "content": self.system}] if self.system else []
        return sys_msg + [{"role": m["role"], "content": m["content"]} for m in self.messages]

    def _prompt_tokens(self) -> int:
        return self.engine.count_tokens(self.engine.format_chat(self.conversation()))

    def fit_context(self) -> bool:
        """Drop the oldest turns until the prompt leaves room for a reply."""
        limit = self.engine.n_ctx - self.engine.n_ctx // REPLY_RESERVE_FRACTION
        dropped = 0
        while self._prompt_tokens() > limit and len(self.messages) > 1:
            self.messages.pop(0)
            while self.messages and self.messages[0]["role"] != "user":
                self.messages.pop(0)
            dropped += 1
        if dropped:
            self.console.print(f"context is full: dropped the {dropped} oldest message(s)",
                               style="yellow")
        if not self.messages or self._prompt_tokens() > limit:
            n = self._prompt_tokens()
            self.console.print(f"this message is {n} tokens; the context holds {self.engine.n_ctx}"
                               " (shorten it or /set context N)", style="red")
            if self.messages:
                self.messages.pop()
            return False
        return True

    def reply(self) -> None:
        if not self.fit_context():
            return
        view = ReplyView(self.console, show_thinking=self.show_thinking)
        q: queue.Queue = queue.Queue()
        cancel = threading.Event()
        convo = self.conversation()

        streams: list = []
        texts = [""] * self.samples  # each sample's answer (/set samples K)

        def work() -> None:
            try:
                if self.samples > 1:
                    streams.extend(self.engine.chat_samples(
                        convo, self.settings.for_samples(self.samples), cancel=cancel))
                else:
                    streams.append(self.engine.chat(convo, self.settings, cancel=cancel))
                for i, stream in enumerate(streams):
                    for chunk in stream:
                        if i == 0:  # the first sample is shown as it comes
                            q.put(chunk)
                        if chunk.kind == "answer":
                            texts[i] += chunk.text
            except BaseException as err:  # handed to the UI thread to report
                q.put(err)
            finally:
                q.put(None)

        worker = threading.Thread(target=work, name="r1local-generate", daemon=True)
        worker.start()
        error: BaseException | None = None
        interrupted = False
        while True:
            try:
                item = q.get(timeout=0.1)
                if item is None:
                    break
                if isinstance(item, BaseException):
                    error = item
                    continue
                view.feed(item.kind, item.text)
            except queue.Empty:
                continue
            except KeyboardInterrupt:
                interrupted = True
                cancel.set()
        worker.join()
        stats = getattr(streams[0], "stats", None) if streams else None
        stats = stats or self.engine.last_stats
        note = None
        if interrupted:
            note = "(stopped)"
        elif stats is not None and stats.finish_reason == "loop":
            note = "(stopped: the model was repeating itself)"
        elif stats is not None and stats.finish_reason == "length":
            limit = self.settings.max_tokens
            note = ("(stopped: reached the token limit)" if limit and stats.completion_tokens >= limit
                    else "(stopped: the context is full)")
        view.close(note)
        if error is not None:
            self.console.print(f"error: {escape(str(error))}", style="red")
        if self.samples > 1 and error is None and not interrupted:
            from r1local.vote import majority

            vote = majority(texts)
            self.console.print(f"majority of {self.samples} samples: {escape(vote.line())} "
                               f"(each: {', '.join(a or '-' for a in vote.answers)})",
                               style="bold")
            if vote.votes:  # the history keeps a reply that gave the majority answer
                view.answer = texts[vote.answers.index(vote.answer)]
        if view.answer.strip() or (view.thinking and not interrupted and error is None):
            self.messages.append({"role": "assistant", "content": view.answer.strip(),
                                  "thinking": view.thinking})
        elif self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()  # nothing came back: /retry asks again

    # ---- slash commands --------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run one slash command; False means leave."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        name = name.lower()
        if name in ("/bye", "/exit", "/quit"):
            return False
        if name in ("/help", "/?"):
            self.console.print(HELP, markup=False, highlight=False)
        elif name == "/clear":
            self.messages.clear()
            self.console.print("conversation cleared", style=NOTE_STYLE)
        elif name == "/set":
            self.set(rest)
        elif name == "/think":
            if rest not in ("show", "hide"):
                raise R1LocalError("use /think show or /think hide")
            self.show_thinking = rest == "show"
            self.console.print(f"reasoning: {rest}", style=NOTE_STYLE)
        elif name == "/show":
            self.show()
        elif name == "/stats":
            self.stats()
        elif name == "/save":
            self.save(self._file_arg(rest))
        elif name == "/load":
            self.load(self._file_arg(rest))
        elif name == "/retry":
            if self.messages and self.messages[-1]["role"] == "assistant":
                self.messages.pop()
            if not self.messages and self.last_user is None:
                raise R1LocalError("nothing to retry yet")
            if not self.messages or self.messages[-1]["role"] != "user":
                self.messages.append({"role": "user", "content": self.last_user})
            self.reply()
        else:
            raise R1LocalError(f"unknown command {name}; /help lists them")
        return True

    @staticmethod
    def _file_arg(rest: str) -> Path:
        if not rest:
            raise R1LocalError("give a file name, e.g. /save chat.json")
        parts = shlex.split(rest)
        return Path(parts[0]).expanduser()

    def set(self, rest: str) -> None:
        key, _, value = rest.partition(" ")
        key, value = key.strip().lower(), value.strip()
        if key == "system":
            self.system = None if value in ("", "off") else value
            self.console.print("system prompt " + ("cleared" if self.system is None else "set")
                               + (" (folded into the first message, as DeepSeek advises)"
                                  if self.system and self.engine.is_reasoning else ""),
                               style=NOTE_STYLE)
            return
        if key in ("context", "ctx", "num_ctx"):
            self._set_context(value)
            return
        if key == "samples":
            self._set_samples(value)
            return
        field = SET_FIELDS.get(key)
        if field is None:
            raise R1LocalError(f"cannot set '{key}'; settable: temperature, top_p, top_k, seed, "
                               "think-budget, system, context, samples")
        if field in OPTIONAL_FIELDS and value.lower() in ("off", "none", ""):
            setattr(self.settings, field, None)
        else:
            try:
                parsed = int(value) if field in INT_FIELDS else float(value)
            except ValueError:
                raise R1LocalError(f"{key} needs a number, not '{value}'") from None
            if field in ("temperature", "top_p", "min_p") and parsed < 0:
                raise R1LocalError(f"{key} must be >= 0")
            setattr(self.settings, field, parsed)
        self.console.print(f"{key} = {getattr(self.settings, field)}", style=NOTE_STYLE)

    def _set_context(self, value: str) -> None:
        try:
            n = int(value)
        except ValueError:
            raise R1LocalError(f"context needs a number of tokens, not '{value}'") from None
        if n < 256:
            raise R1LocalError("context must be at least 256 tokens")
        if self.reload is None:
            raise R1LocalError("this session cannot reload the model")
        self.console.print(f"reloading with a context of {n} tokens…", style=NOTE_STYLE)
        sequences = self.engine.n_parallel  # /set samples' sequences stay
        self.engine.close()
        self.engine = self.reload(n, sequences) if sequences > 1 else self.reload(n)
        self.console.print(f"context = {self.engine.n_ctx}", style=NOTE_STYLE)

    def _set_samples(self, value: str) -> None:
        from r1local.batching import MAX_PARALLEL

        try:
            k = int(value)
        except ValueError:
            raise R1LocalError(f"samples needs a number, not '{value}'") from None
        if not 1 <= k <= MAX_PARALLEL:
            raise R1LocalError(f"samples must be 1 to {MAX_PARALLEL}")
        if k > self.engine.n_parallel:  # the engine must hold k sequences: load it so once
            if self.reload is None:
                raise R1LocalError("this session cannot reload the model")
            n_ctx = self.engine.n_ctx
            self.console.print(f"reloading for {k} sequences of {n_ctx} tokens…",
                               style=NOTE_STYLE)
            self.engine.close()
            self.engine = self.reload(n_ctx, k)
        self.samples = k
        self.console.print(f"samples = {k}", style=NOTE_STYLE)

    def show(self) -> None:
        e = self.engine
        lines = [f"model      {e.name}", f"file       {e.path}",
                 f"reasoning  {'yes (<think> split out)' if e.is_reasoning else 'no'}",
                 f"context    {e.n_ctx} tokens, KV cache {e.kv_type}"
                 + (", flash attention" if e.flash_attn else ""),
                 f"threads    {e.n_threads}", f"GPU layers {e.n_gpu_layers}"]
        plan = e.plan
        if plan is not None:
            lines.append(f"plan       {plan.placement}, "
                         f"RAM {fmt_bytes(plan.ram_bytes)}, VRAM {fmt_bytes(plan.vram_bytes)}, "
                         f"~{plan.tok_s_low:.0f}-{plan.tok_s_high:.0f} tok/s, "
                         f"{plan.answer_reserve} tokens kept for the answer")
        s = self.settings
        lines.append(f"settings   temperature {s.temperature}, top_p {s.top_p}, top_k {s.top_k}, "
                     f"seed {s.seed if s.seed is not None else 'random'}, think-budget "
                     f"{s.think_budget if s.think_budget is not None else 'off'}")
        lines.append(f"system     {self.system if self.system else '(none)'}")
        lines.append(f"messages   {len(self.messages)}")
        self.console.print("\n".join(lines), markup=False, highlight=False)

    def stats(self) -> None:
        st = self.engine.last_stats
        if st is None:
            self.console.print("no reply yet", style=NOTE_STYLE)
            return
        used = self.engine.context_used
        self.console.print(
            f"prompt   {st.prompt_tokens} tokens ({st.prompt_eval_tokens} evaluated) "
            f"at {st.prompt_tok_s:.1f} tok/s\n"
            f"reply    {st.completion_tokens} tokens ({st.thinking_tokens} reasoning) "
            f"at {st.decode_tok_s:.1f} tok/s, first token after {st.ttft_seconds:.2f} s\n"
            f"finish   {st.finish_reason}\n"
            f"context  {used} of {self.engine.n_ctx} tokens ({100 * used / self.engine.n_ctx:.0f}%)",
            markup=False, highlight=False)

    def save(self, path: Path) -> None:
        data = {"model": self.engine.name, "system": self.system,
                "settings": asdict(self.settings), "messages": self.messages}
        tmp = path.with_name(path.name + ".partial")
        try:
            tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as err:
            raise R1LocalError(f"cannot write {path}: {err.strerror}") from None
        self.console.print(f"saved {len(self.messages)} messages to {path}", style=NOTE_STYLE)

    def load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise R1LocalError(f"{path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise R1LocalError(f"{path} is not a saved conversation ({err})") from None
        msgs = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(msgs, list) or not all(
                isinstance(m, dict) and m.get("role") in ("user", "assistant")
                and isinstance(m.get("content"), str) for m in msgs):
            raise R1LocalError(f"{path} is not a saved conversation (no valid 'messages' list)")
        self.messages = [dict(m) for m in msgs]
        system = data.get("system")
        self.system = system if isinstance(system, str) and system else None
        self.last_user = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), None)
        self.console.print(f"loaded {len(msgs)} messages from {path}", style=NOTE_STYLE)
