"""convert_lora(): a PEFT LoRA to the GGUF LoRA adapter llama.cpp loads (llama_adapter_lora_init).

What llama.cpp's llama-adapter.cpp checks, and so what we write: ``general.type`` "adapter",
``general.architecture`` the base's, ``adapter.type`` "lora", ``adapter.lora.alpha``; per adapted
weight ``<gguf name>.lora_a`` with numpy shape (r, in) and ``.lora_b`` (out, r) (ggml ne [in, r]
and [r, out]). llama.cpp scales B @ A by alpha / r of each pair. B's rows are the weight's output
rows, so Q and K's B get the same head permutation the base converter applies to Q and K.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from edgekit import __version__
from edgekit.atomic import atomic_path, check_writable_dir
from edgekit.convert.checkpoint import open_checkpoint
from edgekit.convert.llama import ARCHITECTURES, LlamaParams, expected_tensors, permute_heads, permute_rows
from edgekit.convert.lora import PeftAdapter, check_base, open_peft, read_pair
from edgekit.convert.writer import write_gguf
from edgekit.errors import ModelFormatError, UnsupportedModel, UsageError

log = logging.getLogger(__name__)

LORA_OUTTYPES = {"f32": np.float32, "f16": np.float16}
PERMUTED_ARCHS = (gguf.MODEL_ARCH.LLAMA,)  # the architectures whose converter permutes Q/K rows


@dataclass(frozen=True)
class BaseModel:
    """What an adapter must match: architecture, head counts, and each weight's (out, in) by HF name."""

    description: str
    arch: gguf.MODEL_ARCH
    n_layer: int
    n_head: int
    n_head_kv: int
    shapes: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class LoraResult:
    path: Path
    tensor_pairs: int
    rank: int
    alpha: float  # adapter.lora.alpha as written (rsLoRA folded in)


def base_model(base: Path) -> BaseModel:
    """The shapes of ``base``: a Hugging Face checkpoint folder or a GGUF model file."""
    base = Path(base)
    if base.is_dir():
        return _base_from_checkpoint(base)
    if base.is_file():
        return _base_from_gguf(base)
    raise UsageError(f"--base {base} does not exist (give the base model's checkpoint folder or GGUF file)")


def _base_from_checkpoint(folder: Path) -> BaseModel:
    params = LlamaParams.from_config(open_checkpoint(folder).config)
    shapes = {name: shape for name, shape in expected_tensors(params).items() if len(shape) == 2}
    return BaseModel(str(folder), ARCHITECTURES[params.architecture], params.n_layer, params.n_head,
                     params.n_head_kv, shapes)


def _base_from_gguf(file: Path) -> BaseModel:
    from edgekit.gguf_file import validate

    info = validate(file)  # edgekit's checks first: a broken file gets its own clear message
    meta = info.metadata
    arch_name = str(meta.get("general.architecture", ""))
    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name), None)
    if meta.get("general.type", "model") != "model" or arch is None:
        raise UnsupportedModel(f"{file} is not a model of a known architecture ({arch_name or 'none'}); give the base model")
    n_layer = int(meta[f"{arch_name}.block_count"])
    n_head = int(meta[f"{arch_name}.attention.head_count"])
    n_head_kv = int(meta.get(f"{arch_name}.attention.head_count_kv", n_head))
    by_gguf = {t.name: tuple(reversed(t.shape)) for t in info.tensors}  # ggml ne is (in, out)
    names = gguf.get_tensor_name_map(arch, n_layer)
    shapes = {}
    for i in range(n_layer):
        for suffix in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            hf = f"model.layers.{i}.{suffix}.weight"
            if (name := names.get_name(hf, try_suffixes=(".weight",))) in by_gguf:
                shapes[hf] = by_gguf[name]
    return BaseModel(str(file), arch, n_layer, n_head, n_head_kv, shapes)


def convert_lora(peft_dir: Path, base: Path, output: Path, outtype: str = "f32") -> LoraResult:
    """Write ``peft_dir``'s adapter as a GGUF LoRA for ``base``; every check runs before the file opens."""
    if outtype not in LORA_OUTTYPES:
        raise UsageError(f"unknown adapter outtype {outtype!r}; choose one of {', '.join(LORA_OUTTYPES)}")
    adapter = open_peft(peft_dir)
    model = base_model(base)
    check_base(adapter, model.shapes, model.description)
    output = check_writable_dir(Path(output))
    with atomic_path(output) as tmp:
        _write(adapter, model, tmp, LORA_OUTTYPES[outtype])
    ranks = {pair.rank for pair in adapter.pairs.values()}
    log.info("wrote LoRA adapter %s (%d weights)", output, len(adapter.pairs))
    return LoraResult(output, len(adapter.pairs), max(ranks), adapter.gguf_alpha())


def _write(adapter: PeftAdapter, model: BaseModel, path: Path, dtype: type) -> None:
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[model.arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, adapter.gguf_alpha())
    writer.add_name(adapter.path.resolve().name)
    writer.add_string("edgekit.converter", f"edgekit {__version__}")
    writer.add_string("edgekit.lora.source", str(adapter.path.resolve()))
    writer.add_bool("edgekit.lora.rslora", adapter.use_rslora)
    names = gguf.get_tensor_name_map(model.arch, model.n_layer)
    for weight, pair in adapter.pairs.items():
        a, b = read_pair(pair)  # (r, in), (out, r)
        if model.arch in PERMUTED_ARCHS and (heads := permute_heads(model, weight)):
            b = permute_rows(b, heads)  # (out, r): B's rows follow the weight's permuted rows
        name = names.get_name(weight, try_suffixes=(".weight",))
        if name is None:
            raise ModelFormatError(f"{weight} has no GGUF name for {gguf.MODEL_ARCH_NAMES[model.arch]}")
        writer.add_tensor(f"{name}.lora_a", a.astype(dtype))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b.astype(dtype)))
    write_gguf(writer, path)
