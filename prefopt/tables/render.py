"""Tables as text: markdown (bold / underline marks), LaTeX (booktabs) and csv (raw numbers), the paired
comparisons as csv and markdown, and `write_tables`, which writes them all."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from prefopt.io import write_text_atomic
from prefopt.tables.build import (Column, Table, build_tables, cell_missing_reason, cell_note, displayed,
                                  paired_comparisons)
from prefopt.tables.results import load_manifest
from prefopt.tables.statistics import RAW_KEYS

COMPARISON_HEADER = ("table", "model", "row", "reference", "metric", "difference", "ci_low", "ci_high",
                     "ci_excludes_zero", "n_items", "n_seeds", "n_seeds_reference")


def _format_value(value: float, column: Column) -> str:
    shown = displayed(value, column)
    return f"{shown:+.{column.decimals}f}" if column.signed else f"{shown:.{column.decimals}f}"


def _cell_parts(table: Table, row_index: int, column: Column, plus_minus: str = "±"
                ) -> tuple[str | None, str, str | None, bool]:
    """(value text or None when missing, suffix text (" ± sd" across seeds, " [lo, hi]"), footnote letter,
    whether the paired CI of the difference from SFT excludes zero)."""
    row = table.rows[row_index]
    reason = cell_missing_reason(row, column)
    if reason is not None:
        return None, "", table.footnotes[reason], False
    if column.kind == "offset_ci":
        low, high = (row.raw[key] for key in column.ci_keys)
        return f"-{abs(low):.{column.decimals}f} / +{abs(high):.{column.decimals}f}", "", None, False
    note = cell_note(row, column)
    suffix = ""
    sd = row.raw.get(column.seed_sd_key)
    if (row.raw.get("n_seeds") or 1) > 1 and sd is not None:
        suffix += f" {plus_minus} {displayed(sd, column):.{column.decimals}f}"
    if column.ci_keys and row.raw.get(column.ci_keys[0]) is not None and row.raw.get(column.ci_keys[1]) is not None:
        low, high = (_format_value(row.raw[key], column) for key in column.ci_keys)
        suffix += f" [{low}, {high}]"
    significant = bool(column.significance_key and row.raw.get(column.significance_key))
    return _format_value(row.raw[column.key], column), suffix, table.footnotes[note] if note else None, significant


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def _marked_cells(table, index: int, *, missing, best, second, note, significant="†", plus_minus="±") -> list[str]:
    """One row's benchmark cells: `missing(footnote)` for a result that is absent, else the value
    wrapped by `best` or `second` where the row ranks first or second, `significant` after it where its
    paired difference from SFT excludes zero, then its suffix (± sd, [CI]) and `note(footnote)` where the
    value has a caveat."""
    cells = []
    for column in table.columns:
        value, suffix, footnote, is_significant = _cell_parts(table, index, column, plus_minus)
        if value is None:
            cells.append(missing(footnote))
            continue
        mark = table.marks.get((index, column.key))
        if mark == "best":
            value = best(value)
        elif mark == "second":
            value = second(value)
        if is_significant:
            value += significant
        cells.append(value + suffix + (note(footnote) if footnote else ""))
    return cells


def render_markdown(table: Table) -> str:
    headers = table.label_headers + [column.header for column in table.columns]
    lines = [f"**{table.title}.** {table.caption}", ""]
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
                               best=lambda value: f"**{value}**", second=lambda value: f"<u>{value}</u>",
                               note=lambda letter: f"<sup>{letter}</sup>")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for reason, letter in table.footnotes.items():
        lines.append(f"<sup>{letter}</sup> {', '.join(table.footnote_columns[reason])}: {_md_escape(reason)}  ")
    lines.extend(f"{note}  " for note in table.notes)
    return "\n".join(lines).rstrip() + "\n"


_TEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "Δ": r"$\Delta$", "↑": r"$\uparrow$", "−": "$-$", "<": r"$<$", ">": r"$>$", "—": "---", "l̄": r"$\bar{l}$",
                 "†": r"$^\dagger$", "±": r"$\pm$"}


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
                               second=lambda value: rf"\underline{{{value}}}",
                               note=lambda letter: rf"\textsuperscript{{{letter}}}",
                               significant=r"$^\dagger$", plus_minus=r"$\pm$")
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
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.csv_label_keys + list(RAW_KEYS))
    for row in table.rows:
        labels = [row.csv_labels[key] for key in table.csv_label_keys]
        writer.writerow(labels + ["" if row.raw.get(key) is None else repr(row.raw[key]) for key in RAW_KEYS])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Paired comparisons between rows (the claims of issue 11: SLIME vs DPO / SimPO, ablations, sweeps)


def _short_table_name(name: str) -> str:
    return name.removeprefix("table")  # "3" for table3; a sweep keeps its name


def render_comparisons_csv(comparisons: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COMPARISON_HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(comparisons)
    return buffer.getvalue()


def render_comparisons_markdown(comparisons: list[dict]) -> str:
    lines = ["**Paired comparisons.** Each row minus its table's reference row of the same model (Table 3: "
             "SLIME; Table 4: Full SLIME; a sweep, Table 5 and sweep_*: its default value), on the same held-out "
             "items, each item averaged over seeds first; [95% paired-bootstrap CI]; † = the CI excludes zero. "
             "Log-probs in nats per token, accuracies as fractions.", "",
             "| Table | Model | Row | Reference | Metric | Difference [95% CI] |", "|:---|:---|:---|:---|:---|---:|"]
    for row in comparisons:
        mark = "†" if row["ci_excludes_zero"] else ""
        low, high, difference = (f"{round(row[key], 4) + 0.0:+.4f}" for key in ("ci_low", "ci_high", "difference"))
        lines.append(f"| {_md_escape(_short_table_name(row['table']))} | {_md_escape(str(row['model']))} | "
                     f"{_md_escape(row['row'])} | {_md_escape(row['reference'])} | {row['metric']} | "
                     f"{difference}{mark} [{low}, {high}] |")
    if not comparisons:
        lines.append("| — | — | — | — | — | no per-example files to compare |")
    return "\n".join(lines) + "\n"


RENDERERS = ((".csv", render_csv), (".md", render_markdown), (".tex", render_latex))


def write_tables(manifest: dict | str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write every table of the manifest as <name>.csv, .md and .tex, and the paired comparisons as
    comparisons.csv / .md, into `out_dir` (prefopt.plan.table_files); returns the paths written."""
    if not isinstance(manifest, dict):
        manifest = load_manifest(manifest)
    out_dir = Path(out_dir)
    written = []
    for table in build_tables(manifest):
        for suffix, render in RENDERERS:
            written.append(write_text_atomic(out_dir / f"{table.name}{suffix}", render(table)))
    comparisons = paired_comparisons(manifest)
    for suffix, render in ((".csv", render_comparisons_csv), (".md", render_comparisons_markdown)):
        written.append(write_text_atomic(out_dir / f"comparisons{suffix}", render(comparisons)))
    return written
