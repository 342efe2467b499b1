"""Tables 3-5 from hand-made result files: marks, ties, missing benchmarks, csv/md/tex, captions."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prefopt.tables import (build_table, load_manifest, paired_comparisons, render_csv, render_latex, render_markdown,
                            write_tables)

REPO = Path(__file__).resolve().parents[1]
METHODS = ["Base (Pretrain)", "SFT", "+ DPO", "+ SimPO", "+ SLIME (ours)", "+ StaPO"]
RUNS = ["base", "sft", "dpo-1", "simpo-1", "slime-1", "stapo-1"]
NOT_RUN = {"mt_bench": "no judge configured (set `judge:` in the config)",
           "arena_hard": "no judge configured (set `judge:` in the config)"}


def _dump(path: Path, payload: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return str(path)


def _offline(accuracy, margin, chosen, floor=-9.0, entropy=2.0):
    return {"benchmark": "offline", "n": 100, "metrics": {
        "n": 100, "preference_accuracy": accuracy, "margin_mean": margin, "chosen_logp_mean": chosen,
        "rejected_logp_mean": chosen - margin, "rejected_token_logp_floor": floor, "rejected_floor_quantile": 0.01,
        "rejected_token_logp_min": floor - 3, "rejected_token_frac_below_neg_delta": 0.4,
        "chosen_token_entropy_mean": entropy},
        "ci": {"preference_accuracy": [accuracy - 0.05, accuracy + 0.05], "margin_mean": [margin - 0.1, margin + 0.1]}}


def _demo(accuracy, low, high):
    return {"benchmark": "demo_generation", "n": 3, "metrics": {"n": 3, "accuracy": accuracy},
            "ci": {"accuracy": [low, high]}}


# Model A (judged): MT-Bench tie between DPO and SLIME at 5.49; the unranked base row scores highest.
MT_BENCH_A = [6.00, 4.56, 5.49, 4.92, 5.49, 4.10]
ARENA_A = [None, 7.5, 11.1, 7.6, 9.7, 3.0]
OFFLINE_A = [(0.50, 0.01, -1.20), (0.60, 0.10, -1.00), (0.70, 0.30, -1.10),
             (0.80, 0.50, -1.60), (0.80, 0.40, -0.90), (0.65, 0.20, -1.05)]
# Model B (not judged): offline and demo only.
OFFLINE_B = [(0.55, 0.02, -2.0), (0.58, 0.05, -1.5), (0.60, 0.20, -1.6),
             (0.75, 0.60, -2.5), (0.72, 0.45, -1.4), (0.61, 0.25, -1.55)]
DEMO_B = [(0.1, 0.0, 0.3), (0.4, 0.2, 0.6), (0.5, 0.3, 0.7), (0.3, 0.1, 0.5), (0.667, 0.333, 1.0), (0.5, 0.3, 0.7)]


ROLES = {"Base (Pretrain)": "base", "SFT": "sft", "+ SLIME (ours)": "reference"}  # prefopt.plan.make_plan's


def make_row(model, model_label, label, role, results, *, value=None, run=None, runs=None, seed_results=None):
    """One manifest row as prefopt.plan.table_manifest writes it."""
    seed_results = seed_results or [results]
    run = run or label
    return {"model": model, "model_label": model_label, "label": label, "role": role, "value": value, "run": run,
            "results": results, "runs": runs or [run], "seed_results": seed_results}


def make_table(name, kind, rows, method=None, parameter=None):
    """One manifest table as prefopt.plan.table_manifest writes it."""
    table = {"name": name, "kind": kind, "method": method, "parameter": parameter, "rows": rows}
    if method is not None:
        table["method_label"] = {"slime": "SLIME", "simpo": "SimPO"}[method]
    return table


def sweep_rows(model, model_label, values, default, results):
    """A sweep's rows (sorted values, the default's role "reference"); `results(value)` gives each row's files."""
    return [make_row(model, model_label, f"{value:g}", "reference" if value == default else "row", results(value),
                     value=value, run=f"{model}-{value}") for value in sorted(values)]


@pytest.fixture()
def manifest(tmp_path):
    table3 = []
    for i, (method, run) in enumerate(zip(METHODS, RUNS)):
        results = {"offline": _dump(tmp_path / "a" / run / "offline.json", _offline(*OFFLINE_A[i])),
                   "mt_bench": _dump(tmp_path / "a" / run / "mt.json", {
                       "score": {"turn1": MT_BENCH_A[i] + 0.1, "turn2": MT_BENCH_A[i] - 0.1, "overall": MT_BENCH_A[i]},
                       "n_valid": 160, "n_failed": 0, "judge_model": "gpt-4o-mini"})}
        if ARENA_A[i] is not None:
            results["arena_hard"] = _dump(tmp_path / "a" / run / "arena.json", {
                "score": ARENA_A[i], "ci_low": -1.0, "ci_high": 1.2, "n_valid": 500, "n_failed": 0,
                "judge_model": "gpt-4o-mini"})
        table3.append(make_row("llama", "Llama3.2-3B", method, ROLES.get(method, "row"), results, run=run))
    for i, (method, run) in enumerate(zip(METHODS, RUNS)):
        table3.append(make_row("smollm2", "SmolLM2-135M", method, ROLES.get(method, "row"), run=run, results={
            "offline": _dump(tmp_path / "b" / run / "offline.json", _offline(*OFFLINE_B[i])),
            "demo_generation": _dump(tmp_path / "b" / run / "demo.json", _demo(*DEMO_B[i]))}))
    variants = [("Full SLIME", 0.72), ("w/o chosen term", 0.74), ("w/o rejected term", 0.74),
                ("w/o soft distance margin", 0.70), ("w/o hard margin", 0.60)]
    table4 = [make_row("smollm2", "SmolLM2-135M", name, "reference" if i == 0 else "row", run=f"abl-{i}",
                       results={"offline": _dump(tmp_path / "t4" / f"{i}.json", _offline(acc, 0.3, -1.4 - i / 10))})
              for i, (name, acc) in enumerate(variants)]
    table5 = sweep_rows("smollm2", "SmolLM2-135M", [1.0, 1.5, 2.0, 2.5, 3.0], 2.5, lambda p: {
        "offline": _dump(tmp_path / "t5" / f"{p}.json", _offline(0.6 + p / 100, 0.3, -1.5))})
    return {"judge": None, "not_run": {"arena_hard": NOT_RUN["arena_hard"]},
            "tables": [make_table("table3", "methods", table3), make_table("table4", "ablations", table4, "slime"),
                       make_table("table5", "sweep", table5, "slime", "p")]}


def rows(manifest, name):
    """The rows of the manifest's table `name` (to edit them in a test)."""
    return next(table for table in manifest["tables"] if table["name"] == name)["rows"]


def _md_rows(text):
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in rows[0].strip("|").split(" | ")]
    body = [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in rows[1:]]
    return header, body


def _tex_rows(text):
    inside = text.split(r"\toprule")[1].split(r"\bottomrule")[0]
    lines = [line for line in inside.splitlines() if line.strip() and line.strip() != r"\midrule"]
    return [[cell.strip() for cell in line.rstrip("\\ ").split(" & ")] for line in lines]


def test_table3_marks_ties_and_missing(manifest):
    table = build_table(manifest, "table3")
    header, body = _md_rows(render_markdown(table))
    assert header[:5] == ["Model", "Method", "MT-Bench ↑", "Arena-Hard ↑", "Arena-Hard CI"]
    assert all(len(row) == len(header) for row in body) and len(body) == 12
    mt = header.index("MT-Bench ↑")
    # Base (6.00) is not ranked; DPO and SLIME tie for best; SimPO is second.
    assert [row[mt] for row in body[:6]] == ["6.00", "4.56", "**5.49**", "<u>4.92</u>", "**5.49**", "4.10"]
    arena = header.index("Arena-Hard ↑")
    assert body[0][arena].startswith("—<sup>") and body[2][arena] == "**11.1**" and body[4][arena] == "<u>9.7</u>"
    assert body[2][header.index("Arena-Hard CI")] == "-1.0 / +1.2"
    # Model name only on a block's first row.
    assert body[0][0] == "Llama3.2-3B" and body[1][0] == "" and body[6][0] == "SmolLM2-135M"
    # Block B: no judge results, a footnote with the manifest's reason.
    letter = re.search(r"<sup>(\w)</sup>", body[6][mt]).group(1)
    assert all(row[mt] == f"—<sup>{letter}</sup>" for row in body[6:])
    text = render_markdown(table)
    assert f"<sup>{letter}</sup> MT-Bench" in text
    assert NOT_RUN["arena_hard"] in text
    # Ties in accuracy within block A: SimPO and SLIME 80.0 both bold, DPO 70.0 second.
    acc = header.index("Pref. acc. (%) ↑")
    assert [row[acc].split(" [")[0] for row in body[1:6]] == ["60.0", "<u>70.0</u>", "**80.0**", "**80.0**", "65.0"]
    assert body[1][acc] == "60.0 [55.0, 65.0]"  # the result file's CI (no per-example file here)
    # Δ chosen logp vs SFT: SLIME -0.90 - (-1.00) = +0.100 best; the base row is base - SFT.
    delta = header.index("Δ chosen logp vs SFT ↑")
    assert body[0][delta] == "-0.200" and body[1][delta] == "<u>+0.000</u>" and body[4][delta] == "**+0.100**"
    # Entropy is never marked; demo accuracy keeps its CI next to the marked value.
    entropy = header.index("Entropy")
    assert all("**" not in row[entropy] and "<u>" not in row[entropy] for row in body)
    demo = header.index("Demo acc. (%) ↑ [95% CI]")
    assert body[10][demo] == "**66.7** [33.3, 100.0]"
    assert body[8][demo] == "<u>50.0</u> [30.0, 70.0]" and body[11][demo] == "<u>50.0</u> [30.0, 70.0]"
    assert "not ranked" in text and "gpt-4o-mini" in text.splitlines()[0]
    # A column where every ranked row shows the same value gets no marks.
    floor = header.index("Rejected floor (q01) ↑")
    assert all(row[floor] == "-9.00" for row in body)


def test_latex_and_csv_are_parsable(manifest):
    table = build_table(manifest, "table3")
    tex = render_latex(table)
    assert tex.count(r"\begin{tabular}") == 1 and r"\end{tabular}" in tex and r"\end{table}" in tex
    rows = _tex_rows(tex)
    assert len(rows) == 13 and all(len(row) == len(rows[0]) for row in rows)
    assert rows[3][2] == r"\textbf{5.49}" and rows[4][2] == r"\underline{4.92}" and rows[5][2] == r"\textbf{5.49}"
    assert rows[7][2].startswith(r"---\textsuperscript{")
    assert r"\caption{" in tex and "gpt-4o-mini" in tex
    assert r"+ SLIME (ours)" in tex and r"\%" in tex
    unescaped = tex.replace(r"\{", "").replace(r"\}", "")
    assert unescaped.count("{") == unescaped.count("}")
    assert r"\texttt{judge:}" in tex and r"$\bar{l}_w$ $>$ $\bar{l}_l$" in tex

    records = list(csv.DictReader(render_csv(table).splitlines()))
    assert len(records) == 12
    assert records[4]["method"] == "+ SLIME (ours)" and records[4]["model"] == "Llama3.2-3B"
    assert float(records[4]["mt_bench"]) == 5.49 and float(records[4]["mt_bench_turn1"]) == pytest.approx(5.59)
    assert float(records[4]["delta_chosen_logp_vs_sft"]) == pytest.approx(0.1)
    assert float(records[3]["preference_accuracy"]) == 0.8  # raw fraction, not a formatted percentage
    assert records[0]["arena_hard"] == "" and records[6]["mt_bench"] == ""
    assert float(records[10]["demo_accuracy_ci_high"]) == 1.0


def test_table4_and_table5_labels_ranking_and_reference(manifest):
    table4 = build_table(manifest, "table4")
    header, body = _md_rows(render_markdown(table4))
    assert header[0] == "Variant" and [row[0] for row in body][0] == "Full SLIME"
    acc = header.index("Pref. acc. (%) ↑")
    assert [row[acc].split(" [")[0] for row in body] == ["<u>72.0</u>", "**74.0**", "**74.0**", "70.0", "60.0"]
    # Δ vs SFT comes from the same model's SFT row in Table 3 (chosen -1.5).
    delta = header.index("Δ chosen logp vs SFT ↑")
    assert body[0][delta] == "**+0.100**"
    assert table4.caption.startswith("Ablation results for individual components of the SLIME loss "
                                     "(base model: SmolLM2-135M).")
    assert render_markdown(table4).startswith("**Table 4.** Ablation results")
    table5 = build_table(manifest, "table5")
    header, body = _md_rows(render_markdown(table5))
    assert header[0] == "Exponent p"
    assert [row[0] for row in body] == ["1.0", "1.5", "2.0", "2.5 (default)", "3.0"]
    assert body[4][header.index("Pref. acc. (%) ↑")] == "**63.0** [58.0, 68.0]"
    assert "Exponent p" in render_latex(table5)
    # The paper's caption of Table 5.
    assert table5.caption.startswith("Effect of the stabilizing loss exponent p on SLIME performance "
                                     "(base model: SmolLM2-135M).")
    assert render_markdown(table5).startswith("**Table 5.** Effect of the stabilizing loss exponent p")
    records = list(csv.DictReader(render_csv(table5).splitlines()))
    assert [float(r["p"]) for r in records] == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert [r["default"] for r in records].count("True") == 1


def test_judge_from_manifest_and_missing_reason_without_not_run(manifest):
    manifest["judge"] = "gpt-4.1-2025-04-14"
    manifest["not_run"] = {}
    table = build_table(manifest, "table3")
    assert "gpt-4.1-2025-04-14" in table.caption and "gpt-4o-mini" in table.caption
    assert "not evaluated (the manifest lists no 'mt_bench' result)" in render_markdown(table)


def test_missing_result_file_names_the_row(manifest, tmp_path):
    rows(manifest, "table4")[2]["results"]["offline"] = str(tmp_path / "nope.json")  # also its seed_results[0]
    with pytest.raises(FileNotFoundError, match="table4 row 2"):
        build_table(manifest, "table4")


def test_make_tables_script_writes_nine_files(manifest, tmp_path):
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    out_dir = tmp_path / "tables"
    completed = subprocess.run([sys.executable, str(REPO / "workflow/scripts/make_tables.py"),
                                "--manifest", str(manifest_path), "--out-dir", str(out_dir)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    names = sorted(path.name for path in out_dir.iterdir())
    assert names == sorted([f"table{n}.{ext}" for n in (3, 4, 5) for ext in ("csv", "md", "tex")]
                           + ["comparisons.csv", "comparisons.md"])
    assert all((out_dir / name).stat().st_size > 100 for name in names)
    assert write_tables(manifest, tmp_path / "again")[0].name == "table3.csv"


def test_a_table_without_rows_renders(tmp_path):
    """A table whose plan gave it no rows is written, never a crash."""
    manifest = {"not_run": {}, "tables": [make_table("table4", "ablations", [], "slime"),
                                          make_table("sweep_delta", "sweep", [], "slime", "delta")]}
    for name in ("table4", "sweep_delta"):
        table = build_table(manifest, name)
        assert table.rows == [] and render_markdown(table).startswith("**")
        render_csv(table), render_latex(table)
    assert build_table(manifest, "sweep_delta").label_headers == ["delta"]


def test_roles_not_labels_decide_ranking_and_references(manifest):
    """A row is the base, SFT or reference row by its role; its label text is only shown."""
    llama = rows(manifest, "table3")[:6]
    for row, label in zip(llama, ["Pretrained", "Supervised", "+ A", "+ B", "+ C", "+ D"]):
        row["label"] = label
    table = build_table(manifest, "table3")
    header, body = _md_rows(render_markdown(table))
    mt = header.index("MT-Bench ↑")
    assert [row[mt] for row in body[:6]] == ["6.00", "4.56", "**5.49**", "<u>4.92</u>", "**5.49**", "4.10"]
    delta = header.index("Δ chosen logp vs SFT ↑")
    assert body[1][1] == "Supervised" and body[1][delta] == "<u>+0.000</u>"  # still the SFT row
    rows(manifest, "table4")[0]["label"] = "All terms"
    comparisons = paired_comparisons(manifest)  # no per-example files here: nothing to compare ...
    assert comparisons == []
    assert [row.role for row in build_table(manifest, "table4").rows] == ["reference"] + ["row"] * 4


def test_unknown_table_and_a_manifest_of_the_old_shape_are_errors(manifest, tmp_path):
    with pytest.raises(KeyError, match="unknown table 'table6'"):
        build_table(manifest, "table6")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"table3": [], "table4": [], "table5": []}))
    with pytest.raises(KeyError, match="no 'tables' list"):
        load_manifest(old)
