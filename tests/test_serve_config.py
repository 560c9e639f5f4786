"""ServeConfig: TOML < environment < flags, unknown keys named, secrets from files only."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.errors import ConfigError
from edgekit.serve.config import BrokerConfig, broker_address, broker_password, load_config, sanitise_device_id


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgekit.toml"
    path.write_text(text)
    return path


def test_defaults_name_the_device_after_the_host() -> None:
    config = load_config(None, env={})
    assert config.prefix == f"edgekit/{config.device_id}" and config.client_id == f"edgekit-{config.device_id}"
    assert config.broker.url == "mqtt://127.0.0.1:1883" and config.topics.discovery


def test_hostnames_are_sanitised_for_topics() -> None:
    assert sanitise_device_id("Pi 5.local") == "pi-5-local"


def test_toml_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nurl = "mqtt://toml:1"\nkeepalive_s = 7\n[limits]\nqueue_size = 3\n')
    env = {"EDGEKIT_BROKER": "mqtt://env:2", "EDGEKIT_LIMITS_QUEUE_SIZE": "5"}
    config = load_config(path, env=env, flags={"broker": "mqtt://flag:3", "prefix": None})
    assert config.broker.url == "mqtt://flag:3" and config.broker.keepalive_s == 7
    assert config.limits.queue_size == 5


def test_an_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'limits.queue_sise'"):
        load_config(write(tmp_path, "[limits]\nqueue_sise = 3\n"), env={})
    with pytest.raises(ConfigError, match="'mqtt'"):
        load_config(write(tmp_path, "[mqtt]\nurl = 1\n"), env={})


def test_a_wrong_type_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="limits.queue_size"):
        load_config(write(tmp_path, '[limits]\nqueue_size = "many"\n'), env={})
    with pytest.raises(ConfigError, match="topics.discovery"):
        load_config(None, env={"EDGEKIT_TOPICS_DISCOVERY": "maybe"})


@pytest.mark.parametrize("toml, words", [
    ('[broker]\nurl = "http://x"\n', "mqtt://"),
    ('[topics]\nprefix = "edgekit/#"\n', "wildcards"),
    ('[topics]\nshare_group = "a/b"\n', "share_group"),
    ("[limits]\nqueue_size = 0\n", "queue_size"),
    ('[broker]\ncert_file = "c.pem"\n', "key_file"),
    ("[broker]\nanswer_qos = 2\n", "QoS 2"),
    ('[broker]\nurl = "mqtt://user:pw@h"\n', "credentials do not go in the URL"),
    ('[broker]\nurl = "mqtt://two words"\n', "not a host name"),
    ('[broker]\nurl = "mqtt://h:70000"\n', "port"),
    ("[limits]\nmax_request_s = 0\n", "max_request_s"),
])
def test_inconsistent_settings_are_refused(tmp_path: Path, toml: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(write(tmp_path, toml), env={})


def test_broker_urls_give_host_port_and_tls() -> None:
    assert broker_address("mqtt://h:1884") == ("h", 1884, False)
    assert broker_address("mqtts://h") == ("h", 8883, True)
    assert broker_address("h") == ("h", 1883, False)


def test_password_comes_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    assert broker_password(BrokerConfig(username="u", password_file=tmp_path / "pw"), env={}) == "s3cret"


def test_password_comes_from_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "mqtt_password").write_text("from-systemd")
    assert broker_password(BrokerConfig(username="u"), env={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "from-systemd"
    assert broker_password(BrokerConfig(username="u"), env={}) is None


def test_a_password_file_others_can_read_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o644)
    assert broker_password(BrokerConfig(username="u", password_file=tmp_path / "pw"), env={}) == "s3cret"
    assert "chmod 600" in caplog.text and "s3cret" not in caplog.text


def test_a_missing_password_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="password file"):
        broker_password(BrokerConfig(password_file=tmp_path / "nope"), env={})


def test_there_is_no_password_setting_to_leak_on_a_command_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'broker.password'"):
        load_config(write(tmp_path, '[broker]\npassword = "x"\n'), env={})


def test_http_listen_defaults_to_loopback_and_ollamas_port() -> None:
    from edgekit.serve.config import HTTP_DEFAULT_PORT, http_address

    assert http_address("11434") == ("127.0.0.1", HTTP_DEFAULT_PORT)
    assert http_address("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert http_address("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ConfigError, match=r"\[HOST:\]PORT"):
        http_address("localhost:http")


def test_http_only_needs_a_listener(tmp_path: Path) -> None:
    config = load_config(None, env={}, flags={"broker": "none", "http": "11434"})
    assert config.broker.url == "none" and config.http.listen == "11434"
    with pytest.raises(ConfigError, match="nothing to serve"):
        load_config(None, env={}, flags={"broker": "none"})


def test_http_api_key_comes_from_its_file_or_systemds_credentials(tmp_path: Path) -> None:
    from edgekit.serve.config import HttpConfig, http_api_key

    (tmp_path / "key").write_text("abc123\n")
    assert http_api_key(HttpConfig(api_key_file=tmp_path / "key"), env={}) == "abc123"
    (tmp_path / "http_api_key").write_text("from-systemd\n")
    assert http_api_key(HttpConfig(), env={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "from-systemd"
    assert http_api_key(HttpConfig(), env={}) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        http_api_key(HttpConfig(api_key_file=tmp_path / "empty"), env={})


def test_lora_adapters_come_from_the_toml_the_environment_or_repeated_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[model]\nlora = ["house=/a/house.gguf", "garden=/a/garden.gguf:1.5"]\n')
    adapters = load_config(path, env={}).model.adapters()
    assert [(a.name, a.path, a.scale) for a in adapters] == [("house", "/a/house.gguf", 1.0), ("garden", "/a/garden.gguf", 1.5)]
    assert load_config(path, env={"EDGEKIT_MODEL_LORA": "attic=/b/attic.gguf"}).model.lora == ("attic=/b/attic.gguf",)
    flags = {"lora": ["a=/x.gguf:0.5", "b=/y.gguf"]}
    assert [a.name for a in load_config(path, env={}, flags=flags).model.adapters()] == ["a", "b"]


@pytest.mark.parametrize(("lora", "words"), [
    ('["house=/a.gguf", "house=/b.gguf"]', "'house' is given twice"),
    ('["=/a.gguf"]', "bad --lora '=/a.gguf'"),
    ('["house=/a.gguf:1e999"]', "finite number"),
    ('["latest=/a.gguf"]', "'latest' would be taken for the bare model"),
])
def test_a_bad_lora_setting_is_refused_naming_it(tmp_path: Path, lora: str, words: str) -> None:
    with pytest.raises(ConfigError, match="setting model.lora: ") as caught:
        load_config(write(tmp_path, f"[model]\nlora = {lora}\n"), env={})
    assert words in str(caught.value)
