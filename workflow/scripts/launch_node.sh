#!/usr/bin/env bash
# One node's accelerate launcher in a SLURM job (prefopt.plan.launch_command), started once per node:
#
#   srun --nodes=2 --ntasks=2 --ntasks-per-node=1 ... bash workflow/scripts/launch_node.sh \
#       --num_machines 2 --num_processes 16 ... workflow/scripts/align.py ...
#
# runs on every node of the job
#
#   accelerate launch --machine_rank $SLURM_NODEID --main_process_ip <first node of $SLURM_JOB_NODELIST> ARGS...
#
# so node 0 (the first, where the job's own shell runs) is the main process. srun sets both variables
# in each task. docs/multinode.md.
set -euo pipefail

nodes=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
main_node=${nodes%%$'\n'*}
exec accelerate launch --machine_rank "$SLURM_NODEID" --main_process_ip "$main_node" "$@"
