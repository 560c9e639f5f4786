"""The HTML report opens in a real browser (headless Chromium) and shows its charts."""

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from edgekit.bench.charts import PALETTE
from edgekit.bench.quality import compare_quality
from edgekit.bench.report import render_report, write_report
from edgekit.bench.runner import BenchConfig, run_bench

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/install.sh installs it)")
WINDOW = (1280, 2000)


@pytest.fixture(scope="module")
def report(tiny_gguf_f16, tiny_q8_0, tiny_q4_k_m, tmp_path_factory) -> Path:
    """A real bench of two levels and their quality against the f16 file, as one report."""
    config = BenchConfig(models=(tiny_q8_0, tiny_q4_k_m), prompt_tokens=(16,), gen_tokens=8, repeat=2, threads=2)
    run = run_bench(config, progress=lambda _: None)
    quality = compare_quality(tiny_gguf_f16, [tiny_q8_0, tiny_q4_k_m], ctx=64, chunks=2)
    return write_report(tmp_path_factory.mktemp("report") / "report.html", run, quality)


def _chromium(*args: str, profile: Path, window: tuple[int, int] = WINDOW) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=False, timeout=120, check=True)


def _png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) into RGB tuples."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            bpp = 4 if colour == 6 else 3
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    pixels = [tuple(row[x * bpp : x * bpp + 3]) for row in rows for x in range(width)]
    return width, height, pixels


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def test_report_is_self_contained(report):
    html = report.read_text()
    assert "<svg" in html and "<script" not in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html


def test_chromium_renders_the_charts_in_the_chart_colours(report, tmp_path):
    png = tmp_path / "report.png"
    _chromium(f"--screenshot={png}", report.as_uri(), profile=tmp_path / "profile")
    width, height, pixels = _png_pixels(png.read_bytes())
    assert (width, height) == WINDOW
    non_white = sum(1 for p in pixels if sum(p) < 720)
    assert non_white > 0.03 * len(pixels)  # not a blank page
    for colour in PALETTE[:2]:  # the two quant levels' colours: bars, boxes and points
        target = _rgb(colour)
        close = sum(1 for p in pixels if all(abs(p[i] - target[i]) <= 12 for i in range(3)))
        assert close > 500, f"{colour}: {close} pixels"


def test_chromium_dom_has_the_svg_charts(report, tmp_path):
    dom = _chromium("--dump-dom", report.as_uri(), profile=tmp_path / "profile").stdout.decode()
    assert dom.count('<svg class="chart') == 6  # 2 throughput, 3 latency, 1 size-quality
    assert dom.count('class="bar"') == 2 * 2  # two levels x two throughput charts
    assert dom.count('class="point"') == 2  # the two levels against the reference
    assert '<table class="summary">' in dom


def test_report_without_quality_has_no_scatter(report):
    from edgekit.bench.results import BenchRun

    assert 'class="chart scatter"' not in render_report(BenchRun("0", "0", {}, ()), ())


# --- a steady-load run (--duration) with a captured board's sensors: the time-series charts -------------

TALL = (1280, 4200)  # the time series come after the throughput and latency charts


@pytest.fixture(scope="module")
def steady_report(tiny_q4_k_m, tmp_path_factory) -> Path:
    """Five seconds of steady load on the tiny model (a reading a second), with the captured Jetson Orin Nano's sensors
    (INA3221 power, thermal zones, CPU clock): tokens/s, W, °C and MHz over time."""
    boards = Path(__file__).parent / "boards"
    config = BenchConfig(models=(tiny_q4_k_m,), prompt_tokens=(16,), gen_tokens=16, threads=1, duration_s=5.0,
                         sensors_root=boards / "jetson-orin-nano-8gb")
    run = run_bench(config, progress=lambda _: None)
    assert len(run.measurements[0].timeline) >= 3
    return write_report(tmp_path_factory.mktemp("steady") / "steady.html", run)


def test_steady_load_report_has_the_four_time_series_and_energy_columns(steady_report, tmp_path):
    dom = _chromium("--dump-dom", steady_report.as_uri(), profile=tmp_path / "profile").stdout.decode()
    assert dom.count('class="chart line"') == 4  # tokens/s, power, temperature, clock
    assert dom.count('class="line"') == 4 and 'class="throttled"' not in dom
    assert "<th>J/token</th>" in dom and "<th>W</th>" in dom and "No throttling was seen." in dom


def test_chromium_draws_the_time_series_lines(steady_report, tmp_path):
    png = tmp_path / "steady.png"
    _chromium(f"--screenshot={png}", steady_report.as_uri(), profile=tmp_path / "profile", window=TALL)
    width, height, pixels = _png_pixels(png.read_bytes())
    assert (width, height) == TALL
    target, first = _rgb(PALETTE[0]), int(0.36 * height) * width  # the line charts start below 36 % of the page
    drawn = sum(1 for p in pixels[first:] if all(abs(p[k] - target[k]) <= 12 for k in range(3)))
    # Four lines across ~750 px of plot; on a busy box a reading with no finished token leaves a gap in
    # the tokens/s line, so ask for two thirds of that.
    assert drawn > 4 * 400, f"{drawn} pixels in the line colour"


def test_throttled_moments_are_marked():
    from edgekit.bench.charts import Series, line_chart

    svg = line_chart([Series("x", ((0, 1.0), (1, None), (2, 3.0), (3, 2.0)), PALETTE[0])], "t", "W", marks=(2, 3))
    assert svg.count('class="throttled"') == 2 and svg.count("<polyline") == 2  # the None is a gap
