"""Paired and seeded uncertainty: the bootstrap helpers, and Tables 3-5 built from synthetic result files
with per-example files (`<benchmark>.examples.jsonl`) and several seeds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from prefopt.evaluation.bootstrap import (PooledQuantile, bootstrap_ci, item_bootstrap_ci, paired_bootstrap_ci,
                                          paired_bootstrap_ci_over_seeds)
from prefopt.evaluation.offline import summarize_offline
from prefopt.tables import (ITEMS_DIFFER, NO_EXAMPLES, NO_FLOOR_TOKENS, build_table, examples_path,
                            paired_comparisons, render_comparisons_markdown, render_csv, render_latex,
                            render_markdown, write_tables)
from test_tables import ROLES, make_row, make_table, rows

N_PAIRS, N_PROMPTS = 40, 30
SETTINGS = {"n_resamples": 1000, "seed": 0}


# ------------------------------------------------------------------------------------------ bootstrap helpers


def test_paired_bootstrap_is_the_bootstrap_of_differences_and_narrower_than_unpaired():
    rng = np.random.default_rng(0)
    reference = rng.normal(-1.5, 0.4, size=60)  # items differ a lot from one another ...
    run = reference + 0.03 + rng.normal(0.0, 0.01, size=60)  # ... but the run moves each by about +0.03
    low, high = paired_bootstrap_ci(run, reference, **SETTINGS)
    assert (low, high) == bootstrap_ci(run - reference, **SETTINGS)
    assert 0.0 < low < 0.03 < high
    # Unpaired, the two means' intervals overlap: the difference would not be resolved.
    run_ci, reference_ci = bootstrap_ci(run), bootstrap_ci(reference)
    assert run_ci[0] < reference_ci[1]
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_ci(run[:-1], reference)


def test_paired_bootstrap_over_seeds_averages_each_item_first():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=25)
    runs = np.vstack([reference + shift + rng.normal(0.0, 0.05, size=25) for shift in (0.1, 0.2, 0.3)])
    expected = paired_bootstrap_ci(runs.mean(axis=0), reference, **SETTINGS)
    assert paired_bootstrap_ci_over_seeds(runs, reference, **SETTINGS) == expected
    assert paired_bootstrap_ci_over_seeds(runs, reference[None, :], **SETTINGS) == expected
    assert paired_bootstrap_ci_over_seeds(runs[0], reference, **SETTINGS) == paired_bootstrap_ci(runs[0], reference)
    with pytest.raises(ValueError, match="run_values"):
        paired_bootstrap_ci_over_seeds(np.zeros((2, 3, 4)), np.zeros(4))


def test_pooled_quantile_matches_numpy_on_resamples_and_item_bootstrap_matches_bootstrap_ci():
    rng = np.random.default_rng(2)
    tokens = [rng.normal(-3.0, 2.0, size=rng.integers(1, 20)) for _ in range(30)]
    floor = PooledQuantile(tokens, 0.01)
    assert floor() == np.quantile(np.concatenate(tokens), 0.01)
    for _ in range(50):
        indices = rng.integers(0, 30, size=30)
        assert floor(indices) == pytest.approx(np.quantile(np.concatenate([tokens[i] for i in indices]), 0.01),
                                               abs=1e-12)
    values = rng.normal(size=30)
    assert item_bootstrap_ci(lambda i: values[i].mean(), n_items=30, **SETTINGS) == bootstrap_ci(values, **SETTINGS)
    low, high = item_bootstrap_ci(floor, n_items=30, **SETTINGS)
    assert low <= floor() <= high
    with pytest.raises(ValueError, match="no tokens"):
        PooledQuantile([[], []], 0.5)


# ------------------------------------------------------------------------------------------ synthetic results


def _prompt_ids(n: int) -> list[str]:
    return ["p0"] + [f"p{i}" for i in range(n - 1)]  # "p0" twice: items are matched by id and occurrence


def _write_result(path: Path, result: dict, per_example: list[dict] | None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    if per_example is not None:
        Path(examples_path(str(path))).write_text("".join(json.dumps(record) + "\n" for record in per_example))
    return str(path)


def _offline(path: Path, chosen: np.ndarray, rejected: np.ndarray, token_shift: float, seed: int,
             with_examples: bool = True, with_tokens: bool = True) -> str:
    """An offline result + per-example file as evaluate.py writes them (summary from summarize_offline)."""
    rng = np.random.default_rng(seed)
    per_example, rejected_tokens, entropies = [], [], []
    for index, (prompt_id, l_w, l_l) in enumerate(zip(_prompt_ids(len(chosen)), chosen, rejected)):
        tokens = rng.normal(-3.0 + token_shift, 2.0, size=5 + index % 7)
        entropy = np.full(4 + index % 5, 1.5 + 0.01 * index)
        rejected_tokens.append(tokens)
        entropies.append(entropy)
        per_example.append({"prompt_id": prompt_id, "chosen_logp_mean": float(l_w), "rejected_logp_mean": float(l_l),
                            "margin": float(l_w - l_l), "correct": bool(l_w > l_l), "chosen_tokens": entropy.size,
                            "rejected_tokens": tokens.size, "chosen_entropy_mean": float(entropy.mean()),
                            "rejected_token_logp_min": float(tokens.min()),
                            "rejected_token_logps": tokens.tolist()})
        if not with_tokens:
            del per_example[-1]["rejected_token_logps"]
    summary = summarize_offline(per_example, np.concatenate(rejected_tokens), np.concatenate(entropies), **SETTINGS)
    ci = summary.pop("ci")
    result = {"benchmark": "offline", "n": summary["n"], "metrics": summary, "ci": ci, "settings": dict(SETTINGS)}
    return _write_result(path, result, per_example if with_examples else None)


def _demo(path: Path, correct: np.ndarray) -> str:
    per_example = [{"prompt_id": f"q{i}", "task": "sum", "answer": "1", "generated": "Answer: 1", "correct": bool(c)}
                   for i, c in enumerate(correct)]
    values = np.asarray(correct, dtype=float)
    result = {"benchmark": "demo_generation", "n": len(values), "metrics": {"n": len(values), "accuracy": values.mean()},
              "ci": {"accuracy": list(bootstrap_ci(values, **SETTINGS))}, "settings": dict(SETTINGS)}
    return _write_result(path, result, per_example)


SFT_CHOSEN = np.linspace(-2.0, -1.0, N_PAIRS) + np.random.default_rng(7).normal(0.0, 0.3, N_PAIRS)
SFT_CORRECT = np.arange(N_PROMPTS) % 3 == 0  # 10 of 30
ALTERNATING = np.where(np.arange(N_PAIRS) % 2 == 0, 0.02, -0.02)  # mean exactly zero


def _run(root: Path, run: str, chosen_shift, token_shift: float, correct, seed: int = 0, **offline_kwargs) -> dict:
    chosen = SFT_CHOSEN + chosen_shift
    rejected = SFT_CHOSEN - 0.3 + np.where(np.arange(N_PAIRS) % 4 == 0, 0.5, 0.0)
    return {"offline": _offline(root / run / "offline.json", chosen, rejected, token_shift, seed, **offline_kwargs),
            "demo_generation": _demo(root / run / "demo_generation.json", correct)}


@pytest.fixture()
def manifest(tmp_path):
    root = tmp_path / "results" / "tiny" / "eval"
    slime_correct = SFT_CORRECT | (np.arange(N_PROMPTS) % 2 == 0)  # gains 10 prompts, loses none
    dpo_correct = SFT_CORRECT.copy()
    dpo_correct[[0, 1]] = [False, True]  # one lost, one gained: no change
    slime_seeds = [_run(root, f"slime-s{seed}", 0.05 + 0.01 * seed + np.random.default_rng(seed).normal(0, 0.01, N_PAIRS),
                        0.5, slime_correct, seed) for seed in range(3)]
    specs = [("Base (Pretrain)", "base", [_run(root, "base", -0.5, -1.0, SFT_CORRECT & False)]),
            ("SFT", "sft", [_run(root, "sft", 0.0, 0.0, SFT_CORRECT)]),
            ("+ DPO", "dpo-s0", [_run(root, "dpo-s0", ALTERNATING, -0.5, dpo_correct)]),
            ("+ SLIME (ours)", "slime-s0", slime_seeds)]
    table3 = [make_row("tiny", "Tiny", label, ROLES.get(label, "row"), seeds[0], run=run, seed_results=seeds,
                       runs=[run] if len(seeds) == 1 else [f"slime-s{seed}" for seed in range(3)])
              for label, run, seeds in specs]
    no_rejected = _run(root, "norej", 0.04, -2.0, slime_correct, with_tokens=False)
    table4 = [make_row("tiny", "Tiny", "Full SLIME", "reference", slime_seeds[0], run="slime-s0",
                       runs=["slime-s0", "slime-s1", "slime-s2"], seed_results=slime_seeds),
              make_row("tiny", "Tiny", "w/o rejected term", "row", no_rejected, run="norej")]
    table5 = [make_row("tiny", "Tiny", "2.5", "reference", slime_seeds[0], value=2.5, run="slime-s0",
                       seed_results=slime_seeds[:1])]
    return {"judge": None, "not_run": {"mt_bench": "no judge configured", "arena_hard": "no judge configured"},
            "tables": [make_table("table3", "methods", table3), make_table("table4", "ablations", table4, "slime"),
                       make_table("table5", "sweep", table5, "slime", "p")]}


def _examples(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(examples_path(path)).read_text().splitlines()]


def _field(seed_results: list[dict], benchmark: str, name: str) -> np.ndarray:
    return np.array([[float(r[name]) for r in _examples(results[benchmark])] for results in seed_results])


def _md(table):
    lines = [line for line in render_markdown(table).splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    return header, [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in lines[1:]]


# ------------------------------------------------------------------------------------------ tables


def test_one_seed_rows_keep_their_shape_and_result_file_cis(manifest):
    table = build_table(manifest, "table3")
    records = list(csv.DictReader(render_csv(table).splitlines()))
    header, body = _md(table)
    assert header[:2] == ["Model", "Method"] and len(body) == 4 and all(len(row) == len(header) for row in body)
    sft, dpo = records[1], records[2]
    assert sft["n_seeds"] == dpo["n_seeds"] == "1" and dpo["delta_chosen_logp_vs_sft_seed_sd"] == ""
    # Recomputed from the per-example file, one seed's CIs equal the result file's (same resamples).
    result = json.loads(Path(rows(manifest, "table3")[2]["results"]["offline"]).read_text())
    for key in ("preference_accuracy", "margin_mean", "chosen_logp_mean"):
        assert [float(dpo[f"{key}_ci_low"]), float(dpo[f"{key}_ci_high"])] == result["ci"][key]
    # DPO's chosen log-probs moved by ±0.02 around zero: Δ ≈ 0 with a CI across zero, no mark.
    assert float(dpo["delta_chosen_logp_vs_sft"]) == pytest.approx(0.0, abs=1e-12)
    assert float(dpo["delta_chosen_logp_vs_sft_ci_low"]) < 0 < float(dpo["delta_chosen_logp_vs_sft_ci_high"])
    assert dpo["delta_chosen_logp_vs_sft_ci_excludes_zero"] == "False"
    assert dpo["demo_accuracy_vs_sft"] == "0.0" and dpo["demo_accuracy_vs_sft_ci_excludes_zero"] == "False"
    # The base model lost 0.5 nats on every pair: marked, with the paired CI at exactly -0.5.
    base = records[0]
    assert base["delta_chosen_logp_vs_sft_ci_excludes_zero"] == "True"
    assert float(base["delta_chosen_logp_vs_sft_ci_low"]) == pytest.approx(-0.5)
    delta = header.index("Δ chosen logp vs SFT ↑")
    assert body[0][delta] == "-0.500† [-0.500, -0.500]"
    assert body[2][delta] == "<u>+0.000</u> [-0.006, +0.006]"  # second best, not marked
    assert all("±" not in cell for row in body[:3] for cell in row)  # one seed: no spread


def test_rejected_floor_ci_pools_the_tokens_of_resampled_pairs(manifest):
    table = build_table(manifest, "table3")
    dpo = list(csv.DictReader(render_csv(table).splitlines()))[2]
    tokens = [record["rejected_token_logps"] for record in _examples(rows(manifest, "table3")[2]["results"]["offline"])]
    expected = item_bootstrap_ci(PooledQuantile(tokens, 0.01), n_items=N_PAIRS, **SETTINGS)
    assert (float(dpo["rejected_token_logp_floor_ci_low"]), float(dpo["rejected_token_logp_floor_ci_high"])) \
        == pytest.approx(expected)
    assert expected[0] <= float(dpo["rejected_token_logp_floor"]) <= expected[1]
    low, high = float(dpo["chosen_token_entropy_mean_ci_low"]), float(dpo["chosen_token_entropy_mean_ci_high"])
    assert low < float(dpo["chosen_token_entropy_mean"]) < high
    header, body = _md(table)
    floor = next(i for i, name in enumerate(header) if name.startswith("Rejected floor"))
    assert body[2][floor].count("[") == 1


def test_seeds_give_mean_sd_and_seed_averaged_paired_cis(manifest):
    table = build_table(manifest, "table3")
    records = list(csv.DictReader(render_csv(table).splitlines()))
    slime = records[3]
    seeds = rows(manifest, "table3")[3]["seed_results"]
    sft = rows(manifest, "table3")[1]["seed_results"]
    per_seed_delta = [json.loads(Path(results["offline"]).read_text())["metrics"]["chosen_logp_mean"]
                      - json.loads(Path(sft[0]["offline"]).read_text())["metrics"]["chosen_logp_mean"]
                      for results in seeds]
    assert slime["n_seeds"] == "3"
    assert float(slime["delta_chosen_logp_vs_sft"]) == pytest.approx(np.mean(per_seed_delta))
    assert float(slime["delta_chosen_logp_vs_sft_seed_sd"]) == pytest.approx(np.std(per_seed_delta, ddof=1))
    expected = paired_bootstrap_ci_over_seeds(_field(seeds, "offline", "chosen_logp_mean"),
                                              _field(sft, "offline", "chosen_logp_mean"), **SETTINGS)
    assert (float(slime["delta_chosen_logp_vs_sft_ci_low"]), float(slime["delta_chosen_logp_vs_sft_ci_high"])) \
        == pytest.approx(expected)
    assert slime["delta_chosen_logp_vs_sft_ci_excludes_zero"] == "True" and expected[0] > 0
    # Demo accuracy: +10 prompts in every seed, paired over prompts; no across-seed spread.
    assert float(slime["demo_accuracy_vs_sft"]) == pytest.approx(10 / 30)
    assert slime["demo_accuracy_vs_sft_ci_excludes_zero"] == "True" and float(slime["demo_accuracy_seed_sd"]) == 0.0
    # Accuracy's CI resamples pairs of the seed-mean correctness.
    expected_accuracy = bootstrap_ci(_field(seeds, "offline", "correct").mean(axis=0), **SETTINGS)
    assert float(slime["preference_accuracy_ci_low"]) == pytest.approx(expected_accuracy[0])
    header, body = _md(table)
    delta = header.index("Δ chosen logp vs SFT ↑")
    sd = np.std(per_seed_delta, ddof=1)
    assert body[3][delta] == (f"**+{np.mean(per_seed_delta):.3f}**† ± {sd:.3f} "
                              f"[+{expected[0]:.3f}, +{expected[1]:.3f}]")
    demo = header.index("Demo acc. (%) ↑ [95% CI]")
    assert body[3][demo].startswith("**66.7**† ± 0.0 [")
    text = render_markdown(table)
    assert "mean ± sd across seeds" in text and "† = that paired CI" in text
    tex = render_latex(table)
    assert r"$^\dagger$" in tex and r"$\pm$" in tex and "±" not in tex and "†" not in tex


def test_tables_4_and_5_use_the_same_references_and_note_missing_token_lists(manifest):
    table4 = build_table(manifest, "table4")
    records = list(csv.DictReader(render_csv(table4).splitlines()))
    assert [r["variant"] for r in records] == ["Full SLIME", "w/o rejected term"] and records[0]["n_seeds"] == "3"
    # No rejected_token_logps in the ablation's per-example file: its floor has no CI, and a note says why.
    assert records[1]["rejected_token_logp_floor"] != "" and records[1]["rejected_token_logp_floor_ci_low"] == ""
    assert records[1]["delta_chosen_logp_vs_sft_ci_excludes_zero"] == "True"
    assert NO_FLOOR_TOKENS in render_markdown(table4)
    table5 = build_table(manifest, "table5")
    row = list(csv.DictReader(render_csv(table5).splitlines()))[0]
    assert row["n_seeds"] == "1" and row["delta_chosen_logp_vs_sft_ci_excludes_zero"] == "True"
    assert NO_FLOOR_TOKENS not in render_markdown(table5)


def test_without_examples_files_the_cells_keep_result_cis_and_say_so(manifest):
    for entry in rows(manifest, "table3"):
        for results in entry["seed_results"]:
            for path in results.values():
                Path(examples_path(path)).unlink(missing_ok=True)
    table = build_table(manifest, "table3")
    records = list(csv.DictReader(render_csv(table).splitlines()))
    dpo = records[2]
    assert dpo["preference_accuracy_ci_low"] != "" and dpo["delta_chosen_logp_vs_sft_ci_low"] == ""
    assert dpo["rejected_token_logp_floor_ci_low"] == "" and dpo["delta_chosen_logp_vs_sft_ci_excludes_zero"] == ""
    # Several seeds without per-item files: no CI at all (one run's CI does not cover a seed mean).
    assert records[3]["n_seeds"] == "3" and records[3]["preference_accuracy_ci_low"] == ""
    assert NO_EXAMPLES in render_markdown(table)


def test_items_that_differ_from_the_sft_rows_get_no_paired_ci(manifest):
    path = rows(manifest, "table3")[2]["results"]["offline"]
    records = _examples(path)
    records[5]["prompt_id"] = "elsewhere"
    Path(examples_path(path)).write_text("".join(json.dumps(record) + "\n" for record in records))
    table = build_table(manifest, "table3")
    dpo = list(csv.DictReader(render_csv(table).splitlines()))[2]
    assert dpo["delta_chosen_logp_vs_sft_ci_low"] == "" and dpo["preference_accuracy_ci_low"] != ""
    assert ITEMS_DIFFER in render_markdown(table)


def test_paired_comparisons_between_methods_ablations_and_p(manifest, tmp_path):
    comparisons = paired_comparisons(manifest)
    by = {(c["table"], c["row"], c["metric"]): c for c in comparisons}
    assert all(c["reference"] == "+ SLIME (ours)" for c in comparisons if c["table"] == "table3")
    assert not any(c["row"] == "Base (Pretrain)" for c in comparisons)  # the base model is not compared
    dpo = by[("table3", "+ DPO", "chosen_logp_mean")]
    seeds = rows(manifest, "table3")[3]["seed_results"]
    dpo_results = rows(manifest, "table3")[2]["seed_results"]
    expected = paired_bootstrap_ci_over_seeds(_field(dpo_results, "offline", "chosen_logp_mean"),
                                              _field(seeds, "offline", "chosen_logp_mean"), **SETTINGS)
    assert (dpo["ci_low"], dpo["ci_high"]) == pytest.approx(expected)
    assert dpo["difference"] == pytest.approx(-0.06, abs=0.005) and dpo["ci_excludes_zero"] is True
    assert dpo["n_items"] == N_PAIRS and dpo["n_seeds"] == 1 and dpo["n_seeds_reference"] == 3
    # The floor: both rows' pairs resampled together; the difference is that of the two rows' floors.
    floor = by[("table3", "+ DPO", "rejected_token_logp_floor")]
    records = list(csv.DictReader(render_csv(build_table(manifest, "table3")).splitlines()))
    assert floor["difference"] == pytest.approx(float(records[2]["rejected_token_logp_floor"])
                                                - float(records[3]["rejected_token_logp_floor"]))
    assert floor["ci_low"] <= floor["difference"] <= floor["ci_high"] < 0
    assert by[("table3", "+ DPO", "demo_accuracy")]["difference"] == pytest.approx(-10 / 30)
    # Table 4: the ablation without token lists gets no floor comparison, the others are there.
    assert ("table4", "w/o rejected term", "rejected_token_logp_floor") not in by
    assert by[("table4", "w/o rejected term", "chosen_logp_mean")]["reference"] == "Full SLIME"
    assert not any(c["table"] == "table5" for c in comparisons)  # only the default row
    text = render_comparisons_markdown(comparisons)
    assert "| 3 | Tiny | + DPO | + SLIME (ours) | chosen_logp_mean | -0.05" in text and "-0.0000" not in text
    names = sorted(path.name for path in write_tables(manifest, tmp_path / "tables"))
    assert "comparisons.csv" in names and "comparisons.md" in names


# ------------------------------------------------------------------------------------------ sweeps


@pytest.fixture()
def two_sweeps(manifest, tmp_path):
    """The manifest with SLIME's p sweep (Table 5: 1.5 and the default 2.5) and its delta sweep (0.5 and the
    default 1.25); both defaults are the main SLIME run (three seeds), as the plan makes them."""
    root = tmp_path / "results" / "tiny" / "eval"
    slime_seeds = rows(manifest, "table3")[3]["seed_results"]
    p_low = _run(root, "p1.5", 0.02, 0.2, SFT_CORRECT)
    delta_low = _run(root, "delta0.5", -0.1, -0.3, SFT_CORRECT | (np.arange(N_PROMPTS) % 5 == 1))
    main = {"run": "slime-s0", "runs": ["slime-s0", "slime-s1", "slime-s2"], "seed_results": slime_seeds}
    table5 = [make_row("tiny", "Tiny", "1.5", "row", p_low, value=1.5, run="p1.5"),
              make_row("tiny", "Tiny", "2.5", "reference", slime_seeds[0], value=2.5, **main)]
    delta = [make_row("tiny", "Tiny", "0.5", "row", delta_low, value=0.5, run="delta0.5"),
             make_row("tiny", "Tiny", "1.25", "reference", slime_seeds[0], value=1.25, **main)]
    manifest["tables"] = manifest["tables"][:2] + [make_table("table5", "sweep", table5, "slime", "p"),
                                                   make_table("sweep_delta", "sweep", delta, "slime", "delta")]
    return manifest


def test_each_sweep_is_a_table_like_table5_with_cis_against_sft(two_sweeps):
    table5, delta = build_table(two_sweeps, "table5"), build_table(two_sweeps, "sweep_delta")
    assert table5.label_headers == ["Exponent p"] and delta.label_headers == ["delta"]
    assert [column.key for column in delta.columns] == [column.key for column in table5.columns]
    assert table5.caption.startswith("Effect of the stabilizing loss exponent p on SLIME performance (base model: Tiny).")
    assert delta.caption.startswith("Effect of the hyperparameter delta on SLIME performance (base model: Tiny).")
    markdown = render_markdown(delta)
    assert markdown.startswith("**SLIME delta sweep.** Effect of the hyperparameter delta")
    header, body = _md(delta)
    assert header[0] == "delta" and [row[0] for row in body] == ["0.5", "1.25 (default)"]
    assert [row[0] for row in _md(table5)[1]] == ["1.5", "2.5 (default)"]
    # Best / second per column as in Table 5: the default (chosen +0.06) beats delta=0.5 (chosen -0.1).
    assert body[1][header.index("Δ chosen logp vs SFT ↑")].startswith("**+0.06")
    assert body[0][header.index("Δ chosen logp vs SFT ↑")].startswith("<u>-0.100</u>†")
    records = list(csv.DictReader(render_csv(delta).splitlines()))
    assert list(records[0])[:3] == ["model", "delta", "default"]
    assert [(r["delta"], r["default"], r["n_seeds"]) for r in records] == [("0.5", "False", "1"), ("1.25", "True", "3")]
    low_row = records[0]
    # Every offline cell has its CI over pairs, the difference from SFT its paired CI.
    for key in ("preference_accuracy", "margin_mean", "rejected_token_logp_floor", "chosen_token_entropy_mean",
                "demo_accuracy"):
        assert float(low_row[f"{key}_ci_low"]) <= float(low_row[key]) <= float(low_row[f"{key}_ci_high"])
    sft = rows(two_sweeps, "table3")[1]["seed_results"]
    expected = paired_bootstrap_ci_over_seeds(_field([rows(two_sweeps, "sweep_delta")[0]["results"]], "offline",
                                                     "chosen_logp_mean"), _field(sft, "offline", "chosen_logp_mean"),
                                              **SETTINGS)
    assert (float(low_row["delta_chosen_logp_vs_sft_ci_low"]), float(low_row["delta_chosen_logp_vs_sft_ci_high"])) \
        == pytest.approx(expected)
    assert low_row["delta_chosen_logp_vs_sft_ci_excludes_zero"] == "True"
    assert float(low_row["demo_accuracy_vs_sft"]) == pytest.approx(4 / 30)  # prompts 1, 11, 16, 26 gained


def test_each_sweep_is_compared_with_its_default_value(two_sweeps, tmp_path):
    comparisons = paired_comparisons(two_sweeps)
    by = {(c["table"], c["row"], c["metric"]): c for c in comparisons}
    slime_seeds = rows(two_sweeps, "table3")[3]["seed_results"]
    for name, row, reference in (("table5", "1.5", "2.5 (default)"), ("sweep_delta", "0.5", "1.25 (default)")):
        sweep_rows = [c for c in comparisons if c["table"] == name]
        assert {c["row"] for c in sweep_rows} == {row} and {c["reference"] for c in sweep_rows} == {reference}
        assert {c["metric"] for c in sweep_rows} == {"chosen_logp_mean", "rejected_logp_mean", "margin_mean",
                                                     "preference_accuracy", "rejected_token_logp_floor",
                                                     "demo_accuracy"}
        assert all(c["n_seeds"] == 1 and c["n_seeds_reference"] == 3 and c["n_items"] > 0 for c in sweep_rows)
    chosen = by[("sweep_delta", "0.5", "chosen_logp_mean")]
    seed_results = [rows(two_sweeps, "sweep_delta")[0]["results"]]
    expected = paired_bootstrap_ci_over_seeds(_field(seed_results, "offline", "chosen_logp_mean"),
                                              _field(slime_seeds, "offline", "chosen_logp_mean"), **SETTINGS)
    assert (chosen["ci_low"], chosen["ci_high"]) == pytest.approx(expected)
    run, reference = _field(seed_results, "offline", "chosen_logp_mean"), _field(slime_seeds, "offline", "chosen_logp_mean")
    assert chosen["difference"] == pytest.approx(run.mean(axis=0).mean() - reference.mean(axis=0).mean())
    assert chosen["difference"] == pytest.approx(-0.16, abs=0.01) and chosen["ci_excludes_zero"] is True
    demo = by[("sweep_delta", "0.5", "demo_accuracy")]
    assert demo["difference"] == pytest.approx((14 - 20) / 30) and demo["n_items"] == N_PROMPTS  # 14 vs 20 right
    text = render_comparisons_markdown(comparisons)
    assert "| sweep_delta | Tiny | 0.5 | 1.25 (default) | chosen_logp_mean | -0.1" in text
    assert "| 5 | Tiny | 1.5 | 2.5 (default) | chosen_logp_mean |" in text
    names = sorted(path.name for path in write_tables(two_sweeps, tmp_path / "tables"))
    assert names == sorted([f"{name}.{ext}" for name in ("table3", "table4", "table5", "sweep_delta")
                            for ext in ("csv", "md", "tex")] + ["comparisons.csv", "comparisons.md"])
    written = list(csv.DictReader((tmp_path / "tables" / "comparisons.csv").read_text().splitlines()))
    assert {r["table"] for r in written} == {"table3", "table4", "table5", "sweep_delta"}
