"""PEFT LoRA adapters (LoRA and QLoRA alike): read and check them, and merge them while converting.

A PEFT folder holds adapter_config.json and adapter_model.safetensors with, per adapted
nn.Linear, ``base_model.model.<module>.lora_A.weight`` (r, in) and ``.lora_B.weight`` (out, r).
PEFT adds ``scaling * B @ A`` to the module's weight, with scaling alpha / r, or alpha / sqrt(r)
under rsLoRA (use_rslora). QLoRA trains on a 4-bit base but saves an ordinary LoRA.
Anything the merge or llama.cpp's adapter format cannot express is refused, naming it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.checkpoint import TensorRef, read_header, read_json, to_float32
from edgekit.convert.llama import LAYER_TENSORS
from edgekit.errors import ModelFormatError, UnsupportedModel

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# PEFT's names: base_model.model.<module>.lora_A[.<adapter name>].weight
TENSOR_NAME = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
# The modules a LoRA may adapt: the attention and MLP projections of a Llama block.
PROJECTIONS = tuple(sorted({name.split(".")[-2] for name in LAYER_TENSORS if name.endswith("_proj.weight")}))
# adapter_config.json keys whose non-default values change what the adapter computes.
REFUSED_SETTINGS: dict[str, str] = {
    "use_dora": "a DoRA adapter (use_dora): its magnitude vectors have no place in a merge or in llama.cpp",
    "modules_to_save": "modules_to_save {value}: fully trained copies of base modules (resized embeddings?)",
    "fan_in_fan_out": "fan_in_fan_out: transposed (GPT-2 Conv1D) weights",
    "alpha_pattern": "alpha_pattern {value}: per-module alphas, which llama.cpp's one adapter.lora.alpha cannot express",
    "layer_replication": "layer_replication {value}: layers repeated by the adapter",
}


@dataclass(frozen=True)
class LoraPair:
    """One adapted weight: A (r, in) and B (out, r)."""

    module: str  # Hugging Face module, e.g. model.layers.0.self_attn.q_proj
    a: TensorRef
    b: TensorRef

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def weight(self) -> str:
        """The Hugging Face name of the base weight this pair adapts."""
        return f"{self.module}.weight"


@dataclass(frozen=True)
class PeftAdapter:
    """A checked PEFT LoRA: its scaling settings and its A/B pairs by base weight name."""

    path: Path
    r: int
    alpha: float
    use_rslora: bool
    pairs: dict[str, LoraPair]

    def scaling(self, pair: LoraPair) -> float:
        """PEFT's factor on B @ A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.alpha / (math.sqrt(pair.rank) if self.use_rslora else pair.rank)

    def gguf_alpha(self) -> float:
        """adapter.lora.alpha for llama.cpp, which scales by alpha / rank of each tensor pair.

        rsLoRA's alpha / sqrt(r) is (alpha * sqrt(r)) / r, so one rank is needed for it."""
        if not self.use_rslora:
            return self.alpha
        ranks = {pair.rank for pair in self.pairs.values()}
        if len(ranks) > 1:
            raise UnsupportedModel(f"{self.path}: an rsLoRA adapter with several ranks {sorted(ranks)} "
                                   "cannot be written with llama.cpp's one alpha (merge it with --lora instead)")
        return self.alpha * math.sqrt(ranks.pop())


@dataclass(frozen=True)
class LoraMerge:
    """One ``--lora PEFT_DIR[:SCALE]``: an adapter and the user's extra scale on it."""

    adapter: PeftAdapter
    scale: float = 1.0


def open_peft(path: Path) -> PeftAdapter:
    """Read and check a PEFT LoRA folder; refuse, naming it, whatever we cannot apply faithfully."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFormatError(f"{path} is not a folder (give the PEFT adapter folder with {CONFIG_FILE})")
    config = read_json(path / CONFIG_FILE, what="the PEFT adapter config")
    r, alpha, rank_pattern = _check_config(path, config)
    pairs = _pairs(path, _weights(path))
    for pair in pairs.values():
        expected = _rank_for(pair.module, r, rank_pattern)
        if pair.rank != expected or pair.b.shape[1] != pair.rank:
            raise ModelFormatError(
                f"{path}: {pair.module} has lora_A {list(pair.a.shape)} and lora_B {list(pair.b.shape)} but "
                f"{CONFIG_FILE} says rank {expected}; the config does not belong to these weights"
            )
    adapter = PeftAdapter(path, r, alpha, bool(config.get("use_rslora")), pairs)
    adapter.gguf_alpha()  # rsLoRA with mixed ranks fails here, not halfway through a conversion
    return adapter


def _check_config(path: Path, config: dict[str, Any]) -> tuple[int, float, dict[str, Any]]:
    where = f"{path / CONFIG_FILE}"
    if (kind := config.get("peft_type", "LORA")) != "LORA":
        raise UnsupportedModel(f"{where}: PEFT type {kind} is not supported (only LORA; QLoRA saves a LORA)")
    for key, what in REFUSED_SETTINGS.items():
        if config.get(key):
            raise UnsupportedModel(f"{where}: {what.format(value=config[key])} is not supported")
    if config.get("bias", "none") != "none":
        raise UnsupportedModel(f"{where}: bias {config['bias']!r} (trained biases) is not supported; train with bias='none'")
    targets = config.get("target_modules") or []
    refused = sorted(t for t in ([targets] if isinstance(targets, str) else targets) if t in ("embed_tokens", "lm_head"))
    if refused:
        raise UnsupportedModel(f"{where}: a LoRA on {', '.join(refused)} (embedding/output) is not supported; "
                               f"adapt only {', '.join(PROJECTIONS)}")
    try:
        r, alpha = int(config["r"]), float(config["lora_alpha"])
    except KeyError as exc:
        raise ModelFormatError(f"{where} lacks {exc.args[0]!r}; is this a LoRA adapter?") from None
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"{where}: malformed r or lora_alpha ({exc})") from None
    rank_pattern = config.get("rank_pattern") or {}
    if rank_pattern and config.get("use_rslora"):
        raise UnsupportedModel(f"{where}: rank_pattern with use_rslora (per-module rsLoRA scales) is not supported")
    return r, alpha, rank_pattern


def _rank_for(module: str, r: int, rank_pattern: dict[str, Any]) -> int:
    """The rank PEFT gives ``module``: the first rank_pattern key that names its tail, else r."""
    for key, rank in rank_pattern.items():
        if module == key or re.fullmatch(rf".*\.{key}", module):
            return int(rank)
    return r


def _weights(path: Path) -> dict[str, TensorRef]:
    file = path / WEIGHTS_FILE
    if not file.is_file():
        if (path / "adapter_model.bin").is_file():
            raise ModelFormatError(f"{path} holds adapter_model.bin (PyTorch pickle); save the adapter with "
                                   "safe_serialization=True to get adapter_model.safetensors")
        raise ModelFormatError(f"{file} is missing; is {path} a PEFT adapter folder?")
    return read_header(file)


def _pairs(path: Path, tensors: dict[str, TensorRef]) -> dict[str, LoraPair]:
    halves: dict[str, dict[str, TensorRef]] = {}
    for name, ref in tensors.items():
        match = TENSOR_NAME.match(name)
        if match is None:
            raise UnsupportedModel(f"{path}: tensor {name} is not a LoRA A/B weight of a projection "
                                   f"({_what_is(name)}); adapt only {', '.join(PROJECTIONS)}")
        module = match["module"]
        if module.rsplit(".", 1)[-1] not in PROJECTIONS:
            raise UnsupportedModel(f"{path}: a LoRA on {module} is not supported; adapt only {', '.join(PROJECTIONS)}")
        if len(ref.shape) != 2:
            raise ModelFormatError(f"{path}: {name} has shape {list(ref.shape)}; LoRA weights are matrices")
        halves.setdefault(module, {})[match["ab"]] = ref
    if not halves:
        raise ModelFormatError(f"{path / WEIGHTS_FILE} holds no LoRA weights")
    for module, found in halves.items():
        if len(found) != 2:
            raise ModelFormatError(f"{path}: {module} has lora_{next(iter(found))} without its partner (truncated save?)")
    return {f"{m}.weight": LoraPair(m, found["A"], found["B"]) for m, found in sorted(halves.items())}


def _what_is(name: str) -> str:
    if "lora_embedding" in name or "embed_tokens" in name:
        return "an embedding LoRA or resized embeddings"
    if "lm_head" in name:
        return "an lm_head LoRA or a trained output layer"
    if "modules_to_save" in name or "original_module" in name:
        return "a modules_to_save copy"
    if "lora_magnitude" in name:
        return "a DoRA magnitude vector"
    return "unknown to LoRA"


def check_base(adapter: PeftAdapter, shapes: dict[str, tuple[int, ...]], base: str) -> None:
    """Refuse an adapter trained for a model of another shape: every pair must fit its base weight."""
    for name, pair in adapter.pairs.items():
        if name not in shapes:
            raise ModelFormatError(f"{adapter.path} adapts {name}, which {base} does not have: "
                                   "the adapter was trained for another model (more layers?)")
        out_dim, in_dim = shapes[name]
        if pair.a.shape[1] != in_dim or pair.b.shape[0] != out_dim:
            raise ModelFormatError(
                f"{adapter.path} was trained for a model of another shape: {pair.module} needs a "
                f"[{pair.b.shape[0]}, {pair.a.shape[1]}] weight but {base} has [{out_dim}, {in_dim}]"
            )


def read_pair(pair: LoraPair) -> tuple[np.ndarray, np.ndarray]:
    """A (r, in) and B (out, r) as float64: adapters are small, and the merge wants the precision."""
    a = to_float32(pair.a.read_rows(0, pair.a.n_rows)).astype(np.float64)  # (r, in)
    b = to_float32(pair.b.read_rows(0, pair.b.n_rows)).astype(np.float64)  # (out, r)
    return a, b


@dataclass(frozen=True)
class LoraDelta:
    """The rows of sum(scale * scaling * B @ A) of one weight, computed a chunk of rows at a time."""

    terms: tuple[tuple[float, LoraPair], ...]  # (scale * scaling, pair)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        delta = None
        for factor, pair in self.terms:
            a = to_float32(pair.a.read_rows(0, pair.a.n_rows)).astype(np.float64)  # (r, in)
            b = to_float32(pair.b.read_rows(start, stop)).astype(np.float64)  # (rows, r)
            term = factor * (b @ a)  # (rows, in)
            delta = term if delta is None else delta + term
        assert delta is not None
        return delta


def delta_for(weight: str, merges: tuple[LoraMerge, ...]) -> LoraDelta | None:
    """What the merges add to the base weight ``weight`` (a Hugging Face name), or None."""
    terms = tuple((m.scale * m.adapter.scaling(m.adapter.pairs[weight]), m.adapter.pairs[weight])
                  for m in merges if weight in m.adapter.pairs)
    return LoraDelta(terms) if terms else None
