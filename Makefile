# Conveyor: `make serve` to run the server, `make test` to run the test suite.
# Everything goes into .venv; `make install` is idempotent and is what the others call.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVER_STAMP := $(VENV)/.installed-server
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install install-server lock native asan serve test unit integration fuzz lint bench perf-analyzer prometheus proto clean

# Installs come from the lock, requirements/*.txt: every package pinned, with its sha256 hashes,
# resolved for Linux x86_64 and CPython 3.11 (elsewhere: pip install -e ".[test,...]" unlocked).
# dev.txt is the server and every extra but the gpu one; torch's CPU build is in torch-cpu.txt,
# installed from PyTorch's CPU index (TORCH_INDEX): PyPI's Linux torch is the CUDA build.
# The project itself goes in with --no-deps, so that pip resolves nothing outside the lock.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PIP_LOCKED := $(BIN)/python -m pip install -q --require-hashes

install: $(STAMP)

$(STAMP): pyproject.toml requirements/dev.txt requirements/torch-cpu.txt requirements/native-build.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PIP_LOCKED) -r requirements/dev.txt
	$(PIP_LOCKED) --index-url $(TORCH_INDEX) -r requirements/torch-cpu.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(NATIVE_BUILD)
	touch $(STAMP)

# The server alone (requirements/server.txt, the same pins as dev.txt): what `make serve` needs.
install-server: $(SERVER_STAMP)

$(SERVER_STAMP): pyproject.toml requirements/server.txt requirements/native-build.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) -r requirements/server.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(NATIVE_BUILD) || echo "make install-server: the native gRPC front end did not build;" \
		"the server serves gRPC on grpc.aio (see the output above)"
	touch $(SERVER_STAMP)

# Regenerates the lock with uv from pyproject.toml, keeping the pins it can; pass
# LOCK_ARGS=--upgrade (or --upgrade-package NAME) to move them. uv reads no pip configuration:
# torch's CPU build comes from PyTorch's CPU index, or TORCH_SOURCE="--find-links DIR" where a
# folder holds the wheel. gpu.txt is the GPU image's: onnxruntime-gpu instead of onnxruntime.
UV_VERSION := 0.13.8
UV := .tools/uv/bin/uv
TORCH_SOURCE ?= --torch-backend cpu
COMPILE = $(UV) pip compile -q --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" $(LOCK_ARGS)

lock:
	test -x $(UV) || ($(PYTHON) -m venv .tools/uv && .tools/uv/bin/pip install -q uv==$(UV_VERSION))
	$(COMPILE) $(TORCH_SOURCE) --override requirements/torch-cpu.in --no-emit-package torch \
		--extra test --extra proto --extra bench --extra publish --extra train --extra trace \
		pyproject.toml -o requirements/dev.txt
	$(COMPILE) $(TORCH_SOURCE) -c requirements/dev.txt requirements/torch-cpu.in \
		-o requirements/torch-cpu.txt
	$(COMPILE) -c requirements/dev.txt --extra trace pyproject.toml -o requirements/server.txt
	$(COMPILE) -c requirements/dev.txt --excludes requirements/gpu-excludes.in --extra gpu \
		--extra trace pyproject.toml -o requirements/gpu.txt
	$(PYTHON) -c 'import tomllib; print(*tomllib.load(open("native/pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		| $(COMPILE) -c requirements/dev.txt - -o requirements/native-build.txt

# The native gRPC front end (`conveyor serve --grpc-frontend native`): a compiled extension
# against Debian's gRPC C++ (native/install_deps.sh installs it with apt-get), built into the
# venv by both installs; `make native` rebuilds it after editing native/. Its build tools
# (native/pyproject.toml's build-system.requires: scikit-build-core, pybind11) come from the
# lock like everything else (requirements/native-build.txt) into the venv, and the build
# uses them there (--no-build-isolation): an isolated build would fetch whatever PyPI has
# that day, unchecked, into a new folder each time, which also makes CMake recompile it all.
NATIVE_BUILD = bash native/install_deps.sh && $(PIP_LOCKED) -r requirements/native-build.txt \
	&& CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
	$(BIN)/python -m pip install -q --no-build-isolation ./native

native: install
	$(NATIVE_BUILD)

# The gRPC tests against the native extension built with AddressSanitizer and UBSan, in
# build/asan/ (the venv's build is not touched); ARGS go to pytest. About 6 minutes.
asan: install
	bash native/asan.sh $(ARGS)

perf-analyzer: install
	PYTHON=$(BIN)/python bash benchmarks/install_perf_analyzer.sh

# Debian's prometheus package (prometheus, promtool) for the tests; its service is not started.
prometheus:
	bash tests/tools/install_prometheus.sh

# Serves the example repository. Where the train extra is installed (`make install`), the
# first run also trains the digits MLP into it, a few seconds, so that a newcomer sees
# training, export and serving in one command; without it the server serves the rest.
HAS_TRAIN_EXTRA = $(BIN)/python -c "import importlib.util as u; \
	raise SystemExit(not all(map(u.find_spec, ('torch', 'sklearn', 'onnxscript'))))"

serve: install-server
	if $(HAS_TRAIN_EXTRA); then $(BIN)/conveyor train digits --if-missing; \
	else echo "make serve: no train extra (make install installs it), digits not trained"; fi
	$(BIN)/conveyor serve $(ARGS)

# The whole suite serves gRPC from the native front end (the default); the gRPC protocol
# tests then run again against the grpc.aio fallback.
test: install perf-analyzer prometheus lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	CONVEYOR_GRPC_FRONTEND=aio $(BIN)/python -m pytest -q -k "grpc and not native" \
		tests/integration $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest -q tests/unit

integration: install perf-analyzer prometheus
	$(BIN)/python -m pytest -q tests/integration

# The fuzz tests with new examples on every run (CI replays the same ones), FUZZ_SCALE times
# as many as in CI: two to four minutes on two cores. A failing example is saved under
# .hypothesis/ and tried first next time. ARGS goes to pytest: ARGS="-k chunked -x".
FUZZ_SCALE ?= 10
fuzz: install
	HYPOTHESIS_PROFILE=fuzz FUZZ_SCALE=$(FUZZ_SCALE) \
		$(BIN)/python -m pytest -q tests/integration/test_fuzz*.py $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install perf-analyzer
	$(BIN)/python benchmarks/http_grpc.py $(ARGS)

proto: install
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
