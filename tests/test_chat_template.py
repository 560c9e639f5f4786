"""The chat template in our GGUF, applied by llama-cpp-python's chat completion, renders
exactly what the checkpoint's own template renders with jinja2 (as transformers does)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jinja2
import llama_cpp
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgekit.convert import convert
from edgekit.testmodels.hf_files import SOLAR_CHAT_TEMPLATE

CONVERSATION = [
    {"role": "system", "content": "You are the house. Answer briefly."},
    {"role": "user", "content": "Is the kitchen light on? Ünïcode, digits 42 and an emoji 🏠."},
    {"role": "assistant", "content": "It is off."},
    {"role": "user", "content": "Turn it on,\tplease.\nThanks!"},
]


def render_like_transformers(checkpoint: Path, messages: list[dict[str, str]]) -> str:
    """apply_chat_template(tokenize=False, add_generation_prompt=True), as transformers renders it."""
    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.from_string(config["chat_template"]).render(
        messages=messages, add_generation_prompt=True, bos_token=config["bos_token"], eos_token=config["eos_token"]
    )


def chat_completion_prompt(gguf: Path, messages: list[dict[str, str]]) -> tuple[llama_cpp.Llama, list[int]]:
    """The prompt tokens llama-cpp-python's create_chat_completion evaluated for ``messages``."""
    llm = llama_cpp.Llama(str(gguf), n_ctx=512, n_threads=2, verbose=False)
    assert llm.chat_format == "chat_template.default"  # the template from the GGUF, not a built-in guess
    reply = llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0.0)
    n_prompt = reply["usage"]["prompt_tokens"]
    return llm, [int(t) for t in llm.input_ids[:n_prompt]]



@pytest.fixture(scope="module")
def solar_templated(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny checkpoint with SOLAR-10.7B-Instruct's `### User:` template, converted."""
    folder = tmp_path_factory.mktemp("solar-template") / "checkpoint"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = SOLAR_CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    gguf = folder.parent / "solar-template.gguf"
    convert(folder, gguf, "f16")
    return folder, gguf


def _check(checkpoint: Path, gguf: Path) -> None:
    expected = render_like_transformers(checkpoint, CONVERSATION)
    llm, tokens = chat_completion_prompt(gguf, CONVERSATION)
    # No BOS of its own, as transformers' apply_chat_template(tokenize=True): the template decides.
    assert tokens == llm.tokenize(expected.encode("utf-8"), add_bos=False, special=True)


def test_tinyllama_template_renders_the_same_through_chat_completion(tiny_checkpoint: Path, tiny_gguf_f16: Path) -> None:
    _check(tiny_checkpoint, tiny_gguf_f16)


def test_solar_template_renders_the_same_through_chat_completion(solar_templated: tuple[Path, Path]) -> None:
    _check(*solar_templated)
