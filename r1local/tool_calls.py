"""Tool calls: tool definitions into the prompt, calls out of the answer.

Pure Python over text (no llama.cpp), shared by the engine (prompt side) and the server
(reply side). Two families of models write calls in two ways:

- the DeepSeek R1 family: `<｜tool▁calls▁begin｜>` then, per call,
  `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME` + a ```json fenced arguments object +
  `<｜tool▁call▁end｜>`, then `<｜tool▁calls▁end｜>`. Its chat template renders neither the
  tool definitions nor (correctly) earlier calls, so both are written here;
- Qwen3 and its kin: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` per call; its
  template renders the definitions (`tools`), earlier calls and `tool` replies itself.

The table FAMILIES holds each family's markers; the functions below are the mechanics.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

R1, QWEN = "deepseek-r1", "qwen3"


@dataclass(frozen=True)
class ToolFamily:
    name: str
    detect: str  # text in a chat template that says the model is of this family
    start: str  # where the first call begins (what the reply is split at)
    call_begin: str
    call_end: str
    calls_end: str = ""  # after the last call (R1 only)
    name_sep: str = ""  # R1: between "function" and the name
    template_renders_tools: bool = False


FAMILIES: tuple[ToolFamily, ...] = (
    ToolFamily(name=R1, detect="<｜tool▁calls▁begin｜>", start="<｜tool▁calls▁begin｜>",
               call_begin="<｜tool▁call▁begin｜>", call_end="<｜tool▁call▁end｜>",
               calls_end="<｜tool▁calls▁end｜>", name_sep="<｜tool▁sep｜>"),
    ToolFamily(name=QWEN, detect="<tool_call>", start="<tool_call>", call_begin="<tool_call>",
               call_end="</tool_call>", template_renders_tools=True),
)
R1_CALL_TYPE = "function"  # the word R1 writes before <｜tool▁sep｜>
JSON_FENCE_OPEN, JSON_FENCE_CLOSE = "```json\n", "\n```"

# How the R1 family is told about its tools (its template has no place for them): the
# exact shape of a call, then each tool with its JSON-schema parameters.
R1_TOOLS_INTRO = ("You can call tools. To call one, reply with exactly this (one "
                  "<｜tool▁call▁begin｜>…<｜tool▁call▁end｜> block per call, several for "
                  "parallel calls, one per line):")
R1_TOOLS_LIST = "Tools:"
MUST_CALL = "You must call a tool in this reply."
MUST_CALL_ONE = "You must call the tool `{name}` in this reply."


@dataclass
class ToolCall:
    name: str
    arguments: dict
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


class ToolError(ValueError):
    """Tool definitions or tool messages that cannot be put into a prompt."""


def family_of(chat_template: str | None) -> ToolFamily | None:
    """The tool-call family a chat template speaks, or None (no tool calls)."""
    for fam in FAMILIES:
        if chat_template and fam.detect in chat_template:
            return fam
    return None


# ---- the prompt side ----------------------------------------------------------------------

def check_tools(tools: Sequence[Any]) -> list[dict]:
    """OpenAI-style tool definitions ({"type": "function", "function": {name, description,
    parameters}}), as both APIs send them; returns them normalized."""
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise ToolError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ToolError(f"tools[{i}].function.name must be a non-empty string")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ToolError(f"tools[{i}].function.parameters must be a JSON schema object")
        out.append({"type": "function", "function": {
            "name": name, "description": str(fn.get("description") or ""),
            "parameters": _canonical(params)}})
    return out


def _canonical(schema: Any) -> Any:
    """A schema with its keys in one order, so that the prompt does not depend on the
    client (Ollama's puts "required" before "properties", OpenAI's keeps the caller's
    order); the order of the properties themselves, which tells the model the order of
    the arguments, stays."""
    if isinstance(schema, list):
        return [_canonical(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key in sorted(schema):
        value = schema[key]
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _canonical(sub) for name, sub in value.items()}
        else:
            out[key] = _canonical(value)
    return out


def r1_call_text(calls: Sequence[ToolCall]) -> str:
    """The exact text an R1 model writes for these calls."""
    f = FAMILIES[0]
    body = "\n".join(f"{f.call_begin}{R1_CALL_TYPE}{f.name_sep}{c.name}\n{JSON_FENCE_OPEN}"
                     f"{c.arguments_json()}{JSON_FENCE_CLOSE}{f.call_end}" for c in calls)
    return f"{f.start}{body}{f.calls_end}"


def qwen_call_text(calls: Sequence[ToolCall]) -> str:
    """The text a Qwen3-style model writes for these calls."""
    f = FAMILIES[1]
    return "\n".join(f"{f.call_begin}\n" + json.dumps({"name": c.name, "arguments": c.arguments},
                                                       ensure_ascii=False) + f"\n{f.call_end}"
                     for c in calls)


def r1_tools_prompt(tools: Sequence[dict], choice: str | None = None) -> str:
    example = r1_call_text([ToolCall("NAME", {"ARGUMENT": "VALUE"}, id="")])
    lines = [R1_TOOLS_INTRO, example, "", R1_TOOLS_LIST]
    for t in tools:
        fn = t["function"]
        desc = f": {fn['description']}" if fn["description"] else ""
        lines.append(f"- `{fn['name']}`{desc} Arguments (JSON schema): "
                     f"{json.dumps(fn['parameters'], ensure_ascii=False)}")
    must = must_call(choice)
    return "\n".join(lines + ([must] if must else []))


def must_call(choice: str | None) -> str:
    """What the prompt says for tool_choice "required" or a named function ("" for auto):
    said, not forced (no grammar holds the model to it)."""
    if choice == "required":
        return MUST_CALL
    return MUST_CALL_ONE.format(name=choice) if choice else ""


def _add_system(msgs: list[dict], text: str) -> None:
    if msgs and msgs[0].get("role") == "system":
        msgs[0]["content"] = f"{msgs[0].get('content') or ''}\n\n{text}".strip()
    else:
        msgs.insert(0, {"role": "system", "content": text})


def calls_from_message(raw: Any) -> list[ToolCall]:
    """An assistant message's earlier `tool_calls` (OpenAI: arguments as a JSON string;
    Ollama: as an object)."""
    out = []
    for i, c in enumerate(raw or []):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ToolError(f"tool_calls[{i}] must have a function with a name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise ToolError(f"tool_calls[{i}].function.arguments is not valid JSON") from None
        if not isinstance(args, dict):
            raise ToolError(f"tool_calls[{i}].function.arguments must be a JSON object")
        out.append(ToolCall(fn["name"], args, id=str(c.get("id") or "")))
    return out


def prepare(family: ToolFamily | None, messages: Sequence[dict], tools: Sequence[dict] | None,
            choice: str | None = None) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools for the template): the tool definitions and earlier calls placed
    the way the family expects. Messages carry `tool_calls` as ToolCall lists."""
    msgs = [dict(m) for m in messages]
    tools = check_tools(tools) if tools else None  # (normalized: one prompt per tool set)
    has_calls = any(m.get("tool_calls") for m in msgs) or any(m.get("role") == "tool" for m in msgs)
    if family is None:
        if tools or has_calls:
            raise ToolError("this model's chat template has no tool-call format r1local knows "
                            "(the DeepSeek R1 or the Qwen3 <tool_call> one)")
        return msgs, None
    if family.name == R1:
        for m in msgs:
            calls = m.pop("tool_calls", None)
            if m.get("role") == "assistant" and calls:
                # the template mangles tool_calls (a single call is never closed): the turn
                # is given as the very text the model wrote, which it renders as it is
                m["content"] = r1_call_text(calls)
        if tools:
            _add_system(msgs, r1_tools_prompt(tools, choice))
        return msgs, None
    for m in msgs:  # the template renders tool_calls itself, as Hugging Face's shape
        calls = m.pop("tool_calls", None)
        if calls:
            m["tool_calls"] = [{"type": "function", "id": c.id,
                                "function": {"name": c.name, "arguments": c.arguments}}
                               for c in calls]
    if tools and must_call(choice):  # the template shows the tools; the choice is ours to say
        _add_system(msgs, must_call(choice))
    return msgs, list(tools) if tools else None


# ---- the reply side -----------------------------------------------------------------------

def _partial_suffix(text: str, tag: str) -> int:
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _r1_call(body: str, f: ToolFamily) -> ToolCall | None:
    head, _, rest = body.partition("\n")
    kind, sep, name = head.partition(f.name_sep)
    if not sep or kind.strip() != R1_CALL_TYPE or not name.strip():
        return None
    rest = rest.strip()
    if rest.startswith("```"):
        rest = rest[rest.find("\n") + 1:] if "\n" in rest else ""
        if rest.rstrip().endswith("```"):
            rest = rest.rstrip()[:-3]
    try:
        args = json.loads(rest) if rest.strip() else {}
    except json.JSONDecodeError:
        return None
    return ToolCall(name.strip(), args) if isinstance(args, dict) else None


def _qwen_call(body: str, f: ToolFamily) -> ToolCall | None:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return ToolCall(obj["name"], args) if isinstance(args, dict) else None


_CALL_PARSERS = {R1: _r1_call, QWEN: _qwen_call}


def parse_calls(family: ToolFamily, text: str) -> list[ToolCall] | None:
    """The calls in ``text`` (which starts at the family's start marker), or None when it
    is not a well-formed set of calls (then it stays the answer's text)."""
    rest = text[len(family.start):] if family.start != family.call_begin else text
    calls = []
    while True:
        rest = rest.lstrip()
        if not rest or (family.calls_end and rest.startswith(family.calls_end)):
            break
        if not rest.startswith(family.call_begin):
            return None
        end = rest.find(family.call_end)
        if end < 0:
            return None
        call = _CALL_PARSERS[family.name](rest[len(family.call_begin):end].strip(), family)
        if call is None:
            return None
        calls.append(call)
        rest = rest[end + len(family.call_end):]
    return calls or None


def split_reply(family: ToolFamily | None, answer: str) -> tuple[str, list[ToolCall]]:
    """(content, calls) from a whole answer."""
    if family is None:
        return answer, []
    at = answer.find(family.start)
    if at < 0:
        return answer, []
    calls = parse_calls(family, answer[at:])
    if calls is None:
        return answer, []
    return answer[:at].strip(), calls


class ToolStream:
    """The answer as it streams: text that cannot be part of a call goes out at once;
    from the family's start marker on, everything is held until the end decides."""

    def __init__(self, family: ToolFamily | None) -> None:
        self.family = family
        self._held = ""
        self._in_calls = False
        self._sent_any = False

    def feed(self, text: str) -> str:
        if self.family is None:
            return text
        self._held += text
        if self._in_calls:
            return ""
        at = self._held.find(self.family.start)
        if at >= 0:
            self._in_calls = True
            out, self._held = self._held[:at], self._held[at:]
            return self._out(out.rstrip())
        keep = _partial_suffix(self._held, self.family.start)
        out, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep:]
        return self._out(out)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content not sent yet, calls)."""
        held, self._held = self._held, ""
        if self._in_calls and self.family is not None:
            calls = parse_calls(self.family, held)
            if calls is not None:
                return "", calls
        return self._out(held), []

    def _out(self, text: str) -> str:
        if not self._sent_any:
            text = text.lstrip()
        if text:
            self._sent_any = True
        return text
