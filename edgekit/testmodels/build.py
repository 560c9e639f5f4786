"""make_test_model: write a complete Hugging Face Llama checkpoint folder with random weights."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from edgekit.atomic import write_bytes, write_text
from edgekit.errors import OutputError, UsageError
from edgekit.testmodels import bpe_files, hf_files
from edgekit.testmodels.presets import Preset, check_dtype, config_json, get_preset, parse_size
from edgekit.testmodels.tokenizer import tokenizer_model
from edgekit.testmodels.weights import (
    TensorSpec,
    index_json,
    nbytes,
    plan_shards,
    shard_filenames,
    tensor_specs,
    write_safetensors,
)

log = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"


def make_test_model(
    out_dir: Path | str,
    preset: str = "tiny",
    dtype: str = "bf16",
    shard_size: int | str | None = None,
    tied: bool | None = None,
    seed: int = 0,
) -> Path:
    """Write ``preset``'s checkpoint into ``out_dir`` and return the folder.

    One model.safetensors, or (with ``shard_size``, e.g. "1GB") shards and an index as
    transformers' save_pretrained writes them. ``tied`` defaults to what the real model does.
    Each file is written atomically and
    config.json last, so a failed run never leaves something that looks like a model.
    """
    shape = get_preset(preset)
    tied = shape.tied if tied is None else tied
    check_dtype(dtype)
    if seed < 0:
        raise UsageError(f"bad seed {seed}: it must be 0 or more")
    max_shard = parse_size(shard_size) if shard_size is not None else None
    folder = _prepare_dir(Path(out_dir))
    specs = tensor_specs(shape, tied)
    shards = plan_shards(specs, dtype, max_shard)
    _check_space(folder, sum(nbytes(s, dtype) for s in specs))
    written: list[Path] = []
    try:
        _write_all(folder, shape, specs, shards, dtype, tied, seed, written)
    except OSError as exc:
        _remove(written)
        raise OutputError(
            f"cannot write the model into {folder}: {exc} (free some space or choose another folder)"
        ) from exc
    except BaseException:
        _remove(written)
        raise
    _remove_stale_weights(folder, keep={p.name for p in written})
    return folder


def _write_all(
    folder: Path, shape: Preset, specs: list[TensorSpec], shards: list[list[TensorSpec]],
    dtype: str, tied: bool, seed: int, written: list[Path],
) -> None:
    for name, content in _tokenizer_files(shape).items():
        write = write_bytes if isinstance(content, bytes) else write_text
        written.append(write(folder / name, content))  # type: ignore[operator]
    filenames = shard_filenames(len(shards))
    for shard, filename in zip(shards, filenames):
        log.info("writing %s (%d tensors)", filename, len(shard))
        written.append(write_safetensors(folder / filename, shard, dtype, seed))
    if len(shards) > 1:
        written.append(write_text(folder / INDEX_NAME, index_json(shards, filenames, dtype)))
    written.append(write_text(folder / "config.json", config_json(shape, dtype, tied)))


def _tokenizer_files(shape: Preset) -> dict[str, str | bytes]:
    """SentencePiece families ship tokenizer.model; Llama 3 and Qwen2 a byte-level BPE tokenizer.json."""
    if shape.family in bpe_files.FAMILIES:
        return dict(bpe_files.small_files(shape))
    return {
        "tokenizer.model": tokenizer_model(),
        "tokenizer_config.json": hf_files.tokenizer_config_json(shape),
        "special_tokens_map.json": hf_files.special_tokens_map_json(shape),
        "generation_config.json": hf_files.generation_config_json(shape),
    }


def _prepare_dir(folder: Path) -> Path:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write a model into {folder}: it is a file (give a folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder}: {exc.strerror} (choose a writable folder)") from exc
    return folder


def _check_space(folder: Path, weight_bytes: int) -> None:
    free = shutil.disk_usage(folder).free
    needed = weight_bytes + (64 << 20)  # the tokenizer and JSON files, with room to spare
    if free < needed:
        raise OutputError(
            f"the model needs {needed / 1e9:.1f} GB but {folder} has {free / 1e9:.1f} GB free "
            "(free some space, choose another folder, or use a smaller preset or dtype)"
        )


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _remove_stale_weights(folder: Path, keep: set[str]) -> None:
    """Delete weight files of an earlier model in the folder, as save_pretrained does."""
    stale = [p for p in folder.glob("model*.safetensors*") if p.name not in keep]
    for path in stale:
        log.info("removing stale %s", path.name)
        path.unlink(missing_ok=True)
