"""Render chat messages with the template stored in the GGUF, as the model's authors wrote it.

The environment mirrors llama-cpp-python's Jinja2ChatFormatter (and Transformers'
apply_chat_template): a sandbox, trim_blocks/lstrip_blocks, loop controls, a tojson that
keeps non-ASCII, raise_exception and strftime_now. The rendered text is tokenized with
special tokens parsed and no extra BOS, so the template alone decides the prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgekit.errors import BadRequest


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """Pass through Transformers' ``{% generation %}`` tag (used for training masks)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise BadRequest(f"the model's chat template refused the messages: {message}")


class ChatTemplate:
    """A compiled chat template with the model's BOS and EOS token texts."""

    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
        )
        env.filters["tojson"] = _tojson
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template = env.from_string(source)

    def render(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True, tools: list[dict[str, Any]] | None = None
    ) -> str:
        """The prompt text for ``messages``, ending with the assistant's turn opener; ``tools``
        (OpenAI's shape) for templates that render them (tools.supports_tools)."""
        try:
            return self._template.render(
                messages=list(messages),
                tools=tools,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
                raise_exception=_raise_exception,
                strftime_now=lambda fmt: datetime.now().strftime(fmt),
            )
        except BadRequest:
            raise
        except jinja2.TemplateError as exc:
            raise BadRequest(f"the model's chat template failed on these messages: {exc}") from exc
