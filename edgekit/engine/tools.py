"""Tool calls, parent side: the request's tools checked, and the prompt rendered with them.

A chat template that uses the `tools` variable renders the tools, the assistant's earlier
calls and the tool results itself, as the model was trained. For a template without tools
edgekit writes its own prompt (BUILTIN_TOOL_PROMPT, docs/protocol.md): the tools as JSON
in a system message and calls in the Hermes form, which small instruction-tuned models
follow best; earlier calls become assistant text and tool results user turns.

The call syntax a template family expects is a table (SYNTAXES); the grammar
(tool_grammar.py) and the parser (tool_output.py) both read it from there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.meta
import jsonschema

from edgekit.engine.records import Request
from edgekit.errors import BadRequest

TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule for function names


@dataclass(frozen=True)
class CallSyntax:
    """How a family writes a call: ``before + {"name": N, "<args_key>": {...}} + after``."""

    family: str
    before: str
    after: str
    args_key: str
    separator: str | None  # between calls in one turn; None: one call per turn

    @property
    def opener(self) -> str:
        """The text every call starts with (answers in text may not start with its first character)."""
        return self.before + '{"name": "'


SYNTAXES: dict[str, CallSyntax] = {
    # Llama 3.1/3.2 (JSON tool calling, "Environment: ipython"): one bare JSON object per turn.
    "llama3": CallSyntax("llama3", "", "", "parameters", None),
    # Hermes 2 Pro, Qwen2.5, SmolLM2 and edgekit's built-in prompt: tagged, several per turn.
    "hermes": CallSyntax("hermes", "<tool_call>\n", "\n</tool_call>", "arguments", "\n"),
}

BUILTIN_TOOL_PROMPT = (
    "You can call functions to help with the user's request. The functions are described as JSON "
    "schemas within <tools></tools> tags:\n<tools>\n{tools}\n</tools>\n\n"
    "To call a function, answer with one JSON object per call, with the function's name and "
    "arguments, within <tool_call></tool_call> tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>\n'
    "Otherwise answer the user in plain text."
)


@dataclass(frozen=True)
class ToolSpec:
    """One offered function: its name and the JSON schema of its arguments (an object)."""

    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolPlan:
    """What the worker needs to constrain and parse the answer; None when no call may come."""

    syntax: CallSyntax
    tools: tuple[ToolSpec, ...]  # those the model may call (one when tool_choice names it)
    required: bool  # a call must come ("required" or a named tool); else text or calls
    parallel: bool = True  # several calls in one answer, where the family writes them (not for a named tool)
    text_only: bool = False  # tool_choice "none": the tools stay in the prompt, the answer is text


def check_messages(messages: tuple[dict[str, Any], ...]) -> None:
    """Every message has a role and string content (None allowed beside tool calls); calls name a function."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f'messages[{i}] needs a "role" and a "content" string')
        calls = m.get("tool_calls")
        if not (isinstance(m.get("content"), str) or (calls and m.get("content") is None)):
            raise BadRequest(f'messages[{i}] needs a "content" string (it may be null only beside "tool_calls")')
        if calls is not None and not (isinstance(calls, list) and all(_is_call(c) for c in calls)):
            raise BadRequest(f'messages[{i}].tool_calls must be a list of {{"function": {{"name", "arguments"}}}}')


def _is_call(call: Any) -> bool:
    function = call.get("function") if isinstance(call, dict) else None
    return isinstance(function, dict) and isinstance(function.get("name"), str) and isinstance(function.get("arguments", {}), (dict, str))


def check_tools(tools: tuple[dict[str, Any], ...]) -> tuple[ToolSpec, ...]:
    """The request's tools as specs; BadRequest naming the tool and the problem."""
    specs: list[ToolSpec] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(name, str):
            raise BadRequest(f'tools[{i}] must be {{"type": "function", "function": {{"name", "parameters"}}}}')
        if not TOOL_NAME.match(name):
            raise BadRequest(f"tool {name!r}: a name is 1-64 letters, digits, '_', '.' or '-'")
        if name in (s.name for s in specs):
            raise BadRequest(f"tool {name!r} is offered twice: give each tool a name of its own")
        specs.append(ToolSpec(name, _check_parameters(name, function.get("parameters"))))
    return tuple(specs)


def _check_parameters(name: str, parameters: Any) -> dict[str, Any]:
    if parameters is None:  # OpenAI allows a function without parameters
        return {"type": "object", "properties": {}}
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise BadRequest(f'tool {name!r}: parameters must be a JSON schema of an object ({{"type": "object", ...}})')
    try:
        jsonschema.validators.validator_for(parameters).check_schema(parameters)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the schema"
        raise BadRequest(f"tool {name!r}: parameters are not a valid JSON schema at {where}: {exc.message}") from None
    return parameters


def tool_plan(request: Request, source: str | None) -> ToolPlan | None:
    """The plan for the request's tools with the model's template, or None (no tools; or "none"
    beside the request's own JSON schema or grammar, which then constrains the text)."""
    specs = check_tools(request.tools)
    choice, name = request.tool_choice, _named(request.tool_choice)
    if choice not in ("auto", "none", "required") and name is None:
        raise BadRequest(f'tool_choice must be "auto", "none", "required" or {{"type": "function", "function": {{"name": ...}}}}, not {choice!r}')
    if not specs and choice in ("auto", "none"):
        return None
    if choice == "none":
        own = request.json_schema is not None or request.grammar is not None
        return None if own else ToolPlan(syntax_for(source), specs, required=False, text_only=True)
    if not specs:
        raise BadRequest(f"tool_choice asks for a call ({choice!r}) but the request offers no tools")
    syntax = syntax_for(source)
    if name is None:
        return ToolPlan(syntax, specs, required=choice == "required")
    chosen = tuple(s for s in specs if s.name == name)
    if not chosen:
        raise BadRequest(f"tool_choice names {name!r}, which is not among the tools ({', '.join(s.name for s in specs)})")
    return ToolPlan(syntax, chosen, required=True, parallel=False)


def _named(choice: Any) -> str | None:
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def supports_tools(source: str | None) -> bool:
    """True when the chat template reads the `tools` variable (it renders tools itself)."""
    if not source:
        return False
    try:
        return "tools" in jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(source))
    except jinja2.TemplateSyntaxError:
        return False


def syntax_for(source: str | None) -> CallSyntax:
    """The call syntax of the template's family; Hermes for edgekit's built-in prompt."""
    if supports_tools(source) and "<tool_call>" not in (source or ""):
        return SYNTAXES["llama3"]
    return SYNTAXES["hermes"]


def chat_messages(request: Request, source: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and the `tools` value to render; the built-in prompt when the template has none."""
    messages = [_normalized(m) for m in request.messages or ()]
    # With tool_choice "none" the tools stay in the prompt (as OpenAI's API keeps them, and the
    # next turn's prompt then shares this one's cached prefix); the grammar keeps calls out.
    offered = list(request.tools) if request.tools else None
    if supports_tools(source):
        return messages, offered
    return _builtin_messages(messages, offered), None


def _normalized(message: dict[str, Any]) -> dict[str, Any]:
    """Content "" rather than None, and call arguments as objects (templates apply tojson to them)."""
    out = dict(message, content=message.get("content") or "")
    if message.get("tool_calls"):
        out["tool_calls"] = [_normalized_call(c) for c in message["tool_calls"]]
    elif "tool_calls" in out:
        del out["tool_calls"]  # an empty list would read as "has calls" in some templates
    return out


def _normalized_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise BadRequest(f"an assistant tool call's arguments are not JSON: {exc}") from None
    function["arguments"] = arguments if arguments is not None else {}
    return {**call, "type": "function", "function": function}


def _builtin_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Messages for a template that knows no tools: calls as text, results as user turns."""
    out = [_builtin_message(m) for m in messages]
    if tools:
        prompt = BUILTIN_TOOL_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _builtin_message(message: dict[str, Any]) -> dict[str, Any]:
    syntax = SYNTAXES["hermes"]
    if message["role"] == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"}
    if message["role"] == "assistant" and message.get("tool_calls"):
        calls = [call_text(syntax, c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
        text = (syntax.separator or "").join(calls)
        return {"role": "assistant", "content": f"{message['content']}\n{text}" if message["content"] else text}
    return {"role": message["role"], "content": message["content"]}


def call_text(syntax: CallSyntax, name: str, arguments: dict[str, Any]) -> str:
    """A call written as the family writes it (what the grammar lets the model write)."""
    body = json.dumps({"name": name, syntax.args_key: arguments}, ensure_ascii=False)
    return f"{syntax.before}{body}{syntax.after}"
