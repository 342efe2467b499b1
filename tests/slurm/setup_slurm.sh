#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py and for trying profiles/slurm.
#
#   sudo bash tests/slurm/setup_slurm.sh [STATE_DIR]     # default /tmp/prefopt-slurm
#   sbatch / squeue / sacct ...                           # as on any cluster
#   sudo bash tests/slurm/teardown_slurm.sh [STATE_DIR]   # stops every daemon by its PID
#
# Debian 12's SLURM 22.05 from apt: munge, slurmctld, slurmd, and slurmdbd on a private MariaDB
# (for sacct). Everything lives in STATE_DIR, on its own ports and sockets, so it leaves the
# system's munge and MariaDB services alone. The one thing outside it is the symlink
# /etc/slurm/slurm.conf -> STATE_DIR/slurm.conf, where SLURM's commands look by default: the
# jobstep plugin drops SLURM_CONF from the environment of the `srun` it starts inside each job.
# The script refuses to run where /etc/slurm/slurm.conf is anything else (a real cluster's
# config, or another live test cluster). The node has 2 CPUs, 20000 MB and
# $PREFOPT_SLURM_GPUS typed GPUs ($PREFOPT_SLURM_GPU_TYPE) whose gres.conf File= entries are
# dummy files: GPU jobs are scheduled and allocated, but no GPU exists (torch sees none).
# Partition `main` (the default) is that node alone. Partition `multi` adds a second node,
# `<host>-2` (2 CPUs, 20000 MB, no GPUs): a second slurmd on this host (`slurmd -N`, Debian's
# SLURM is built with multiple-slurmd support), on its own port, so multi-node jobs run here;
# both nodes share this machine's CPUs, and the first is the host's own name, which resolves.
# Needs root and apt-get. Takes about 15 s once the packages are installed.
set -euo pipefail

DIR=${1:-${PREFOPT_SLURM_DIR:-/tmp/prefopt-slurm}}
GPU_TYPE=${PREFOPT_SLURM_GPU_TYPE:-a100}
GPUS=${PREFOPT_SLURM_GPUS:-8}
PORT_BASE=${PREFOPT_SLURM_PORT_BASE:-16817}   # slurmctld, slurmd, slurmdbd, MariaDB: 4 ports from here
CLUSTER=prefopt
ACCOUNT=prefopt
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "$(id -u)" != 0 ]; then echo "setup_slurm.sh: needs root" >&2; exit 1; fi

packages=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A stale cluster from an interrupted run is stopped first, by its PIDs.
bash "$HERE/teardown_slurm.sh" "$DIR" >/dev/null 2>&1 || true
DEFAULT_CONF=/etc/slurm/slurm.conf
if [ -e "$DEFAULT_CONF" ] || [ -L "$DEFAULT_CONF" ]; then
    target=$(readlink "$DEFAULT_CONF" || true)
    if [ -z "$target" ] || { [ "$target" != "$DIR/slurm.conf" ] && [ -e "$target" ]; }; then
        echo "setup_slurm.sh: $DEFAULT_CONF exists (${target:-a real file}); not replacing it" >&2
        exit 1
    fi
    rm -f "$DEFAULT_CONF"  # a link to this cluster's, or to one whose folder is gone
fi
rm -rf "$DIR"
mkdir -p "$DIR"/{log,state,spool,munge,dev}
chmod 711 "$DIR" "$DIR/munge"

host=$(hostname -s)
ctld_port=$PORT_BASE
slurmd_port=$((PORT_BASE + 1))
dbd_port=$((PORT_BASE + 2))
db_port=$((PORT_BASE + 3))
slurmd2_port=$((PORT_BASE + 4))
node2=$host-2
mkdir -p "$DIR/spool/$host" "$DIR/spool/$node2"
db_password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
memory_mb=20000
last_gpu=$((GPUS - 1))
for i in $(seq 0 "$last_gpu"); do touch "$DIR/dev/gpu$i"; done

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 2))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "setup_slurm.sh: $what did not come up in ${seconds}s; logs in $DIR/log" >&2
    tail -n 20 "$DIR"/log/*.log >&2 || true
    exit 1
}

# ---- munge: a key and a socket of our own
mungekey --create --keyfile="$DIR/munge.key"
chmod 600 "$DIR/munge.key"
munged --force --key-file="$DIR/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
wait_for 10 munged munge --socket="$DIR/munge/munge.socket" -n

# ---- MariaDB for slurmdbd (the sacct path)
mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=socket \
    --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1
setsid mariadbd --user=root --datadir="$DIR/mysql" --socket="$DIR/mysql.sock" --port="$db_port" \
    --bind-address=127.0.0.1 --pid-file="$DIR/mariadb.pid" --log-error="$DIR/log/mariadb.log" \
    --skip-log-bin </dev/null >/dev/null 2>&1 &
wait_for 60 MariaDB mariadb-admin --socket="$DIR/mysql.sock" ping
mariadb --socket="$DIR/mysql.sock" -u root <<SQL
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$db_password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL

# ---- configuration: slurm.conf, gres.conf and slurmdbd.conf side by side (found through SLURM_CONF)
cat >"$DIR/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
EnforcePartLimits=ALL
MinJobAge=600
ReturnToService=2
MpiDefault=none
SlurmdParameters=config_overrides
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
AccountingStoragePass=$DIR/munge/munge.socket
AccountingStorageTRES=gres/gpu,gres/gpu:$GPU_TYPE
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
NodeName=$host NodeAddr=127.0.0.1 Port=$slurmd_port CPUs=2 RealMemory=$memory_mb Gres=gpu:$GPU_TYPE:$GPUS State=UNKNOWN
NodeName=$node2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$slurmd2_port CPUs=2 RealMemory=$memory_mb State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=multi Nodes=$host,$node2 MaxTime=INFINITE State=UP
EOF
cat >"$DIR/gres.conf" <<EOF
NodeName=$host Name=gpu Type=$GPU_TYPE File=$DIR/dev/gpu[0-$last_gpu]
EOF
cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$db_password
StorageLoc=slurm_acct_db
EOF
chmod 600 "$DIR/slurmdbd.conf"
mkdir -p "$(dirname "$DEFAULT_CONF")"
ln -s "$DIR/slurm.conf" "$DEFAULT_CONF"
# The daemons read slurm.conf where gres.conf and slurmdbd.conf are (the commands use the link).
export SLURM_CONF=$DIR/slurm.conf

# ---- daemons: slurmdbd, then the cluster and an account in it, then slurmctld and slurmd
slurmdbd
wait_for 60 slurmdbd sacctmgr -n show cluster
sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -i add account "$ACCOUNT" Description=prefopt-tests Organization=prefopt >/dev/null
sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null
slurmctld
wait_for 30 slurmctld scontrol ping
slurmd -N "$host"
slurmd -N "$node2"
nodes_idle() { [ "$(sinfo -h -N -p multi -o %T | grep -cx idle)" = 2 ]; }
wait_for 60 "the nodes (idle in sinfo)" nodes_idle
echo "SLURM is up: $(sinfo -h -N -p main -o '%N %T cpus=%c mem=%m gres=%G'), partition main" \
    "(+ $node2 in partition multi), account $ACCOUNT"
