# make install: the environments, from nothing:
#   .venv      the package with its test extras and all three frameworks (torch, chainer,
#              mxnet: numpy 1.23, as MXNet needs);
#   .venv-np2  the package with numpy 2 and torch only: the core suite runs here too;
#   .venv-sdk  the SageMaker Python SDK v2 (numpy 2, protobuf < 7), the client the tests drive
#              the server with, as users do.
#   .venv-kserve KServe's Python package (its InferenceRESTClient, v1 and v2), another client
#              the tests drive the server with; its FastAPI, pandas and grpc pins stay there.
# make container-tools: buildah and debootstrap (apt-get, as root), for the container tests
#              where there is no Docker engine; best effort, the tests say why they skip.
#   .venv-ray  Ray Serve and Ray Data (ray[serve,data]), numpy 2 and torch: the Ray engine and
#              the Ray tests (made by make test-ray / serve-ray, on first use).
# make serve:  serve the bundled NumPy example model on port 8080 (EXAMPLE=<name> another).
# make serve-ray: the same on Ray Serve (serve --engine ray): a local Ray instance, REPLICAS=
#              replicas (2); curl gets the same answers as from make serve.
# make test:   the whole suite in .venv (container images included, the layering contracts),
#              then in .venv-np2 the unit tests and the suites whose requests go through NumPy
#              (NP2_TESTS; no chainer, no mxnet, no images), then make test-ray and
#              make test-torchserve.
# make test-ray: the Ray tests (tests/ray: Ray Serve against gunicorn on three examples, a
#              killed replica, batching, batch transform on Ray Data) in .venv-ray, on local
#              Ray instances the tests start; at most RAY_TEST_SECONDS (900).
# make bench:  the codec benchmarks of BENCHMARKS.md, then our load benchmarks (overhead against a
#              bare Flask echo, batching off and on, cold start, memory with 1/2/4 workers),
#              which write their tables into BENCHMARKS.md; about 5 minutes.
# make test-torchserve: TorchServe 0.12 (its own environment under build/peers/envs, Java 17)
#              and serving-toolkit on the same model archives, the same requests: the same
#              answers (tests/torchserve); at most TORCHSERVE_TEST_SECONDS (600).
# make loadtest: serve an example (EXAMPLE=, default numpy-linear) on 127.0.0.1 and load it with
#              locust (tests/load/locustfile.py) headless: USERS= users (8) for DURATION= seconds
#              (30); prints locust's summary, writes CSV and HTML under build/loadtest/.
# make bench-peers: serving-toolkit against TorchServe, the SageMaker PyTorch toolkit, the SageMaker
#              inference toolkit on MMS, LitServe and a hand-written Flask app, each in its own
#              environment under build/peers/envs (several GB, made on first use; Java 17 and wrk
#              needed); about 10 minutes; writes the table into BENCHMARKS.md. Not in make test.
# make bench-torchserve: TorchServe 0.12 against us on the same .mar (req/s, p99, PSS, cold
#              start; 3 alternating rounds); about 4 minutes; writes its table into BENCHMARKS.md.
# make bench-ray: the Ray engine against gunicorn (same model, same wrk load; 2 replicas
#              against 2 workers); about 3 minutes; writes its table into BENCHMARKS.md.
# make bench-http: the worker's HTTP/1.1 parser, old (the hand-written one, at commit
#              c5a6d2b) against new (llhttp), parser alone and whole servers in alternating
#              rounds; about 4 minutes; writes its table into BENCHMARKS.md.
# make bench-invocation: the invocation path, old tree (before the invocation service) against
#              this one, on numpy-linear, the peers' MLP and the MLP in a .mar through
#              /predictions; alternating rounds; about 6 minutes; writes its table into
#              BENCHMARKS.md.
# make bench-streams: bidirectional streams (WebSocket, stream_fn) against HTTP chunked
#              streaming, the word language model, 1 and 64 clients; about 2 minutes;
#              writes its table into BENCHMARKS.md.
# make bench-faults: the fault figures of BENCHMARKS.md (slow clients, stuck predictions,
#              memory bombs, reloads, shutdown), each against real servers; about 2 minutes.

PYTHON ?= python3
PIP := -m pip install --disable-pip-version-check -q
# A local CPU wheel; an unpinned torch would pull several GB of CUDA packages.
TORCH := torch==2.13.0
PORT ?= 8080

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NP2_VENV := .venv-np2
NP2_STAMP := $(NP2_VENV)/.installed
SDK_VENV := .venv-sdk
SDK_STAMP := $(SDK_VENV)/.installed
SDK_REQUIREMENTS := "sagemaker>=2.200,<3" "protobuf<7" scipy pillow
KSERVE_VENV := .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed
RAY_VENV := .venv-ray
RAY_STAMP := $(RAY_VENV)/.installed

.PHONY: install container-tools serve serve-ray test test-ray test-torchserve loadtest bench bench-torchserve bench-ray bench-peers bench-faults bench-http bench-invocation bench-grpc bench-streams wrk clean

install: $(STAMP) $(NP2_STAMP) $(SDK_STAMP) $(KSERVE_STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python $(PIP) --upgrade pip
	$(BIN)/python $(PIP) $(TORCH) "numpy<1.24" "setuptools>=77,<81" wheel
	$(BIN)/python $(PIP) --no-build-isolation chainer==7.8.1
	$(BIN)/python $(PIP) -e '.[test,pytorch,chainer,mxnet,torchserve,grpc]'
	touch $(STAMP)

$(NP2_STAMP): setup.py
	test -x $(NP2_VENV)/bin/python || $(PYTHON) -m venv $(NP2_VENV)
	$(NP2_VENV)/bin/python $(PIP) --upgrade pip
	$(NP2_VENV)/bin/python $(PIP) $(TORCH) "numpy>=2"
	$(NP2_VENV)/bin/python $(PIP) -e '.[test,pytorch,grpc]'
	touch $(NP2_STAMP)

$(SDK_STAMP):
	test -x $(SDK_VENV)/bin/python || $(PYTHON) -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/python $(PIP) $(SDK_REQUIREMENTS)
	touch $(SDK_STAMP)

$(KSERVE_STAMP):
	test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python $(PIP) kserve==0.21.0
	touch $(KSERVE_STAMP)

$(RAY_STAMP): setup.py
	test -x $(RAY_VENV)/bin/python || $(PYTHON) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python $(PIP) --upgrade pip
	$(RAY_VENV)/bin/python $(PIP) $(TORCH) "numpy>=2" "ray[serve,data]==2.60.0"
	$(RAY_VENV)/bin/python $(PIP) -e '.[test,pytorch,ray]'
	touch $(RAY_STAMP)

container-tools:
	@if docker info >/dev/null 2>&1 || (command -v buildah && command -v debootstrap) >/dev/null; then \
		echo "container tools: present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null) \
		|| echo "container tools: apt-get could not install buildah and debootstrap"; \
	else \
		echo "container tools: not root or no apt-get; the container tests will skip"; \
	fi

# EXAMPLE=translation (or word-language-model, image-classifier, sentiment, seq2seq) serves
# one of the workflow examples, making its model first if it has none yet.
EXAMPLE ?= numpy-linear

serve: $(STAMP)
	@if [ -f examples/$(EXAMPLE)/make_model.py ] && [ -z "$$(ls examples/$(EXAMPLE)/model | grep -v '^code$$')" ]; then \
		SETUPTOOLS_USE_DISTUTILS=stdlib $(BIN)/python examples/$(EXAMPLE)/make_model.py; fi
	$(BIN)/serve --model-dir examples/$(EXAMPLE)/model --port $(PORT)

REPLICAS ?= 2

serve-ray: $(RAY_STAMP)
	@if [ -f examples/$(EXAMPLE)/make_model.py ] && [ -z "$$(ls examples/$(EXAMPLE)/model | grep -v '^code$$')" ]; then \
		$(RAY_VENV)/bin/python examples/$(EXAMPLE)/make_model.py; fi
	$(RAY_VENV)/bin/serve --engine ray --model-dir examples/$(EXAMPLE)/model --port $(PORT) \
		--ray-replicas $(REPLICAS)

# NumPy 2: every unit test, and the suites whose requests go through NumPy (codecs, tensors
# over REST and gRPC, JSON numbers, batching, streaming, bounds); the HTTP, lifecycle, fault,
# management and multi-model suites touch no NumPy the first pass did not run the same way,
# and the examples' models are user code on the paths the codec suites cover (test-ray
# serves the examples, and runs batch transform, on NumPy 2).
NP2_TESTS := tests/serving tests/handlers tests/faults/test_memory_bombs.py \
	$(addprefix tests/integration/, test_content_types.py test_json_numbers.py test_kserve.py \
	test_kserve_grpc.py test_batching.py test_streaming.py test_request_bounds.py \
	test_protocol_properties.py)
# Timing, not NumPy: a minute of the first pass's, not run twice. (Batch transform runs on
# NumPy 2 in test-ray.)
NP2_DESELECT := tests/integration/test_batching.py::test_a_batch_waits_at_most_the_max_delay_and_a_lone_client_not_at_all

test: install container-tools
	SETUPTOOLS_USE_DISTUTILS=stdlib $(BIN)/python -m pytest -q --durations=25 tests --ignore=tests/ray --ignore=tests/torchserve
	$(NP2_VENV)/bin/python -m pytest -q --durations=10 -m "not chainer and not mxnet and not container and not torchserve" \
		$(NP2_TESTS) --ignore=tests/handlers/frameworks/test_chainer.py \
		--ignore=tests/handlers/frameworks/test_mxnet.py --deselect $(NP2_DESELECT)
	$(MAKE) test-ray
	$(MAKE) test-torchserve

RAY_TEST_SECONDS ?= 900

test-ray: $(RAY_STAMP) $(SDK_STAMP)
	timeout --signal=INT --kill-after=30 $(RAY_TEST_SECONDS) $(RAY_VENV)/bin/python -m pytest -q tests/ray \
		tests/integration/test_batch_transform.py tests/deploy/test_manifests.py

USERS ?= 8
DURATION ?= 30

loadtest: $(STAMP)
	SETUPTOOLS_USE_DISTUTILS=stdlib $(BIN)/python tests/load/run.py --example $(EXAMPLE) \
		--users $(USERS) --duration $(DURATION) --out build/loadtest

bench: install wrk
	$(NP2_VENV)/bin/python benchmarks/codecs.py
	PYTHONPATH=. $(SDK_VENV)/bin/python benchmarks/recordio_vs_sdk.py
	$(NP2_VENV)/bin/python benchmarks/load.py

# The peers, each in its own environment, torch pinned to the local CPU wheel everywhere.
# TorchServe needs pyyaml and numpy it does not declare; the SageMaker toolkits import
# pkg_resources, gone from setuptools 81.
PEERS_ENVS := build/peers/envs
PEERS := torchserve sagemaker-pytorch mms litserve
PEER_PACKAGES_torchserve := torchserve==0.12.0 torch-model-archiver==0.12.0 pyyaml numpy
PEER_PACKAGES_sagemaker-pytorch := sagemaker-pytorch-inference==2.0.25 torchserve==0.12.0 \
	torch-model-archiver==0.12.0 pyyaml numpy "setuptools<81"
PEER_PACKAGES_mms := sagemaker-inference==1.10.1 multi-model-server==1.1.11 "setuptools<81"
PEER_PACKAGES_litserve := litserve==0.2.19

$(PEERS_ENVS)/%/.installed:
	test -x $(PEERS_ENVS)/$*/bin/python || $(PYTHON) -m venv $(PEERS_ENVS)/$*
	$(PEERS_ENVS)/$*/bin/python $(PIP) $(TORCH) $(PEER_PACKAGES_$*)
	touch $@

TORCHSERVE_TEST_SECONDS ?= 600

# TorchServe 0.12 itself (its own environment, the one make bench-peers uses) against us on
# the same archives, built by its own torch-model-archiver.
test-torchserve: $(STAMP) $(PEERS_ENVS)/torchserve/.installed
	timeout --signal=INT --kill-after=30 $(TORCHSERVE_TEST_SECONDS) env SETUPTOOLS_USE_DISTUTILS=stdlib \
		$(BIN)/python -m pytest -q tests/torchserve

wrk:
	@command -v wrk >/dev/null || (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null))

DURATION_PEERS ?= 10

bench-peers: $(NP2_STAMP) wrk $(foreach p,$(PEERS),$(PEERS_ENVS)/$(p)/.installed)
	$(NP2_VENV)/bin/python benchmarks/peers/run.py --duration $(DURATION_PEERS)

bench-torchserve: $(STAMP) wrk $(PEERS_ENVS)/torchserve/.installed
	$(BIN)/python benchmarks/torchserve_mar.py

bench-ray: $(RAY_STAMP) wrk
	$(RAY_VENV)/bin/python benchmarks/ray_serve.py

bench-http: $(NP2_STAMP) wrk
	$(NP2_VENV)/bin/python benchmarks/http_front_door.py

bench-grpc: $(STAMP)
	@command -v h2load >/dev/null || (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null))
	$(BIN)/python benchmarks/grpc_rest.py

bench-invocation: $(STAMP) wrk
	$(BIN)/python benchmarks/invocation_path.py

bench-streams: $(STAMP)
	$(BIN)/python benchmarks/streams.py

bench-faults: $(STAMP)
	$(BIN)/python benchmarks/faults.py

clean:
	rm -rf $(VENV) $(NP2_VENV) $(SDK_VENV) $(KSERVE_VENV) $(RAY_VENV) *.egg-info .pytest_cache build
