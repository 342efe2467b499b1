"""Arena-Hard v2 as upstream computes it: answer metadata, style control, and failed judgments in scores and tables."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json

import numpy as np
import pytest

from prefopt import tables
from prefopt.evaluation import arena_hard
from prefopt.evaluation.mtbench import score_mtbench

MARKDOWN = """# Title
## Section
Some **bold** text and __underlined__ text, **twice** on a line.
1. first
2. second
  - nested item
* star item
+ plus item
```python
# a comment, not a header
- not a list item
**not bold**
```
### After the code
Inline `code` stays.
"""


def test_answer_metadata_counts_as_add_markdown_info():
    meta = arena_hard.answer_metadata(MARKDOWN)
    assert list(meta) == ["token_len", "header_count", "list_count", "bold_count"]
    # Outside the code block: h1, h2, h3; two ordered and three unordered items; three ** and one __.
    assert meta["header_count"] == {"h1": 1, "h2": 1, "h3": 1, "h4": 0, "h5": 0, "h6": 0}
    assert meta["list_count"] == {"ordered": 2, "unordered": 3}
    assert meta["bold_count"] == {"**": 2, "__": 1}
    # token_len counts the whole answer, code included.
    assert meta["token_len"] == len(arena_hard._token_encoding().encode(MARKDOWN, disallowed_special=()))


def test_code_block_removal_keeps_upstreams_quirk():
    # remove_pattern deletes each captured block content wherever it occurs (the same text
    # outside the block too), and the fences stay.
    text = "```\n# x\n```\n# x\n# y\n"
    assert arena_hard.remove_code_blocks(text) == "``````# y\n"
    # "# y" now follows the fences on their line: no header at a line start is left.
    assert arena_hard.answer_metadata(text)["header_count"]["h1"] == 0


def test_token_len_uses_the_genuine_gpt4o_encoding():
    # The o200k_base file bpe_openai ships is byte-identical to the one tiktoken downloads
    # (tiktoken_ext.openai_public checks this sha256).
    data = gzip.decompress((importlib.resources.files("bpe_openai") / "data" / "o200k_base.tiktoken.gz").read_bytes())
    assert hashlib.sha256(data).hexdigest() == "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
    assert arena_hard._token_encoding().encode("Hello, world!") == [13225, 11, 2375, 0]
    assert arena_hard.answer_metadata("<|endoftext|>")["token_len"] > 1  # special tokens count as text


def _battles(name: str, extra_tokens: float, rng, n: int = 40):
    """A model whose answers are longer than the baseline's by up to `extra_tokens`, judged by a
    judge whose only preference is length: at equal length, a coin flip."""
    rows, answers = [], []
    for i in range(n):
        diff = extra_tokens * rng.random()
        win = rng.random() < 1 / (1 + np.exp(-diff / 100))
        games = [{"score": "B>A"}, {"score": "A>B"}] if win else [{"score": "A>B"}, {"score": "B>A"}]
        rows.append({"uid": f"q{i}", "category": "hard_prompt", "judge": "j", "model": name, "baseline": "base",
                     "games": games})
        answers.append({"uid": f"q{i}", "metadata": {"token_len": int(300 + diff), "header_count": {"h1": i % 2},
                                                      "list_count": {"ordered": 0}, "bold_count": {"**": 0}}})
    return rows, answers


def test_style_control_moves_a_length_biased_score_towards_parity():
    rng = np.random.default_rng(0)
    verbose, concise = _battles("verbose", 400, rng), _battles("concise", 0, rng)
    baseline = [{"uid": f"q{i}", "metadata": {"token_len": 300, "header_count": {"h1": i % 2},
                                              "list_count": {"ordered": 0}, "bold_count": {"**": 0}}}
                for i in range(40)]
    plain = {name: arena_hard.score_arena_hard(rows, n_bootstrap=20)["score"]
             for name, (rows, _) in (("verbose", verbose), ("concise", concise))}
    controlled = arena_hard.style_control_scores([verbose, concise], baseline, n_bootstrap=20)
    scores = {name: summary["score"] for name, summary in controlled["models"].items()}
    # The judge rewards length: the verbose model wins more plainly; controlled for length, the
    # gap between the two models shrinks, the verbose one falls and the concise one rises.
    assert plain["verbose"] > plain["concise"]
    assert scores["verbose"] < plain["verbose"] and scores["concise"] > plain["concise"]
    assert scores["verbose"] - scores["concise"] < plain["verbose"] - plain["concise"]
    assert controlled["feature_coefficients"]["length"] > 0
    # Constant columns (no list items, no bold anywhere) are left out instead of dividing by 0.
    assert controlled["dropped_features"] == ["list", "bold"]
    again = arena_hard.style_control_scores([verbose, concise], baseline, n_bootstrap=20)
    assert again["models"] == controlled["models"]  # seeded


def test_style_features_as_show_result():
    model = {"token_len": 300, "header_count": {"h1": 2, "h2": 1}, "list_count": {"ordered": 0, "unordered": 4},
             "bold_count": {"**": 1, "__": 0}}
    base = {"token_len": 100, "header_count": {"h1": 0}, "list_count": {"ordered": 1}, "bold_count": {"**": 0}}
    features = arena_hard.style_features(model, base)
    assert features[0] == pytest.approx((300 - 100) / 400)
    dm, db = 3 / 301, 0 / 101
    assert features[1] == pytest.approx((dm - db) / (dm + db + 1))
    dm, db = 4 / 301, 1 / 101
    assert features[2] == pytest.approx((dm - db) / (dm + db + 1))


def _arena_row(uid, scores):
    return {"uid": uid, "category": "hard_prompt", "judge": "j", "model": "m-sft", "baseline": "base",
            "games": [{"score": score} for score in scores]}


def test_all_failed_judgments_score_none_not_a_crash():
    result = arena_hard.score_arena_hard([_arena_row("a", [None, None]), _arena_row("b", [None, "A>B"])])
    assert result["score"] is None and result["n_failed"] == 3 and result["n_valid"] == 1
    mt = score_mtbench([{"question_id": 81, "model": "m", "judge": ["j", "single-v1"], "score": -1, "turn": t}
                        for t in (1, 2)])
    assert mt["score"]["overall"] is None and mt["n_failed"] == 2


def _write(path, payload):
    path.write_text(json.dumps(payload))
    return str(path)


def test_tables_footnote_failed_judgments_and_show_a_dash_when_all_failed(tmp_path):
    mt_half = _write(tmp_path / "mt_half.json", {"score": {"turn1": 8.0, "turn2": 8.5, "overall": 8.25},
                                                 "n_valid": 2, "n_failed": 2, "judge_model": "j"})
    mt_none = _write(tmp_path / "mt_none.json", {"score": {"turn1": None, "turn2": None, "overall": None},
                                                 "n_valid": 0, "n_failed": 4, "judge_model": "j"})
    ah_ok = _write(tmp_path / "ah_ok.json", {"score": 60.0, "ci_low": -2.0, "ci_high": 2.5, "n_valid": 4,
                                             "n_failed": 0, "judge_model": "j", "model_id": "m-sft"})
    ah_none = _write(tmp_path / "ah_none.json", {"score": None, "ci_low": None, "ci_high": None, "n_valid": 0,
                                                 "n_failed": 4, "judge_model": "j", "model_id": "m-slime"})
    sc = _write(tmp_path / "sc.json", {"models": {"m-sft": {"score": 55.5, "ci_low": -3.0, "ci_high": 3.0},
                                                  "m-slime": {"score": None, "ci_low": None, "ci_high": None}}})
    sft = {"mt_bench": mt_half, "arena_hard": ah_ok, "arena_hard_style_control": sc}
    slime = {"mt_bench": mt_none, "arena_hard": ah_none, "arena_hard_style_control": sc}
    manifest = {"judge": "j", "not_run": {}, "tables": [{
        "name": "table3", "kind": "methods", "method": None, "parameter": None, "rows": [
            {"model": "m", "model_label": "M", "label": "SFT", "role": "sft", "value": None, "run": "sft",
             "results": sft, "runs": ["sft"], "seed_results": [sft]},
            {"model": "m", "model_label": "M", "label": "+ SLIME (ours)", "role": "reference", "value": None,
             "run": "slime", "results": slime, "runs": ["slime"], "seed_results": [slime]}]}]}
    table = tables.build_table(manifest, "table3")
    markdown, csv_text = tables.render_markdown(table), tables.render_csv(table)
    sft_line = next(line for line in markdown.splitlines() if "| SFT |" in line)
    slime_line = next(line for line in markdown.splitlines() if "SLIME" in line)
    assert "8.25<sup>" in sft_line and "60.0 |" in sft_line and "55.5 |" in sft_line
    assert slime_line.count("—<sup>") >= 4  # MT-Bench, Arena-Hard, its CI, SC, SC CI
    assert "some MT-Bench judgments failed" in markdown and "every Arena-Hard judgment failed" in markdown
    assert "Arena-Hard SC" in markdown and "style control" in markdown
    tex = tables.render_latex(table)
    assert r"8.25\textsuperscript{" in tex
    header, sft_row, slime_row = csv_text.splitlines()
    columns = header.split(",")
    sft = dict(zip(columns, sft_row.split(",")))
    assert sft["n_mt_bench_valid"] == "2.0" and sft["n_mt_bench_failed"] == "2.0"
    assert sft["arena_hard_sc"] == "55.5" and sft["n_arena_hard_failed"] == "0.0"
    slime = dict(zip(columns, slime_row.split(",")))
    assert slime["mt_bench"] == "" and slime["n_mt_bench_failed"] == "4.0" and slime["n_arena_hard_failed"] == "4.0"


def test_mtbench_sampling_uses_the_models_generation_defaults(tiny_model_dir):
    # FastChat sets only do_sample, temperature and max_new_tokens; top_k / top_p are the model's.
    # With the checkpoint's top_k = 1, sampling at T = 0.7 can only pick the greedy token.
    from prefopt.evaluation.generation import generate_replies
    from prefopt.models import load_for_inference

    model, tokenizer = load_for_inference(tiny_model_dir)
    model.generation_config.top_k = 1
    conversations = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Count to three."}]]
    greedy = generate_replies(model, tokenizer, conversations, max_new_tokens=6, temperature=0.0)
    fastchat = generate_replies(model, tokenizer, conversations, max_new_tokens=6, temperature=0.7,
                                model_sampling_defaults=True, seed=3)
    assert fastchat == greedy
    # Without the model's defaults top_k is off, and a random model samples something else.
    explicit = generate_replies(model, tokenizer, conversations, max_new_tokens=6, temperature=0.7, seed=3)
    assert explicit != greedy
