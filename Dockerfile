# serving-toolkit's image: `docker run -v model:/opt/ml/model <image> serve`.
#
#   docker build --build-arg FRAMEWORK=pytorch -t serving-toolkit:pytorch .
#
# Build arguments:
#   FRAMEWORK    none | pytorch | chainer | mxnet: the framework installed with the server.
#   BASE_IMAGE   a Debian-like image with Python 3.10+ (`python3 -m venv` must work): the
#                default, or a CUDA runtime image with Python for GPU serving.
#   PIP_OPTIONS  passed to every pip install: --index-url, --extra-index-url, --find-links…
#   TORCH        the torch requirement (a CUDA build's index goes in PIP_OPTIONS).
#   RAY          true: Ray Serve and Ray Data too, so that SERVING_ENGINE=ray serves the model on
#                Ray Serve inside the container (same port, same /ping and /invocations).
#   TORCHSERVE   true: the torchserve extra too (torchserve 0.12's handler classes), so that
#                the image serves TorchServe model archives (serve --model-store DIR).
ARG BASE_IMAGE=python:3.11-slim

# -- build: a virtual environment with the framework and the server ---------------------
FROM ${BASE_IMAGE} AS build
ARG FRAMEWORK=none
ARG PIP_OPTIONS=""
ARG TORCH="torch==2.13.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# The framework first, in a layer of its own: it outlives changes to the server's code.
# A base without Python's venv (a CUDA runtime image) gets it from its own apt sources.
RUN set -eu; \
    if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update -qq; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/serving; \
    pip="/opt/serving/bin/pip install ${PIP_OPTIONS}"; \
    $pip --upgrade pip; \
    case "${FRAMEWORK}" in \
      none) ;; \
      pytorch) $pip "${TORCH}" ;; \
      # Chainer 7.8.1 is an sdist that builds only without build isolation, setuptools < 81.
      chainer) $pip "setuptools>=77,<81" wheel "numpy<2" \
               && $pip --no-build-isolation "chainer==7.8.1" ;; \
      # MXNet 1.9 uses np.bool, gone in NumPy 1.24.
      mxnet) $pip "mxnet==1.9.1" "numpy<1.24" ;; \
      *) echo "FRAMEWORK must be none, pytorch, chainer or mxnet, not ${FRAMEWORK}" >&2; exit 1 ;; \
    esac
ARG RAY=false
ARG TORCHSERVE=false
# One COPY (.dockerignore keeps the context to the package): each layer after a change to the
# server's code is one more copy of the whole environment on a copying storage driver (vfs).
COPY . /src
RUN set -eu; \
    extras=""; [ "${FRAMEWORK}" = none ] || extras="${FRAMEWORK}"; \
    [ "${RAY}" != true ] || extras="${extras:+${extras},}ray"; \
    [ "${TORCHSERVE}" != true ] || extras="${extras:+${extras},}torchserve"; \
    extra=""; [ -z "${extras}" ] || extra="[${extras}]"; \
    /opt/serving/bin/pip install ${PIP_OPTIONS} "/src${extra}"; \
    find /opt/serving -name __pycache__ -prune -exec rm -rf {} +

# -- the image: the environment, an unprivileged user, nothing else ------------------------
# It starts as root, as SageMaker expects of a container; the entrypoint drops to the user
# `serving` with setpriv before anything else runs. Started as another uid (Kubernetes'
# runAsUser, OpenShift's arbitrary uid), it serves as that uid. See docs/operating.md.
FROM ${BASE_IMAGE}
ARG FRAMEWORK=none
# MULTI_MODEL=true: an image for SageMaker multi-model endpoints, which SageMaker accepts only
# with this label; the server then starts in multi-model mode (models come through /models).
ARG MULTI_MODEL=false
# BIDIRECTIONAL_STREAMING=true: SageMaker opens WebSocket streams to the container
# (InvokeEndpointWithBidirectionalStream) only with this label. The server always serves
# them (a model's stream_fn, else one invocation a message); the label tells SageMaker.
ARG BIDIRECTIONAL_STREAMING=false
LABEL com.amazonaws.sagemaker.capabilities.multi-models=${MULTI_MODEL} \
      com.amazonaws.sagemaker.capabilities.bidirectional-streaming=${BIDIRECTIONAL_STREAMING} \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
# MXNet links against the system's OpenMP and quad-math runtimes (torch ships its own);
# the entrypoint needs setpriv (util-linux: Debian's and Ubuntu's bases have it, a slim
# one may not); the environment needs the base's python3 (a CUDA base has none).
RUN set -eu; \
    packages=""; \
    [ "${FRAMEWORK}" != mxnet ] || packages="libgomp1 libquadmath0"; \
    command -v setpriv >/dev/null || packages="${packages} util-linux"; \
    command -v python3 >/dev/null || packages="${packages} python3"; \
    if [ -n "${packages}" ]; then \
        apt-get update -qq; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${packages}; \
        rm -rf /var/lib/apt/lists/*; \
    fi
# The server runs as `serving` (uid 10001). It owns the environment (copied in with that owner, not
# chowned after, which would copy every file into one more layer) so that a model's
# requirements.txt can be installed at start-up, and the model and code directories.
RUN set -eu; \
    useradd --uid 10001 --user-group --create-home --home-dir /home/serving serving; \
    mkdir -p /opt/ml/model /opt/ml/code; \
    chown serving:serving /opt/ml/model /opt/ml/code
COPY docker/entrypoint.sh /usr/local/bin/serving-entrypoint
ENV PATH=/opt/serving/bin:${PATH} \
    SM_MODEL_DIR=/opt/ml/model \
    SAGEMAKER_MULTI_MODEL=${MULTI_MODEL} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# /opt/ml/model is where hosts mount the model. It is not a VOLUME: a VOLUME would make
# `COPY model /opt/ml/model` in an image built FROM this one vanish (see examples/bake-model).
WORKDIR /opt/ml/model
# Root, as SageMaker runs containers; the entrypoint serves as `serving` (SERVING_RUN_AS).
USER root
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/serving-entrypoint"]
CMD ["serve"]
# The environment last: the instructions above are cached across changes to the server's
# code, so such a change costs one layer here, not one per instruction after it.
COPY --from=build --chown=10001:10001 /opt/serving /opt/serving
