#!/usr/bin/env bash
# The test suite, offline, on CPU: `bash scripts/test.sh [pytest args]`.
# Test files run on T2T_TEST_WORKERS pytest-xdist workers (default 2, one per core of the 2-core CI machine; a
# file's tests stay together, so its module fixtures are built once), dealt in the order tests/conftest.py gives
# them (slowest files first; xdist would otherwise reorder them by test count); `-n 0` runs everything here.
source "$(dirname "$0")/env.sh"
# tests/test_cluster.py runs a real two-node Slurm and Ray cluster on this machine (tests/cluster/README.md): Debian's
# Slurm and munge, installed here as root where they are missing; without them (or root) those tests fail, naming
# what is missing.
if [[ $(id -u) == 0 ]] && command -v apt-get > /dev/null && ! command -v slurmctld > /dev/null; then
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge iproute2; } > /dev/null \
        || echo "scripts/test.sh: apt-get could not install slurm-wlm and munge; the Slurm cluster tests will fail" >&2
fi
exec python -m pytest -q -n "${T2T_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=15 "$@"
