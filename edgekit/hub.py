"""Pull a GGUF file or a safetensors checkpoint from the Hugging Face Hub into its cache.

huggingface_hub does the transfer: its standard cache (HF_HUB_CACHE), offline mode from
that cache, and resuming a transfer that drops mid-file. We choose which files to fetch
and turn its many exceptions into one HubError line that says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.utils import validate_repo_id
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from edgekit import gguf_file
from edgekit.errors import HubError, UsageError

log = logging.getLogger(__name__)

# What a checkpoint needs for `edgekit convert`: config, tokenizer, weights and their index.
# No .bin/.pt/.msgpack/.onnx: pickles are unsafe and the rest are other frameworks' copies.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.model", "tokenizer*", "*.jinja"]

_SPLIT_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def pull(
    repo: str,
    file: str | None = None,
    quant: str | None = None,
    revision: str | None = None,
    offline: bool = False,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
) -> Path:
    """Fetch ``file``, the GGUF of level ``quant``, or the repo's checkpoint; return its local path.

    ``cache_dir`` and ``endpoint`` default to huggingface_hub's (HF_HUB_CACHE, HF_ENDPOINT).
    """
    if file and quant:
        raise UsageError("give --file or --quant, not both")
    _check_repo_id(repo)
    hub = _Hub(repo, revision, offline or constants.HF_HUB_OFFLINE, cache_dir, endpoint)
    with hub.errors(file):
        if file:
            return _checked(hub.download(file))
        files = hub.list_files()
        if quant:
            return _checked(_download_all(hub, pick_quant(files, quant, repo)))
        return _pull_default(hub, files)


def _check_repo_id(repo: str) -> None:
    """A malformed id is the user's typo, not a network or Hub problem: say so before asking."""
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise UsageError(f"{repo!r} is not a Hub repository id: give OWNER/NAME, "
                         "e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0") from None


def pick_quant(files: list[str], quant: str, repo: str = "the repo") -> list[str]:
    """The GGUF file (or the shards of one split file) whose name carries level ``quant``."""
    level = re.compile(rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])", re.IGNORECASE)
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    matches = sorted(f for f in ggufs if level.search(Path(f).name))
    if not matches:
        raise HubError(f"{repo} has no GGUF file for {quant}; its GGUF files: {_listing(ggufs)}")
    if len({_SPLIT_SHARD.sub("", m) for m in matches}) > 1:
        raise HubError(f"{repo} has several GGUF files for {quant}: {_listing(matches)}; pick one with --file")
    return matches


def _pull_default(hub: _Hub, files: list[str]) -> Path:
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    if any(f.endswith(".safetensors") for f in files):
        return Path(hub.snapshot(CHECKPOINT_PATTERNS))
    if len(ggufs) == 1:
        return _checked(hub.download(ggufs[0]))
    if ggufs:
        raise HubError(f"{hub.repo} has several GGUF files: {_listing(ggufs)}; choose one with --quant LEVEL or --file NAME")
    raise HubError(f"{hub.repo} has no GGUF or safetensors files ({_listing(files)}); edgekit needs one or the other")


def _download_all(hub: _Hub, names: list[str]) -> Path:
    """Download every shard of a split GGUF; llama.cpp opens the first and finds the rest beside it."""
    paths = [hub.download(name) for name in names]
    return paths[0]


def _checked(path: Path) -> Path:
    """A GGUF that arrived damaged fails here, with the cache path, not later inside llama.cpp."""
    if path.suffix.lower() == ".gguf" and not _SPLIT_SHARD.search(path.name):
        gguf_file.validate(path)
    return path


def _listing(names: list[str], limit: int = 12) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class _Hub:
    """One repo at one revision, online or from the cache only."""

    def __init__(self, repo: str, revision: str | None, offline: bool, cache_dir: Path | None, endpoint: str | None):
        self.repo, self.revision, self.offline = repo, revision, offline
        self.cache_dir = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")

    def download(self, name: str) -> Path:
        log.info("fetching %s from %s", name, self.repo)
        return Path(
            hf_hub_download(
                self.repo, name, revision=self.revision, cache_dir=self.cache_dir,
                local_files_only=self.offline, endpoint=self.endpoint,
            )
        )

    def snapshot(self, patterns: list[str]) -> Path:
        log.info("fetching the checkpoint of %s (%s)", self.repo, ", ".join(patterns))
        return Path(
            snapshot_download(
                self.repo, revision=self.revision, cache_dir=self.cache_dir, allow_patterns=patterns,
                local_files_only=self.offline, endpoint=self.endpoint,
            )
        )

    def list_files(self) -> list[str]:
        """The repo's files; offline (or with the network down) the ones already in the cache."""
        if not self.offline:
            try:
                return self.remote_files()
            except (httpx2.ConnectError, httpx2.TimeoutException) as exc:
                log.warning("cannot reach %s (%s); looking in the cache", self.endpoint, exc)
        return self.cached_files()

    def remote_files(self) -> list[str]:
        # model_info fails fast when the network is down; list_repo_files retries for ~25 s first.
        info = HfApi(endpoint=self.endpoint).model_info(self.repo, revision=self.revision)
        return sorted(s.rfilename for s in info.siblings or [])

    def cached_files(self) -> list[str]:
        snapshot = self._cached_snapshot()
        if snapshot is None:
            raise HubError(self._not_cached(f"nothing of {self.repo} is in the cache {self.cache_dir}"))
        return sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())

    def _cached_snapshot(self) -> Path | None:
        folder = self.cache_dir / f"models--{self.repo.replace('/', '--')}"
        revision = self.revision or constants.DEFAULT_REVISION
        ref = folder / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else revision
        snapshot = folder / "snapshots" / commit
        return snapshot if snapshot.is_dir() else None

    def _not_cached(self, what: str) -> str:
        if self.offline:
            return f"{what}, and offline mode is on: pull it once online (without --offline, HF_HUB_OFFLINE unset)"
        return f"{what}, and the Hub at {self.endpoint} cannot be reached: check the network (or HF_ENDPOINT) and retry"

    def _listing_or_hint(self) -> str:
        try:
            return _listing(self.remote_files())
        except Exception:  # only a hint for an error message; the real error follows
            return "(could not list them)"

    @contextlib.contextmanager
    def errors(self, file: str | None) -> Iterator[None]:
        """Turn huggingface_hub's exceptions into one HubError line with the way out."""
        at = f" at revision {self.revision}" if self.revision else ""
        try:
            yield
        except GatedRepoError:
            raise HubError(f"{self.repo} is gated: accept its terms on the Hub, then log in (hf auth login)") from None
        except RepositoryNotFoundError:
            raise HubError(
                f"repository {self.repo} not found on {self.endpoint}: check the name "
                "(for a private repo, log in with `hf auth login` or set HF_TOKEN)"
            ) from None
        except RevisionNotFoundError:
            raise HubError(f"revision {self.revision!r} not found in {self.repo}: check the branch, tag or commit") from None
        except LocalEntryNotFoundError:
            raise HubError(self._not_cached(f"{file or 'the checkpoint'} of {self.repo}{at} is not in the cache")) from None
        except EntryNotFoundError:
            raise HubError(f"{file} not found in {self.repo}{at}; its files: {self._listing_or_hint()}") from None
        except OfflineModeIsEnabled:
            raise HubError(self._not_cached(f"{self.repo} is not in the cache")) from None
        except (httpx2.ConnectError, httpx2.TimeoutException, httpx2.RemoteProtocolError) as exc:
            raise HubError(f"cannot download from {self.endpoint} ({exc}): check the network and run again") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise HubError(f"the Hub at {self.endpoint} answered HTTP {status} for {self.repo}: retry later") from None
        except OSError as exc:
            if isinstance(exc, PermissionError) or "No space" in str(exc):
                raise HubError(f"cannot write the cache {self.cache_dir}: {exc}") from None
            if "Consistency check failed" in str(exc):
                raise HubError(f"the download of {file or self.repo} came back incomplete: run again to retry") from None
            raise

