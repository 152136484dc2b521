#!/usr/bin/env bash
# The main job on the embedded default: `t2t pipeline` with recipes/demo.yaml, on CPU.
# Extra arguments go to `t2t pipeline` (e.g. --set stages.stage1.steps=300). Rerun to resume.
source "$(dirname "$0")/env.sh"
exec t2t pipeline "$@"
