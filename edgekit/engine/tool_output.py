"""Tool calls out of the model's answer: parsed, checked against their schemas, kept out of text.

CallStream sits between the text assembler and the outbox. The grammar (tool_grammar.py)
lets an answer be text or calls, never text that opens like a call, so the first
characters decide: text then streams as it comes; call text is held and each call leaves
as a ToolCall record once its JSON (and closing tag) is complete.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jsonschema

from edgekit.engine.records import ToolCall, new_tool_call_id
from edgekit.engine.tools import CallSyntax, ToolPlan

log = logging.getLogger(__name__)
_DECODER = json.JSONDecoder()


class CallStream:
    """Feed the answer's text; get back the text to stream and the calls completed so far."""

    def __init__(self, plan: ToolPlan) -> None:
        self._syntax = plan.syntax
        self._validators = {t.name: jsonschema.validators.validator_for(t.parameters)(t.parameters) for t in plan.tools}
        self._mode = "call" if plan.required else ""  # "" until the first characters decide
        self._held = ""
        self._parsed = 0  # complete calls found in the held text so far
        self.calls: list[ToolCall] = []

    @property
    def in_text(self) -> bool:
        return self._mode == "text"

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Add released text; return (text to stream now, calls completed by it)."""
        if self._mode == "text":
            return text, []
        self._held += text
        if not self._mode:
            self._mode = _decide(self._held, self._syntax.opener)
            if self._mode == "text":
                text, self._held = self._held, ""
                return text, []
        return "", self._new_calls() if self._mode == "call" else []

    def finish(self) -> tuple[str, list[ToolCall]]:
        """End of the answer: text still held (an undecided beginning), or the last calls."""
        if self._mode != "call":
            text, self._held = self._held, ""
            return text, []
        calls = self._new_calls()
        if self._held.strip() and not self.calls:
            log.warning("engine: the answer ended inside a tool call (%d characters); no call is returned: %r", len(self._held), self._held)
        return "", calls

    def _new_calls(self) -> list[ToolCall]:
        bodies = complete_calls(self._held, self._syntax)
        new = [self._checked(body) for body in bodies[self._parsed :]]
        self._parsed = len(bodies)
        calls = [c for c in new if c is not None]
        self.calls.extend(calls)
        return calls

    def _checked(self, body: dict[str, Any]) -> ToolCall | None:
        """The call as a record, or None (logged) if it names no offered tool or its arguments fail."""
        name, arguments = body.get("name"), body.get(self._syntax.args_key)
        validator = self._validators.get(name) if isinstance(name, str) else None
        problem = None if validator else f"no tool is named {name!r}"
        if validator and not isinstance(arguments, dict):
            problem = f"arguments of {name!r} are not an object"
        elif validator and (error := jsonschema.exceptions.best_match(validator.iter_errors(arguments))):
            problem = f"arguments of {name!r} fail the schema: {error.message}"
        if problem:  # the grammar rules this out but for what a grammar cannot say (patterns, formats)
            log.warning("engine: dropped a tool call: %s", problem)
            return None
        return ToolCall(new_tool_call_id(), name, arguments)


def _decide(held: str, opener: str) -> str:
    """"call" or "text" once the held beginning shows which, else "" (wait for more)."""
    if held.startswith(opener):
        return "call"
    return "" if opener.startswith(held) else "text"


def complete_calls(text: str, syntax: CallSyntax) -> list[dict[str, Any]]:
    """The JSON bodies of the complete calls at the start of ``text``, in order."""
    bodies: list[dict[str, Any]] = []
    pos = 0
    while True:
        if bodies and syntax.separator is not None and text.startswith(syntax.separator, pos):
            pos += len(syntax.separator)
        if not text.startswith(syntax.before, pos):
            return bodies
        try:
            body, end = _DECODER.raw_decode(text, pos + len(syntax.before))
        except json.JSONDecodeError:
            return bodies  # not complete yet (or never: the grammar makes that unlikely)
        if not isinstance(body, dict) or not text.startswith(syntax.after, end):
            return bodies
        bodies.append(body)
        pos = end + len(syntax.after)
