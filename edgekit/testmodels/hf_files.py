"""The small JSON files of a real checkpoint: tokenizer_config, special_tokens_map, generation_config.

Copied from TinyLlama/TinyLlama-1.1B-Chat-v1.0 and upstage/SOLAR-10.7B-Instruct-v1.0,
chat templates verbatim, so the converter meets the same fields it meets in the wild.
"""

from __future__ import annotations

import json

from edgekit.testmodels.presets import Preset

# TinyLlama-1.1B-Chat-v1.0: Zephyr's template (newlines between the Jinja tags are part of it).
TINYLLAMA_CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

# SOLAR-10.7B-Instruct-v1.0.
SOLAR_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content']%}{{'### System:\n' + message['content']+'\n\n'}}{% endif %}"
    "{% elif message['role'] == 'user' %}{{'### User:\n' + message['content']+'\n\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'### Assistant:\n'  + message['content']}}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
    "{% endfor %}"
)


def _added_token(content: str) -> dict[str, object]:
    flags = dict.fromkeys(("lstrip", "normalized", "rstrip", "single_word"), False)
    return {"content": content, **flags, "special": True}


_SPECIALS = {"0": "<unk>", "1": "<s>", "2": "</s>"}

_TOKENIZER_CONFIG: dict[str, dict[str, object]] = {
    "tinyllama": {
        "chat_template": TINYLLAMA_CHAT_TEMPLATE,
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": "</s>",
        "padding_side": "right",
        "use_default_system_prompt": False,
    },
    "solar": {
        "additional_special_tokens": [],
        "chat_template": SOLAR_CHAT_TEMPLATE,
        "legacy": True,
        "model_max_length": 1000000000000000019884624838656,  # transformers' "no limit"
        "pad_token": "</s>",
        "spaces_between_special_tokens": False,
        "use_default_system_prompt": True,
    },
}

_GENERATION_CONFIG: dict[str, dict[str, object]] = {
    "tinyllama": {"bos_token_id": 1, "eos_token_id": 2, "max_length": 2048, "pad_token_id": 0,
                  "transformers_version": "4.35.0"},
    "solar": {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "use_cache": False,
              "transformers_version": "4.35.2"},
}


def _dump(data: dict[str, object]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def tokenizer_config_json(preset: Preset) -> str:
    config: dict[str, object] = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {i: _added_token(t) for i, t in _SPECIALS.items()},
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        **_TOKENIZER_CONFIG[preset.family],
    }
    return _dump(config)


def special_tokens_map_json(preset: Preset) -> str:
    def token(content: str) -> dict[str, object]:
        return {k: v for k, v in _added_token(content).items() if k != "special"}

    data: dict[str, object] = {"bos_token": token("<s>"), "eos_token": token("</s>"), "unk_token": token("<unk>")}
    data["pad_token"] = _TOKENIZER_CONFIG[preset.family]["pad_token"]
    return _dump(data)


def generation_config_json(preset: Preset) -> str:
    return _dump(_GENERATION_CONFIG[preset.family])
