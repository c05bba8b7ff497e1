# Entry points: `make quickstart` (the main job on the embedded digits dataset), `make test` (what CI
# runs: every test) and `make test-fast` (the inner loop: every test but the slow ones).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: quickstart test test-fast test-device qemu chromium bench-flowers bench-int8 bench-serve clean

$(BIN)/edgecls: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $@

quickstart: $(BIN)/edgecls
	$(BIN)/edgecls quickstart --out runs/quickstart

# The whole suite, as CI runs it. On a VNNI host, tests/test_int8_isa.py needs qemu-user to run
# int8 artifacts on an emulated AVX2 CPU; `qemu` installs it when this runs as root with apt.
# tests/test_serve.py drives Debian's chromium headless (Playwright with executable_path, never a
# downloaded browser); `chromium` installs it when this runs as root with apt.
# Two pytest-xdist workers, each file whole in one (its module fixtures built once); the trained
# flowers model and its exports are made once for both (tests/conftest.py `once_per_run`). Many
# tests wait on servers, subprocesses and browsers, so two share 2 cores well.
test: $(BIN)/edgecls qemu chromium
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The inner loop while working (under 3 minutes on 2 cores): every test but those marked slow
# (full-size training, the export matrix, a fresh environment; see tests/conftest.py). Not what CI runs.
test-fast: $(BIN)/edgecls
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

# The Raspberry Pi path end to end without a Pi (about 5 min, needs root; not part of `make test`): a bundle
# built here for raspberrypi4, installed offline in an emulated arm64 Debian root, doctor, predict, rollback.
test-device: $(BIN)/edgecls
	PYTHON=$(abspath $(BIN)/python) tests/device/raspberrypi_e2e.sh

qemu:
	@command -v qemu-x86_64 >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user) >/dev/null 2>&1; } || \
		echo "qemu-user not installed (needs root and apt): tests/test_int8_isa.py will say so on a VNNI host"

chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
		echo "chromium not installed (needs root and apt): tests/test_serve.py's live-page test will fail and say so"

bench-serve: $(BIN)/edgecls chromium
	$(BIN)/python bench/serve_load.py --out bench/results/serve_load.md --screenshot bench/results/serve_live.png

bench-flowers: $(BIN)/edgecls
	$(BIN)/python bench/flowers_matrix.py

bench-int8: $(BIN)/edgecls qemu
	$(BIN)/python bench/int8_fidelity.py --schemes portable,x86-vnni,arm

clean:
	rm -rf runs .pytest_cache
