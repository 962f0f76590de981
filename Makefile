# make install: .venv with the package and its test extras, from nothing, and
#               .venv-sdk and .venv-mxnet, the client environments the tests drive it from
#               (the SageMaker Python SDK v2; MXNet's RecordIO writer).
# make serve:   serve the bundled NumPy example model on port 8080.
# make test:    the whole suite.
# make bench:   the codec benchmark (benchmarks/codecs.py).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The SDK v2 needs numpy 2 and protobuf < 7: a client environment of its own, as users have.
SDK_VENV := .venv-sdk
SDK_STAMP := $(SDK_VENV)/.installed
SDK_REQUIREMENTS := "sagemaker>=2.200,<3" "protobuf<7" scipy pillow
# MXNet's RecordIO writer, a real producer of continuation flags (mxnet 1.9.1 needs numpy < 1.24).
MXNET_VENV := .venv-mxnet
MXNET_STAMP := $(MXNET_VENV)/.installed
MXNET_REQUIREMENTS := "mxnet==1.9.1" "numpy<1.24" protobuf
PIP := -m pip install --disable-pip-version-check -q
PORT ?= 8080

.PHONY: install serve test bench clean

install: $(STAMP) $(SDK_STAMP) $(MXNET_STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python $(PIP) --upgrade pip
	$(BIN)/python $(PIP) -e '.[test]'
	touch $(STAMP)

$(SDK_STAMP):
	test -x $(SDK_VENV)/bin/python || $(PYTHON) -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/python $(PIP) $(SDK_REQUIREMENTS)
	touch $(SDK_STAMP)

$(MXNET_STAMP):
	test -x $(MXNET_VENV)/bin/python || $(PYTHON) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/python $(PIP) $(MXNET_REQUIREMENTS)
	touch $(MXNET_STAMP)

serve: $(STAMP)
	$(BIN)/serve --model-dir examples/numpy-linear/model --port $(PORT)

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python benchmarks/codecs.py
	PYTHONPATH=. $(SDK_VENV)/bin/python benchmarks/recordio_vs_sdk.py

clean:
	rm -rf $(VENV) $(SDK_VENV) $(MXNET_VENV) *.egg-info .pytest_cache
