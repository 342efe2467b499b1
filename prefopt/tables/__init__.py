"""The paper's tables from result files, as .csv (raw numbers), .md and .tex, and the paired comparisons.

    python workflow/scripts/make_tables.py --manifest results/tables/manifest.json --out-dir results/tables

The manifest (`prefopt.plan.table_manifest`, written by the DAG) lists every table of the plan with
its rows; per row the result file of each benchmark (`results`, the first seed's) and of every seed
(`seed_results`), its `label`, its `role` and, in a sweep, the hyperparameter's `value`::

    {"tables": [
       {"name": "table3", "kind": "methods", "method": null, "parameter": null, "rows": [ROW, ...]},
       {"name": "table4", "kind": "ablations", "method": "slime", "method_label": "SLIME", "rows": [...]},
       {"name": "table5", "kind": "sweep", "method": "slime", "method_label": "SLIME", "parameter": "p", ...},
       {"name": "sweep_delta", "kind": "sweep", ...}],
     "judge": "gpt-4o-2024-08-06" | null, "not_run": {"mt_bench": "why it was not run", ...}}
    ROW = {"model", "model_label", "label", "role", "value", "run", "results", "runs", "seed_results"}

A row's role (prefopt.plan.ROLES) decides what it is compared with: "base" rows are not ranked,
"sft" rows are what "Δ chosen logp vs SFT" and "demo accuracy vs SFT" are taken from, and each
table's "reference" row (Table 3's SLIME, Table 4's Full SLIME, a sweep's default value) is what
comparisons.* compares the table's other rows with. A table's kind decides its layout: a sweep is
shaped like the paper's Table 5 (one row per value, "(default)" on the reference row).

Columns: the paper's (MT-Bench, Arena-Hard and its CI, "-1.1 / +1.0" offsets as in the paper), then
the offline ones of `prefopt.evaluation.offline` / `demo_accuracy`. As in the paper, the best value
per model block and ranked column is bold and the second underlined; ties share the mark, values
are compared as displayed, and base rows are not ranked. A benchmark without a result shows "—"
and a footnote saying why. Uncertainty: `prefopt.tables.statistics` and docs/uncertainty.md.

Layers: `results` reads the manifest, result and per-example files; `statistics` turns them into a
row's numbers (seed means, bootstrap and paired CIs, row-vs-row comparisons); `build` makes `Table`
objects by kind and role; `render` writes markdown, LaTeX and csv.
"""

from prefopt.tables.build import (Column, Table, TableRow, build_table, build_tables, format_value,
                                  paired_comparisons)
from prefopt.tables.render import (render_comparisons_csv, render_comparisons_markdown, render_csv, render_latex,
                                   render_markdown, tex_escape, write_tables)
from prefopt.tables.results import check_manifest, examples_path, load_manifest, manifest_table, row_seed_results
from prefopt.tables.statistics import (BOOTSTRAP_SEED, DEFAULT_FLOOR_QUANTILE, ITEMS_DIFFER, N_RESAMPLES,
                                       NO_EXAMPLES, NO_FLOOR_TOKENS, bootstrap_settings, paired_difference)

__all__ = [
    "BOOTSTRAP_SEED", "Column", "DEFAULT_FLOOR_QUANTILE", "ITEMS_DIFFER", "NO_EXAMPLES", "NO_FLOOR_TOKENS",
    "N_RESAMPLES", "Table", "TableRow", "bootstrap_settings", "build_table", "build_tables", "check_manifest", "examples_path",
    "format_value", "load_manifest", "manifest_table", "paired_comparisons", "paired_difference",
    "render_comparisons_csv", "render_comparisons_markdown", "render_csv", "render_latex", "render_markdown",
    "row_seed_results", "tex_escape", "write_tables",
]
