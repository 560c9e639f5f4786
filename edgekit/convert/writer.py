"""convert(): check a Llama-family checkpoint completely, then stream it into one GGUF file.

Every check (architecture, config, tokenizer, shards, tensor names and shapes, output folder)
runs before the output file is opened; the file itself is written atomically.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edgekit import __version__
from edgekit.atomic import atomic_path, check_writable_dir
from edgekit.convert.checkpoint import Checkpoint, open_checkpoint
from edgekit.convert.llama import ARCHITECTURES, LlamaParams, add_hparams, check_tensors, llama3_rope_factors, permute_heads
from edgekit.convert.lora import LoraMerge, check_base, delta_for
from edgekit.convert.stream import OUTTYPES, StreamedTensor, Workspace, tensor_type
from edgekit.convert.vocab import Vocab, load_vocab
from edgekit.errors import UsageError

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (GGUF tensor name, tensors written, tensor count)
SOURCE_FILE = ".edgekit-source.json"  # optional {"repo": ..., "revision": ...} beside config.json
HF_CACHE_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<revision>[0-9a-f]{7,64})$")


@dataclass(frozen=True)
class ConvertResult:
    """What convert_checkpoint() wrote."""

    path: Path
    outtype: str
    architecture: str
    tensor_count: int
    size_bytes: int
    seconds: float


@dataclass(frozen=True)
class ConversionPlan:
    """A fully checked checkpoint, ready to write: nothing here touches the output."""

    checkpoint: Checkpoint
    params: LlamaParams
    vocab: Vocab
    tensors: list[tuple[str, StreamedTensor]]  # (GGUF name, source) in file order
    outtype: str
    merges: tuple[LoraMerge, ...] = ()  # LoRA adapters merged into the weights


def convert(hf_dir: Path, output: Path, outtype: str = "f16", progress: Progress | None = None,
            merges: tuple[LoraMerge, ...] = ()) -> Path:
    """Convert the checkpoint in ``hf_dir`` to the GGUF file ``output``; return its path."""
    return convert_checkpoint(hf_dir, output, outtype, progress, merges).path


def convert_checkpoint(hf_dir: Path, output: Path, outtype: str = "f16", progress: Progress | None = None,
                       merges: tuple[LoraMerge, ...] = ()) -> ConvertResult:
    """convert(), returning what was written and how long it took; ``merges`` are LoRAs merged on the way."""
    started = time.perf_counter()
    plan = plan_conversion(Path(hf_dir), outtype, merges)
    output = check_writable_dir(Path(output))
    with atomic_path(output) as tmp:
        _write(plan, tmp, progress)
    result = ConvertResult(
        path=output,
        outtype=outtype,
        architecture=plan.params.architecture,
        tensor_count=len(plan.tensors) + (llama3_rope_factors(plan.params) is not None),
        size_bytes=output.stat().st_size,
        seconds=time.perf_counter() - started,
    )
    log.info("converted %s to %s (%d tensors, %.1f s)", hf_dir, output, result.tensor_count, result.seconds)
    return result


def convert_to_levels(hf_dir: Path, output: Path, levels: Sequence[str], outtype: str = "f16", *,
                      progress: Progress | None = None, quantize_progress: Callable[[Any], None] | None = None,
                      merges: tuple[LoraMerge, ...] = ()) -> Iterator[tuple[Path, str]]:
    """`convert --quant`: convert to a scratch file beside ``output``, then quantize it to each level.

    ``output`` names the quantized file (one level) or the stem of one file per level
    (OUT-Q4_K_M.gguf, ...); the converted file is not kept. Yields (path, level) as each is
    written. The level names are checked first, so a typo fails before minutes of converting.
    """
    from edgekit.quantize import level_name, quantize_file  # llama_cpp: only when quantizing

    levels = [level_name(level) for level in levels]
    check_writable_dir(output)
    with tempfile.TemporaryDirectory(dir=output.resolve().parent, prefix=".edgekit-convert-") as scratch:
        converted = convert_checkpoint(hf_dir, Path(scratch) / f"model.{outtype}.gguf", outtype, progress, merges).path
        for level in levels:
            out = output if len(levels) == 1 else output.with_name(f"{output.stem}-{level}{output.suffix}")
            quantize_file(converted, level, out, progress=quantize_progress)
            yield out, level


def plan_conversion(hf_dir: Path, outtype: str, merges: tuple[LoraMerge, ...] = ()) -> ConversionPlan:
    """Read and check everything about the checkpoint; raise before any output exists."""
    if outtype not in OUTTYPES:
        raise UsageError(f"unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    checkpoint = open_checkpoint(hf_dir)
    params = LlamaParams.from_config(checkpoint.config)
    vocab = load_vocab(hf_dir, params.vocab, params.arch)
    sources = check_tensors(params, checkpoint.tensors)
    for merge in merges:
        check_base(merge.adapter, {name: ref.shape for name, ref in sources.items()}, str(hf_dir))
    names = gguf.get_tensor_name_map(ARCHITECTURES[params.architecture], params.n_layer)
    tensors, workspace = [], Workspace()
    for hf_name, ref in sorted(sources.items(), key=lambda item: (str(item[1].file), item[1].offset)):
        streamed = StreamedTensor(ref, tensor_type(ref, outtype), permute_heads(params, hf_name), workspace=workspace,
                                  delta=delta_for(hf_name, merges))
        tensors.append((names.get_name(hf_name, try_suffixes=(".weight", ".bias")), streamed))
    return ConversionPlan(checkpoint=checkpoint, params=params, vocab=vocab, tensors=tensors, outtype=outtype,
                          merges=tuple(merges))


def _write(plan: ConversionPlan, path: Path, progress: Progress | None) -> None:
    arch = ARCHITECTURES[plan.params.architecture]
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    _add_metadata(writer, plan)
    written = itertools.count(1)
    for name, tensor in plan.tensors:
        if progress is not None:
            tensor = replace(tensor, on_written=functools.partial(_report, progress, name, written, len(plan.tensors)))
        raw_dtype = None if tensor.dtype.kind == "f" else tensor.qtype
        writer.add_tensor(name, tensor, raw_dtype=raw_dtype)  # type: ignore[arg-type]  # quacks like an ndarray
    if (factors := llama3_rope_factors(plan.params)) is not None:
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors)
    write_gguf(writer, path)


def write_gguf(writer: gguf.GGUFWriter, path: Path) -> None:
    """Write what ``writer`` holds (header, metadata, tensors streamed in order) to ``path``, and close it."""
    try:
        writer.write_header_to_file(path=path)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _report(progress: Progress, name: str, written: Iterator[int], total: int) -> None:
    progress(name, next(written), total)


def _add_metadata(writer: gguf.GGUFWriter, plan: ConversionPlan) -> None:
    source = source_of(plan.checkpoint.path)
    _model_metadata(plan, source).set_gguf_meta_model(writer)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_file_type(OUTTYPES[plan.outtype][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_hparams(writer, plan.params)
    plan.vocab.add_to(writer)
    for key, value in source.items():
        writer.add_string(f"edgekit.source.{key}", value)
    writer.add_string("edgekit.converter", f"edgekit {__version__}")
    if plan.merges:  # provenance: which adapters (and scales) this file has merged in
        writer.add_array("edgekit.lora.merged", [f"{m.adapter.path.resolve()}:{m.scale:g}" for m in plan.merges])
    if plan.params.sliding_window is not None:
        writer.add_uint32("edgekit.sliding_window", int(plan.params.sliding_window))  # recorded; llama.cpp ignores it


def source_of(hf_dir: Path) -> dict[str, str]:
    """Where the checkpoint came from: the folder, and the Hub repo and revision when known."""
    folder = hf_dir.resolve()
    source = {"dir": str(folder)}
    if match := HF_CACHE_SNAPSHOT.search(str(folder)):
        source.update(repo=f"{match['org']}/{match['name']}", revision=match["revision"])
    record = folder / SOURCE_FILE
    if record.is_file():
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            source.update({k: str(data[k]) for k in ("repo", "revision") if data.get(k)})
        except (OSError, ValueError, TypeError):
            log.warning("ignoring unreadable %s", record)
    return source


def _model_metadata(plan: ConversionPlan, source: dict[str, str]) -> gguf.Metadata:
    """general.*: gguf-py's Metadata, filled as llama.cpp's converter fills it (model card, folder-name
    heuristics, generation_config's sampling defaults, size label), named after the Hub repo when known."""
    folder = plan.checkpoint.path.resolve()
    n_params = sum(int(np.prod(tensor.source.shape)) for _, tensor in plan.tensors)
    repo = source.get("repo")
    metadata = gguf.Metadata.load(None, folder, repo.split("/")[-1] if repo else None, n_params)
    metadata.name = metadata.name or folder.name  # llama.cpp's last resort too
    if repo:
        metadata.source_url = f"https://huggingface.co/{repo}"
    if metadata.size_label is None:
        metadata.size_label = gguf.size_label(n_params, 0, 0, 0)
    if metadata.sampling_penalty_repeat is None:  # newer gguf-py (llama.cpp's own) reads transformers' name too
        metadata.sampling_penalty_repeat = gguf.Metadata.load_generation_config(folder).get("repetition_penalty")
    return metadata
