"""Offline metrics vs a naive full-log-softmax computation, bootstrap CIs, demo accuracy, evaluate.py end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prefopt.evaluation.bootstrap import bootstrap_ci

REPO = Path(__file__).resolve().parents[1]


def _row(prompt_id, prompt, chosen, rejected, **extra):
    user = {"role": "user", "content": prompt}
    return {"prompt_id": prompt_id, "prompt": prompt,
            "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}],
            "score_chosen": 1.0, "score_rejected": 0.0, **extra}


ROWS = [
    _row("p0", "What is 17 + 25?", "17 + 25 = 42.\n\nAnswer: 42", "17 + 25 = 43.\n\nAnswer: 43"),
    _row("p1", "Sort: pear, apple, fig", "Sorted: apple, fig, pear.\n\nAnswer: apple, fig, pear", "pear, fig"),
    _row("p2", "Convert 3 km to m. Explain the factor you use in one sentence, please.",
         "One kilometre is 1000 metres, so 3 km = 3000 m.\n\nAnswer: 3000", "It is 300 m I think.\n\nAnswer: 300"),
    _row("p3", "Reverse 'otter'", "Reversed: retto\n\nAnswer: retto", "Answer: rettoo"),
    _row("p4", "What is 9 * 8?", "9 * 8 = 72.\n\nAnswer: 72",
         "Let me think about it for a while, multiplication is repeated addition, so 9 * 8 = 81.\n\nAnswer: 81"),
]

DEMO_ROWS = [
    _row("demo-000", "What is 2 + 2? End with a line 'Answer: <number>'.", "2 + 2 = 4.\n\nAnswer: 4", "Answer: 5",
         task="arithmetic", answer="4"),
    _row("demo-001", "Sort alphabetically: pear, apple. End with 'Answer: <list>'.", "Answer: apple, pear",
         "Answer: pear, apple", task="sorting", answer="apple, pear"),
    _row("demo-002", "Convert 2 km to m. End with 'Answer: <number>'.", "Answer: 2000", "Answer: 200",
         task="unit_conversion", answer="2000"),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from prefopt.models import load_for_inference

    return load_for_inference(tiny_model_dir)


# ---------------------------------------------------------------------------------------------
# bootstrap


def test_bootstrap_ci_is_deterministic_and_contains_the_mean():
    values = np.random.default_rng(1).normal(0.3, 1.0, size=200)
    first = bootstrap_ci(values, seed=7)
    assert first == bootstrap_ci(values, seed=7)
    assert first != bootstrap_ci(values, seed=8)
    low, high = first
    assert low < values.mean() < high
    # ~1.96 standard errors each side
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)


def test_bootstrap_ci_other_statistic_and_edge_cases():
    values = np.arange(101, dtype=float)
    low, high = bootstrap_ci(values, statistic=np.median, n_resamples=300, seed=0, confidence=0.9)
    assert low <= 50 <= high
    assert bootstrap_ci([0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=1.5)


# ---------------------------------------------------------------------------------------------
# offline metrics


def _naive_metrics(model, tokenizer, rows, max_length, max_prompt_length):
    """Full logits, full log_softmax, one row at a time: the definition, with no chunking or batching."""
    from prefopt.logprobs import tokenize_pair

    chosen_means, rejected_means, entropies, rejected_tokens = [], [], [], []
    for row in rows:
        feature = tokenize_pair(tokenizer, row, max_length=max_length, max_prompt_length=max_prompt_length)
        prompt = feature["prompt_ids"]
        for side in ("chosen_ids", "rejected_ids"):
            ids = torch.tensor([prompt + feature[side]])
            with torch.no_grad():
                log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            positions = torch.arange(len(prompt) - 1, ids.shape[1] - 1)  # predicting completion tokens
            token_logps = log_probs[positions, ids[0, positions + 1]]
            if side == "chosen_ids":
                chosen_means.append(token_logps.mean().item())
                entropies.append(-(log_probs[positions].exp() * log_probs[positions]).sum(-1))
            else:
                rejected_means.append(token_logps.mean().item())
                rejected_tokens.append(token_logps)
    return (np.array(chosen_means), np.array(rejected_means), torch.cat(entropies).numpy(),
            torch.cat(rejected_tokens).numpy())


@pytest.mark.parametrize("batch_size", [1, 3])
def test_offline_metrics_equal_naive_computation(tiny, batch_size):
    from prefopt.evaluation.offline import evaluate_offline

    model, tokenizer = tiny
    # max_length 40 truncates p2's and p4's long completions: truncation must match training's.
    summary, per_example = evaluate_offline(model, tokenizer, ROWS, max_length=40, max_prompt_length=24,
                                            batch_size=batch_size)
    chosen, rejected, entropy, rejected_tokens = _naive_metrics(model, tokenizer, ROWS, 40, 24)
    assert [record["prompt_id"] for record in per_example] == [row["prompt_id"] for row in ROWS]
    np.testing.assert_allclose([r["chosen_logp_mean"] for r in per_example], chosen, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([r["rejected_logp_mean"] for r in per_example], rejected, rtol=1e-5, atol=1e-5)
    assert summary["n"] == len(ROWS)
    assert summary["preference_accuracy"] == pytest.approx(np.mean(chosen > rejected))
    assert summary["margin_mean"] == pytest.approx(np.mean(chosen - rejected), abs=1e-5)
    assert summary["chosen_logp_mean"] == pytest.approx(chosen.mean(), abs=1e-5)
    assert summary["rejected_logp_mean"] == pytest.approx(rejected.mean(), abs=1e-5)
    assert summary["chosen_token_entropy_mean"] == pytest.approx(entropy.mean(), rel=1e-5)
    assert summary["n_chosen_tokens"] == entropy.size
    assert summary["n_rejected_tokens"] == rejected_tokens.size
    assert summary["rejected_token_logp_floor"] == pytest.approx(np.quantile(rejected_tokens, 0.01), abs=1e-4)
    assert summary["rejected_token_logp_min"] == pytest.approx(rejected_tokens.min(), abs=1e-4)
    assert summary["rejected_token_frac_below_neg_delta"] == pytest.approx(np.mean(rejected_tokens < -1.25))
    low, high = summary["ci"]["preference_accuracy"]
    assert 0.0 <= low <= summary["preference_accuracy"] <= high <= 1.0
    low, high = summary["ci"]["margin_mean"]
    assert low <= summary["margin_mean"] <= high


def test_entropy_is_chunked_without_changing_values(tiny):
    from prefopt.evaluation.offline import chunked_entropy, entropy_from_logits

    model, _ = tiny
    hidden = torch.randn(7, model.config.hidden_size)
    head = model.get_output_embeddings()
    one_row_chunks = chunked_entropy(hidden, head, chunk_elements=1)
    with torch.no_grad():
        torch.testing.assert_close(one_row_chunks, entropy_from_logits(head(hidden)))
    uniform = entropy_from_logits(torch.zeros(2, 10))
    torch.testing.assert_close(uniform, torch.full((2,), float(np.log(10))))


def test_without_entropy_the_log_prob_metrics_are_unchanged(tiny):
    """Probes skip the entropy's LM-head pass; every other number is the same."""
    from prefopt.evaluation.offline import evaluate_offline

    model, tokenizer = tiny
    full, full_examples = evaluate_offline(model, tokenizer, ROWS, max_length=64, max_prompt_length=32, n_resamples=50)
    lean, lean_examples = evaluate_offline(model, tokenizer, ROWS, max_length=64, max_prompt_length=32, n_resamples=50,
                                           entropy=False)
    assert full["chosen_token_entropy_mean"] > 0 and lean["chosen_token_entropy_mean"] is None
    for key in ("chosen_logp_mean", "rejected_logp_mean", "margin_mean", "rejected_token_logp_floor",
                "preference_accuracy", "n_chosen_tokens", "n_rejected_tokens"):
        assert lean[key] == full[key], key
    assert [e["chosen_logp_mean"] for e in lean_examples] == [e["chosen_logp_mean"] for e in full_examples]
    assert all(e["chosen_entropy_mean"] is None for e in lean_examples)


def test_offline_rejects_bad_rows(tiny):
    from prefopt.evaluation.offline import evaluate_offline

    model, tokenizer = tiny
    with pytest.raises(ValueError, match="no rows"):
        evaluate_offline(model, tokenizer, [], max_length=64, max_prompt_length=32)
    broken = dict(ROWS[0], prompt_id="broken")
    del broken["rejected"]
    with pytest.raises(ValueError, match="broken"):
        evaluate_offline(model, tokenizer, [broken], max_length=64, max_prompt_length=32)


# ---------------------------------------------------------------------------------------------
# demo accuracy


def test_demo_accuracy_uses_is_correct(tiny, monkeypatch):
    import prefopt.evaluation.demo_accuracy as demo_accuracy

    model, tokenizer = tiny
    canned = ["2 + 2 = 4.\n\nAnswer: 4", "Answer: pear, apple", "Answer: 2000 m"]

    def fake_generate(model, tokenizer, conversations, **kwargs):
        assert kwargs["temperature"] == 0.0
        assert [conv[-1]["content"] for conv in conversations] == [row["prompt"] for row in DEMO_ROWS]
        return canned

    monkeypatch.setattr(demo_accuracy, "generate_replies", fake_generate)
    summary, per_example = demo_accuracy.evaluate_demo_accuracy(model, tokenizer, DEMO_ROWS)
    assert [record["correct"] for record in per_example] == [True, False, True]
    assert [record["generated"] for record in per_example] == canned
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["accuracy/sorting"] == 0.0 and summary["accuracy/arithmetic"] == 1.0
    low, high = summary["ci"]["accuracy"]
    assert 0.0 <= low <= 2 / 3 <= high <= 1.0
    with pytest.raises(KeyError, match="task"):
        demo_accuracy.evaluate_demo_accuracy(model, tokenizer, ROWS[:1])


# ---------------------------------------------------------------------------------------------
# evaluate.py end to end


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_evaluate_script_end_to_end(tiny_model_dir, tmp_path):
    """Both benchmarks from one model load: each its result and per-example file in --out-dir."""
    eval_file = tmp_path / "eval.jsonl"
    _write_jsonl(eval_file, DEMO_ROWS)
    out_dir = tmp_path / "out"
    command = [sys.executable, str(REPO / "workflow/scripts/evaluate.py"), "--model", tiny_model_dir,
               "--eval", str(eval_file), "--benchmark", "offline", "demo_generation", "--out-dir", str(out_dir),
               "--label", "tiny", "--batch-size", "2", "--max-length", "64", "--max-prompt-length", "32",
               "--max-new-tokens", "6", "--precision", "fp32", "--threads", "1", "--n-resamples", "200"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert sorted(path.name for path in out_dir.iterdir()) == [
        "demo_generation.examples.jsonl", "demo_generation.json", "offline.examples.jsonl", "offline.json"]
    for benchmark in ("offline", "demo_generation"):
        result = json.loads((out_dir / f"{benchmark}.json").read_text())
        assert {"benchmark", "label", "model_dir", "adapter_dir", "n", "metrics", "ci"} <= set(result)
        assert result["benchmark"] == benchmark and result["label"] == "tiny" and result["adapter_dir"] is None
        assert result["n"] == len(DEMO_ROWS) and result["settings"]["precision"] == "fp32"
        records = [json.loads(line) for line in (out_dir / f"{benchmark}.examples.jsonl").read_text().splitlines()]
        assert [record["prompt_id"] for record in records] == [row["prompt_id"] for row in DEMO_ROWS]
        if benchmark == "offline":
            assert 0.0 <= result["metrics"]["preference_accuracy"] <= 1.0
            assert result["metrics"]["chosen_logp_mean"] < 0
            assert set(result["ci"]) >= {"preference_accuracy", "margin_mean"}
        else:
            assert result["metrics"]["accuracy"] == 0.0  # a random 2-layer model does not write "Answer: 4"
            assert {"accuracy/arithmetic", "accuracy/sorting", "accuracy/unit_conversion"} <= set(result["metrics"])
            assert all(isinstance(record["generated"], str) for record in records)


def test_evaluate_script_merges_the_adapter(tiny_model_dir, tmp_path):
    """An adapter changes the scores: evaluate.py really loads and merges --adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                                task_type="CAUSAL_LM")
    get_peft_model(base, adapter_config).save_pretrained(tmp_path / "adapter")
    eval_file = tmp_path / "eval.jsonl"
    _write_jsonl(eval_file, ROWS[:2])
    chosen_means = []
    for name, extra in (("plain", []), ("adapted", ["--adapter", str(tmp_path / "adapter")])):
        out = tmp_path / name / "offline.json"
        command = [sys.executable, str(REPO / "workflow/scripts/evaluate.py"), "--model", tiny_model_dir, *extra,
                   "--eval", str(eval_file), "--benchmark", "offline", "--out-dir", str(out.parent), "--label", name,
                   "--max-length", "64", "--max-prompt-length", "32", "--batch-size", "8", "--max-new-tokens", "8",
                   "--precision", "fp32", "--threads", "1", "--n-resamples", "50"]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                   env=dict(os.environ, HF_HUB_OFFLINE="1"))
        assert completed.returncode == 0, completed.stderr[-3000:]
        result = json.loads(out.read_text())
        chosen_means.append(result["metrics"]["chosen_logp_mean"])
    assert result["adapter_dir"] == str(tmp_path / "adapter")
    assert chosen_means[0] != pytest.approx(chosen_means[1], abs=1e-6)
