#!/usr/bin/env bash
# Stop the SLURM of setup_slurm.sh: every daemon by the PID in its pid file, nothing by name.
#   sudo bash tests/slurm/teardown_slurm.sh [STATE_DIR]   # default /tmp/prefopt-slurm
set -uo pipefail

DIR=${1:-${PREFOPT_SLURM_DIR:-/tmp/prefopt-slurm}}
status=0
for pidfile in "$DIR"/slurmd*.pid "$DIR"/{slurmctld,slurmdbd,mariadb,munged}.pid; do
    daemon=$(basename "$pidfile" .pid)
    [ -s "$pidfile" ] || continue
    pid=$(tr -dc 0-9 <"$pidfile")
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pidfile"
        continue
    fi
    kill -TERM "$pid"
    for _ in $(seq 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "teardown_slurm.sh: $daemon ($pid) ignored SIGTERM for 20 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
        status=1
    fi
    rm -f "$pidfile"
    echo "stopped $daemon ($pid)"
done
if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$DIR/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
    echo "removed the link /etc/slurm/slurm.conf"
fi
exit $status
