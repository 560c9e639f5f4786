"""make_test_lora: a PEFT LoRA adapter folder with seeded random A/B, as PEFT's save_pretrained writes it.

adapter_config.json carries PEFT's keys (r, lora_alpha, target_modules, use_rslora, ...);
adapter_model.safetensors holds ``base_model.model.<module>.lora_A.weight`` (r, in) and
``.lora_B.weight`` (out, r) for every targeted module of every layer. PEFT starts B at zero;
ours is random so the adapter changes the model's answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit.atomic import write_text
from edgekit.errors import UsageError
from edgekit.testmodels.build import _prepare_dir
from edgekit.testmodels.presets import check_dtype, get_preset
from edgekit.testmodels.weights import TensorSpec, tensor_specs, write_safetensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_test_lora(
    out_dir: Path | str,
    preset: str = "tiny",
    r: int = 8,
    alpha: float = 16,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    use_rslora: bool = False,
    dtype: str = "f32",
    seed: int = 1,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write a LoRA for ``preset``'s checkpoint into ``out_dir``; ``config`` overrides adapter_config.json keys."""
    if r <= 0:
        raise UsageError(f"bad rank {r}: it must be 1 or more")
    check_dtype(dtype)
    folder = _prepare_dir(Path(out_dir))
    specs = lora_specs(preset, r, targets)
    write_safetensors(folder / WEIGHTS_FILE, specs, dtype, seed)
    settings = {"r": r, "lora_alpha": alpha, "target_modules": sorted(targets), "use_rslora": use_rslora}
    write_text(folder / CONFIG_FILE, adapter_config_json(preset, {**settings, **(config or {})}))
    return folder


def lora_specs(preset: str, r: int, targets: tuple[str, ...]) -> list[TensorSpec]:
    """A (r, in) and B (out, r) for each targeted base weight; embeddings get PEFT's lora_embedding_A/B."""
    specs = []
    for base in tensor_specs(get_preset(preset)):
        module = base.name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] not in targets or len(base.shape) != 2:
            continue
        out_dim, in_dim = base.shape  # (out, in), as torch.nn.Linear stores it
        if module.endswith("embed_tokens"):  # nn.Embedding: PEFT stores A (r, vocab), B (hidden, r)
            out_dim, in_dim = in_dim, out_dim
            names = ("lora_embedding_A", "lora_embedding_B")
        else:
            names = ("lora_A.weight", "lora_B.weight")
        specs.append(TensorSpec(f"{PEFT_PREFIX}{module}.{names[0]}", (r, in_dim)))
        specs.append(TensorSpec(f"{PEFT_PREFIX}{module}.{names[1]}", (out_dim, r)))
    if not specs:
        raise UsageError(f"no module of {preset} is named {', '.join(targets)}")
    return specs


def adapter_config_json(preset: str, settings: dict[str, Any]) -> str:
    """adapter_config.json with every key PEFT 0.13 writes for a LoRA (sorted, indent 2)."""
    config: dict[str, Any] = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": f"edgekit-test/{preset}",
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_dropout": 0.05,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "rank_pattern": {},
        "revision": None,
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        **settings,
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"
