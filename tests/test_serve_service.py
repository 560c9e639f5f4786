"""The systemd unit and `edgekit install-service`: verified and scored by systemd-analyze itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.cli import main
from edgekit.errors import ConfigError
from edgekit.serve.config import load_config
from edgekit.serve.install_service import BoxSettings, plan_installation, write_installation
from edgekit.serve.systemd_unit import UnitSpec, render_env, render_gpu_dropin, render_unit

REPO = Path(__file__).resolve().parent.parent
EDGEKIT = Path(sys.executable).parent / "edgekit"  # exists: verify checks ExecStart's binary
MAX_EXPOSURE = 2.0  # acceptance: `systemd-analyze security` scores the unit at most this

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed (scripts/install.sh adds it)")


def verify(unit: Path) -> None:
    """`systemd-analyze verify` must pass without a single warning (it exits 0 on ignored lines)."""
    run = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         cwd=unit.parent)
    assert run.returncode == 0 and not (run.stdout + run.stderr).strip(), run.stdout + run.stderr


def exposure(unit: Path) -> float:
    """The overall exposure score of `systemd-analyze security --offline` (drop-ins beside it count)."""
    run = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}",
                          "--no-pager", str(unit)], capture_output=True, text=True, cwd=unit.parent)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", run.stdout)
    assert score, run.stdout + run.stderr
    print(f"{unit.name}: exposure {score.group(1)}")
    assert run.returncode == 0, f"{unit.name} scores {score.group(1)} > {MAX_EXPOSURE}"
    assert "Invalid syntax" not in run.stderr and "ignoring" not in run.stderr, run.stderr
    return float(score.group(1))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "tiny-Q8_0.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(60))  # install-service checks the path, not the weights
    return path


def install(tmp_path: Path, model: Path, **box: object) -> tuple[Path, Path, list[Path]]:
    dest, env_dir = tmp_path / "systemd", tmp_path / "etc-edgekit"
    installation = plan_installation(BoxSettings(model=model, **box), dest=dest, env_dir=env_dir, executable=EDGEKIT)
    return dest, env_dir, write_installation(installation)


# --- the units -------------------------------------------------------------------------------


def test_shipped_units_are_renderings_of_the_one_source() -> None:
    assert (REPO / "systemd/edgekit.service").read_text() == render_unit(UnitSpec())
    assert (REPO / "systemd/edgekit@.service").read_text() == render_unit(UnitSpec(template=True))
    assert (REPO / "systemd/gpu.conf").read_text() == render_gpu_dropin()
    assert (REPO / "systemd/edgekit.env.example").read_text() == render_env()


@needs_systemd_analyze
@pytest.mark.parametrize("template", [False, True], ids=["edgekit.service", "edgekit@.service"])
def test_unit_verifies_and_scores_at_most_2(tmp_path: Path, template: bool) -> None:
    spec = UnitSpec(executable=EDGEKIT, template=template)
    unit = tmp_path / spec.name
    unit.write_text(render_unit(spec))
    verify(unit)
    assert exposure(unit) <= MAX_EXPOSURE


@needs_systemd_analyze
def test_gpu_dropin_keeps_the_unit_valid_and_under_the_limit(tmp_path: Path) -> None:
    unit = tmp_path / "edgekit.service"
    unit.write_text(render_unit(UnitSpec(executable=EDGEKIT)))
    base = exposure(unit)
    (tmp_path / "edgekit.service.d").mkdir()
    (tmp_path / "edgekit.service.d/gpu.conf").write_text(render_gpu_dropin())
    verify(unit)
    assert base < exposure(unit) <= MAX_EXPOSURE  # the drop-in is read, and it costs something


def test_unit_has_the_lifecycle_settings_the_daemon_relies_on() -> None:
    text = render_unit(UnitSpec(executable=EDGEKIT))
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure", "KillMode=mixed",
                 f"ExecStart={EDGEKIT} serve --config /etc/edgekit/edgekit.toml",
                 "LoadCredential=mqtt_password:/etc/edgekit/mqtt-password", "StateDirectory=edgekit"):
        assert line in text.splitlines(), line
    template = render_unit(UnitSpec(executable=EDGEKIT, template=True))
    assert f"ExecStart={EDGEKIT} serve --config /etc/edgekit/%i.toml" in template
    assert "StateDirectory=edgekit/%i" in template  # each instance keeps its own journal of answered ids


# --- install-service -------------------------------------------------------------------------


@needs_systemd_analyze
def test_install_writes_a_unit_that_verifies(tmp_path: Path, model: Path) -> None:
    dest, env_dir, written = install(tmp_path, model, profile="cpu-generic", broker="mqtt://10.0.0.5:1883")
    assert {p.relative_to(tmp_path).as_posix() for p in written} == {
        "systemd/edgekit.service", "etc-edgekit/edgekit.toml", "etc-edgekit/edgekit.env",
        "etc-edgekit/profiles/cpu-generic.toml"}
    unit = dest / "edgekit.service"
    assert f"ExecStart={EDGEKIT} serve --config {env_dir}/edgekit.toml" in unit.read_text()
    assert "LoadCredential" not in unit.read_text()  # no password file: anonymous broker
    verify(unit)
    assert exposure(unit) <= MAX_EXPOSURE
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in written)  # the dynamic user must read the config


def test_installed_config_is_what_the_daemon_loads(tmp_path: Path, model: Path) -> None:
    _, env_dir, _ = install(tmp_path, model, profile="cpu-generic", broker="mqtts://broker.lan:8883")
    config = load_config(env_dir / "edgekit.toml", env={})
    assert config.model.path == model.resolve()
    assert config.model.profile == str(env_dir / "profiles/cpu-generic.toml")  # a private copy, by path
    assert config.broker.url == "mqtts://broker.lan:8883"
    assert "HF_HUB_OFFLINE=1" in (env_dir / "edgekit.env").read_text().splitlines()


def test_instance_renders_the_template_and_its_own_device_id(tmp_path: Path, model: Path) -> None:
    dest, env_dir, written = install(tmp_path, model, profile="cpu-generic", instance="qwen")
    assert dest / "edgekit@.service" in written
    config = load_config(env_dir / "qwen.toml", env={})
    assert config.device_id.endswith("-qwen")  # two instances on one box must not share a client id


def test_gpu_profile_gets_the_gpu_dropin(tmp_path: Path, model: Path) -> None:
    dest, _, written = install(tmp_path, model, profile="desktop-cuda-8gb")
    assert dest / "edgekit.service.d/gpu.conf" in written
    assert "DeviceAllow=char-nvidia-uvm rw" in (dest / "edgekit.service.d/gpu.conf").read_text()
    _, _, cpu_written = install(tmp_path / "cpu", model, profile="rpi5-8gb")
    assert not any(p.name == "gpu.conf" for p in cpu_written)


def test_password_file_becomes_a_credential(tmp_path: Path, model: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("hunter2\n")
    dest, env_dir, _ = install(tmp_path, model, profile="cpu-generic", password_file=secret)
    assert f"LoadCredential=mqtt_password:{secret}" in (dest / "edgekit.service").read_text()
    assert "hunter2" not in (env_dir / "edgekit.toml").read_text() + (env_dir / "edgekit.env").read_text()


def test_http_is_written_to_the_config_and_its_api_key_becomes_a_credential(tmp_path: Path, model: Path) -> None:
    key = tmp_path / "http-key"
    key.write_text("k3y-not-in-files\n")
    dest, env_dir, _ = install(tmp_path, model, profile="cpu-generic", http="0.0.0.0:11434", api_key_file=key)
    unit = (dest / "edgekit.service").read_text()
    assert f"LoadCredential=http_api_key:{key}" in unit and "k3y" not in unit
    config = load_config(env_dir / "edgekit.toml", env={})
    assert config.http.listen == "0.0.0.0:11434" and config.http.api_key_file is None  # read from the credential
    verify(dest / "edgekit.service")


def test_lora_adapters_are_passed_on_to_the_config_with_absolute_paths(tmp_path: Path, model: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "house.gguf").write_bytes(b"GGUF" + bytes(60))
    monkeypatch.chdir(tmp_path)
    env_dir = tmp_path / "e"
    assert main(["install-service", "--model", str(model), "--profile", "cpu-generic", "--dest", str(tmp_path / "d"),
                 "--env-dir", str(env_dir), "--lora", "house=house.gguf:0.5"]) == 0
    adapters = load_config(env_dir / "edgekit.toml", env={}).model.adapters()
    assert [(a.name, a.path, a.scale) for a in adapters] == [("house", str(tmp_path / "house.gguf"), 0.5)]
    with pytest.raises(ConfigError, match="LoRA adapter .*attic.gguf does not exist"):
        plan_installation(BoxSettings(model=model, lora=("attic=attic.gguf",)), dest=tmp_path / "d2", env_dir=tmp_path / "e2")


def test_paths_the_sandbox_hides_are_warned_about(tmp_path: Path, model: Path) -> None:
    installation = plan_installation(BoxSettings(model=model, profile="cpu-generic"), dest=tmp_path / "d",
                                     env_dir=tmp_path / "e", executable=EDGEKIT)
    assert any("PrivateTmp" in w and str(model) in w for w in installation.warnings)


def test_dry_run_prints_and_writes_nothing(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest, env_dir = tmp_path / "systemd", tmp_path / "etc"
    code = main(["install-service", "--model", str(model), "--profile", "cpu-generic", "--dest", str(dest),
                 "--env-dir", str(env_dir), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert not dest.exists() and not env_dir.exists()
    assert "[Service]" in out and f"path = \"{model.resolve()}\"" in out
    assert "systemctl enable --now edgekit.service" in out


def test_cli_writes_and_prints_next_commands(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["install-service", "--model", str(model), "--profile", "cpu-generic", "--instance", "a",
                 "--dest", str(tmp_path / "d"), "--env-dir", str(tmp_path / "e")])
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "d/edgekit@.service").is_file()
    assert "systemctl daemon-reload" in out and "systemctl enable --now edgekit@a.service" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--profile", "cpu-generic"], "needs --model"),
    (["--model", "/nonexistent.gguf"], "does not exist"),
    (["--model", "{model}", "--profile", "no-such-profile"], "no profile named"),
    (["--model", "{model}", "--profile", "cpu-generic", "--broker", "http://x"], "broker url"),
    (["--model", "{model}", "--profile", "cpu-generic", "--broker", "not a url"], "not a host name"),
    (["--model", "{model}", "--profile", "cpu-generic", "--broker", "mqtt://u:pw@h"], "credentials do not go"),
    (["--model", "{model}", "--profile", "cpu-generic", "--instance", "a/b"], "instance name"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str],
                                                  args: list[str], message: str) -> None:
    argv = [a.replace("{model}", str(model)) for a in args]
    code = main(["install-service", *argv, "--dest", str(tmp_path / "d"), "--env-dir", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == ConfigError.exit_code
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_running_again_keeps_local_edits_unless_forced(tmp_path: Path, model: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["install-service", "--model", str(model), "--profile", "cpu-generic", "--dest", str(tmp_path / "d"),
            "--env-dir", str(tmp_path / "e")]
    assert main(argv) == 0
    config = tmp_path / "e/edgekit.toml"
    edited = config.read_text() + "\n[limits]\nqueue_size = 32\n"
    config.write_text(edited)
    assert main([*argv, "--broker", "mqtt://10.0.0.9:1883"]) == 0
    assert config.read_text() == edited
    assert f"kept  {config}" in capsys.readouterr().out
    assert main([*argv, "--broker", "mqtt://10.0.0.9:1883", "--force"]) == 0
    assert load_config(config, env={}).broker.url == "mqtt://10.0.0.9:1883"


@needs_systemd_analyze
def test_paths_with_spaces_are_quoted_in_the_unit(tmp_path: Path) -> None:
    folder = tmp_path / "my venv" / "bin"
    folder.mkdir(parents=True)
    (folder / "edgekit").symlink_to(EDGEKIT)
    unit = tmp_path / "edgekit.service"
    unit.write_text(render_unit(UnitSpec(executable=folder / "edgekit", env_dir=tmp_path / "etc dir")))
    assert f'ExecStart="{folder / "edgekit"}" serve --config "{tmp_path / "etc dir"}/edgekit.toml"' in unit.read_text()
    verify(unit)


def test_a_relative_env_dir_is_made_absolute(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    installation = plan_installation(BoxSettings(model=model, profile="cpu-generic"), dest=tmp_path / "d",
                                     env_dir=Path("etc-edgekit"), executable=EDGEKIT)
    unit = installation.files[0].text
    assert f"EnvironmentFile=-{tmp_path}/etc-edgekit/edgekit.env" in unit
    assert all(f.path.is_absolute() for f in installation.files)
