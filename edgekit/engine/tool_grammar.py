"""The grammar of an answer with tools (child side): plain text, or calls to the offered tools.

Each tool's arguments go through llama.cpp's JSON-schema-to-grammar converter (llama-cpp-python's
port); edgekit writes the call around them in the family's syntax (tools.SYNTAXES). Two
changes to what the converter makes, both for speed and fidelity:

- JSON is written as Python's json.dumps and the chat templates' tojson write it
  (sampling.compact_json), so punctuation and keys are forced text that forced.py appends
  without sampling, and the model writes calls in the form its template showed it;
- objects without ``additionalProperties`` are closed (a model should not invent arguments)
  and a small integer range becomes an enum, which the converter would not enforce.
"""

from __future__ import annotations

import math
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

from edgekit.engine.sampling import compact_json
from edgekit.engine.tools import CallSyntax, ToolPlan, ToolSpec
from edgekit.errors import BadRequest

MAX_ENUM_RANGE = 1000  # integer ranges up to this many values are written as alternatives


def tool_grammar(plan: ToolPlan) -> str:
    """GBNF for the answer: one or more calls, or (unless a call is required) text; text alone for "none"."""
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    syntax = plan.syntax
    branches = [_call_branch(converter, syntax, i, tool) for i, tool in enumerate(plan.tools)]
    rules = [
        "root ::= text" if plan.text_only else f"root ::= calls{'' if plan.required else ' | text'}",
        f"calls ::= call ({_literal(syntax.separator)} call)*" if syntax.separator and plan.parallel else "calls ::= call",
        f"call ::= {_literal(syntax.opener)} ( {' | '.join(branches)} ) {_literal('}' + syntax.after)}",
        # Text may not open like a call (so the first character tells text from a call) nor start
        # with whitespace (which could hide a call behind it).
        f"text ::= [^{_class_char(syntax.opener[0])} \\t\\r\\n] .*",
    ]
    return compact_json(converter.format_grammar()) + "\n" + "\n".join(rules) + "\n"


def _call_branch(converter: SchemaConverter, syntax: CallSyntax, i: int, tool: ToolSpec) -> str:
    """``NAME", "<args_key>": ARGS`` for one tool, its arguments' rule from the converter."""
    schema = _for_grammar(tool.parameters)
    converter._refs = {}  # $refs are local to each tool's schema
    try:
        schema = converter.resolve_refs(schema, f"tool-{i}")
        rule = converter.visit(schema, f"args{i}")
    except Exception as exc:  # the converter raises plain exceptions on what it cannot express
        raise BadRequest(f"tool {tool.name!r}: its parameters schema cannot be turned into a grammar: {exc}") from exc
    return f'{_literal(f"{tool.name}{chr(34)}, {chr(34)}{syntax.args_key}{chr(34)}: ")} {rule}'


def _for_grammar(schema: Any) -> Any:
    """A copy of the schema with objects closed and small integer ranges as enums."""
    if isinstance(schema, list):
        return [_for_grammar(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in ("enum", "const", "default", "examples") else _for_grammar(v)) for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: _for_grammar(v) for k, v in schema["properties"].items()}
    if out.get("type") == "object" and "additionalProperties" not in out:
        out["additionalProperties"] = False
    low, high = _integer_range(out)
    if low is not None and high is not None and 0 <= high - low < MAX_ENUM_RANGE:
        return {"enum": list(range(low, high + 1))}
    return out


def _integer_range(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    if schema.get("type") != "integer" or "enum" in schema:
        return None, None
    low = schema.get("minimum", schema["exclusiveMinimum"] + 1 if isinstance(schema.get("exclusiveMinimum"), int) else None)
    high = schema.get("maximum", schema["exclusiveMaximum"] - 1 if isinstance(schema.get("exclusiveMaximum"), int) else None)
    low = math.ceil(low) if isinstance(low, (int, float)) and not isinstance(low, bool) else None
    high = math.floor(high) if isinstance(high, (int, float)) and not isinstance(high, bool) else None
    return low, high


def _literal(text: str) -> str:
    return SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)._format_literal(text)


def _class_char(c: str) -> str:
    return "\\" + c if c in "]^-\\" else c

