"""Validate and describe a GGUF file before anything hands it to llama.cpp.

Every stage calls ``validate`` first: edgekit.gguf_reader reads the header, the metadata and
the tensor table through bounds-checked reads, and this module says what they hold (the
architecture, the sizes the planner needs, the quant mix) as a GGUFInfo.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gguf import Keys

from edgekit.errors import ModelFormatError
from edgekit.gguf_reader import GGUFArray, TensorInfo, read_tables
from edgekit.quant_levels import UNQUANTIZED, level_of_file_type

_MAX_CONTEXT = 1 << 24  # context_length beyond 16M tokens is corrupt (llama.cpp would size buffers by it)


@dataclass(frozen=True)
class QuantShare:
    """How many tensors, weights and bytes of one ggml type a file holds."""

    count: int
    n_elements: int
    nbytes: int


@dataclass(frozen=True)
class GGUFInfo:
    """What a valid GGUF file holds, read from its header and tensor table."""

    path: Path
    size: int
    version: int
    architecture: str
    name: str | None
    parameter_count: int
    file_type: str | None  # llama.cpp's name, e.g. "Q4_K_M", "F16"; None when not recorded
    quant_mix: dict[str, QuantShare]
    tensor_bytes: int
    context_length: int | None
    embedding_length: int | None
    feed_forward_length: int | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    vocab_size: int | None
    tokenizer_model: str | None
    chat_template: str | None
    provenance: dict[str, Any]
    layer_bytes: dict[int, int]  # tensor bytes per block index (blk.N.*)
    non_layer_bytes: int  # everything outside blocks: embeddings, output, final norm
    token_embd_bytes: int
    output_bytes: int  # 0 when the output projection is tied to the embeddings
    tensors: tuple[TensorInfo, ...] = field(repr=False)
    metadata: dict[str, Any] = field(repr=False)

    @property
    def bits_per_weight(self) -> float:
        """Tensor bits over parameter count: what a quant level really costs."""
        return 8 * self.tensor_bytes / self.parameter_count if self.parameter_count else 0.0

    @property
    def is_quantized(self) -> bool:
        """True when some weight matrix is stored in a quantized type (not F32/F16/BF16)."""
        return any(name not in UNQUANTIZED for name in self.quant_mix)

    def to_dict(self, tensors: bool = False) -> dict[str, Any]:
        """Plain data for JSON; the tensor table only on request (it is long)."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["bits_per_weight"] = round(self.bits_per_weight, 3)
        data.pop("metadata")
        if not tensors:
            data.pop("tensors")
        return data

    def describe(self, tensors: bool = False) -> list[str]:
        """Lines for `edgekit inspect`: one "label  value" line per fact; the tensor table on request."""
        template = (self.chat_template or "").splitlines()
        mix = "; ".join(f"{name} x{q.count} {q.nbytes / 1e6:.1f} MB" for name, q in self.quant_mix.items())
        rows = [
            ("file", f"{self.path} ({self.size / 1e6:.1f} MB, GGUF v{self.version})"),
            ("architecture", f"{self.architecture}" + (f" ({self.name})" if self.name else "")),
            ("parameters", _human_count(self.parameter_count)),
            ("file type", f"{self.file_type or '?'}, {self.bits_per_weight:.2f} bits/weight"),
            ("quant mix", mix),
            ("context", f"{self.context_length}  (embedding {self.embedding_length}, {self.block_count} blocks, "
                        f"{self.head_count}/{self.head_count_kv} heads, vocab {self.vocab_size})"),
            ("tokenizer", str(self.tokenizer_model)),
            ("chat template", (template[0] + (f"  (+{len(template) - 1} lines)" if len(template) > 1 else ""))
             if template else "none"),
        ]
        rows += [("provenance", f"{key} = {value}") for key, value in self.provenance.items()]
        lines = [f"{label:<15}{value}" for label, value in rows]
        if tensors:
            lines.append("")
            lines += [f"{t.name:<40} {t.type:<7} {str(list(t.shape)):<22} {t.nbytes:>14,}" for t in self.tensors]
        return lines



def validate(path: str | os.PathLike[str]) -> GGUFInfo:
    """Check that ``path`` is a complete, well-formed GGUF file and describe it.

    Raises ModelFormatError naming the file and what is wrong with it.
    """
    tables = read_tables(Path(path))
    return _describe(tables.path, tables.size, tables.version, tables.metadata, tables.tensors)


def _describe(path: Path, size: int, version: int, metadata: dict[str, Any], tensors: list[TensorInfo]) -> GGUFInfo:
    arch = metadata.get(Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise ModelFormatError(f"{path}: no {Keys.General.ARCHITECTURE} in the metadata; re-convert the model")

    def arch_key(template: str) -> Any:
        return _plain(metadata.get(template.format(arch=arch)))

    context = arch_key(Keys.LLM.CONTEXT_LENGTH)
    if context is not None and (not isinstance(context, int) or not 1 <= context <= _MAX_CONTEXT):
        raise ModelFormatError(f"{path}: {Keys.LLM.CONTEXT_LENGTH.format(arch=arch)} = {context!r} is not a "
                               f"plausible context length (1 to {_MAX_CONTEXT:,}); the file is corrupt: re-convert it")
    layers = _layer_bytes(tensors)
    tensor_bytes = sum(t.nbytes for t in tensors)
    return GGUFInfo(
        path=path, size=size, version=version, architecture=arch,
        name=metadata.get(Keys.General.NAME),
        parameter_count=sum(t.n_elements for t in tensors),
        file_type=_level_name(metadata.get(Keys.General.FILE_TYPE)),
        quant_mix=_quant_mix(tensors),
        tensor_bytes=tensor_bytes,
        context_length=context,
        embedding_length=arch_key(Keys.LLM.EMBEDDING_LENGTH),
        feed_forward_length=arch_key(Keys.LLM.FEED_FORWARD_LENGTH),
        block_count=arch_key(Keys.LLM.BLOCK_COUNT),
        head_count=arch_key(Keys.Attention.HEAD_COUNT),
        head_count_kv=arch_key(Keys.Attention.HEAD_COUNT_KV),
        vocab_size=arch_key(Keys.LLM.VOCAB_SIZE) or _length(metadata.get(Keys.Tokenizer.LIST)),
        tokenizer_model=metadata.get(Keys.Tokenizer.MODEL),
        chat_template=metadata.get(Keys.Tokenizer.CHAT_TEMPLATE),
        provenance={k: v for k, v in metadata.items() if k.startswith(("edgekit.", "general.source."))},
        layer_bytes=layers,
        non_layer_bytes=tensor_bytes - sum(layers.values()),
        token_embd_bytes=_bytes_of(tensors, "token_embd.weight"),
        output_bytes=_bytes_of(tensors, "output.weight"),
        tensors=tuple(tensors),
        metadata=metadata,
    )


def _plain(value: Any) -> Any:
    """Per-layer values (e.g. head counts) may be arrays; the planner wants one number."""
    if isinstance(value, list):
        return max(value) if value else None
    return value


def _length(value: Any) -> int | None:
    if isinstance(value, GGUFArray):
        return value.length
    return len(value) if isinstance(value, list) else None


def _level_name(value: Any) -> str | None:
    level = level_of_file_type(value)
    return level.name if level else None


def _quant_mix(tensors: list[TensorInfo]) -> dict[str, QuantShare]:
    mix: dict[str, QuantShare] = {}
    for t in tensors:
        old = mix.get(t.type, QuantShare(0, 0, 0))
        mix[t.type] = QuantShare(old.count + 1, old.n_elements + t.n_elements, old.nbytes + t.nbytes)
    return dict(sorted(mix.items(), key=lambda item: -item[1].nbytes))


_BLOCK_NAME = re.compile(r"blk\.(\d+)\.")


def _layer_bytes(tensors: list[TensorInfo]) -> dict[int, int]:
    layers: dict[int, int] = {}
    for t in tensors:
        match = _BLOCK_NAME.match(t.name)
        if match:
            index = int(match.group(1))
            layers[index] = layers.get(index, 0) + t.nbytes
    return dict(sorted(layers.items()))


def _bytes_of(tensors: list[TensorInfo], name: str) -> int:
    return next((t.nbytes for t in tensors if t.name == name), 0)


def _human_count(n: int) -> str:
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)
