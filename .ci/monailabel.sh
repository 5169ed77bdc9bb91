#!/usr/bin/env bash
# CI: our bundles served by a real MONAI Label server (issue 7, tests/test_monailabel.py).
#
# `make monailabel-venv` builds the separate MONAI Label venv when it is missing or older than its
# requirements (see requirements-monailabel.txt for why it is separate and installed with --no-deps); the
# test runs from the main venv and starts the server from the MONAI Label venv. A skip would hide a broken
# set-up, so here a missing venv fails the test.
#
#   .ci/monailabel.sh          # extra arguments go to pytest, e.g. -x
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
make venv monailabel-venv
echo "venvs ready in $(( $(date +%s) - start )) s"

MONAI_LUNG_MONAILABEL_PY="$(pwd)/.venv-monailabel/bin/python" MONAI_LUNG_REQUIRE_MONAILABEL=1 \
    .venv/bin/python -m pytest -q -rs tests/test_monailabel.py "$@"
