"""Profiles: the shipped files load, strict validation names the key and file, matching rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.errors import ConfigError
from edgekit.hardware import GPU, detect
from edgekit.profiles import choose_profile, list_profiles, load_profile, search_path

BOARDS = Path(__file__).parent / "boards"
REQUIRED = {
    "rpi4-4gb", "rpi5-8gb", "jetson-orin-nano-8gb", "jetson-agx-orin-64gb",
    "desktop-cuda-8gb", "desktop-cuda-24gb", "server-cuda-80gb", "cpu-generic",
}
GOOD = """
name = "{name}"
description = "test box"
quant = "Q4_K_M"

[run]
n_threads = 2
n_ctx = 1024
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def test_every_shipped_profile_loads_and_the_required_ones_exist():
    names = {p.name for p in list_profiles()}
    assert REQUIRED <= names


@pytest.mark.parametrize(
    "name, arch_flag",
    [("jetson-orin-nano-8gb", "-DCMAKE_CUDA_ARCHITECTURES=87"), ("server-cuda-80gb", "80;90"),
     ("desktop-cuda-8gb", "86;89"), ("rpi5-8gb", "dotprod"), ("cpu-generic", "-DGGML_NATIVE=on")],
)
def test_profiles_carry_build_flags_for_their_box(name, arch_flag):
    assert arch_flag in load_profile(name).build.cmake_args


def test_jetson_profiles_share_memory_and_offload_everything_that_fits():
    p = load_profile("jetson-orin-nano-8gb")
    assert p.memory.unified and p.run.n_gpu_layers == "auto"


def test_load_by_path_and_by_name_from_env_folder(tmp_path, monkeypatch):
    write(tmp_path, "mybox", GOOD.format(name="mybox"))
    monkeypatch.setenv("EDGEKIT_PROFILES", str(tmp_path))
    assert search_path()[0] == tmp_path
    by_name = load_profile("mybox")
    assert by_name.run.n_threads == 2 and by_name.run.n_ctx == 1024
    assert by_name.run.n_batch == 512  # unset keys take the defaults
    assert load_profile(tmp_path / "mybox.toml") == by_name


def test_env_folder_shadows_a_shipped_profile(tmp_path, monkeypatch):
    write(tmp_path, "rpi5-8gb", GOOD.format(name="rpi5-8gb"))
    monkeypatch.setenv("EDGEKIT_PROFILES", str(tmp_path))
    assert load_profile("rpi5-8gb").source == tmp_path / "rpi5-8gb.toml"


@pytest.mark.parametrize(
    "extra, message",
    [
        ("[run]\nthreds = 4\n", "unknown key 'run.threds'"),
        ("colour = 'red'\n", "unknown key 'colour'"),
        ("[run]\nn_ctx = 'big'\n", "run.n_ctx = 'big' is not an integer"),
        ("[run]\nn_threads = 'many'\n", "is not an integer or 'auto'"),
        ("[run]\nn_ctx = 10\n", "out of range"),
        ("[run]\ntype_k = 'q3_k'\n", "run.type_k = 'q3_k' is not one of"),
        ("[run]\nflash_attn = 1\n", "is not true or false"),
        ("[memory]\nheadroom_mb = -5\n", "out of range"),
        ("[match]\nboards = 'raspberry-pi-5'\n", "is not a list of a string"),
        ("[match]\ngpu = 'amd'\n", "match.gpu = 'amd'"),
        ("quant = 'Q4_K_X'\n", "not a llama.cpp quant level"),
        ("[run]\nn_batch = 128\nn_ubatch = 256\n", "must not exceed run.n_batch"),
        ("[run]\ntype_v = 'q8_0'\nflash_attn = false\n", "needs run.flash_attn = true"),
        ("run = 3\n", "[run] must be a table"),
    ],
)
def test_bad_profiles_are_rejected_naming_key_and_file(tmp_path, extra, message):
    path = write(tmp_path, "bad", 'name = "bad"\n' + extra)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_invalid_toml_and_missing_name_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profile(write(tmp_path, "broken", "name = \n"))
    with pytest.raises(ConfigError, match="missing key 'name'"):
        load_profile(write(tmp_path, "anon", "description = 'x'\n"))
    with pytest.raises(ConfigError, match="must match the file name"):
        load_profile(write(tmp_path, "other", GOOD.format(name="elsewhere")))


def test_unknown_profile_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="no profile named 'nope'.*rpi5-8gb"):
        load_profile("nope")


@pytest.mark.parametrize(
    "vram_mb, expected",
    [(8192, "desktop-cuda-8gb"), (12288, "desktop-cuda-8gb"), (24564, "desktop-cuda-24gb"),
     (16384, "desktop-cuda-24gb"), (81559, "server-cuda-80gb")],
)
def test_gpu_memory_selects_the_cuda_profile(vram_mb, expected):
    hw = detect(BOARDS / "desktop-ryzen-rtx3070", gpus=[GPU("NVIDIA card", vram_mb, vram_mb - 500, "8.6")])
    profile, reason = choose_profile(hw)
    assert profile.name == expected and reason.endswith(f"-> {expected}")


def test_a_pi_with_too_little_memory_for_its_profile_falls_back_to_generic(tmp_path):
    from dataclasses import replace

    hw = replace(detect(BOARDS / "rpi5-8gb"), memory_total_mb=3900)
    assert choose_profile(hw)[0].name == "cpu-generic"


def test_priority_breaks_ties_between_equally_specific_profiles(tmp_path, monkeypatch):
    text = GOOD.format(name="{n}") + "\n[match]\nboards = ['raspberry-pi-5']\npriority = {p}\n"
    write(tmp_path, "pi-a", text.replace("{n}", "pi-a").replace("{p}", "20"))
    monkeypatch.setenv("EDGEKIT_PROFILES", str(tmp_path))
    assert choose_profile(detect(BOARDS / "rpi5-8gb"))[0].name == "pi-a"
