# Two commands on a fresh Debian machine with Python 3.11: `make demo` and `make test`.
# Both install what is missing first (system packages through apt-get, then .venv).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The fonts-* packages are the faces the scan generator prints certificates in
# (stampless/fixtures/fonts.py): Noto Serif/Sans CJK, LXGW WenKai, AR PL UKai, WenQuanYi Zen Hei.
# postgresql: the tests of the shared store start their own server with its initdb and
# pg_ctl (stampless/fixtures/postgres.py); nothing runs it as a service.
APT_PACKAGES := chromium tesseract-ocr tesseract-ocr-chi-sim tesseract-ocr-eng \
	fonts-noto-cjk fonts-lxgw-wenkai fonts-arphic-ukai fonts-wqy-zenhei postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Tesseract's own threads fight each other on small machines; stampless runs one per core.
export OMP_THREAD_LIMIT := 1

.PHONY: demo test install system-packages lint format bench clean

demo: install
	$(BIN)/stampless demo

# CI runs exactly this: the same lint as `make lint`, then every test (slow ones included),
# on three worker processes (pytest-xdist): most tests wait on Chromium, the emulated
# systems and subprocesses, so three keep two cores busy. A test module stays on one
# worker (--dist loadfile): its module-scoped fixtures (generated scans, a browser, an
# emulated system of its own) are built once, as in a serial run. Modules are dealt out
# longest first, by their tests' seconds in tests/durations.json (tests/conftest.py; a
# run with --record-durations rewrites it), not by their number of tests: a long module
# dealt out last leaves the other workers idle. TEST_WORKERS=0 runs them all in this one
# process.
# Bytecode first: `pip install -e` compiles nothing, and where PYTHONDONTWRITEBYTECODE is
# set no process writes any, so each stampless process the tests start (commands,
# emulated systems, workers) would compile the modules it imports again
# (compileall writes whatever that variable says).
TEST_WORKERS ?= 3
test: install lint
	$(BIN)/python -m compileall -q stampless tests
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

install: system-packages $(VENV)/.installed

system-packages:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages:$$missing"; \
	  { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; } \
	  || { echo "Could not install:$$missing. Install them with 'apt-get install$$missing' and run make again." >&2; exit 1; }; \
	fi

# PP-OCR (rapidocr, onnxruntime, OpenCV, the models: about 170 MB from PyPI) is a core
# dependency: it reads every scan; Tesseract (from Debian) is its second reader. The
# postgres extra (psycopg) too: the tests run the shared store on a real server.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,postgres]'
	@touch $@

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/robot_lookup.py
	$(BIN)/python bench/ocr_accuracy.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/instant.py
	$(BIN)/python bench/delivery_discover.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/pg_claim.py

clean:
	rm -rf var bench/out .pytest_cache .mypy_cache .ruff_cache
