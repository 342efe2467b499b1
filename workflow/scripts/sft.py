"""Supervised fine-tuning (LoRA, cross-entropy on the assistant completion) from a run config.

    python workflow/scripts/sft.py --run-config results/smollm2/runs/sft.json \
        --model results/smollm2/base --train results/data/split/sft.jsonl \
        --out results/smollm2/sft --checkpoint-dir checkpoints/smollm2/sft

    # the same job on 2 processes (DDP) or under DeepSpeed ZeRO-2:
    accelerate launch --multi_gpu --num_processes 2 workflow/scripts/sft.py ...same arguments...

Writes --out atomically (only rank 0): a full model directory with the LoRA merged in (safetensors +
tokenizer with the same chat template), metrics.jsonl, summary.json, data_report.json. Rerunning
after a kill resumes from the newest complete checkpoint of the same identity. Logs go to stderr.
"""

from __future__ import annotations

import sys

from prefopt.cli import training_main, training_parser


def main(argv=None) -> int:
    parser = training_parser(__doc__.splitlines()[0], model_help="prepared base model directory",
                             train_help="SFT rows (JSON lines; the chosen conversations are used)")
    return training_main("sft", parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
