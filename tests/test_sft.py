"""prefopt.sft: completion-only SFT through TRL, LoRA merged into a full model directory (resume: test_job.py)."""

from __future__ import annotations

import json

import pytest
import torch

from prefopt.io import write_jsonl
from prefopt.job import run_job, sft_stage
from prefopt.sft import tokenize_sft_row
from run_configs import checked_run_config

CONVERSATIONS = [
    ("What is 17 + 25?", "17 + 25 = 42.\n\nAnswer: 42"),
    ("Sort 9, 2, 5 ascending.", "2, 5, 9\n\nAnswer: 2, 5, 9"),
    ("Convert 3 km to metres.", "3 km = 3000 m.\n\nAnswer: 3000"),
    ("Reverse the word 'stone'.", "Reversed: enots\n\nAnswer: enots"),
    ("What is 6 times 7?", "6 x 7 = 42.\n\nAnswer: 42"),
    ("Capitalise 'paris'.", "Paris\n\nAnswer: Paris"),
    ("How many grams in 2 kg?", "2 kg = 2000 g.\n\nAnswer: 2000"),
    ("Sort b, a, c.", "a, b, c\n\nAnswer: a, b, c"),
]


def make_rows():
    rows = []
    for index, (prompt, answer) in enumerate(CONVERSATIONS):
        user = {"role": "user", "content": prompt}
        rows.append({"prompt_id": f"sft-{index}", "prompt": prompt,
                     "chosen": [user, {"role": "assistant", "content": answer}],
                     "rejected": [user, {"role": "assistant", "content": "I do not know."}],
                     "score_chosen": 1.0, "score_rejected": 0.0})
    return rows


def sft_config(**training):
    settings = {"learning_rate": 1e-3, "max_steps": 4, "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 1, "save_steps": 2, "max_length": 128, "max_prompt_length": 96}
    settings.update(training)
    # LoRA r=4 on the paper's modules, with lm_head in modules_to_save (the paper's Table 1 shape)
    return checked_run_config("sft", training=settings, lora={
        "r": 4, "alpha": 8, "dropout": 0.0, "modules_to_save": ["lm_head"],
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]})


def train_sft(run_config, model_dir, rows, out_dir, checkpoint_dir):
    train_path = out_dir.parent / "sft-rows.jsonl"
    write_jsonl(train_path, rows)
    return run_job(sft_stage(), run_config, model_dir=model_dir, train_path=train_path, out_dir=out_dir,
                   checkpoint_dir=checkpoint_dir)


def test_tokenize_sft_row_masks_the_prompt(tokenizer_dir):
    from prefopt.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    row = make_rows()[0]
    example = tokenize_sft_row(tokenizer, row, max_length=128, max_prompt_length=96)
    completion = [token for token, flag in zip(example["input_ids"], example["completion_mask"]) if flag]
    assert tokenizer.decode(completion) == CONVERSATIONS[0][1] + "<|im_end|>"
    prompt_length = example["completion_mask"].index(1)
    assert example["input_ids"][:prompt_length] == list(tokenizer.apply_chat_template(
        row["chosen"][:-1], add_generation_prompt=True, tokenize=True, return_dict=False))


def test_sft_merges_lora_into_a_loadable_model(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from prefopt.models import load_for_inference

    out_dir, checkpoint_dir = tmp_path / "sft", tmp_path / "sft-checkpoints"
    summary = train_sft(sft_config(), tiny_model_dir, make_rows(), out_dir, checkpoint_dir)
    assert summary["global_step"] == 4 and summary["merged_lora"] and summary["resumed_from"] is None
    records = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(record["loss"])) for record in records)
    assert records[-1]["loss"] < records[0]["loss"]  # lr 1e-3 on 8 short answers
    assert (out_dir / "model.safetensors").exists() and not (out_dir / "adapter_config.json").exists()

    # the merged directory is a plain model: loads, keeps its trained lm_head, generates with the template
    model, tokenizer = load_for_inference(out_dir)
    saved = load_file(out_dir / "model.safetensors")
    torch.testing.assert_close(model.lm_head.weight, saved["lm_head.weight"])
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert tokenizer.chat_template is not None and tokenizer.eos_token == "<|im_end|>"
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_sft_rejects_a_preference_config(tiny_model_dir, tmp_path):
    config = checked_run_config("slime")
    with pytest.raises(ValueError, match="'method'"):
        train_sft(config, tiny_model_dir, make_rows(), tmp_path / "out", tmp_path / "ckpt")
