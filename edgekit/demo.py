"""`make demo`: the whole pipeline end to end on this box.

Gets TinyLlama-1.1B-Chat from the Hub where the Hub is reachable, else generates a
TinyLlama-shaped checkpoint with random weights (its answers are gibberish, its speed and
memory are the real model's); converts and quantizes it, starts a private Mosquitto and
`edgekit serve`, sends a few requests over MQTT and prints the answers with their latency.
Everything lands in ./demo (or $EDGEKIT_DEMO_DIR) and is reused by the next run.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from edgekit import hub, quantize
from edgekit.convert import convert
from edgekit.errors import EdgekitError, HubError
from edgekit.serve.mqtt.client import RequestClient, chat_body, timings_line
from edgekit.serve.mqtt.mosquitto import Broker
from edgekit.testmodels import make_test_model

log = logging.getLogger("edgekit.demo")

REAL_REPO = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
LEVEL = "Q4_K_M"
DEVICE_ID = "demo"
LIGHT_SCHEMA = {
    "type": "object",
    "properties": {
        "device": {"type": "string", "enum": ["kitchen_light", "porch_light", "heater"]},
        "action": {"type": "string", "enum": ["on", "off"]},
    },
    "required": ["device", "action"],
}
REQUESTS = [
    ("a chat question, streamed", chat_body("What is MQTT, in one sentence?", max_tokens=48, stream=True)),
    ("a structured command (JSON schema)",
     chat_body("Turn on the kitchen light.", system="Answer with the JSON command only.", max_tokens=40,
               json_schema=LIGHT_SCHEMA)),
    ("the same system prompt again (its KV cache is reused)",
     chat_body("Switch off the heater.", system="Answer with the JSON command only.", max_tokens=40,
               json_schema=LIGHT_SCHEMA)),
]


def say(text: str) -> None:
    print(text, flush=True)


def show(line: str, final: bool = False) -> None:
    """A long step's progress, redrawn in place on a terminal; nothing in a log."""
    if sys.stdout.isatty():
        print(f"\r\033[K     {line}", end="\n" if final else "", flush=True)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP check, so an offline box falls back to a generated model at once."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def get_checkpoint(folder: Path) -> tuple[Path, str]:
    """The real TinyLlama where the Hub answers, else a generated one of the same shape."""
    if os.environ.get("EDGEKIT_DEMO_GENERATED") != "1" and hub_reachable():
        try:
            return hub.pull(REAL_REPO), f"{REAL_REPO} from the Hub"
        except HubError as exc:
            say(f"  the Hub did not give {REAL_REPO} ({exc}); using a generated model")
    checkpoint = folder / "tinyllama-checkpoint"
    if not (checkpoint / "config.json").exists():
        make_test_model(checkpoint, preset="tinyllama", dtype="bf16", shard_size="1GB")
    return checkpoint, "a generated TinyLlama-shaped checkpoint (random weights: the text is gibberish)"


def build_model(folder: Path) -> Path:
    say("1. model")
    checkpoint, what = get_checkpoint(folder)
    say(f"  {what}: {checkpoint}")
    f16 = folder / "tinyllama-f16.gguf"
    quantized = folder / f"tinyllama-{LEVEL}.gguf"
    if not quantized.exists():
        started = time.perf_counter()
        convert(checkpoint, f16, "f16", progress=lambda name, i, n: show(f"tensor {i}/{n} {name}", i == n))
        say(f"2. converted to {f16.name} in {time.perf_counter() - started:.1f} s")
        say(f"3. quantizing to {LEVEL} (about a minute on 2 cores)")
        result = quantize.quantize_file(f16, LEVEL, quantized, progress=lambda p: show(
            f"tensor {p.tensor_index}/{p.tensor_count}, {p.elapsed_s:.0f} s", p.done))
        say(f"   quantized: {result.size / 1e6:.0f} MB, {result.bits_per_weight:.2f} bits/weight, "
            f"{result.seconds:.1f} s")
        f16.unlink()
    else:
        say(f"2-3. reusing {quantized}")
    return quantized


def start_daemon(model: Path, broker: Broker, folder: Path) -> subprocess.Popen[bytes]:
    config = folder / "edgekit.toml"
    config.write_text(f'[topics]\ndevice_id = "{DEVICE_ID}"\n[daemon]\nstate_dir = "{folder / "state"}"\n')
    logfile = open(folder / "daemon.log", "wb")  # noqa: SIM115 - the child holds it
    return subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "serve", "--model", str(model), "--broker", broker.url,
         "--config", str(config)], stdout=logfile, stderr=subprocess.STDOUT)


def wait_online(client: RequestClient, daemon: subprocess.Popen[bytes], folder: Path) -> None:
    """Ask until the daemon answers: it subscribes only once the model is loaded and warm."""
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if daemon.poll() is not None:
            raise EdgekitError(f"the daemon exited: {(folder / 'daemon.log').read_text()[-1500:]}")
        try:
            client.ask(chat_body("hi", max_tokens=1), timeout_s=5)
            return
        except EdgekitError:
            time.sleep(0.5)
    raise EdgekitError("the daemon did not answer within 300 s; see demo/daemon.log")


def send_requests(client: RequestClient) -> None:
    for title, body in REQUESTS:
        say(f"\n> {title}: {body['messages'][-1]['content']}")
        print("  ", end="", flush=True)
        answer = client.ask(body, timeout_s=120, on_chunk=lambda text: print(text, end="", flush=True))
        if not body.get("stream"):
            print(answer.text, end="")
        final = answer.final
        if final.get("type") == "error":
            say(f"\n  error: {final['error']}")
            continue
        say(f"\n  {timings_line(final, answer.round_trip_ms)}")


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folder = Path(os.environ.get("EDGEKIT_DEMO_DIR", "demo")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        model = build_model(folder)
        say(f"4. starting Mosquitto and `edgekit serve --model {model.name}`")
        with Broker(folder / "broker") as broker:
            daemon = start_daemon(model, broker, folder)
            try:
                with RequestClient(broker.url, f"edgekit/{DEVICE_ID}") as client:
                    wait_online(client, daemon, folder)
                    say(f"  online at {broker.url}, topic edgekit/{DEVICE_ID}/request")
                    send_requests(client)
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=60)
        say(f"\n5. daemon stopped cleanly (log: {folder / 'daemon.log'})")
        next_steps(model)
        return 0
    except EdgekitError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the daemon and the broker are stopped on the way out
        print("\ndemo: interrupted", file=sys.stderr)
        return 130


def next_steps(model: Path) -> None:
    """Where to go from here: the same model through the CLI, then the docs."""
    cli = ".venv/bin/edgekit"
    say("\nnext:")
    say(f'  {cli} run {model} -p "What is MQTT?"        # one prompt, streamed, with its timings')
    say(f"  {cli} bench {model} --report bench.html   # latency percentiles and an HTML report")
    say(f"  {cli} plan {model} --profile rpi5-8gb     # will it fit a Raspberry Pi 5? (profiles: {cli} plan --help)")
    say("  docs/protocol.md (MQTT requests), docs/systemd.md (run it as a service)")


if __name__ == "__main__":
    sys.exit(main())
