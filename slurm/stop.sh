#!/usr/bin/env bash
# Stop what slurm/start.sh started, and nothing else: cancel the jobs, then the recorded daemons in
# reverse start order, each only if its PID still belongs to a process of that name (PIDs get
# reused). SIGTERM, then SIGKILL after 30 s. Never kills by name. Idempotent.
set -euo pipefail

BASE=${SLURM_CI_BASE:-/tmp/dvar-slurm}
RUN_DIR=$BASE/run
PIDS=$RUN_DIR/started.pids

if [ ! -s "$PIDS" ]; then
  echo "nothing to stop"
  exit 0
fi

is() {  # name pid: the pid is a live process called name
  [ "$(cat /proc/"$2"/comm 2>/dev/null)" = "$1" ]
}

# Cancel jobs first so no slurmstepd or job process outlives the daemons.
ctld=$(awk '$1 == "slurmctld" {print $2}' "$PIDS")
if [ -n "$ctld" ] && is slurmctld "$ctld"; then
  jobs=$(squeue -h -o %A 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    scancel $jobs || true
    for _ in $(seq 150); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
    [ -n "$(squeue -h -o %A 2>/dev/null)" ] && echo "warning: jobs still queued after 30 s" >&2
  fi
fi

status=0
while read -r name pid; do
  if ! is "$name" "$pid"; then
    echo "$name ($pid) is not running; skipped"
    continue
  fi
  kill -TERM "$pid"
  for _ in $(seq 300); do is "$name" "$pid" || break; sleep 0.1; done
  if is "$name" "$pid"; then
    kill -KILL "$pid"
    sleep 0.5
    is "$name" "$pid" && { echo "error: $name ($pid) survived SIGKILL" >&2; status=1; }
  fi
  echo "stopped $name ($pid)"
done < <(tac "$PIDS")
rm -f "$PIDS"
exit $status
