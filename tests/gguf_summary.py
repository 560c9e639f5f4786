"""A comparable summary of a GGUF file: every metadata key with its value (long arrays as a
sha256 and a length) and every tensor's type, shape and data hash.

`python -m tests.gguf_summary FILE.gguf` prints it as JSON; tests/data/llama_cpp_<preset>.json
were made this way from llama.cpp's own convert_hf_to_gguf.py output on the tiny test checkpoints
(llama-cpp-python 0.3.36's llama.cpp, torch 2.13 CPU, transformers 4.57.6):

    python convert_hf_to_gguf.py <cache>/checkpoints-*/tiny-llama3-bf16-single-tied-s0 --outtype f32 --outfile x.gguf
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np


def _value(field: gguf.ReaderField) -> Any:
    value = field.contents()
    if isinstance(value, list) and len(value) > 16:
        digest = hashlib.sha256(json.dumps(value, ensure_ascii=False).encode()).hexdigest()
        return {"sha256": digest, "length": len(value)}
    if isinstance(value, float):
        return float(np.float32(value))
    return value


def summary(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    metadata = {key: _value(field) for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    tensors = {
        t.name: {"type": t.tensor_type.name, "shape": [int(d) for d in t.shape],
                 "sha256": hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest()}
        for t in reader.tensors
    }
    return {"metadata": metadata, "tensors": tensors}


if __name__ == "__main__":
    print(json.dumps(summary(Path(sys.argv[1])), indent=1, ensure_ascii=False, sort_keys=True))
