"""Depth up-scaling, SOLAR's recipe: stack a model's layers into a deeper one, as a streaming copy.

Take an n-layer model twice, drop the last m layers of the first copy and the first m of the
second: layers 0..n-m-1 then m..n-1, 2(n-m) in all (SOLAR: n=32, m=8 -> 48). Works on a Hugging
Face checkpoint (writes a checkpoint for continued pretraining) and on a GGUF (GGUF -> GGUF, any
quant type: tensors are copied byte for byte, never dequantized). One tensor chunk in memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import gguf
import numpy as np

from edgekit import __version__
from edgekit.atomic import atomic_path, check_writable_dir, write_text
from edgekit.convert.checkpoint import INDEX_FILE, SINGLE_FILE, TensorRef, open_checkpoint
from edgekit.convert.writer import write_gguf
from edgekit.errors import ModelFormatError, OutputError, UsageError

DEFAULT_DROP = 8  # SOLAR-10.7B: 32 layers, drop 8 -> 48
COPY_CHUNK = 16 << 20  # bytes per read while copying a tensor
HF_LAYER = re.compile(r"^(?P<head>.*\.layers\.)(?P<index>\d+)(?P<tail>\..+)$")
GGUF_LAYER = re.compile(r"^(?P<head>blk\.)(?P<index>\d+)(?P<tail>\..+)$")
WEIGHT_FILES = re.compile(r"^(model.*\.safetensors(\.index\.json)?|.*\.(bin|pth|pt|gguf))$")


@dataclass(frozen=True)
class UpscaleResult:
    """What upscale() wrote."""

    path: Path
    source_layers: int
    layers: tuple[int, ...]  # output block i is source block layers[i]
    tensor_count: int


def stacked_layers(n_layer: int, drop: int | None = None, layers: str | None = None) -> tuple[int, ...]:
    """The source layer of each output layer: SOLAR's two trimmed copies, or an explicit list."""
    if layers is not None and drop is not None:
        raise UsageError("give --drop or --layers, not both")
    if layers is not None:
        return parse_layers(layers, n_layer)
    drop = DEFAULT_DROP if drop is None else drop
    if not 0 <= drop < n_layer:
        raise UsageError(f"--drop {drop} is impossible for a {n_layer}-layer model: drop 0 to {n_layer - 1} layers")
    return tuple(range(n_layer - drop)) + tuple(range(drop, n_layer))


def parse_layers(text: str, n_layer: int) -> tuple[int, ...]:
    """"0-23,8-31" -> (0, ..., 23, 8, ..., 31): inclusive ranges and single layers, in order."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise UsageError(f"bad --layers {text!r}: {part!r} is not a layer or a range like 0-23")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise UsageError(f"bad --layers {text!r}: range {part} runs backwards (write {last}-{first}?)")
        if last >= n_layer:
            raise UsageError(f"bad --layers {text!r}: the model has layers 0-{n_layer - 1}, not {last}")
        out.extend(range(first, last + 1))
    return tuple(out)


def describe_layers(layers: Iterable[int]) -> str:
    """(0, 1, 2, 1, 2, 3) -> "0-2,1-3": the list as --layers takes it."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


def upscale(source: Path, output: Path, drop: int | None = None, layers: str | None = None) -> UpscaleResult:
    """Up-scale a checkpoint folder into the folder ``output``, or a GGUF file into the file ``output``."""
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve():
        raise UsageError(f"the output {output} is the source: write the up-scaled model elsewhere")
    if source.is_dir():
        return _upscale_checkpoint(source, output, drop, layers)
    if source.is_file():
        return _upscale_gguf(source, output, drop, layers)
    raise UsageError(f"{source} does not exist (give a checkpoint folder or a GGUF file)")


# --- shared: renaming and byte copies --------------------------------------------------------


def _plan(names: list[str], pattern: re.Pattern[str], layers: tuple[int, ...]) -> list[tuple[str, str]]:
    """(output name, source name) in file order: what precedes the blocks, the new blocks, the rest."""
    by_layer: dict[int, list[re.Match[str]]] = {}
    before, after = [], []
    for name in names:
        if match := pattern.match(name):
            by_layer.setdefault(int(match["index"]), []).append(match)
        else:
            (after if by_layer else before).append((name, name))
    blocks = [(f"{m['head']}{new}{m['tail']}", m.string) for new, old in enumerate(layers) for m in by_layer[old]]
    return before + blocks + after


def _remap_per_layer(value: Any, n_layer: int, layers: tuple[int, ...]) -> Any:
    """A per-layer list (e.g. config's layer_types) follows the layers; anything else is kept."""
    if isinstance(value, list) and len(value) == n_layer and n_layer > 1:
        return [value[i] for i in layers]
    return value


def copy_bytes(file: Path, offset: int, nbytes: int, fout: IO[bytes], buffer: bytearray | None = None) -> None:
    """Copy ``nbytes`` at ``offset`` of ``file`` to ``fout``, a chunk at a time."""
    buffer = buffer or bytearray(min(COPY_CHUNK, max(nbytes, 1)))
    fd = os.open(file, os.O_RDONLY)
    try:
        done = 0
        while done < nbytes:
            view = memoryview(buffer)[: min(len(buffer), nbytes - done)]
            got = os.preadv(fd, [view], offset + done)
            if got <= 0:
                raise ModelFormatError(f"{file} ends early (truncated?): re-download or re-create it")
            fout.write(view[:got])
            done += got
    finally:
        os.close(fd)


# --- Hugging Face checkpoints ----------------------------------------------------------------


def _upscale_checkpoint(folder: Path, output: Path, drop: int | None, layers_text: str | None) -> UpscaleResult:
    checkpoint = open_checkpoint(folder)
    text = checkpoint.config.get("text_config", checkpoint.config)
    try:
        n_layer = int(text["num_hidden_layers"])
    except (KeyError, TypeError, ValueError):
        raise ModelFormatError(f"{folder}/config.json has no num_hidden_layers") from None
    layers = stacked_layers(n_layer, drop, layers_text)
    refs = sorted(checkpoint.tensors.values(), key=lambda r: (str(r.file), r.offset))
    plan = _plan([r.name for r in refs], HF_LAYER, layers)
    sources = {r.name: r for r in refs}
    _prepare_folder(output)
    shards = _shards([(new, sources[old]) for new, old in plan], _shard_limit(checkpoint.path))
    metadata = {"format": "pt", "edgekit.upscale.layers": describe_layers(layers),
                "edgekit.upscale.source": str(folder.resolve()), "edgekit.converter": f"edgekit {__version__}"}
    names = [SINGLE_FILE] if len(shards) == 1 else [f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                                                    for i in range(1, len(shards) + 1)]
    for name, shard in zip(names, shards):
        _write_safetensors(output / name, shard, metadata)
    if len(shards) > 1:
        weight_map = {new: name for name, shard in zip(names, shards) for new, _ in shard}
        total = sum(ref.nbytes for shard in shards for _, ref in shard)
        write_text(output / INDEX_FILE, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    _copy_side_files(folder, output)
    write_text(output / "config.json", _config(checkpoint.config, n_layer, layers))  # last: the folder is complete
    return UpscaleResult(output, n_layer, layers, len(plan))


def _prepare_folder(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise OutputError(f"{output} exists and is not an empty folder: give a new folder for the checkpoint")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {output}: {exc.strerror} (choose a writable folder)") from exc


def _shard_limit(folder: Path) -> int | None:
    """Shards as large as the source's largest (None: one file, as the source)."""
    if not (folder / INDEX_FILE).is_file():
        return None
    return max(p.stat().st_size for p in folder.glob("model-*.safetensors"))


def _shards(tensors: list[tuple[str, TensorRef]], limit: int | None) -> list[list[tuple[str, TensorRef]]]:
    shards: list[list[tuple[str, TensorRef]]] = [[]]
    size = 0
    for new, ref in tensors:
        if limit is not None and shards[-1] and size + ref.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append((new, ref))
        size += ref.nbytes
    return shards


def _write_safetensors(path: Path, tensors: list[tuple[str, TensorRef]], metadata: dict[str, str]) -> None:
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for new, ref in tensors:
        header[new] = {"dtype": ref.dtype, "shape": list(ref.shape), "data_offsets": [offset, offset + ref.nbytes]}
        offset += ref.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data to 8 bytes
    buffer = bytearray(COPY_CHUNK)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _, ref in tensors:
            copy_bytes(ref.file, ref.offset, ref.nbytes, f, buffer)


def _copy_side_files(folder: Path, output: Path) -> None:
    """Tokenizer, generation config, chat template, ...: every plain file but the weights and config."""
    for file in sorted(folder.iterdir()):
        if file.is_file() and not file.name.startswith(".") and file.name != "config.json" and not WEIGHT_FILES.match(file.name):
            with atomic_path(output / file.name) as tmp:
                shutil.copyfile(file, tmp)


def _config(config: dict[str, Any], n_layer: int, layers: tuple[int, ...]) -> str:
    def deeper(section: dict[str, Any]) -> dict[str, Any]:
        out = {key: _remap_per_layer(value, n_layer, layers) for key, value in section.items()}
        out["num_hidden_layers"] = len(layers)
        return out

    new = deeper(config) if "text_config" not in config else {**config, "text_config": deeper(config["text_config"])}
    return json.dumps(new, indent=2, sort_keys=True) + "\n"


# --- GGUF files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ByteRange:
    """A tensor's bytes in a GGUF, shaped as gguf-py presents it; GGUFWriter calls tofile()."""

    file: Path
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: np.dtype

    def tofile(self, fout: IO[bytes]) -> None:
        copy_bytes(self.file, self.offset, self.nbytes, fout)


def _upscale_gguf(file: Path, output: Path, drop: int | None, layers_text: str | None) -> UpscaleResult:
    from edgekit.gguf_file import validate

    info = validate(file)
    arch, n_layer = info.architecture, info.block_count
    if info.metadata.get("general.type", "model") != "model" or not n_layer:
        raise ModelFormatError(f"{file} is not a model with layers ({arch}, block_count {n_layer}): nothing to up-scale")
    layers = stacked_layers(n_layer, drop, layers_text)
    reader = gguf.GGUFReader(file)
    plan = _plan([t.name for t in reader.tensors], GGUF_LAYER, layers)
    output = check_writable_dir(output)
    writer = gguf.GGUFWriter(path=None, arch=arch)
    _copy_metadata(reader, writer, arch, n_layer, layers)
    writer.add_uint32(f"{arch}.block_count", len(layers))
    writer.add_string("edgekit.upscale.source", str(file.resolve()))
    writer.add_string("edgekit.upscale.layers", describe_layers(layers))
    writer.add_uint32("edgekit.upscale.source_block_count", n_layer)
    tensors = {t.name: t for t in reader.tensors}
    for new, old in plan:
        t = tensors[old]
        data = _ByteRange(file, t.data_offset, t.n_bytes, tuple(t.data.shape), t.data.dtype)
        writer.add_tensor(new, data, raw_shape=data.shape, raw_dtype=t.tensor_type)  # type: ignore[arg-type]
    with atomic_path(output) as tmp:
        write_gguf(writer, tmp)
    return UpscaleResult(output, n_layer, layers, len(plan))


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, arch: str, n_layer: int, layers: tuple[int, ...]) -> None:
    """Every key but those GGUFWriter writes itself, as gguf-py's gguf_new_metadata copies them."""
    for field in reader.fields.values():
        if field.name in (gguf.Keys.General.ARCHITECTURE, f"{arch}.block_count") or field.name.startswith(("GGUF.", "edgekit.upscale.")):
            continue
        if field.name == gguf.Keys.General.ALIGNMENT:
            writer.add_custom_alignment(int(field.contents()))
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name.startswith(f"{arch}."):
            value = _remap_per_layer(value, n_layer, layers)
        writer.add_key_value(field.name, value, kind, sub_type=sub_type)

