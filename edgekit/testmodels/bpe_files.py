"""The tokenizer and generation files of Llama-3.2-Instruct, Qwen2.5-Instruct and SmolLM2-Instruct checkpoints.

Field for field as meta-llama/Llama-3.2-1B-Instruct, Qwen/Qwen2.5-1.5B-Instruct and
HuggingFaceTB/SmolLM2-1.7B-Instruct ship them
(tokenizer.json, tokenizer_config.json with the chat template, special_tokens_map.json,
generation_config.json), so the converter meets what it meets in the wild: no tokenizer.model,
BOS added by the post-processor (Llama) or not at all (Qwen), EOS lists, tokens that are
added but not special (Qwen's <tool_call>).
"""

from __future__ import annotations

import json
from typing import Any

from edgekit.testmodels.bpe_tokenizer import tokenizer_json
from edgekit.testmodels.chat_templates import CHAT_TEMPLATES
from edgekit.testmodels.presets import Preset

FAMILIES = ("llama3", "qwen2", "smollm2")


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _token_entry(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def _added_tokens_decoder(tokenizer: dict[str, Any]) -> dict[str, Any]:
    """tokenizer_config.json's copy of tokenizer.json's added tokens, keyed by id as a string."""
    return {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in tokenizer["added_tokens"]}


def _llama3_files(tokenizer: dict[str, Any]) -> dict[str, str]:
    config = {
        "added_tokens_decoder": _added_tokens_decoder(tokenizer),
        "bos_token": "<|begin_of_text|>",
        "chat_template": CHAT_TEMPLATES["llama3.2"],
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|eot_id|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    special = {"bos_token": _token_entry("<|begin_of_text|>"), "eos_token": _token_entry("<|eot_id|>")}
    generation = {"bos_token_id": 128000, "do_sample": True, "eos_token_id": [128001, 128008, 128009],
                  "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.45.0.dev0"}
    return {"tokenizer_config.json": _dump(config), "special_tokens_map.json": _dump(special),
            "generation_config.json": _dump(generation)}


def _qwen2_files(tokenizer: dict[str, Any]) -> dict[str, str]:
    extra = [t["content"] for t in tokenizer["added_tokens"] if t["special"] and t["content"] != "<|endoftext|>"]
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": _added_tokens_decoder(tokenizer),
        "additional_special_tokens": extra,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATES["qwen2.5"],
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    special = {"additional_special_tokens": extra, "eos_token": _token_entry("<|im_end|>"),
               "pad_token": _token_entry("<|endoftext|>")}
    generation = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
                  "repetition_penalty": 1.1, "temperature": 0.7, "top_k": 20, "top_p": 0.8,
                  "transformers_version": "4.37.0"}
    return {"tokenizer_config.json": _dump(config), "special_tokens_map.json": _dump(special),
            "generation_config.json": _dump(generation)}


def _smollm2_files(tokenizer: dict[str, Any]) -> dict[str, str]:
    chatml = ["<|im_start|>", "<|im_end|>"]
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": _added_tokens_decoder(tokenizer),
        "additional_special_tokens": chatml,
        "bos_token": "<|im_start|>",
        "chat_template": CHAT_TEMPLATES["smollm2"],
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "model_max_length": 8192,
        "pad_token": "<|im_end|>",
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>",
        "vocab_size": 49152,
    }
    special = {"additional_special_tokens": chatml, "bos_token": _token_entry("<|im_start|>"),
               "eos_token": _token_entry("<|im_end|>"), "pad_token": _token_entry("<|im_end|>"),
               "unk_token": _token_entry("<|endoftext|>")}
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "transformers_version": "4.42.3"}
    return {"tokenizer_config.json": _dump(config), "special_tokens_map.json": _dump(special),
            "generation_config.json": _dump(generation)}


def small_files(preset: Preset) -> dict[str, str]:
    """File name -> text of every tokenizer and generation file of the preset's family."""
    text = tokenizer_json(preset.family)
    build = {"llama3": _llama3_files, "qwen2": _qwen2_files, "smollm2": _smollm2_files}[preset.family]
    return {"tokenizer.json": text, **build(json.loads(text))}
