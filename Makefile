# Two entry points for a fresh machine; each does its own setup (scripts/install.sh).
.PHONY: install demo test bench wheel-smoke

install:
	./scripts/install.sh

demo: install
	.venv/bin/python -m edgekit.demo

test: install
	.venv/bin/python -m pytest -q

bench: install
	.venv/bin/python -m pytest benchmarks -q --benchmark-enable --benchmark-json=bench-results/benchmarks.json -s

wheel-smoke: install
	./scripts/wheel_smoke.sh
