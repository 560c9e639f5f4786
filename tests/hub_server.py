"""A local HTTP server that answers the Hugging Face Hub's endpoints the way huggingface_hub calls them.

Only what `pull` touches: model info, the file tree, and HEAD/GET on /resolve with the
headers huggingface_hub reads (X-Repo-Commit, ETag, X-Linked-Etag, X-Linked-Size),
Range requests for resuming, and the Hub's X-Error-Code on 404s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

# Files the Hub stores with LFS: their HEAD carries X-Linked-Etag (sha256) and X-Linked-Size.
_LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".msgpack", ".onnx", ".model")


@dataclass
class FakeRepo:
    """One model repo: its files (one revision, "main", plus any tags) and its commit."""

    files: dict[str, bytes]
    tags: tuple[str, ...] = ()

    @property
    def sha(self) -> str:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + hashlib.sha1(self.files[name]).digest())
        return digest.hexdigest()

    def resolve(self, revision: str) -> str | None:
        return self.sha if revision in ("main", self.sha, *self.tags) else None


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None


@dataclass
class HubServer:
    """Serve ``repos`` on 127.0.0.1 at a free port; use as a context manager."""

    repos: dict[str, FakeRepo]
    drop_once: set[str] = field(default_factory=set)  # files whose first GET stops halfway
    seen: list[Seen] = field(default_factory=list)
    _open: set[socket.socket] = field(default_factory=set)

    def __enter__(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop listening and cut the keep-alive connections too, as a dead network would."""
        self._httpd.shutdown()
        self._httpd.server_close()
        for conn in list(self._open):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def gets(self, name: str) -> list[Seen]:
        """The GET requests for one file's content."""
        return [s for s in self.seen if s.method == "GET" and "/resolve/" in s.path and s.path.endswith("/" + name)]


_MODEL_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.hub._open.add(self.connection)

    def finish(self) -> None:
        self.hub._open.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        path = urlsplit(self.path).path
        self.hub.seen.append(Seen(self.command, unquote(path), self.headers.get("Range")))
        for pattern, handle in ((_TREE, self._tree), (_MODEL_INFO, self._model_info), (_RESOLVE, self._resolve)):
            match = pattern.match(path)
            if match:
                return handle(body, **{k: unquote(v) if v else v for k, v in match.groupdict().items()})
        self._error(404, "RepoNotFound")

    def _lookup(self, repo_id: str, rev: str | None) -> tuple[FakeRepo, str] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound")
            return None
        sha = repo.resolve(rev or "main")
        if sha is None:
            self._error(404, "RevisionNotFound")
            return None
        return repo, sha

    def _model_info(self, body: bool, repo: str, rev: str | None) -> None:
        found = self._lookup(repo, rev)
        if found:
            info = {"id": repo, "modelId": repo, "sha": found[1], "private": False,
                    "siblings": [{"rfilename": name} for name in sorted(found[0].files)]}
            self._json(info, body)

    def _tree(self, body: bool, repo: str, rev: str, path: str | None) -> None:
        found = self._lookup(repo, rev)
        if found:
            prefix = f"{path}/" if path else ""
            entries = [_tree_entry(name, data) for name, data in sorted(found[0].files.items()) if name.startswith(prefix)]
            self._json(entries, body)

    def _resolve(self, body: bool, repo: str, rev: str, path: str) -> None:
        found = self._lookup(repo, rev)
        if not found:
            return
        data = found[0].files.get(path)
        if data is None:
            return self._error(404, "EntryNotFound", {"X-Repo-Commit": found[1]})
        start = _range_start(self.headers.get("Range"), len(data))
        self.send_response(206 if start else 200)
        for key, value in _file_headers(path, data, found[1]).items():
            self.send_header(key, value)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if body:
            self._send_body(path, data[start:])

    def _send_body(self, path: str, data: bytes) -> None:
        if path in self.hub.drop_once:
            self.hub.drop_once.discard(path)
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the peer sees a body cut short
            return
        self.wfile.write(data)

    def _json(self, payload: object, body: bool) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        data = json.dumps({"error": code}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(name: str) -> bool:
    return name.endswith(_LFS_SUFFIXES)


def _tree_entry(name: str, data: bytes) -> dict[str, object]:
    entry: dict[str, object] = {"type": "file", "oid": _git_blob_id(data), "size": len(data), "path": name}
    if _is_lfs(name):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def _file_headers(name: str, data: bytes, commit: str) -> dict[str, str]:
    headers = {"X-Repo-Commit": commit, "ETag": f'"{_git_blob_id(data)}"', "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
    if _is_lfs(name):
        headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
        headers["X-Linked-Size"] = str(len(data))
    return headers


def _range_start(header: str | None, size: int) -> int:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    start = int(match.group(1)) if match else 0
    return start if start < size else 0
