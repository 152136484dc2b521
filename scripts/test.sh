#!/usr/bin/env bash
# The test suite, offline, on CPU: `bash scripts/test.sh [pytest args]`.
source "$(dirname "$0")/env.sh"
exec python -m pytest -q "$@"
