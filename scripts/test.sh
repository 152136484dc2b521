#!/usr/bin/env bash
# The test suite, offline, on CPU: `bash scripts/test.sh [pytest args]`.
# Test files run on T2T_TEST_WORKERS pytest-xdist workers (default 2, one per core of the 2-core CI machine; a
# file's tests stay together, so its module fixtures are built once); `-n 0` runs everything in this process.
source "$(dirname "$0")/env.sh"
exec python -m pytest -q -n "${T2T_TEST_WORKERS:-2}" --dist loadfile --durations=15 "$@"
