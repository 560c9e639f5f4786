"""The quant levels, once: llama.cpp's names, file types, sizes and which need an importance matrix.

Built from gguf-py's enums (``LlamaFileType``: llama.h's LLAMA_FTYPE_* values;
``GGMLQuantizationType`` and ``GGML_QUANT_SIZES``: the tensor types and their block sizes);
edgekit.quantize checks a level against llama-cpp-python's own LLAMA_FTYPE_* constants before
it quantizes. The quantizer, the GGUF reader, the engine's worker, the planner's memory
estimate, the profiles and `edgekit recommend` all read this table.

It lives beside edgekit.quantize rather than in it: the GGUF reader needs it and quantize needs
the reader, and reading a file's level must not load libllama (quantize imports llama_cpp).
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

# Tensor types that hold weights as they are, not quantized (block size 1: F32, F16, BF16, F64 and
# the integer types): quantizing from anything else loses quality twice.
UNQUANTIZED = frozenset(t.name for t, (block, _) in GGML_QUANT_SIZES.items() if block == 1)

# Levels whose tensors llama.cpp refuses to quantize without an importance matrix
# ("Missing importance matrix for tensor ... in a very low-bit quantization", src/llama-quant.cpp).
# IQ3_XXS/IQ3_XS put some tensors in IQ2_S, so they need one too.
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K_S", "IQ3_XXS", "IQ3_XS"})

# Levels llama.h names (files of them can be read) that llama_model_quantize cannot write in the pinned
# build: it answers "invalid output file type" (tests/test_quant_levels.py tries every level).
NO_QUANTIZER = frozenset({"NVFP4"})

# Short names llama-quantize also accepts (tools/quantize/quantize.cpp).
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


@dataclass(frozen=True)
class QuantLevel:
    """One level as llama.cpp names it ("Q4_K_M"), with what the rest of edgekit asks of it."""

    name: str
    file_type: int  # LLAMA_FTYPE_* (general.file_type in a GGUF; llama_model_quantize's ftype)
    main_type: str  # the ggml type most weights get: "Q4_K" for Q4_K_M
    bits_per_weight: float  # of the main type; a file's own figure (GGUFInfo) counts its mix
    needs_imatrix: bool

    @property
    def quantized(self) -> bool:
        return self.main_type not in UNQUANTIZED


def _main_type(level: str) -> GGMLQuantizationType | None:
    """Q4_K_M -> Q4_K, IQ3_M -> IQ3_S, MXFP4_MOE -> MXFP4, Q8_0 -> Q8_0 (the level's own type)."""
    base = next((level.removesuffix(s) for s in ("_MOE", "_S", "_M", "_L") if level.endswith(s)), level)
    for name in (level, base, f"{base}_S"):
        if name in GGMLQuantizationType.__members__:
            return GGMLQuantizationType[name]
    return None


def _levels() -> dict[str, QuantLevel]:
    levels = {}
    for member in LlamaFileType:
        name = member.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        main = _main_type(name)
        if member.name == "GUESSED" or main is None:
            continue
        block, size = GGML_QUANT_SIZES[main]
        levels[name] = QuantLevel(name, member.value, main.name, 8 * size / block, name in NEEDS_IMATRIX)
    return levels


LEVELS: dict[str, QuantLevel] = _levels()
_BY_FILE_TYPE = {level.file_type: level for level in LEVELS.values()}


def level_of_file_type(file_type: object) -> QuantLevel | None:
    """The level a GGUF's general.file_type (or llama_model_ftype) names; None when unknown."""
    return _BY_FILE_TYPE.get(file_type) if isinstance(file_type, int) and not isinstance(file_type, bool) else None
