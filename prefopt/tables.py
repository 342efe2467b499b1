"""Tables 3-5 of the paper from result files, as .csv (raw numbers), .md and .tex.

    python workflow/scripts/make_tables.py --manifest results/tables/manifest.json --out-dir results/tables

The manifest (written by the DAG, `rules/common.smk: tables_manifest`) lists the rows of each table
and, per row, the result file of each benchmark::

    {"judge": "gpt-4o-2024-08-06" | null,
     "table3": [{"model": "smollm2", "model_label": "SmolLM2-135M", "method_label": "+ SLIME (ours)",
                 "run": "slime-1a2b", "results": {"offline": "...json", "demo_generation": "...json",
                                                  "mt_bench": "...json", "arena_hard": "...json"}}, ...],
     "table4": [{"model": "smollm2", "variant": "Full SLIME", "run": ..., "results": {...}}, ...],
     "table5": [{"model": "smollm2", "p": 2.5, "default": true, "run": ..., "results": {...}}, ...],
     "not_run": {"mt_bench": "why it was not run", ...}}

Columns: the paper's (MT-Bench, Arena-Hard and its CI, "-1.1 / +1.0" offsets as in the paper), then
the offline ones of `prefopt.evaluation.offline` / `demo_accuracy`. As in the paper, the best value
per model block and ranked column is bold and the second underlined; ties share the mark, values
are compared as displayed, and "Base (Pretrain)" rows are not ranked (in the paper's Table 3 the
Qwen3 base row beats the underlined SimPO row). "Δ chosen logp vs SFT" is this row's mean l̄_w minus
that of the same model's SFT row in Table 3 (the paper's "unlearning", section 7, is a negative
value). A benchmark without a result shows "—" and a footnote saying why.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

TABLE_NAMES = ("table3", "table4", "table5")

BENCHMARK_NAMES = {
    "mt_bench": "MT-Bench",
    "arena_hard": "Arena-Hard",
    "offline": "offline preference metrics",
    "demo_generation": "demo accuracy",
}

CAPTIONS = {
    "table3": ("Evaluation results across benchmarks. We compare the raw pretrained base model, the supervised "
               "fine-tuned (SFT) baseline, and subsequent preference optimization methods."),
    "table4": "Ablation results for individual components of the SLIME loss.",
    "table5": "Effect of the stabilizing loss exponent p on SLIME performance.",
}


@dataclass(frozen=True)
class Column:
    """One displayed benchmark column. `key` names the raw value in the csv and in `TableRow.raw`."""

    key: str
    header: str
    tex_header: str
    benchmark: str
    decimals: int
    scale: float = 1.0
    higher_is_better: bool | None = True  # None: not ranked
    signed: bool = False
    ci_keys: tuple[str, str] | None = None  # raw keys of a CI printed after the value as "[lo, hi]"
    kind: str = "number"  # "number" | "offset_ci" (Arena-Hard's "-low / +high")


def _columns(floor_quantile: float) -> list[Column]:
    quantile = f"q{round(floor_quantile * 100):02d}" if floor_quantile < 0.1 else f"q{floor_quantile:g}"
    return [
        Column("mt_bench", "MT-Bench ↑", r"MT-Bench $\uparrow$", "mt_bench", 2),
        Column("arena_hard", "Arena-Hard ↑", r"Arena-Hard $\uparrow$", "arena_hard", 1),
        Column("arena_hard_ci", "Arena-Hard CI", "Arena-Hard CI", "arena_hard", 1, higher_is_better=None,
               kind="offset_ci"),
        Column("preference_accuracy", "Pref. acc. (%) ↑", r"Pref.\ acc.\ (\%) $\uparrow$", "offline", 1, scale=100.0),
        Column("margin_mean", "Margin ↑", r"Margin $\uparrow$", "offline", 3),
        Column("delta_chosen_logp_vs_sft", "Δ chosen logp vs SFT ↑", r"$\Delta$ chosen logp vs SFT $\uparrow$",
               "offline", 3, signed=True),
        Column("rejected_token_logp_floor", f"Rejected floor ({quantile}) ↑",
               rf"Rejected floor ({quantile}) $\uparrow$", "offline", 2),
        Column("chosen_token_entropy_mean", "Entropy", "Entropy", "offline", 2, higher_is_better=None),
        Column("demo_accuracy", "Demo acc. (%) ↑ [95% CI]", r"Demo acc.\ (\%) $\uparrow$ [95\% CI]",
               "demo_generation", 1, scale=100.0, ci_keys=("demo_accuracy_ci_low", "demo_accuracy_ci_high")),
    ]


# Raw csv columns after the label columns, in order.
RAW_KEYS = (
    "mt_bench", "mt_bench_turn1", "mt_bench_turn2",
    "arena_hard", "arena_hard_ci_low", "arena_hard_ci_high",
    "preference_accuracy", "preference_accuracy_ci_low", "preference_accuracy_ci_high",
    "margin_mean", "margin_mean_ci_low", "margin_mean_ci_high",
    "chosen_logp_mean", "rejected_logp_mean", "delta_chosen_logp_vs_sft",
    "rejected_token_logp_floor", "rejected_token_logp_min", "rejected_token_frac_below_neg_delta",
    "chosen_token_entropy_mean",
    "demo_accuracy", "demo_accuracy_ci_low", "demo_accuracy_ci_high",
    "n_offline", "n_demo", "n_mt_bench_valid", "n_arena_hard_valid",
)


@dataclass
class TableRow:
    block: str                      # model label; rows of one block are ranked together
    labels: list[str]               # the label cells (Model, Method / Variant / Exponent p)
    ranked: bool                    # False for the base model (not ranked, as in the paper)
    raw: dict[str, float | None]
    missing: dict[str, str] = field(default_factory=dict)  # benchmark -> why it has no value
    csv_labels: dict = field(default_factory=dict)  # label columns of the csv (raw p, default flag, ...)


@dataclass
class Table:
    name: str
    caption: str
    label_headers: list[str]
    columns: list[Column]
    rows: list[TableRow]
    notes: list[str]
    marks: dict[tuple[int, str], str] = field(default_factory=dict)  # (row, column key) -> "best" | "second"
    footnotes: dict[str, str] = field(default_factory=dict)  # reason -> letter
    footnote_columns: dict[str, list[str]] = field(default_factory=dict)  # reason -> column headers


# ---------------------------------------------------------------------------------------------
# Reading results


def load_manifest(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    for name in TABLE_NAMES:
        if name not in manifest:
            raise KeyError(f"{path}: manifest has no {name!r} list")
    return manifest


def _read_result(path: str, where: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{where}: result file {path} does not exist") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: result file {path} is not valid JSON: {error}") from error


def _number(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _metric(result: dict, key: str, where: str) -> float | None:
    metrics = result.get("metrics")
    if not isinstance(metrics, dict):
        raise KeyError(f"{where}: result has no 'metrics' object")
    return _number(metrics.get(key))


def _ci(result: dict, key: str) -> tuple[float | None, float | None]:
    interval = (result.get("ci") or {}).get(key)
    if not interval:
        return None, None
    return _number(interval[0]), _number(interval[1])


def _raw_values(entry: dict, where: str, not_run: dict) -> tuple[dict, dict, list[str]]:
    """(raw values, missing benchmark -> reason, judge model names) of one manifest row."""
    results = entry.get("results") or {}
    raw: dict[str, float | None] = {key: None for key in RAW_KEYS}
    missing: dict[str, str] = {}
    judges: list[str] = []
    for benchmark in BENCHMARK_NAMES:
        path = results.get(benchmark)
        if not path:
            missing[benchmark] = not_run.get(benchmark) or f"not evaluated (the manifest lists no '{benchmark}' result)"
            continue
        result = _read_result(path, f"{where} {benchmark}")
        if result.get("judge_model"):
            judges.append(str(result["judge_model"]))
        if benchmark == "mt_bench":
            score = result.get("score") or {}
            raw["mt_bench"] = _number(score.get("overall"))
            raw["mt_bench_turn1"] = _number(score.get("turn1"))
            raw["mt_bench_turn2"] = _number(score.get("turn2"))
            raw["n_mt_bench_valid"] = _number(result.get("n_valid"))
            if raw["mt_bench"] is None:
                missing[benchmark] = f"MT-Bench produced no score ({result.get('n_failed', '?')} judgments failed)"
        elif benchmark == "arena_hard":
            raw["arena_hard"] = _number(result.get("score"))
            raw["arena_hard_ci_low"] = _number(result.get("ci_low"))
            raw["arena_hard_ci_high"] = _number(result.get("ci_high"))
            raw["n_arena_hard_valid"] = _number(result.get("n_valid"))
            if raw["arena_hard"] is None:
                missing[benchmark] = f"Arena-Hard produced no score ({result.get('n_failed', '?')} judgments failed)"
        elif benchmark == "offline":
            for key in ("preference_accuracy", "margin_mean", "chosen_logp_mean", "rejected_logp_mean",
                        "rejected_token_logp_floor", "rejected_token_logp_min",
                        "rejected_token_frac_below_neg_delta", "chosen_token_entropy_mean"):
                raw[key] = _metric(result, key, f"{where} {benchmark}")
            raw["preference_accuracy_ci_low"], raw["preference_accuracy_ci_high"] = _ci(result, "preference_accuracy")
            raw["margin_mean_ci_low"], raw["margin_mean_ci_high"] = _ci(result, "margin_mean")
            raw["n_offline"] = _number(result.get("n"))
        else:
            raw["demo_accuracy"] = _metric(result, "accuracy", f"{where} {benchmark}")
            raw["demo_accuracy_ci_low"], raw["demo_accuracy_ci_high"] = _ci(result, "accuracy")
            raw["n_demo"] = _number(result.get("n"))
    return raw, missing, judges


def _is_sft(entry: dict) -> bool:
    return entry.get("run") == "sft" or str(entry.get("method_label", "")).strip().lower() == "sft"


def _is_base(entry: dict) -> bool:
    return entry.get("run") == "base" or str(entry.get("method_label", "")).strip().lower().startswith("base")


def _sft_chosen_logps(manifest: dict) -> dict[str, float | None]:
    """Model -> the SFT row's mean chosen l̄_w from Table 3 (the reference of "Δ chosen logp vs SFT")."""
    reference = {}
    for index, entry in enumerate(manifest.get("table3", [])):
        if _is_sft(entry):
            path = (entry.get("results") or {}).get("offline")
            if path:
                result = _read_result(path, f"table3 row {index} (SFT) offline")
                reference[entry.get("model")] = _metric(result, "chosen_logp_mean", f"table3 row {index} offline")
    return reference


def _model_label(entry: dict, model_labels: dict) -> str:
    return str(entry.get("model_label") or model_labels.get(entry.get("model")) or entry.get("model") or "")


def _p_label(entry: dict, where: str) -> str:
    if "p" not in entry:
        raise KeyError(f"{where}: table5 rows need 'p'")
    p = float(entry["p"])
    text = f"{p:.1f}" if round(p, 1) == p else f"{p:g}"
    return f"{text} (default)" if entry.get("default") else text


# ---------------------------------------------------------------------------------------------
# Building a table


def build_table(manifest: dict, name: str) -> Table:
    """Rows, marks (bold / underline) and footnotes of one of Tables 3-5."""
    if name not in TABLE_NAMES:
        raise KeyError(f"unknown table {name!r}; expected one of {TABLE_NAMES}")
    entries = manifest.get(name) or []
    not_run = manifest.get("not_run") or {}
    sft_reference = _sft_chosen_logps(manifest)
    # Table 4/5 rows name the model by key only; Table 3 has its display label.
    model_labels = {entry.get("model"): entry["model_label"] for entry in manifest.get("table3", [])
                    if entry.get("model_label")}
    models = []
    for entry in entries:
        model = _model_label(entry, model_labels)
        if model not in models:
            models.append(model)
    with_model_column = name == "table3" or len(models) > 1
    judges = []
    floor_quantile = None
    rows: list[TableRow] = []
    for index, entry in enumerate(entries):
        where = f"{name} row {index}"
        raw, missing, row_judges = _raw_values(entry, where, not_run)
        judges.extend(row_judges)
        if floor_quantile is None and (entry.get("results") or {}).get("offline"):
            offline = _read_result(entry["results"]["offline"], f"{where} offline")
            floor_quantile = _number(offline.get("metrics", {}).get("rejected_floor_quantile"))
        reference = sft_reference.get(entry.get("model"))
        if raw["chosen_logp_mean"] is not None and reference is not None:
            raw["delta_chosen_logp_vs_sft"] = raw["chosen_logp_mean"] - reference
        model = _model_label(entry, model_labels)
        if name == "table3":
            if "method_label" not in entry:
                raise KeyError(f"{where}: table3 rows need 'method_label'")
            label = str(entry["method_label"])
        elif name == "table4":
            if "variant" not in entry:
                raise KeyError(f"{where}: table4 rows need 'variant'")
            label = str(entry["variant"])
        else:
            label = _p_label(entry, where)
        labels = [model, label] if with_model_column else [label]
        if name == "table3":
            csv_labels = {"model": model, "method": label}
        elif name == "table4":
            csv_labels = {"model": model, "variant": label}
        else:
            csv_labels = {"model": model, "p": float(entry["p"]), "default": bool(entry.get("default", False))}
        rows.append(TableRow(block=model, labels=labels, ranked=not _is_base(entry), raw=raw, missing=missing,
                             csv_labels=csv_labels))

    columns = _columns(floor_quantile if floor_quantile is not None else 0.01)
    label_headers = {"table3": ["Model", "Method"], "table4": ["Variant"], "table5": ["Exponent p"]}[name]
    if with_model_column and name != "table3":
        label_headers = ["Model"] + label_headers
    table = Table(name=name, caption="", label_headers=label_headers, columns=columns, rows=rows, notes=[])
    _mark_best(table)
    _collect_footnotes(table)
    table.caption = _caption(name, models, with_model_column, judges, manifest.get("judge"))
    table.notes = _notes(table)
    return table


def _displayed(value: float, column: Column) -> float:
    rounded = round(value * column.scale, column.decimals)
    return 0.0 if rounded == 0 else rounded  # no "-0.0"


def _mark_best(table: Table) -> None:
    """Bold the best and underline the second-best displayed value per block and ranked column."""
    for block in dict.fromkeys(row.block for row in table.rows):
        members = [i for i, row in enumerate(table.rows) if row.block == block and row.ranked]
        for column in table.columns:
            if column.higher_is_better is None:
                continue
            values = {i: _displayed(table.rows[i].raw[column.key], column)
                      for i in members if table.rows[i].raw.get(column.key) is not None}
            if len(values) < 2:
                continue
            distinct = sorted(set(values.values()), reverse=column.higher_is_better)
            if len(distinct) < 2:
                continue  # all equal: nothing to single out
            for i, value in values.items():
                if value == distinct[0]:
                    table.marks[(i, column.key)] = "best"
                elif len(distinct) > 1 and value == distinct[1]:
                    table.marks[(i, column.key)] = "second"


def _cell_missing_reason(row: TableRow, column: Column) -> str | None:
    if column.benchmark in row.missing:
        return row.missing[column.benchmark]
    if column.kind == "offset_ci":
        if row.raw.get("arena_hard_ci_low") is None or row.raw.get("arena_hard_ci_high") is None:
            return "the Arena-Hard result has no confidence interval"
        return None
    if row.raw.get(column.key) is None:
        if column.key == "delta_chosen_logp_vs_sft":
            return "no offline result of this model's SFT row in Table 3 to compare with"
        return f"the {BENCHMARK_NAMES[column.benchmark]} result has no '{column.key}'"
    return None


def _collect_footnotes(table: Table) -> None:
    for row in table.rows:
        for column in table.columns:
            reason = _cell_missing_reason(row, column)
            if reason is None:
                continue
            if reason not in table.footnotes:
                table.footnotes[reason] = "abcdefghijklmnopqrstuvwxyz"[len(table.footnotes) % 26]
                table.footnote_columns[reason] = []
            header = column.header.replace(" ↑", "").split(" [")[0]
            if header not in table.footnote_columns[reason]:
                table.footnote_columns[reason].append(header)


def _caption(name: str, models: list[str], with_model_column: bool, judges: list[str], manifest_judge) -> str:
    caption = CAPTIONS[name]
    if name != "table3" and not with_model_column and models and models[0]:
        caption = caption.rstrip(".") + f" (base model: {models[0]})."
    caption += (" ↑: higher is better. The best result per model and benchmark is in bold, the second best "
                "underlined; ties share the mark.")
    if name == "table3":
        caption += " Base (Pretrain) rows are not ranked."
    if isinstance(manifest_judge, dict):
        manifest_judge = manifest_judge.get("model")
    names = list(dict.fromkeys(([str(manifest_judge)] if manifest_judge else []) + judges))
    if names:
        caption += f" MT-Bench and Arena-Hard judge: {', '.join(names)}."
    return caption


def _notes(table: Table) -> list[str]:
    floor = next(c for c in table.columns if c.key == "rejected_token_logp_floor")
    quantile = floor.header.split("(")[1].split(")")[0]
    return [
        "Offline columns are measured on the held-out preference pairs: Pref. acc. = share of pairs with "
        "l̄_w > l̄_l (mean completion log-probs); Margin = mean l̄_w − l̄_l; Δ chosen logp vs SFT = mean l̄_w "
        "minus the same model's SFT row (negative: the chosen answers lost likelihood, the paper's "
        f"\"unlearning\"); Rejected floor ({quantile}) = quantile of all rejected-token log-probs.",
        "Entropy = mean next-token entropy (nats) over chosen-answer positions; it is not ranked, since "
        "neither a higher nor a lower value is better in itself.",
        "Demo acc. = greedy-answer accuracy on the demo tasks, with a 95% percentile-bootstrap CI.",
    ]


# ---------------------------------------------------------------------------------------------
# Rendering


def _format_value(value: float, column: Column) -> str:
    shown = _displayed(value, column)
    return f"{shown:+.{column.decimals}f}" if column.signed else f"{shown:.{column.decimals}f}"


def _cell_parts(table: Table, row_index: int, column: Column) -> tuple[str | None, str, str | None]:
    """(value text or None when missing, suffix text, footnote letter)."""
    row = table.rows[row_index]
    reason = _cell_missing_reason(row, column)
    if reason is not None:
        return None, "", table.footnotes[reason]
    if column.kind == "offset_ci":
        low, high = row.raw["arena_hard_ci_low"], row.raw["arena_hard_ci_high"]
        return f"-{abs(low):.{column.decimals}f} / +{abs(high):.{column.decimals}f}", "", None
    suffix = ""
    if column.ci_keys and row.raw.get(column.ci_keys[0]) is not None and row.raw.get(column.ci_keys[1]) is not None:
        low, high = (_format_value(row.raw[key], column) for key in column.ci_keys)
        suffix = f" [{low}, {high}]"
    return _format_value(row.raw[column.key], column), suffix, None


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def _marked_cells(table, index: int, *, missing, best, second) -> list[str]:
    """One row's benchmark cells: `missing(footnote)` for a result that is absent, else the value
    (plus its suffix) wrapped by `best` or `second` where the row ranks first or second."""
    cells = []
    for column in table.columns:
        value, suffix, footnote = _cell_parts(table, index, column)
        if value is None:
            cells.append(missing(footnote))
            continue
        mark = table.marks.get((index, column.key))
        if mark == "best":
            value = best(value)
        elif mark == "second":
            value = second(value)
        cells.append(value + suffix)
    return cells


def render_markdown(table: Table) -> str:
    headers = table.label_headers + [column.header for column in table.columns]
    lines = [f"**{table.name.replace('table', 'Table ')}.** {table.caption}", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in headers) + " |")
    lines.append("|" + "|".join([":---"] * len(table.label_headers) + ["---:"] * len(table.columns)) + "|")
    previous_block = None
    for index, row in enumerate(table.rows):
        labels = list(row.labels)
        if len(table.label_headers) > 1 and row.block == previous_block:
            labels[0] = ""  # the model name only on a block's first row, as in the paper
        previous_block = row.block
        cells = [_md_escape(label) for label in labels]
        cells += _marked_cells(table, index, missing=lambda note: f"—<sup>{note}</sup>",
                               best=lambda value: f"**{value}**", second=lambda value: f"<u>{value}</u>")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for reason, letter in table.footnotes.items():
        lines.append(f"<sup>{letter}</sup> {', '.join(table.footnote_columns[reason])}: {_md_escape(reason)}  ")
    lines.extend(f"{note}  " for note in table.notes)
    return "\n".join(lines).rstrip() + "\n"


_TEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "Δ": r"$\Delta$", "↑": r"$\uparrow$", "−": "$-$", "<": r"$<$", ">": r"$>$", "—": "---", "l̄": r"$\bar{l}$"}


def _tex_escape_plain(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i:i + 2] == "l̄":
            if text[i + 2:i + 4] in ("_w", "_l"):
                out.append(rf"$\bar{{l}}_{text[i + 3]}$")
                i += 4
            else:
                out.append(_TEX_SPECIALS["l̄"])
                i += 2
            continue
        out.append(_TEX_SPECIALS.get(text[i], text[i]))
        i += 1
    return "".join(out)


def tex_escape(text: str) -> str:
    """Text-mode LaTeX for labels, captions and notes; `code` spans become \\texttt."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # unbalanced backticks: escape literally
        return _tex_escape_plain(text)
    return "".join(_tex_escape_plain(part) if i % 2 == 0 else rf"\texttt{{{_tex_escape_plain(part)}}}"
                   for i, part in enumerate(parts))


def render_latex(table: Table) -> str:
    """A booktabs `table` environment (needs `\\usepackage{booktabs}`)."""
    spec = "l" * len(table.label_headers) + "r" * len(table.columns)
    headers = [tex_escape(h) for h in table.label_headers] + [column.tex_header for column in table.columns]
    lines = [
        f"% {table.name} generated by prefopt.tables; needs \\usepackage{{booktabs}}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{tex_escape(table.caption)}}}",
        rf"\label{{tab:{table.name}}}",
        r"\resizebox{\linewidth}{!}{%",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(headers) + r" \\",
        r"\midrule",
    ]
    previous_block = None
    for index, row in enumerate(table.rows):
        labels = [tex_escape(label) for label in row.labels]
        if len(table.label_headers) > 1:
            if previous_block is not None and row.block != previous_block:
                lines.append(r"\midrule")
            if row.block == previous_block:
                labels[0] = ""
        previous_block = row.block
        cells = list(labels)
        cells += _marked_cells(table, index, missing=lambda note: rf"---\textsuperscript{{{note}}}",
                               best=lambda value: rf"\textbf{{{value}}}",
                               second=lambda value: rf"\underline{{{value}}}")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\par\smallskip\footnotesize"]
    for reason, letter in table.footnotes.items():
        lines.append(f"\\textsuperscript{{{letter}}} {tex_escape(', '.join(table.footnote_columns[reason]))}: "
                     f"{tex_escape(reason)}\\\\")
    lines.extend(tex_escape(note) + r"\\" for note in table.notes)
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    """Raw numbers (no rounding, no marks); empty cells where a value is missing."""
    label_keys = {"table3": ["model", "method"], "table4": ["model", "variant"],
                  "table5": ["model", "p", "default"]}[table.name]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(label_keys + list(RAW_KEYS))
    for row in table.rows:
        labels = [row.csv_labels[key] for key in label_keys]
        writer.writerow(labels + ["" if row.raw.get(key) is None else repr(row.raw[key]) for key in RAW_KEYS])
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_tables(manifest: dict | str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write table3/4/5 as .csv, .md and .tex into `out_dir`; returns the paths written."""
    if not isinstance(manifest, dict):
        manifest = load_manifest(manifest)
    out_dir = Path(out_dir)
    written = []
    for name in TABLE_NAMES:
        table = build_table(manifest, name)
        for suffix, render in ((".csv", render_csv), (".md", render_markdown), (".tex", render_latex)):
            path = out_dir / f"{name}{suffix}"
            _write_atomic(path, render(table))
            written.append(path)
    return written
