"""What a quant level costs in quality: perplexity, KL divergence and top-1 agreement.

Perplexity is computed the way llama.cpp's llama-perplexity computes it
(tools/perplexity/perplexity.cpp, ``perplexity()``), so the figures match it:
the text is tokenized once with BOS, cut into ``n_ctx``-token chunks, the first
token of each chunk is replaced by BOS, and only the second half of each chunk is
scored (logits at positions n_ctx/2 .. n_ctx-2 predict the next token), so the
model always has half a window of context. KL(reference || candidate) and top-1
agreement are taken over the same positions. Log-softmax runs in float64.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import gguf_file
from edgekit.bench.stats import percentile
from edgekit.errors import EngineError, ModelFormatError, UsageError
from edgekit.settings import default_threads

log = logging.getLogger(__name__)

DEFAULT_CTX = 256


@dataclass(frozen=True)
class QualityResult:
    """Quality figures of one GGUF file against the reference, over the same tokens."""

    path: str
    file_type: str | None
    size_bytes: int
    bits_per_weight: float
    is_reference: bool
    perplexity: float
    perplexity_stderr: float  # as llama-perplexity's "+/-"
    kl_mean: float  # mean KL(reference || this) per scored token, in nats
    kl_p99: float
    kl_max: float
    top1_agreement: float  # share of positions where the argmax token is the reference's, 0..1
    tokens_scored: int
    n_ctx: int
    chunks: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _ChunkPlan:
    """The tokens llama-perplexity would evaluate: one row of n_ctx tokens per chunk."""

    chunks: np.ndarray  # [n_chunk, n_ctx] int32, BOS already in column 0
    first: int  # n_ctx // 2: the first position whose logits are scored

    @property
    def targets(self) -> np.ndarray:
        """Next tokens scored in each chunk: [n_chunk, n_ctx - first - 1]."""
        return self.chunks[:, self.first + 1 :]


def calibration_text() -> str:
    """The public-domain calibration text shipped with edgekit."""
    return resources.files("edgekit.data").joinpath("calibration.txt").read_text(encoding="utf-8")


def compare_quality(
    reference: str | os.PathLike[str],
    candidates: Sequence[str | os.PathLike[str]],
    text: str | None = None,
    ctx: int = DEFAULT_CTX,
    chunks: int | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] = log.info,
) -> list[QualityResult]:
    """Perplexity of the reference and each candidate, with KL and top-1 against the reference.

    Returns the reference's result first, then one per candidate in the order given;
    ``progress`` hears of every chunk ("Q4_K_M.gguf: chunk 3/8").
    """
    if ctx < 8 or ctx % 2:
        raise UsageError(f"--ctx {ctx}: use an even context of at least 8 tokens (e.g. 256)")
    infos = [gguf_file.validate(p) for p in [reference, *candidates]]
    text = calibration_text() if text is None else text
    threads = threads or default_threads()[1]  # perplexity is prompt evaluation: the prompt threads
    with tempfile.TemporaryDirectory(prefix="edgekit-quality-") as tmp:
        with _loaded(infos[0].path, ctx, threads) as llm:
            plan = _plan_chunks(llm, text, ctx, chunks)
            ref_logits = _reference_logits(llm, plan, Path(tmp) / "reference.f32", _chunk_progress(infos[0], progress))
        results = [_score(infos[0], plan, ref_logits, ref_logits, True)]
        for info in infos[1:]:
            with _loaded(info.path, ctx, threads) as llm:
                _check_same_vocab(llm, infos[0].path, info.path, ref_logits.shape[-1])
                results.append(_score(info, plan, ref_logits, _logits(llm, plan, _chunk_progress(info, progress)), False))
    return results


@contextlib.contextmanager
def _loaded(path: Path, ctx: int, threads: int) -> Iterator[Any]:
    """A llama-cpp-python model with logits for every position, freed on exit."""
    from llama_cpp import Llama  # heavy import: only when quality is measured

    try:
        llm = Llama(
            model_path=str(path), n_ctx=ctx, n_batch=min(ctx, 512), n_ubatch=min(ctx, 512),
            logits_all=True, n_threads=threads, n_threads_batch=threads, verbose=False,
        )
    except (ValueError, RuntimeError) as exc:
        raise EngineError(f"{path}: llama.cpp could not load it ({exc}); check it with `edgekit inspect`") from None
    try:
        yield llm
    finally:
        llm.close()


def _plan_chunks(llm: Any, text: str, ctx: int, max_chunks: int | None) -> _ChunkPlan:
    """Tokenize once with BOS and cut into chunks, as llama-perplexity does."""
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    if len(tokens) < 2 * ctx:
        raise UsageError(
            f"the text tokenizes to only {len(tokens)} tokens; perplexity with --ctx {ctx} needs "
            f"at least {2 * ctx}: use a longer --text or a smaller --ctx"
        )
    n_chunk = len(tokens) // ctx
    if max_chunks is not None:
        if max_chunks < 1:
            raise UsageError(f"--chunks {max_chunks}: give at least 1")
        n_chunk = min(n_chunk, max_chunks)
    chunks = np.asarray(tokens[: n_chunk * ctx], dtype=np.int32).reshape(n_chunk, ctx)
    if _adds_bos(llm):
        chunks[:, 0] = llm.token_bos()
    return _ChunkPlan(chunks=chunks, first=ctx // 2)


def _adds_bos(llm: Any) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_get_add_bos(llm._model.vocab))


def _chunk_logits(llm: Any, chunk: np.ndarray, first: int) -> np.ndarray:
    """Logits at the scored positions of one chunk: [n_ctx - first - 1, n_vocab] float32."""
    llm.reset()  # fresh KV cache for every chunk: eval() drops cells past n_tokens = 0
    llm.eval(chunk.tolist())
    return np.array(llm.scores[first : len(chunk) - 1], dtype=np.float32)


def _chunk_progress(info: gguf_file.GGUFInfo, progress: Callable[[str], None]) -> Callable[[int, int], None]:
    return lambda done, total: progress(f"{info.path.name}: chunk {done}/{total}")


def _reference_logits(llm: Any, plan: _ChunkPlan, spill: Path, chunk_done: Callable[[int, int], None]) -> np.ndarray:
    """The reference's logits for every chunk, spilled to disk (they can be hundreds of MB)."""
    n_chunk, ctx = plan.chunks.shape
    shape = (n_chunk, ctx - plan.first - 1, llm.n_vocab())
    out = np.lib.format.open_memmap(spill, mode="w+", dtype=np.float32, shape=shape)
    for i, chunk in enumerate(plan.chunks):
        out[i] = _chunk_logits(llm, chunk, plan.first)
        chunk_done(i + 1, n_chunk)
    return out


def _logits(llm: Any, plan: _ChunkPlan, chunk_done: Callable[[int, int], None]) -> Iterator[np.ndarray]:
    for i, chunk in enumerate(plan.chunks):
        yield _chunk_logits(llm, chunk, plan.first)
        chunk_done(i + 1, len(plan.chunks))


def _check_same_vocab(llm: Any, ref: Path, cand: Path, n_vocab: int) -> None:
    if llm.n_vocab() != n_vocab:
        raise ModelFormatError(
            f"{cand}: its vocabulary has {llm.n_vocab()} tokens, the reference {ref} has {n_vocab}: "
            "compare files of the same model only"
        )


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """[tokens, vocab] float32 -> float64 log-probabilities, stable."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class _Tally:
    nll: list[np.ndarray]
    kl: list[np.ndarray]
    agree: int = 0


def _score(info: gguf_file.GGUFInfo, plan: _ChunkPlan, ref_logits: np.ndarray,
           cand_logits: Any, is_reference: bool) -> QualityResult:
    """Walk the chunks once, comparing this file's log-probabilities with the reference's."""
    tally = _Tally(nll=[], kl=[])
    for i, cand in enumerate(cand_logits):
        ref_lp = _log_softmax(ref_logits[i])  # [n_scored, vocab]
        cand_lp = ref_lp if is_reference else _log_softmax(cand)
        targets = plan.targets[i]
        tally.nll.append(-cand_lp[np.arange(len(targets)), targets])
        tally.kl.append(np.sum(np.exp(ref_lp) * (ref_lp - cand_lp), axis=-1))
        tally.agree += int(np.sum(ref_lp.argmax(axis=-1) == cand_lp.argmax(axis=-1)))
    return _result(info, plan, tally, is_reference)


def _result(info: gguf_file.GGUFInfo, plan: _ChunkPlan, tally: _Tally, is_reference: bool) -> QualityResult:
    nll = np.concatenate(tally.nll)
    kl = np.maximum(np.concatenate(tally.kl), 0.0)  # rounding can dip a hair below 0
    mean_nll = float(nll.mean())
    # llama-perplexity's error bar: sqrt(var(nll) / (count - 1)) scaled by ppl
    spread = float(np.mean(nll**2) - mean_nll**2)
    stderr = math.sqrt(spread / (len(nll) - 1)) * math.exp(mean_nll) if spread > 0 and len(nll) > 1 else 0.0
    return QualityResult(
        path=str(info.path), file_type=info.file_type, size_bytes=info.size,
        bits_per_weight=round(info.bits_per_weight, 3), is_reference=is_reference,
        perplexity=math.exp(mean_nll), perplexity_stderr=stderr,
        kl_mean=float(kl.mean()), kl_p99=percentile(kl.tolist(), 99), kl_max=float(kl.max()),
        top1_agreement=tally.agree / len(nll), tokens_scored=len(nll),
        n_ctx=int(plan.chunks.shape[1]), chunks=int(plan.chunks.shape[0]),
    )


def quality_table(results: Sequence[QualityResult]) -> list[dict[str, Any]]:
    """Rows for a terminal table: one per file, reference first."""
    return [
        {
            "file": Path(r.path).name + (" (ref)" if r.is_reference else ""),
            "type": r.file_type or "?",
            "size MB": f"{r.size_bytes / 1e6:.1f}",
            "bpw": f"{r.bits_per_weight:.2f}",
            "PPL": f"{r.perplexity:.6g} ± {r.perplexity_stderr:.3g}",
            "KL mean": f"{r.kl_mean:.5f}",
            "KL p99": f"{r.kl_p99:.4f}",
            "top-1 %": f"{100 * r.top1_agreement:.1f}",
        }
        for r in results
    ]


def read_text(path: str | os.PathLike[str]) -> str:
    """A --text file as UTF-8, with a one-line error when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--text {path}: cannot read it as UTF-8 text ({exc.__class__.__name__})") from None
