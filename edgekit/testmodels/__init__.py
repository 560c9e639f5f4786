"""Generated Llama checkpoints for tests, demos and benchmarks.

``make_test_model(dir, preset)`` writes a folder laid out exactly as a Hugging Face
Llama repo (config.json, safetensors weights or shards with an index, tokenizer.model,
tokenizer_config.json with the real chat template), filled with seeded random weights.
"""

from edgekit.testmodels.build import make_test_model
from edgekit.testmodels.lora import make_test_lora
from edgekit.testmodels.presets import PRESETS, Preset, parse_size
from edgekit.testmodels.tokenizer import calibration_text, tokenizer_model
from edgekit.testmodels.weights import TensorSpec, bf16_bits_to_f32, tensor_specs, tensor_values

__all__ = [
    "PRESETS",
    "Preset",
    "TensorSpec",
    "bf16_bits_to_f32",
    "calibration_text",
    "make_test_lora",
    "make_test_model",
    "parse_size",
    "tensor_specs",
    "tensor_values",
    "tokenizer_model",
]
