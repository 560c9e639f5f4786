"""Convert Hugging Face Llama-family checkpoints (safetensors + SentencePiece) to GGUF, without torch."""

from edgekit.convert.llama import ARCHITECTURES, LlamaParams
from edgekit.convert.stream import OUTTYPES
from edgekit.convert.writer import ConvertResult, Progress, convert, convert_checkpoint, convert_to_levels, plan_conversion

__all__ = [
    "ARCHITECTURES",
    "OUTTYPES",
    "ConvertResult",
    "LlamaParams",
    "Progress",
    "convert",
    "convert_checkpoint",
    "convert_to_levels",
    "plan_conversion",
]
