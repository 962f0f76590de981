#!/bin/sh
# The image's entrypoint: `docker run <image> serve [flags]` starts the server; any other
# command runs as given. Either way it runs unprivileged:
#
#   started as root (SageMaker starts containers so, and so does a plain `docker run`): the
#     command runs as the image's user `serving` (uid 10001), dropped to with setpriv
#     before anything else starts (no user code, no pip install, no model load as root);
#     SERVING_RUN_AS=root (or serve --run-as root) keeps root instead;
#   started as any other uid (Kubernetes runAsUser, OpenShift's arbitrary uid, docker
#     --user): the command runs as that uid, as it was started.
#
# Root does nothing here but create a missing PROMETHEUS_MULTIPROC_DIR for `serving` (its
# parent may be root's) and drop its rights.
set -eu

SERVING_USER=serving
me() { echo "serving-entrypoint: $*" >&2; }

run_as="${SERVING_RUN_AS:-serving}"
if [ "${1:-serve}" = "serve" ]; then
    [ "$#" -gt 0 ] && shift
    set -- serve "$@"
    # serve --run-as X (the flag wins over the variable, as for every setting).
    previous=""
    for arg in "$@"; do
        case "${previous}" in --run-as) run_as="${arg}" ;; esac
        case "${arg}" in --run-as=*) run_as="${arg#--run-as=}" ;; esac
        previous="${arg}"
    done
fi
case "${run_as}" in
    serving|root) ;;
    *) me "SERVING_RUN_AS / --run-as must be serving or root, not '${run_as}'"; exit 2 ;;
esac

# What the server will compute on, as this container sees it.
report_devices() {
    cpus=$(nproc 2>/dev/null || echo "?")
    if command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi -L 2>/dev/null) \
            && [ -n "${gpus}" ]; then
        me "devices: ${cpus} CPU(s); GPUs:"
        echo "${gpus}" | sed 's/^/serving-entrypoint:   /' >&2
    elif ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
        me "devices: ${cpus} CPU(s); GPU device files $(echo /dev/nvidia[0-9]*) but no" \
           "nvidia-smi (the server counts GPUs with nvidia-smi -L: it will serve on CPU)"
    else
        me "devices: ${cpus} CPU(s), no GPU"
    fi
}

if [ "$(id -u)" = 0 ] && [ "${run_as}" = serving ]; then
    if ! command -v setpriv >/dev/null 2>&1; then
        me "setpriv (util-linux) is not installed in this image: cannot drop root;" \
           "install util-linux in the image, or set SERVING_RUN_AS=root to run as root"
        exit 1
    fi
    if ! id "${SERVING_USER}" >/dev/null 2>&1; then
        me "the image has no user '${SERVING_USER}' to drop root to (build it from" \
           "serving-toolkit's Dockerfile, or set SERVING_RUN_AS=root)"
        exit 1
    fi
    if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ] && [ ! -e "${PROMETHEUS_MULTIPROC_DIR}" ]; then
        # The server says what it does without it (metrics off) if this fails.
        mkdir -p "${PROMETHEUS_MULTIPROC_DIR}" \
            && chown "${SERVING_USER}:${SERVING_USER}" "${PROMETHEUS_MULTIPROC_DIR}" \
            || me "cannot create PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR}"
    fi
    export HOME="$(getent passwd "${SERVING_USER}" | cut -d: -f6)" USER="${SERVING_USER}" \
        LOGNAME="${SERVING_USER}"
    # No capabilities kept or inheritable, none in the bounding set (where root may empty
    # it: that needs CAP_SETPCAP), and no_new_privs: no setuid binary gives root back.
    bounding="--bounding-set=-all"
    setpriv ${bounding} true 2>/dev/null || bounding=""
    # This script again, as the user, then the command.
    exec setpriv --reuid="${SERVING_USER}" --regid="${SERVING_USER}" --init-groups \
        --inh-caps=-all ${bounding} --no-new-privs -- "$0" "$@"
fi

if [ "$(id -u)" = 0 ]; then
    me "SERVING_RUN_AS=root: running as root (uid 0); the model's code and its" \
       "requirements.txt install have root's rights in this container"
else
    # Unprivileged. An arbitrary uid may have no home, or a home on a read-only root
    # filesystem: what writes under $HOME (pip, framework caches) gets one in /tmp.
    if [ -z "${HOME:-}" ] || [ ! -d "${HOME}" ] || [ ! -w "${HOME}" ]; then
        HOME="${TMPDIR:-/tmp}/serving-home-$(id -u)"
        mkdir -p "${HOME}"
        export HOME
    fi
    me "running as uid $(id -u), gid $(id -g), groups $(id -G | tr ' ' ,)"
fi
report_devices
exec "$@"
