#!/usr/bin/env bash
# The wall time and the machine's busy CPU seconds (from /proc/stat) of one command: `bash bench/cpu_of.sh CMD...`.
# Unlike `time`, it counts the processes the command leaves to others to reap (Ray's daemons, DeepSpeed's ranks under
# a launcher that is killed), so run it with nothing else busy on the machine. The command's output goes to
# ${CPU_OF_LOG:-/dev/null}.
set -euo pipefail
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
b0=$(busy); t0=$(date +%s.%N)
rc=0; "$@" > "${CPU_OF_LOG:-/dev/null}" 2>&1 || rc=$?
b1=$(busy); t1=$(date +%s.%N)
ticks=$(getconf CLK_TCK)
awk -v t0="$t0" -v t1="$t1" -v c="$(( b1 - b0 ))" -v t="$ticks" -v rc="$rc" \
    'BEGIN {printf "wall %.1f s, busy CPU %.1f s, exit %d\n", t1 - t0, c / t, rc}'
exit "$rc"
