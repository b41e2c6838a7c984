"""Structured output: a JSON schema (or plain "JSON, please") -> a llama.cpp grammar.

Both APIs ask for it their own way (Ollama's `format`, OpenAI's `response_format`, the CLI's
`--format`); each becomes one GBNF grammar that the engine applies to the **answer** only,
once a reasoning model has closed its `</think>` (from the first token for other models).

The schema is turned into GBNF by llama-cpp-python's converter (pure Python, in
`llama_cpp.llama_grammar`). That converter silently ignores some keywords (numeric bounds,
for one), which would give replies that parse but do not validate; those are refused here,
up front, with the keyword and where it is, instead of being promised and not kept.
"""

from __future__ import annotations

import json
from typing import Any

from r1local.errors import UsageError

ROOT = "root"  # the grammar's start rule, as llama.cpp expects by default
TOP_RULE = "r1local-json"  # the converter's rules are named from here (never "root")
# A string character as JSON allows it: the converter's own rule lets raw control
# characters (a newline) into strings, which strict JSON parsers refuse.
CHAR_RULE_FROM = 'char ::= [^"\\\\] |'
CHAR_RULE_TO = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'

# Keywords that constrain values but that the converter does not turn into grammar: a reply
# made under such a schema could break them, so a schema that uses them is refused.
UNSUPPORTED_KEYWORDS = (
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "uniqueItems", "contains", "minContains", "maxContains",
    "minProperties", "maxProperties", "patternProperties", "propertyNames",
    "dependentRequired", "dependentSchemas", "dependencies",
    "not", "if", "then", "else", "unevaluatedProperties", "unevaluatedItems",
)
# Where subschemas live: keyword -> how its value holds them.
_SUB_ONE = ("items", "additionalProperties", "additionalItems")
_SUB_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")  # (and "items" as a list)
_SUB_MAP = ("properties", "$defs", "definitions")
_VALUE_KEYWORDS = ("enum", "const", "default", "examples")  # these hold JSON values, not schemas
_KNOWN_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

# OpenAI's response_format types
OPENAI_TEXT, OPENAI_JSON_OBJECT, OPENAI_JSON_SCHEMA = "text", "json_object", "json_schema"


class SchemaError(UsageError):
    """A format / response_format / schema we cannot turn into a grammar."""


def any_json_object() -> dict:
    """The schema of "some JSON object" (Ollama's "json", OpenAI's json_object)."""
    return {"type": "object"}


def check_schema(schema: Any, where: str = "schema") -> None:
    """Refuse what the grammar cannot enforce, naming the keyword and its place."""
    if isinstance(schema, bool):
        if not schema:
            raise SchemaError(f"{where} is `false`: no value can match it")
        return
    if not isinstance(schema, dict):
        raise SchemaError(f"{where} must be a JSON object (a JSON schema), not {type(schema).__name__}")
    for key in UNSUPPORTED_KEYWORDS:
        if key in schema:
            raise SchemaError(f"the JSON schema keyword {key!r} (at {where}) is not supported "
                              "by grammar-constrained output: drop it, or check it after parsing")
    types = schema.get("type")
    if types == []:
        raise SchemaError(f"{where}.type is an empty list: no value can match it")
    for t in types if isinstance(types, list) else [types] if types is not None else []:
        if t not in _KNOWN_TYPES:
            raise SchemaError(f"unknown type {t!r} at {where}")
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
        raise SchemaError(f"$ref {ref!r} at {where}: only local references (\"#/...\") are supported")
    required = schema.get("required")
    if required is not None:
        declared = schema.get("properties") or {}
        missing = [n for n in required if n not in declared] if isinstance(required, list) else None
        if missing is None or not isinstance(declared, dict):
            raise SchemaError(f"{where}.required must be a list of property names")
        if missing and "allOf" not in schema:
            raise SchemaError(f"{where}.required names {', '.join(map(repr, missing))}, which "
                              f"{where}.properties does not declare: the grammar can only "
                              "require declared properties")
    if "enum" in schema and not (isinstance(schema["enum"], list) and schema["enum"]):
        raise SchemaError(f"{where}.enum must list at least one value")
    pattern = schema.get("pattern")
    if pattern is not None and not (isinstance(pattern, str) and pattern.startswith("^")
                                    and pattern.endswith("$")):
        raise SchemaError(f"pattern {pattern!r} at {where} must be anchored (start with ^ and "
                          "end with $) to be enforced")
    for key in _SUB_ONE:
        sub = schema.get(key)
        if isinstance(sub, dict):  # (a bool here only allows or forbids extra values)
            check_schema(sub, f"{where}.{key}")
    for key in _SUB_LIST + ("items",):
        subs = schema.get(key)
        if key == "items" and not isinstance(subs, list):
            continue
        if subs is not None:
            if not isinstance(subs, list) or (not subs and key in ("anyOf", "oneOf", "allOf")):
                raise SchemaError(f"{where}.{key} must be a non-empty list of schemas")
            for i, sub in enumerate(subs):
                check_schema(sub, f"{where}.{key}[{i}]")
    for key in _SUB_MAP:
        subs = schema.get(key)
        if subs is not None:
            if not isinstance(subs, dict):
                raise SchemaError(f"{where}.{key} must be an object of schemas")
            for name, sub in subs.items():
                check_schema(sub, f"{where}.{key}.{name}")


def schema_grammar(schema: dict) -> str:
    """GBNF whose start rule (`root`) accepts exactly the JSON values ``schema`` allows."""
    check_schema(schema)
    from llama_cpp.llama_grammar import SchemaConverter  # pure Python, no model needed

    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        copy = _split_type_lists(json.loads(json.dumps(schema)))
        _index_refs(copy, converter._refs)
        top = converter.visit(copy, TOP_RULE)
        body = converter.format_grammar()
    except (AssertionError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            RecursionError) as err:
        raise SchemaError(f"this JSON schema cannot be turned into a grammar: {err}") from None
    if top is None:  # the converter fell through every case it knows
        raise SchemaError("this JSON schema cannot be turned into a grammar (no rule for its top level)")
    return f"{ROOT} ::= {top}\n{body.replace(CHAR_RULE_FROM, CHAR_RULE_TO)}\n"


def _split_type_lists(node: Any) -> Any:
    """`{"type": ["string", "null"], "maxLength": 5}` -> one anyOf branch per type, each
    with the other keywords: the same schema, but the converter reads a type list as bare
    types and would drop maxLength and the like."""
    if node is True:
        return {}  # "anything": the converter knows it only as an empty schema
    if isinstance(node, list):
        return [_split_type_lists(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: v if k in _VALUE_KEYWORDS or k == "additionalProperties" and isinstance(v, bool)
            else _split_type_lists(v) for k, v in node.items()}
    types = node.get("type")
    if isinstance(types, list) and "anyOf" not in node and "oneOf" not in node:
        rest = {k: v for k, v in node.items() if k != "type"}
        return {"anyOf": [{**rest, "type": t} for t in types]}
    return node


def _index_refs(schema: dict, refs: dict) -> None:
    """Point every local `$ref` at its target, in the converter's table. (Its own
    resolve_refs does not look inside a node that has a `$ref`, so `$defs` next to a
    top-level `$ref`, as recursive schemas have, were never reached.)"""
    def target(ref: str) -> Any:
        node: Any = schema
        for part in ref[2:].split("/") if len(ref) > 2 else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise SchemaError(f"$ref {ref!r} points at nothing in the schema")
        return node

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                refs[ref] = target(ref)
            for key, value in node.items():
                if key != "$ref":
                    walk(value)

    walk(schema)


def from_ollama_format(value: Any) -> dict | None:
    """Ollama's `format`: "json", a JSON schema object, or nothing. Returns the schema."""
    if value is None or value == "":
        return None
    if value == "json":
        return any_json_object()
    if isinstance(value, dict):
        return value
    raise SchemaError(f"format must be \"json\" or a JSON schema object, not {json.dumps(value)[:80]}")


def from_openai_response_format(value: Any) -> dict | None:
    """OpenAI's `response_format`: {"type": "text" | "json_object" | "json_schema", ...}."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise SchemaError("response_format must be an object with a \"type\" "
                          "(\"text\", \"json_object\" or \"json_schema\")")
    kind = value["type"]
    if kind == OPENAI_TEXT:
        return None
    if kind == OPENAI_JSON_OBJECT:
        return any_json_object()
    if kind == OPENAI_JSON_SCHEMA:
        spec = value.get(OPENAI_JSON_SCHEMA)
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise SchemaError("response_format.json_schema must be an object with a \"name\" "
                              "and a \"schema\"")
        schema = spec.get("schema", any_json_object())
        if not isinstance(schema, dict):
            raise SchemaError("response_format.json_schema.schema must be a JSON schema object")
        return schema
    raise SchemaError(f"response_format type {kind!r} is not supported "
                      "(\"text\", \"json_object\" or \"json_schema\")")


def load_cli_format(value: str) -> dict:
    """`--format json` or `--format FILE.json` (a JSON schema)."""
    if value == "json":
        return any_json_object()
    from pathlib import Path

    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SchemaError(f"--format {value}: cannot read the schema file ({err.strerror or err})",
                          hint="give `json` or the path of a JSON schema file") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as err:
        raise SchemaError(f"--format {value}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(schema, dict):
        raise SchemaError(f"--format {value}: a JSON schema must be a JSON object")
    return schema
