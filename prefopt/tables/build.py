"""Tables from the manifest: columns, rows, best/second marks, footnotes, caption and notes, and the
paired comparisons of every row with its table's reference row.

What a table looks like follows its `kind` (methods: Table 3; ablations: Table 4; sweep: one
hyperparameter, shaped like Table 5) and what a row is compared with follows its `role` from the plan
(base: not ranked, not compared; sft: what "vs SFT" is taken from; reference: what the table's other
rows are compared with). No table is recognised by its name, no row by its label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prefopt.objectives import format_value
from prefopt.tables.results import (BENCHMARK_NAMES, check_manifest, floor_quantile, manifest_table,
                                    rows_with_role)
from prefopt.tables.statistics import (DEFAULT_FLOOR_QUANTILE, PairedReference, Reference, row_values,
                                       sft_reference)

RANKING = (" ↑: higher is better. The best result per model and benchmark is in bold, the second best "
           "underlined; ties share the mark.")
BASE_NOT_RANKED = " Base (Pretrain) rows are not ranked."


@dataclass(frozen=True)
class Layout:
    """How one kind of table is laid out: its label column (header, csv key) and its caption."""

    label_header: str
    csv_key: str
    caption: str
    model_column: bool = False  # always a Model column (else only with several models)


def layout(spec: dict) -> Layout:
    """The layout of a manifest table, by its kind; an ablations or sweep caption names its method."""
    kind, method_label = spec["kind"], spec.get("method_label") or spec.get("method")
    if kind == "methods":
        return Layout("Method", "method", model_column=True, caption=(
            "Evaluation results across benchmarks. We compare the raw pretrained base model, the supervised "
            "fine-tuned (SFT) baseline, and subsequent preference optimization methods."))
    if kind == "ablations":
        return Layout("Variant", "variant", f"Ablation results for individual components of the {method_label} loss.")
    parameter = spec["parameter"]
    header, words = SWEEP_WORDING.get((spec.get("method"), parameter), (parameter, f"the hyperparameter {parameter}"))
    return Layout(header, parameter, f"Effect of {words} on {method_label} performance.")


# The paper's words for a swept hyperparameter (label column header, caption phrase); others use its name.
SWEEP_WORDING = {("slime", "p"): ("Exponent p", "the stabilizing loss exponent p")}


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
    significance_key: str | None = None  # raw key: True where the paired CI of the difference from SFT excludes 0

    @property
    def seed_sd_key(self) -> str:
        return f"{self.key}_seed_sd"


def _ci_keys(key: str) -> tuple[str, str]:
    return f"{key}_ci_low", f"{key}_ci_high"


def columns(floor_quantile: float) -> list[Column]:
    quantile = f"q{round(floor_quantile * 100):02d}" if floor_quantile < 0.1 else f"q{floor_quantile:g}"
    return [
        Column("mt_bench", "MT-Bench ↑", r"MT-Bench $\uparrow$", "mt_bench", 2),
        Column("arena_hard", "Arena-Hard ↑", r"Arena-Hard $\uparrow$", "arena_hard", 1),
        Column("arena_hard_ci", "Arena-Hard CI", "Arena-Hard CI", "arena_hard", 1, higher_is_better=None,
               ci_keys=("arena_hard_ci_low", "arena_hard_ci_high"), kind="offset_ci"),
        Column("arena_hard_sc", "Arena-Hard SC ↑", r"Arena-Hard SC $\uparrow$", "arena_hard_style_control", 1),
        Column("arena_hard_sc_ci", "Arena-Hard SC CI", "Arena-Hard SC CI", "arena_hard_style_control", 1,
               higher_is_better=None, ci_keys=("arena_hard_sc_ci_low", "arena_hard_sc_ci_high"), kind="offset_ci"),
        Column("preference_accuracy", "Pref. acc. (%) ↑", r"Pref.\ acc.\ (\%) $\uparrow$", "offline", 1, scale=100.0,
               ci_keys=_ci_keys("preference_accuracy")),
        Column("margin_mean", "Margin ↑", r"Margin $\uparrow$", "offline", 3, ci_keys=_ci_keys("margin_mean")),
        Column("delta_chosen_logp_vs_sft", "Δ chosen logp vs SFT ↑", r"$\Delta$ chosen logp vs SFT $\uparrow$",
               "offline", 3, signed=True, ci_keys=_ci_keys("delta_chosen_logp_vs_sft"),
               significance_key="delta_chosen_logp_vs_sft_ci_excludes_zero"),
        Column("rejected_token_logp_floor", f"Rejected floor ({quantile}) ↑",
               rf"Rejected floor ({quantile}) $\uparrow$", "offline", 2, ci_keys=_ci_keys("rejected_token_logp_floor")),
        Column("chosen_token_entropy_mean", "Entropy", "Entropy", "offline", 2, higher_is_better=None,
               ci_keys=_ci_keys("chosen_token_entropy_mean")),
        Column("demo_accuracy", "Demo acc. (%) ↑ [95% CI]", r"Demo acc.\ (\%) $\uparrow$ [95\% CI]",
               "demo_generation", 1, scale=100.0, ci_keys=_ci_keys("demo_accuracy"),
               significance_key="demo_accuracy_vs_sft_ci_excludes_zero"),
    ]


@dataclass
class TableRow:
    block: str                      # model label; rows of one block are ranked together
    labels: list[str]               # the label cells (Model, Method / Variant / the swept hyperparameter)
    ranked: bool                    # False for the base model (not ranked, as in the paper)
    raw: dict[str, float | None]
    missing: dict[str, str] = field(default_factory=dict)  # benchmark -> why it has no value
    notes: dict[str, str] = field(default_factory=dict)  # benchmark -> a caveat on the value it has
    csv_labels: dict = field(default_factory=dict)  # label columns of the csv (raw value, default flag, ...)
    role: str = "row"               # prefopt.plan.ROLES
    value: object = None            # a sweep row's hyperparameter value


@dataclass
class Table:
    name: str
    caption: str
    label_headers: list[str]
    columns: list[Column]
    rows: list[TableRow]
    notes: list[str]
    kind: str = "methods"
    title: str = ""
    description: str = ""  # what the table shows (its caption's first sentence, before the model and marks)
    csv_label_keys: list[str] = field(default_factory=list)
    parameter: str | None = None    # a sweep's hyperparameter
    method_label: str | None = None  # the method an ablations or sweep table varies
    marks: dict[tuple[int, str], str] = field(default_factory=dict)  # (row, column key) -> "best" | "second"
    footnotes: dict[str, str] = field(default_factory=dict)  # reason -> letter
    footnote_columns: dict[str, list[str]] = field(default_factory=dict)  # reason -> column headers


# ---------------------------------------------------------------------------------------------- labels


def row_label(spec: dict, entry: dict, where: str) -> str:
    """A row's label cell: the plan's label, or for a sweep its value, "(default)" on the reference row."""
    if spec["kind"] == "sweep":
        if entry.get("value") is None:
            raise KeyError(f"{where}: sweep rows need 'value'")
        text = format_value(entry["value"])
        return f"{text} (default)" if entry.get("role") == "reference" else text
    if "label" not in entry:
        raise KeyError(f"{where}: rows need 'label'")
    return str(entry["label"])


def model_label(entry: dict) -> str:
    return str(entry.get("model_label") or entry.get("model") or "")


def title(spec: dict) -> str:
    """"Table 5" for the paper's numbered tables, else what the table is ("SLIME delta sweep")."""
    numbered = re.fullmatch(r"table(\d+)", spec["name"])
    if numbered:
        return f"Table {numbered.group(1)}"
    if spec["kind"] == "sweep":
        return f"{spec.get('method_label') or spec.get('method')} {spec['parameter']} sweep"
    return spec["name"]


def sft_references(manifest: dict) -> dict[str, Reference]:
    """Model -> its SFT row (the reference of "Δ chosen logp vs SFT" and "demo accuracy vs SFT")."""
    not_run = manifest.get("not_run") or {}
    return {entry.get("model"): sft_reference(entry, f"{name} row {index} (SFT)", not_run)
            for name, index, entry in rows_with_role(manifest, "sft")}


# ---------------------------------------------------------------------------------------------- tables


def build_table(manifest: dict, name: str) -> Table:
    """Rows, marks (bold / underline) and footnotes of the manifest's table `name`."""
    spec = manifest_table(manifest, name)
    entries = spec["rows"]
    not_run = manifest.get("not_run") or {}
    references = sft_references(manifest)
    shape = layout(spec)
    models = list(dict.fromkeys(model_label(entry) for entry in entries))
    with_model_column = shape.model_column or len(models) > 1
    judges = []
    table_quantile = None
    caveats: set[str] = set()
    rows: list[TableRow] = []
    for index, entry in enumerate(entries):
        where = f"{name} row {index}"
        row_quantile = floor_quantile(entry, where)
        if table_quantile is None:
            table_quantile = row_quantile
        raw, missing, notes, row_judges = row_values(entry, where, not_run, references.get(entry.get("model"),
                                                     Reference()), row_quantile or DEFAULT_FLOOR_QUANTILE, caveats)
        judges.extend(row_judges)
        model, label = model_label(entry), row_label(spec, entry, where)
        csv_labels = {"model": model, shape.csv_key: label}
        if spec["kind"] == "sweep":
            csv_labels.update({shape.csv_key: entry["value"], "default": entry.get("role") == "reference"})
        rows.append(TableRow(block=model, labels=[model, label] if with_model_column else [label],
                             ranked=entry.get("role") != "base", raw=raw, missing=missing, notes=notes,
                             csv_labels=csv_labels, role=entry.get("role", "row"), value=entry.get("value")))

    label_headers = (["Model"] if with_model_column else []) + [shape.label_header]
    csv_label_keys = ["model", shape.csv_key] + (["default"] if spec["kind"] == "sweep" else [])
    table = Table(name=name, caption="", label_headers=label_headers,
                  columns=columns(table_quantile if table_quantile is not None else DEFAULT_FLOOR_QUANTILE),
                  rows=rows, notes=[], kind=spec["kind"], title=title(spec), description=shape.caption,
                  csv_label_keys=csv_label_keys,
                  parameter=spec.get("parameter"), method_label=spec.get("method_label"))
    _mark_best(table)
    _collect_footnotes(table)
    table.caption = _caption(shape.caption, models, with_model_column, table.rows, judges, manifest.get("judge"))
    table.notes = _notes(table, caveats)
    return table


def build_tables(manifest: dict) -> list[Table]:
    """Every table of the manifest, in its order."""
    return [build_table(manifest, spec["name"]) for spec in manifest["tables"]]


def displayed(value: float, column: Column) -> float:
    rounded = round(value * column.scale, column.decimals)
    return 0.0 if rounded == 0 else rounded  # no "-0.0"


def _mark_best(table: Table) -> None:
    """Bold the best and underline the second-best displayed value per block and ranked column."""
    for block in dict.fromkeys(row.block for row in table.rows):
        members = [i for i, row in enumerate(table.rows) if row.block == block and row.ranked]
        for column in table.columns:
            if column.higher_is_better is None:
                continue
            values = {i: displayed(table.rows[i].raw[column.key], column)
                      for i in members if table.rows[i].raw.get(column.key) is not None}
            if len(values) < 2:
                continue
            distinct = sorted(set(values.values()), reverse=column.higher_is_better)
            if len(distinct) < 2:
                continue  # all equal: nothing to single out
            for i, value in values.items():
                if value == distinct[0]:
                    table.marks[(i, column.key)] = "best"
                elif value == distinct[1]:
                    table.marks[(i, column.key)] = "second"


def cell_missing_reason(row: TableRow, column: Column) -> str | None:
    if column.benchmark in row.missing:
        return row.missing[column.benchmark]
    if column.kind == "offset_ci":
        if (row.raw.get("n_seeds") or 1) > 1:
            return ("the CI of one judged run does not cover the mean of several seeds; the score column shows "
                    "mean ± sd across seeds")
        if any(row.raw.get(key) is None for key in column.ci_keys):
            return f"the {BENCHMARK_NAMES[column.benchmark]} result has no confidence interval"
        return None
    if row.raw.get(column.key) is None:
        if column.key == "delta_chosen_logp_vs_sft":
            return "no offline result of this model's SFT row in Table 3 to compare with"
        return f"the {BENCHMARK_NAMES[column.benchmark]} result has no '{column.key}'"
    return None


def cell_note(row: TableRow, column: Column) -> str | None:
    """A footnote on a value that is there (some of its judgments failed), else None."""
    if cell_missing_reason(row, column) is not None or column.kind == "offset_ci":
        return None
    return row.notes.get(column.benchmark)


def _collect_footnotes(table: Table) -> None:
    for row in table.rows:
        for column in table.columns:
            reason = cell_missing_reason(row, column) or cell_note(row, column)
            if reason is None:
                continue
            if reason not in table.footnotes:
                table.footnotes[reason] = "abcdefghijklmnopqrstuvwxyz"[len(table.footnotes) % 26]
                table.footnote_columns[reason] = []
            header = column.header.replace(" ↑", "").split(" [")[0]
            if header not in table.footnote_columns[reason]:
                table.footnote_columns[reason].append(header)


def _caption(caption: str, models: list[str], with_model_column: bool, rows: list[TableRow], judges: list[str],
             manifest_judge) -> str:
    if not with_model_column and models and models[0]:
        caption = caption.rstrip(".") + f" (base model: {models[0]})."
    caption += RANKING
    if any(not row.ranked for row in rows):
        caption += BASE_NOT_RANKED
    if isinstance(manifest_judge, dict):
        manifest_judge = manifest_judge.get("model")
    names = list(dict.fromkeys(([str(manifest_judge)] if manifest_judge else []) + judges))
    if names:
        caption += f" MT-Bench and Arena-Hard judge: {', '.join(names)}."
    return caption


def _notes(table: Table, caveats: set[str] = frozenset()) -> list[str]:
    floor = next(c for c in table.columns if c.key == "rejected_token_logp_floor")
    quantile = floor.header.split("(")[1].split(")")[0]
    seeds = sorted({int(row.raw.get("n_seeds") or 1) for row in table.rows}) or [1]
    uncertainty = [
        "[lo, hi] = 95% percentile-bootstrap CI over the held-out items (pairs; prompts for Demo acc.); for the "
        "rejected floor each resample of pairs pools their rejected tokens. Δ chosen logp vs SFT and Demo acc. vs "
        "SFT (csv: demo_accuracy_vs_sft) use a paired bootstrap over the same items as the same model's SFT row; "
        "† = that paired CI excludes zero (on Demo acc., the mark is about its difference from SFT).",
    ]
    if seeds[-1] > 1:
        uncertainty.append(
            f"Rows trained with several seeds (here up to {seeds[-1]}; csv: n_seeds) show the mean ± sd across "
            "seeds (csv: <column>_seed_sd); their CIs average each item over seeds first, so they are over "
            "held-out items, not over seeds.")
    uncertainty.extend(f"Where no CI is shown: {caveat}." for caveat in sorted(caveats))
    return uncertainty + [
        "Offline columns are measured on the held-out preference pairs: Pref. acc. = share of pairs with "
        "l̄_w > l̄_l (mean completion log-probs); Margin = mean l̄_w − l̄_l; Δ chosen logp vs SFT = mean l̄_w "
        "minus the same model's SFT row (negative: the chosen answers lost likelihood, the paper's "
        f"\"unlearning\"); Rejected floor ({quantile}) = quantile of all rejected-token log-probs.",
        "Entropy = mean next-token entropy (nats) over chosen-answer positions; it is not ranked, since "
        "neither a higher nor a lower value is better in itself.",
        "Demo acc. = greedy-answer accuracy on the demo tasks, with a 95% percentile-bootstrap CI.",
        "Arena-Hard = win rate (%) against the baseline, arena-hard-auto v2's plain score; Arena-Hard SC = the "
        "same judgments with style control (answer length and markdown as Bradley-Terry features, fit over "
        "every judged model at once), arena-hard-auto's official configuration.",
    ]


# ----------------------------------------------------------------------------------------- comparisons


def paired_comparisons(manifest: dict) -> list[dict]:
    """Each row of every table minus its table's reference row of the same model (role "reference": Table 3's
    SLIME, Table 4's Full SLIME, a sweep's default value), per `statistics.COMPARISON_METRICS`, with the
    paired-bootstrap 95% CI over the items both rows scored. Base rows, and rows without per-example files,
    on other items, or without token lists (the floor), are left out."""
    comparisons = []
    check_manifest(manifest)
    for spec in manifest["tables"]:
        entries = spec["rows"]
        for model in dict.fromkeys(entry.get("model") for entry in entries):
            block = [(index, entry) for index, entry in enumerate(entries) if entry.get("model") == model]
            reference_index, reference = next(((index, entry) for index, entry in block
                                               if entry.get("role") == "reference"), (None, None))
            if reference is None:
                continue
            where = f"{spec['name']} row {reference_index}"
            paired = PairedReference(reference, floor_quantile(reference, where) or DEFAULT_FLOOR_QUANTILE)
            reference_label = row_label(spec, reference, where)
            for index, entry in block:
                if entry is reference or entry.get("role") == "base":
                    continue
                labels = {"table": spec["name"], "model": model_label(entry),
                          "row": row_label(spec, entry, f"{spec['name']} row {index}"), "reference": reference_label}
                comparisons.extend({**labels, **comparison} for comparison in paired.compare(entry))
    return comparisons
