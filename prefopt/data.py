"""Preference data: loading (with 1-based row locations), validation, the paper's 33/66 split, hashes.

Rows follow UltraFeedback-binarized's conversational schema (docs/architecture.md):
``prompt_id``, ``prompt``, ``chosen`` and ``rejected`` (lists of ``{"role", "content"}``
messages whose last one is the assistant's response), ``score_chosen``, ``score_rejected``;
demo rows add ``task`` and ``answer``. The prompt is every message but the last.

    loaded = read_rows("HuggingFaceH4/ultrafeedback_binarized", split="train_prefs")
    good, report = validate_rows(loaded.rows, locations=loaded.locations, unparseable=loaded.unparseable,
                                 on_bad="drop")
    splits = split_dataset(good, sft_fraction=0.33, eval_size=2000, seed=0)
    manifest = split_manifest(splits, seed=0, source_hash=content_hash(loaded.rows))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from tqdm.auto import tqdm

from prefopt.io import iter_jsonl, read_jsonl, write_json, write_jsonl  # noqa: F401  (JSON lines live in prefopt.io; re-exported)

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("prompt_id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected")
OPTIONAL_FIELDS = ("task", "answer")
SCHEMA_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
SPLIT_NAMES = ("sft", "pref", "eval")
# How many offending rows a validation error message names before "...".
ERROR_EXAMPLES = 10


# ---------------------------------------------------------------------------------------------
# I/O and loading


def _schema_only(row: dict) -> dict:
    """Keep the schema's fields, in the schema's order; other fields (``messages``...) go."""
    return {key: row[key] for key in SCHEMA_FIELDS if key in row} if isinstance(row, dict) else row


@dataclass
class SourceRows:
    """Rows read from one source, each with its location, and the lines that were not JSON.

    A location is ``NAME:N`` with N 1-based: for a JSON-lines file NAME is its path and N the
    line; for a .json or .parquet file N is the row; for a hub id or a dataset folder NAME is
    ``SOURCE[SPLIT]`` and N the row. ``unparseable`` holds ``{"location", "detail", "before_row"}``
    per line that is not JSON (``before_row``: the index of the next parsed row);
    `validate_rows` reports them as bad rows (``invalid_json``), in file order.
    """

    rows: list
    locations: list[str]
    unparseable: list[dict] = field(default_factory=list)


def read_jsonl_rows(path: str | os.PathLike) -> SourceRows:
    """The rows of a JSON-lines file with their ``PATH:LINE`` locations; bad lines are collected, not raised."""
    rows, locations, unparseable = [], [], []
    for line_number, value, error in iter_jsonl(path):
        if error is None:
            rows.append(value)
            locations.append(f"{path}:{line_number}")
        else:
            unparseable.append({"location": f"{path}:{line_number}", "detail": f"not JSON: {error}",
                                "before_row": len(rows)})
    return SourceRows(rows, locations, unparseable)


def read_rows(source: str, split: str = "train_prefs", revision: str | None = None) -> SourceRows:
    """Preference rows, with locations, from a hub id, a local .jsonl/.json/.parquet file, or a `save_to_disk` folder.

    A hub id (``HuggingFaceH4/ultrafeedback_binarized``) and a local snapshot folder of a hub
    dataset go through `datasets.load_dataset(source, split=split)`; ``split`` also picks the
    split of a saved `DatasetDict` or of a .json file holding ``{split: [rows]}``. Only the
    schema's fields are kept; nothing is validated here (see `validate_rows`).
    """
    path = Path(source)
    if path.is_dir():
        loaded = _numbered(_load_directory(path, split), f"{source}[{split}]")
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            loaded = read_jsonl_rows(path)
        elif suffix == ".json":
            loaded = _load_json(path, split)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            loaded = _numbered(pq.read_table(path).to_pylist(), str(source))
        else:
            raise ValueError(f"unsupported data file {source!r}: expected .jsonl, .json or .parquet")
    elif path.suffix.lower() in (".jsonl", ".json", ".parquet") or source.startswith((".", "/")):
        raise FileNotFoundError(f"data source {source!r} does not exist")
    else:
        import datasets

        logger.info("loading %s (split %s) from the Hugging Face hub", source, split)
        loaded = _numbered(datasets.load_dataset(source, split=split, revision=revision).to_list(), f"{source}[{split}]")
    logger.info("loaded %d rows from %s", len(loaded.rows), source)
    loaded.rows = [_schema_only(row) for row in loaded.rows]
    return loaded


def load_ultrafeedback(source: str, split: str = "train_prefs", revision: str | None = None) -> list[dict]:
    """The rows of `read_rows`; a line that is not JSON raises ``ValueError("PATH:LINE: not JSON: ...")``."""
    loaded = read_rows(source, split=split, revision=revision)
    if loaded.unparseable:
        first = loaded.unparseable[0]
        raise ValueError(f"{first['location']}: {first['detail']}")
    return loaded.rows


def dataset_files(folder: str | os.PathLike) -> list[str]:
    """Every file a local dataset folder holds (hidden files and folders, e.g. ``.cache``, left out), sorted.

    The split declares them as inputs, so editing any of them reruns it.
    """
    root = Path(folder)
    return sorted(str(path) for path in root.rglob("*")
                  if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts))


def _numbered(rows: list, name: str) -> SourceRows:
    return SourceRows(rows, [f"{name}:{number}" for number in range(1, len(rows) + 1)])


def _load_json(path: Path, split: str) -> SourceRows:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if text.lstrip().startswith("{"):
            return read_jsonl_rows(path)  # `Dataset.to_json` writes JSON lines under a .json name
        raise ValueError(f"{path}: not JSON: {error}") from error
    name = str(path)
    if isinstance(data, dict):
        if split not in data:
            raise KeyError(f"{path}: no split {split!r}; it has {sorted(data)}")
        data, name = data[split], f"{path}[{split}]"
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of rows, got {type(data).__name__}")
    return _numbered(data, name)


def _load_directory(path: Path, split: str) -> list:
    import datasets

    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise KeyError(f"{path}: no split {split!r}; it has {sorted(loaded)}")
            loaded = loaded[split]
        return loaded.to_list()
    return datasets.load_dataset(str(path), split=split).to_list()


# ---------------------------------------------------------------------------------------------
# Row accessors: what the trainer tokenizes


def prompt_messages(row: dict) -> list[dict]:
    """The prompt: every message of ``chosen`` but the last. Tokenize it with
    ``apply_chat_template(..., add_generation_prompt=True)``."""
    return row["chosen"][:-1]


def chosen_text(row: dict) -> str:
    """The chosen response (content of the last ``chosen`` message), without any end-of-turn token."""
    return row["chosen"][-1]["content"]


def rejected_text(row: dict) -> str:
    """The rejected response (content of the last ``rejected`` message), without any end-of-turn token."""
    return row["rejected"][-1]["content"]


def rows_to_pairs(rows: Iterable[dict]) -> list[dict]:
    """``{"prompt_id", "prompt": [messages], "chosen": str, "rejected": str}`` per row.

    The completion the trainer scores is the response text followed by the chat template's
    end-of-turn token (``prefopt.models.TURN_END_TOKENS``), which the trainer appends, since
    it depends on the tokenizer.
    """
    return [
        {"prompt_id": row["prompt_id"], "prompt": prompt_messages(row),
         "chosen": chosen_text(row), "rejected": rejected_text(row)}
        for row in rows
    ]


def rows_to_sft(rows: Iterable[dict]) -> list[dict]:
    """``{"messages": chosen conversation}`` per row: TRL's conversational SFT format."""
    return [{"messages": row["chosen"]} for row in rows]


# ---------------------------------------------------------------------------------------------
# Validation


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _message_problem(messages: Any, field: str) -> tuple[str, str] | None:
    if not isinstance(messages, list):
        return "wrong_type", f"{field!r} must be a list of messages, got {type(messages).__name__}"
    if not messages:
        return "wrong_type", f"{field!r} is an empty list"
    for position, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            return "malformed_message", f"{field}[{position}] is not a {{'role': str, 'content': str}} message"
    return None


def _structural_problem(row: Any) -> tuple[str, str] | None:
    """The first structural problem of a row as ``(reason, detail)``, or None."""
    if not isinstance(row, dict):
        return "not_a_mapping", f"row is a {type(row).__name__}, not an object"
    missing = [key for key in REQUIRED_FIELDS if key not in row or row[key] is None]
    if missing:
        return "missing_field", f"missing {', '.join(map(repr, missing))}"
    if not isinstance(row["prompt_id"], str):
        return "wrong_type", f"'prompt_id' must be a string, got {type(row['prompt_id']).__name__}"
    if not isinstance(row["prompt"], str):
        return "wrong_type", f"'prompt' must be a string, got {type(row['prompt']).__name__}"
    for key in ("score_chosen", "score_rejected"):
        if not _is_number(row[key]):
            return "wrong_type", f"{key!r} must be a number, got {type(row[key]).__name__}"
    for key in ("chosen", "rejected"):
        problem = _message_problem(row[key], key)
        if problem:
            return problem
    for key in ("chosen", "rejected"):
        if row[key][-1]["role"] != "assistant":
            return "last_not_assistant", f"last {key!r} message is from {row[key][-1]['role']!r}"
    if len(row["chosen"]) < 2:
        return "empty_prompt", "'chosen' has no prompt messages before the response"
    if row["chosen"][:-1] != row["rejected"][:-1]:
        return "prompt_mismatch", "'chosen' and 'rejected' have different prompt messages"
    for key in ("chosen", "rejected"):
        if not row[key][-1]["content"].strip():
            return "empty_response", f"the {key} response is empty"
    if row["chosen"][-1]["content"].strip() == row["rejected"][-1]["content"].strip():
        return "identical_responses", "the chosen and rejected responses are equal"
    return None


def _token_counts(tokenizer, texts: list[str], description: str) -> list[int]:
    counts = []
    batch_size = 256
    for start in tqdm(range(0, len(texts), batch_size), desc=description, disable=len(texts) < 4 * batch_size):
        encoded = tokenizer(texts[start:start + batch_size], add_special_tokens=False)["input_ids"]
        counts.extend(len(ids) for ids in encoded)
    return counts


@dataclass(frozen=True)
class LengthCheck:
    """Prompt-length limits of one model's training stage, with that model's tokenizer.

    ``label`` names the stage in messages and in the report (``"smollm2.align"``); None for
    the one check a training job makes on its own rows.
    """

    label: str | None
    tokenizer: Any
    max_prompt_length: int | None = None
    max_length: int | None = None


def _length_problems(rows: list, problems: dict[int, tuple[str, str]], checks: Sequence[LengthCheck]) -> dict:
    """Add template errors and too-long prompts to `problems`; return the truncated-response count per check."""
    by_tokenizer: dict[int, list[LengthCheck]] = {}
    for check in checks:
        by_tokenizer.setdefault(id(check.tokenizer), []).append(check)
    prompt_lengths: dict[int, dict[int, int]] = {}
    for key, group in by_tokenizer.items():
        tokenizer = group[0].tokenizer
        of = f" of {', '.join(c.label for c in group)}" if group[0].label else ""
        candidates = [index for index in range(len(rows)) if index not in problems]
        texts = []
        for index in candidates:
            try:
                texts.append(tokenizer.apply_chat_template(prompt_messages(rows[index]), tokenize=False,
                                                           add_generation_prompt=True))
            except Exception as error:  # a template may reject a role order, e.g. two user turns
                problems[index] = ("template_error", f"chat template{of} failed: {error}")
                texts.append("")
        prompt_lengths[key] = dict(zip(candidates, _token_counts(tokenizer, texts, "prompt lengths")))
        for check in group:
            at = f" ({check.label})" if check.label else ""
            for index, length in prompt_lengths[key].items():
                if index in problems:
                    continue
                if check.max_prompt_length is not None and length > check.max_prompt_length:
                    problems[index] = ("prompt_too_long",
                                       f"prompt has {length} tokens > max_prompt_length {check.max_prompt_length}{at}")
                elif check.max_length is not None and length >= check.max_length:
                    problems[index] = ("prompt_too_long",
                                       f"prompt has {length} tokens, no room within max_length {check.max_length}{at}")
    truncated = {}
    for key, group in by_tokenizer.items():
        limited = [check for check in group if check.max_length is not None]
        if not limited:
            continue
        kept = [index for index in range(len(rows)) if index not in problems]
        tokenizer = group[0].tokenizer
        chosen = _token_counts(tokenizer, [chosen_text(rows[i]) for i in kept], "chosen lengths")
        rejected = _token_counts(tokenizer, [rejected_text(rows[i]) for i in kept], "rejected lengths")
        for check in limited:
            # +1 for the end-of-turn token the trainer appends
            truncated[check.label or "training"] = sum(
                prompt_lengths[key][index] + max(c, r) + 1 > check.max_length
                for index, c, r in zip(kept, chosen, rejected))
    return truncated


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def validate_rows(
    rows: list,
    *,
    tokenizer=None,
    max_prompt_length: int | None = None,
    max_length: int | None = None,
    length_checks: Sequence[LengthCheck] = (),
    locations: Sequence[str] | None = None,
    unparseable: Sequence[dict] = (),
    on_bad: Literal["error", "drop"] = "error",
) -> tuple[list[dict], dict]:
    """Check every row; return the good rows and a report. ``on_bad`` is the config's ``data.on_bad_rows``.

    Bad rows: lines that were not JSON (``unparseable``, from `read_rows`), rows that are not
    an object, missing or None fields, wrong types, malformed messages, last message not
    from the assistant, no prompt messages, prompts that differ between chosen and rejected,
    empty responses, chosen equal to rejected, and, per length check (``tokenizer`` with
    ``max_prompt_length``/``max_length``, and each of ``length_checks``), a chat template that
    fails or a prompt (with the generation prompt) longer than ``max_prompt_length`` tokens or
    leaving no room for a completion within ``max_length``. Responses longer than
    ``max_length`` are not bad: the trainer truncates them; ``truncated_responses`` counts
    them per check.

    ``locations`` names each row in messages (``raw.jsonl:17``; default ``row N``, 1-based).
    The report holds ``total``, ``good``, ``bad``, ``dropped``, ``on_bad_rows``, ``counts``
    (bad rows per reason), ``checks`` and ``bad_rows`` (``location``, ``prompt_id``,
    ``reason``, ``detail`` each). With ``on_bad="error"`` any bad row raises a one-line
    ValueError naming the first ones; with ``"drop"`` they are dropped, counted and listed,
    and a warning is logged.
    """
    if on_bad not in ("error", "drop"):
        raise ValueError(f"data.on_bad_rows must be 'error' or 'drop', got {on_bad!r}")
    if locations is None:
        locations = [f"row {number}" for number in range(1, len(rows) + 1)]
    elif len(locations) != len(rows):
        raise ValueError(f"{len(locations)} locations for {len(rows)} rows")
    checks = list(length_checks)
    if tokenizer is not None and (max_prompt_length is not None or max_length is not None):
        checks.insert(0, LengthCheck(None, tokenizer, max_prompt_length, max_length))

    problems: dict[int, tuple[str, str]] = {}
    for index, row in enumerate(tqdm(rows, desc="validate rows", disable=len(rows) < 10_000)):
        problem = _structural_problem(row)
        if problem:
            problems[index] = problem
    truncated = _length_problems(rows, problems, checks) if checks else None

    ordered = [((line.get("before_row", 0), 0), {"location": line["location"], "prompt_id": None,
                                                  "reason": "invalid_json", "detail": _one_line(line["detail"])})
               for line in unparseable]
    for index, (reason, detail) in problems.items():
        prompt_id = rows[index].get("prompt_id") if isinstance(rows[index], dict) else None
        ordered.append(((index, 1), {"location": locations[index],
                                     "prompt_id": prompt_id if isinstance(prompt_id, str) else None,
                                     "reason": reason, "detail": _one_line(detail)}))
    bad_rows = [bad for _, bad in sorted(ordered, key=lambda pair: pair[0])]
    total = len(rows) + len(unparseable)
    counts = dict(sorted(Counter(bad["reason"] for bad in bad_rows).items()))
    report = {
        "total": total,
        "good": total - len(bad_rows),
        "bad": len(bad_rows),
        "dropped": len(bad_rows) if on_bad == "drop" else 0,
        "on_bad_rows": on_bad,
        "counts": counts,
        "checks": [{"label": check.label, "max_prompt_length": check.max_prompt_length, "max_length": check.max_length}
                   for check in checks],
        "bad_rows": bad_rows,
    }
    if truncated is not None:
        report["truncated_responses"] = truncated
    if bad_rows:
        examples = "; ".join(f"{bad['location']}: {bad['reason']}: {bad['detail']}" for bad in bad_rows[:ERROR_EXAMPLES])
        more = f"; ... and {len(bad_rows) - ERROR_EXAMPLES} more" if len(bad_rows) > ERROR_EXAMPLES else ""
        kinds = ", ".join(f"{count} {reason}" for reason, count in counts.items())
        if on_bad == "error":
            raise ValueError(f"{len(bad_rows)} of {total} rows are bad ({kinds}): {examples}{more}; "
                             "fix them or set data.on_bad_rows: drop")
        logger.warning("data.on_bad_rows: drop: dropped %d of %d rows (%s): %s%s",
                       len(bad_rows), total, kinds, examples, more)
    good_rows = [row for index, row in enumerate(rows) if index not in problems]
    return good_rows, report


# ---------------------------------------------------------------------------------------------
# Split and hashes


def _prompt_key(row: dict) -> str:
    return json.dumps(prompt_messages(row), sort_keys=True, ensure_ascii=False)


def _take_groups(groups: list[list[dict]], target: int) -> tuple[list[list[dict]], list[list[dict]]]:
    """Whole groups from the front until they hold at least ``target`` rows, and the rest."""
    taken, count = 0, 0
    while count < target and taken < len(groups):
        count += len(groups[taken])
        taken += 1
    return groups[:taken], groups[taken:]


def split_dataset(rows: list[dict], *, sft_fraction: float = 0.33, eval_size: int | float, seed: int = 0) -> dict[str, list]:
    """The paper's split (section 4.1): a held-out eval set, then SFT / preference at 33 / 67.

    Rows are grouped by their prompt messages, so one prompt never lands in two splits. The
    groups are shuffled with ``random.Random(seed)``; the eval set takes whole groups from
    the front until it holds ``eval_size`` rows (an int) or that fraction of all rows (a float
    in (0, 1)), more only when the last group has several rows. Of the rest, SFT takes whole
    groups until it holds ``sft_fraction`` of them and preference gets everything else (the
    paper's "33% / 66%" leaves no row unused). The result is deterministic given the same rows
    in the same order and the same seed; reordering the input changes it. Each split keeps
    the shuffled order.
    """
    if not 0 < sft_fraction < 1:
        raise ValueError(f"sft_fraction must be in (0, 1), got {sft_fraction}")
    if isinstance(eval_size, bool) or not isinstance(eval_size, (int, float)):
        raise ValueError(f"eval_size must be an int or a float fraction, got {eval_size!r}")
    if isinstance(eval_size, float):
        if not 0 < eval_size < 1:
            raise ValueError(f"a fractional eval_size must be in (0, 1), got {eval_size}")
        eval_target = round(eval_size * len(rows))
    else:
        if not 0 <= eval_size < len(rows):
            raise ValueError(f"eval_size must be in [0, {len(rows)}) for {len(rows)} rows, got {eval_size}")
        eval_target = eval_size

    groups_by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        groups_by_prompt.setdefault(_prompt_key(row), []).append(row)
    groups = list(groups_by_prompt.values())  # first-appearance order, then a seeded shuffle
    random.Random(seed).shuffle(groups)

    eval_groups, rest = _take_groups(groups, eval_target)
    rest_size = sum(len(group) for group in rest)
    sft_groups, pref_groups = _take_groups(rest, round(sft_fraction * rest_size))
    splits = {
        "sft": [row for group in sft_groups for row in group],
        "pref": [row for group in pref_groups for row in group],
        "eval": [row for group in eval_groups for row in group],
    }
    logger.info("split %d rows (%d prompts): %s", len(rows), len(groups),
                {name: len(split) for name, split in splits.items()})
    return splits


def content_hash(rows: Iterable[dict]) -> str:
    """sha256 over a canonical JSON line per row (sorted keys, no spaces), in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def split_manifest(splits: dict[str, list], seed: int, source_hash: str, settings: dict | None = None) -> dict:
    """Seed, sizes and content hashes of each split and of all of them, plus the source's hash.

    ``sha256["all"]`` hashes the per-split hashes in the order sft, pref, eval, so two runs
    with equal manifests produced the same rows in the same splits and order. ``settings``
    (split options) is recorded as given.
    """
    unknown = set(splits) - set(SPLIT_NAMES)
    if unknown:
        raise KeyError(f"unknown split names {sorted(unknown)}; expected {SPLIT_NAMES}")
    split_hashes = {name: content_hash(splits.get(name, [])) for name in SPLIT_NAMES}
    overall = hashlib.sha256("".join(f"{name}:{split_hashes[name]}\n" for name in SPLIT_NAMES).encode()).hexdigest()
    manifest = {
        "seed": seed,
        "source_sha256": source_hash,
        "sizes": {name: len(splits.get(name, [])) for name in SPLIT_NAMES},
        "sha256": {**split_hashes, "all": overall},
    }
    if settings is not None:
        manifest["settings"] = settings
    return manifest
