"""Task accuracy on the embedded demo data: greedy answers checked by `prefopt.demo_data.is_correct`.

The demo rows (docs/architecture.md schema plus ``task`` and ``answer``) have answers a program can
check, so a small CPU run gets a generation-based score without a judge: the model answers each
eval prompt greedily, and the last ``Answer:`` line of its reply is compared with the row's answer.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from prefopt.evaluation.bootstrap import BOOTSTRAP_SEED, N_RESAMPLES, bootstrap_ci
from prefopt.evaluation.generation import generate_replies


def evaluate_demo_accuracy(
    model,
    tokenizer,
    rows: list[dict],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_prompt_length: int | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[dict, list[dict]]:
    """(summary, per_example) of greedy-generation accuracy on demo rows.

    summary: ``n``, ``accuracy``, ``accuracy/<task>`` per task, ``n/<task>``, and ``ci`` with the
    95% percentile-bootstrap interval of ``accuracy`` over prompts. per_example, in `rows`' order:
    ``prompt_id``, ``task``, ``answer``, ``generated``, ``correct``.
    """
    from prefopt.data import prompt_messages
    from prefopt.demo_data import is_correct

    if not rows:
        raise ValueError("evaluate_demo_accuracy: no rows")
    for index, row in enumerate(rows):
        missing = [key for key in ("task", "answer", "chosen") if key not in row]
        if missing:
            raise KeyError(f"evaluate_demo_accuracy: row {index} (prompt_id={row.get('prompt_id')!r}) "
                           f"lacks {missing}; is this the demo dataset?")
    replies = generate_replies(
        model, tokenizer, [prompt_messages(row) for row in rows], max_new_tokens=max_new_tokens,
        temperature=0.0, batch_size=batch_size, max_prompt_length=max_prompt_length, desc="demo answers",
    )
    per_example = [
        {"prompt_id": row.get("prompt_id"), "task": row["task"], "answer": row["answer"],
         "generated": reply, "correct": bool(is_correct(row, reply))}
        for row, reply in zip(rows, replies)
    ]
    correct = np.array([record["correct"] for record in per_example], dtype=np.float64)
    by_task: dict[str, list[bool]] = defaultdict(list)
    for record in per_example:
        by_task[record["task"]].append(record["correct"])
    summary: dict = {"n": len(per_example), "accuracy": float(correct.mean())}
    for task in sorted(by_task):
        summary[f"accuracy/{task}"] = float(np.mean(by_task[task]))
        summary[f"n/{task}"] = len(by_task[task])
    summary["ci"] = {"accuracy": list(bootstrap_ci(correct, n_resamples=n_resamples, seed=seed))}
    return summary, per_example
