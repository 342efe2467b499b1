"""Align one model with one preference objective (DPO, SimPO, SLIME or StaPO) from a run config.

    python workflow/scripts/align.py --run-config results/smollm2/runs/slime-1a2b.json \
        --model results/smollm2/sft --train results/data/split/pref.jsonl \
        --out results/smollm2/align/slime-1a2b --checkpoint-dir checkpoints/smollm2/slime-1a2b

    # the same job on 2 processes (DDP over gloo on CPU, NCCL on GPUs) or under DeepSpeed ZeRO-2:
    accelerate launch --multi_gpu --num_processes 2 workflow/scripts/align.py ...same arguments...
    accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 8 workflow/scripts/align.py ...

Writes --out atomically (only rank 0): adapter/ (or model/ for a full fine-tune), metrics.jsonl,
summary.json, data_report.json. Checkpoints stay in --checkpoint-dir; rerunning the same command
after a kill resumes from the newest complete checkpoint of the same identity. Logs go to stderr.
"""

from __future__ import annotations

import sys

from prefopt.cli import training_main, training_parser


def main(argv=None) -> int:
    parser = training_parser(__doc__.splitlines()[0], model_help="SFT (or prepared) model directory",
                             train_help="preference rows (JSON lines)")
    return training_main("align", parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
