"""Every example marked runnable in README.md and docs/*.md runs, as written, against a
generated model and a real Mosquitto; a doc that breaks fails here, named by file and line.

The marker is a word after the fenced block's language (README.md, "Tests and benchmarks"):
```sh runnable, ```sh runnable daemon, ```sh runnable server, ```toml runnable config,
```toml runnable profile. A `server` block starts a long-running command (`edgekit serve …`): it
must answer on the HTTP address it names, then stop cleanly on SIGTERM, as systemd stops it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgekit.errors import EdgekitError
from edgekit.profiles import load_profile
from edgekit.serve.mqtt.client import RequestClient, chat_body
from edgekit.serve.config import load_config

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
FENCE = re.compile(r"^(`{3,})(\w*)\s*(.*)$")
KINDS = {("sh", ""), ("sh", "daemon"), ("sh", "server"), ("toml", "config"), ("toml", "profile")}
DEVICE_ID = "kitchen-pi"  # the daemon the protocol examples talk to
EXAMPLE_TIMEOUT_S = 300


@dataclass(frozen=True)
class Example:
    """One runnable fenced block: where it is, its language and kind, its text."""

    path: Path
    line: int  # of the opening fence
    language: str
    kind: str  # "", "daemon", "config" or "profile"
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path}:{self.line}"


def examples(path: Path) -> list[Example]:
    """The fenced blocks of ``path`` whose info string says ``runnable``."""
    found, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(opening.group(1))), len(lines))
        words = opening.group(3).split()
        if words[:1] == ["runnable"]:
            kind = " ".join(words[1:])
            assert (opening.group(2), kind) in KINDS, f"{path}:{i + 1}: unknown marker {opening.group(0)!r}"
            found.append(Example(path, i + 1, opening.group(2), kind, "\n".join(lines[i + 1 : end]) + "\n"))
        i = end + 1
    return found


ALL = [example for doc in DOCS for example in examples(doc)]


# --- the scratch world the examples run in ----------------------------------------------------


@dataclass
class World:
    """Environment and stand-in files for the examples: the docs' names, a real broker."""

    env: dict[str, str]
    models: dict[str, Path]
    root: Path

    def folder(self, name: str) -> Path:
        """A fresh working folder holding the stand-ins under the names the docs use."""
        folder = self.root / name
        folder.mkdir(parents=True)
        for doc_name, model in self.models.items():
            (folder / doc_name).symlink_to(model)
        return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_q4_k_m, tiny_gguf_f16, tiny_qwen2_f32, mosquitto) -> World:
    root = tmp_path_factory.mktemp("docs")
    bin_dir, config = root / "bin", root / "config"
    bin_dir.mkdir()
    (bin_dir / "edgekit").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m edgekit.cli "$@"\n')
    (bin_dir / "edgekit").chmod(0o755)
    config.mkdir()
    for client in ("mosquitto_pub", "mosquitto_sub"):  # the clients' own defaults file: the test broker
        (config / client).write_text(f"-h {mosquitto.host}\n-p {mosquitto.port}\n")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "XDG_CONFIG_HOME": str(config),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "EDGEKIT_BROKER": mosquitto.url, "EDGEKIT_STATE_DIR": str(root / "state"), "HF_HUB_OFFLINE": "1"}
    models = {"tinyllama-Q4_K_M.gguf": tiny_q4_k_m, "tinyllama-f16.gguf": tiny_gguf_f16,
              "qwen2.5-1.5b-instruct.Q4_K_M.gguf": tiny_qwen2_f32}  # a Qwen-templated stand-in
    return World(env, models, root)


@pytest.fixture(scope="module")
def daemon(world) -> Iterator[None]:
    """`edgekit serve` as the protocol examples expect it: device kitchen-pi on the default broker."""
    folder = world.folder("daemon")
    log = open(folder / "serve.log", "wb")  # noqa: SIM115 - the child holds it
    serve = subprocess.Popen(["edgekit", "serve", "--model", "tinyllama-Q4_K_M.gguf", "--device-id", DEVICE_ID],
                             cwd=folder, env=world.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_it_answers(serve, world.env["EDGEKIT_BROKER"], folder / "serve.log")
        yield
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
        log.close()


def _wait_until_it_answers(serve: subprocess.Popen, broker: str, log: Path) -> None:
    with RequestClient(broker, f"edgekit/{DEVICE_ID}") as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert serve.poll() is None, f"edgekit serve exited: {log.read_text()[-2000:]}"
            try:
                client.ask(chat_body("hi", max_tokens=1), timeout_s=5)
                return
            except EdgekitError:
                time.sleep(0.5)
    pytest.fail(f"edgekit serve did not answer within 120 s: {log.read_text()[-2000:]}")


# --- running one example ------------------------------------------------------------------------


def run_example(example: Example, world: World) -> None:
    """Run or load ``example``; an AssertionError names its file and line and says what failed."""
    folder = world.folder(f"{example.path.stem}-{example.line}")
    if example.kind == "server":
        _run_server(example, folder, world.env)
    elif example.language == "sh":
        _run_script(example, folder, world.env)
    elif example.kind == "config":
        _load_config(example, folder)
    else:
        _load_profile(example, folder)


def _run_script(example: Example, folder: Path, env: dict[str, str]) -> None:
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", example.text], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{example.where}: still running after {EXAMPLE_TIMEOUT_S} s", pytrace=False)
    assert done.returncode == 0, (f"{example.where}: exit status {done.returncode}\n--- stdout\n"
                                  f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")


HTTP_LISTEN = re.compile(r"--http\s+(?:([\w.]+):)?(\d+)")
SERVER_START_S = 120


def _run_server(example: Example, folder: Path, env: dict[str, str]) -> None:
    """Start the block (a server that runs until stopped), wait until it answers, SIGTERM it, expect exit 0."""
    listen = HTTP_LISTEN.search(example.text)
    log_path = folder / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(["bash", "-euo", "pipefail", "-c", f"exec {example.text.strip()}"], cwd=folder,
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert listen, f"{example.where}: a server block names the address it answers on (--http HOST:PORT)"
        host = "127.0.0.1" if listen.group(1) in (None, "0.0.0.0") else listen.group(1)
        _wait_for_http(server, f"http://{host}:{listen.group(2)}/api/version", log_path, example)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            pytest.fail(f"{example.where}: still running 60 s after SIGTERM", pytrace=False)
    assert code == 0, f"{example.where}: exit status {code} after SIGTERM\n{log_path.read_text()[-3000:]}"


def _wait_for_http(server: subprocess.Popen, url: str, log: Path, example: Example) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"{example.where}: exited: {log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{example.where}: {url} did not answer within {SERVER_START_S} s: {log.read_text()[-2000:]}")


def _load_config(example: Example, folder: Path) -> None:
    path = folder / "edgekit.toml"
    path.write_text(example.text)
    try:
        config = load_config(path)
        if config.model.profile:  # the loader keeps the name; the daemon loads it at start
            load_profile(config.model.profile)
    except EdgekitError as exc:
        raise AssertionError(f"{example.where}: {exc}") from None


def _load_profile(example: Example, folder: Path) -> None:
    name = tomllib.loads(example.text).get("name", "example")
    path = folder / f"{name}.toml"
    path.write_text(example.text)
    try:
        load_profile(path)
    except EdgekitError as exc:
        raise AssertionError(f"{example.where}: {exc}") from None


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("example", ALL, ids=[e.where for e in ALL])
def test_documented_example_runs(example: Example, world: World, request: pytest.FixtureRequest) -> None:
    if example.kind == "daemon":
        request.getfixturevalue("daemon")
    run_example(example, world)


def test_the_docs_mark_their_examples():
    marked = {e.path.name for e in ALL}
    assert {"README.md", "protocol.md", "profiles.md", "systemd.md", "fleet.md", "home-assistant.md"} <= marked
    assert {e.kind for e in ALL} >= {"", "daemon", "server", "config"}


def test_a_broken_example_fails_and_names_its_line(world: World, tmp_path: Path):
    doc = tmp_path / "broken.md"
    doc.write_text(
        "# A doc\n\n```sh\nthis is not run\n```\n\n"
        "```sh runnable\nedgekit plan tinyllama-Q4_K_M.gguf --profile rpi4-4gb\n```\n\n"
        "```sh runnable\nedgekit plan tinyllama-Q4_K_M.gguf --profile raspberry-pi-5\n```\n\n"
        '```toml runnable config\n[model]\nprofile = "raspberry-pi-5"\n```\n'
    )
    found = examples(doc)
    assert [(e.line, e.kind) for e in found] == [(7, ""), (11, ""), (15, "config")]
    run_example(found[0], world)  # a working one passes
    for broken in found[1:]:
        with pytest.raises(AssertionError, match=rf"(?s)broken\.md:{broken.line}: .*no profile named 'raspberry-pi-5'"):
            run_example(broken, world)


def test_an_unknown_marker_is_refused(tmp_path: Path):
    doc = tmp_path / "typo.md"
    doc.write_text("```sh runnable deamon\nedgekit detect\n```\n")
    with pytest.raises(AssertionError, match="unknown marker"):
        examples(doc)
