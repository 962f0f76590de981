#!/bin/sh
# `docker run <image> serve [flags]` starts the server; any other command runs as given.
set -e
if [ "${1:-serve}" = "serve" ]; then
    [ "$#" -gt 0 ] && shift
    exec serve "$@"
fi
exec "$@"
