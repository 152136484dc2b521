#!/usr/bin/env bash
# The test suite, offline, on CPU: `bash scripts/test.sh [pytest args]`.
# Test files run on T2T_TEST_WORKERS pytest-xdist workers (default 2, one per core of the 2-core CI machine; a
# file's tests stay together, so its module fixtures are built once), dealt in the order tests/conftest.py gives
# them (slowest files first; xdist would otherwise reorder them by test count); `-n 0` runs everything here.
source "$(dirname "$0")/env.sh"
exec python -m pytest -q -n "${T2T_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=15 "$@"
