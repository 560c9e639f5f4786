"""pull() against a real local HTTP server that speaks the Hub's API (tests/hub_server.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.errors import HubError
from edgekit.gguf_file import validate
from edgekit.hub import pick_quant, pull
from tests.hub_server import FakeRepo, HubServer
from tests.test_gguf_file import write_gguf

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, FakeRepo]:
    folder = tmp_path_factory.mktemp("repos")
    gguf_q4 = write_gguf(folder / "q4.gguf", name="tiny Q4_K_M").read_bytes()
    gguf_q8 = write_gguf(folder / "q8.gguf", name="tiny Q8_0").read_bytes()
    big = write_gguf(folder / "big.gguf", name="big", big_tensor=6 << 20).read_bytes()  # 24 MiB: several chunks
    checkpoint = {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir() if p.is_file() and not p.name.startswith(".")}
    return {
        "org/tiny-GGUF": FakeRepo({"tiny-Q4_K_M.gguf": gguf_q4, "tiny-Q8_0.gguf": gguf_q8, "README.md": b"# tiny"}, tags=("v1",)),
        "org/tiny": FakeRepo(checkpoint | {"pytorch_model.bin": b"pickle", "model.onnx": b"onnx", "README.md": b"# ckpt"}),
        "org/big-GGUF": FakeRepo({"big-F32.gguf": big}),
    }


@pytest.fixture
def hub(repos: dict[str, FakeRepo]) -> HubServer:
    with HubServer(repos) as server:
        yield server


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


def test_pull_by_file(hub: HubServer, cache: Path, repos: dict[str, FakeRepo]) -> None:
    path = pull("org/tiny-GGUF", file="tiny-Q8_0.gguf", cache_dir=cache, endpoint=hub.url)
    assert path.read_bytes() == repos["org/tiny-GGUF"].files["tiny-Q8_0.gguf"]
    assert cache in path.parents and validate(path).name == "tiny Q8_0"


def test_pull_by_quant_ignores_case(hub: HubServer, cache: Path) -> None:
    path = pull("org/tiny-GGUF", quant="q4_k_m", cache_dir=cache, endpoint=hub.url)
    assert path.name == "tiny-Q4_K_M.gguf" and validate(path).name == "tiny Q4_K_M"


def test_pull_at_a_tag(hub: HubServer, cache: Path) -> None:
    path = pull("org/tiny-GGUF", quant="Q8_0", revision="v1", cache_dir=cache, endpoint=hub.url)
    assert path.name == "tiny-Q8_0.gguf"


def test_quant_that_is_missing_lists_the_gguf_files(hub: HubServer, cache: Path) -> None:
    with pytest.raises(HubError, match="no GGUF file for Q2_K.*tiny-Q4_K_M.gguf, tiny-Q8_0.gguf"):
        pull("org/tiny-GGUF", quant="Q2_K", cache_dir=cache, endpoint=hub.url)


def test_quant_matching_is_exact_about_the_level() -> None:
    files = ["m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m-IQ4_XS.gguf", "m-Q4_0.gguf"]
    assert pick_quant(files, "Q4_K_M") == ["m-Q4_K_M.gguf"]
    assert pick_quant(files, "q4_0") == ["m-Q4_0.gguf"]
    with pytest.raises(HubError, match="no GGUF file for Q4_K"):
        pick_quant(files, "Q4_K")
    split = ["m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf"]
    assert pick_quant(files + split, "Q8_0") == split
    with pytest.raises(HubError, match="several GGUF files for Q8_0"):
        pick_quant(["a-Q8_0.gguf", "b-Q8_0.gguf"], "Q8_0")


def test_gguf_repo_without_a_choice_asks_which(hub: HubServer, cache: Path) -> None:
    with pytest.raises(HubError, match="several GGUF files.*--quant"):
        pull("org/tiny-GGUF", cache_dir=cache, endpoint=hub.url)


def test_checkpoint_snapshot_fetches_only_safe_files(hub: HubServer, cache: Path, tiny_checkpoint: Path) -> None:
    folder = pull("org/tiny", cache_dir=cache, endpoint=hub.url)
    names = {p.name for p in folder.iterdir()}
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    assert not names & {"pytorch_model.bin", "model.onnx", "README.md"}
    for name in names:
        assert (folder / name).read_bytes() == (tiny_checkpoint / name).read_bytes()
    assert not hub.gets("pytorch_model.bin") and not hub.gets("model.onnx")


def test_interrupted_download_resumes_with_a_range_request(hub: HubServer, cache: Path, repos: dict[str, FakeRepo]) -> None:
    hub.drop_once.add("big-F32.gguf")
    path = pull("org/big-GGUF", file="big-F32.gguf", cache_dir=cache, endpoint=hub.url)
    assert path.read_bytes() == repos["org/big-GGUF"].files["big-F32.gguf"]
    gets = hub.gets("big-F32.gguf")
    assert len(gets) == 2 and gets[0].range is None and gets[1].range.startswith("bytes=")
    assert int(gets[1].range.removeprefix("bytes=").rstrip("-")) > 0


def test_offline_from_the_cache_after_the_hub_is_gone(repos: dict[str, FakeRepo], cache: Path) -> None:
    with HubServer(repos) as server:
        online = pull("org/tiny-GGUF", quant="Q4_K_M", cache_dir=cache, endpoint=server.url)
        snapshot = pull("org/tiny", cache_dir=cache, endpoint=server.url)
        url = server.url
    assert pull("org/tiny-GGUF", quant="Q4_K_M", offline=True, cache_dir=cache, endpoint=url) == online
    assert pull("org/tiny-GGUF", file="tiny-Q4_K_M.gguf", offline=True, cache_dir=cache, endpoint=url) == online
    assert pull("org/tiny", offline=True, cache_dir=cache, endpoint=url) == snapshot
    # Not offline, but the server is down: the cache still answers.
    assert pull("org/tiny-GGUF", quant="Q4_K_M", cache_dir=cache, endpoint=url) == online


def test_offline_with_nothing_cached(hub: HubServer, cache: Path) -> None:
    with pytest.raises(HubError, match="not in the cache.*offline"):
        pull("org/tiny-GGUF", file="tiny-Q8_0.gguf", offline=True, cache_dir=cache, endpoint=hub.url)
    with pytest.raises(HubError, match="nothing of org/tiny-GGUF is in the cache.*offline"):
        pull("org/tiny-GGUF", quant="Q8_0", offline=True, cache_dir=cache, endpoint=hub.url)


def test_network_down_with_nothing_cached(repos: dict[str, FakeRepo], cache: Path) -> None:
    with HubServer(repos) as server:
        url = server.url
    with pytest.raises(HubError, match="cannot be reached"):
        pull("org/tiny-GGUF", quant="Q8_0", cache_dir=cache, endpoint=url)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repo": "org/missing", "quant": "Q8_0"}, "repository org/missing not found"),
        ({"repo": "org/missing", "file": "x.gguf"}, "repository org/missing not found"),
        ({"repo": "org/tiny-GGUF", "quant": "Q8_0", "revision": "v9"}, "revision 'v9' not found"),
        ({"repo": "org/tiny-GGUF", "file": "x.gguf", "revision": "v9"}, "revision 'v9' not found"),
        ({"repo": "org/tiny-GGUF", "file": "nope.gguf"}, "nope.gguf not found in org/tiny-GGUF; its files: README.md"),
    ],
)
def test_hub_errors_are_one_line(hub: HubServer, cache: Path, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(HubError) as caught:
        pull(**kwargs, cache_dir=cache, endpoint=hub.url)
    assert message in str(caught.value) and "\n" not in str(caught.value)


# --- the CLI, in a subprocess, configured the way users configure huggingface_hub --------------


def _edgekit(args: list[str], endpoint: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1"}
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_pull_prints_only_the_path(hub: HubServer, tmp_path: Path, repos: dict[str, FakeRepo]) -> None:
    done = _edgekit(["pull", "org/tiny-GGUF", "--quant", "Q8_0"], hub.url, tmp_path)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert done.stdout.count("\n") == 1 and tmp_path / "hub" in path.parents
    assert path.read_bytes() == repos["org/tiny-GGUF"].files["tiny-Q8_0.gguf"]


def test_cli_pull_error_is_one_line(hub: HubServer, tmp_path: Path) -> None:
    done = _edgekit(["pull", "org/missing", "--file", "x.gguf"], hub.url, tmp_path)
    assert done.returncode == HubError.exit_code and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "repository org/missing not found" in done.stderr


def test_cli_pull_of_a_malformed_repo_id_is_a_usage_error(hub: HubServer, tmp_path: Path) -> None:
    done = _edgekit(["pull", "not/a/repo"], hub.url, tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "'not/a/repo' is not a Hub repository id: give OWNER/NAME" in done.stderr
    assert "internal" not in done.stderr
