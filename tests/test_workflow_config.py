"""Config validation and dry runs: bad settings fail before any job starts, naming the key."""

from __future__ import annotations

import copy
import json
import re

import pytest

from workflow_utils import copy_workflow, job_counts, snakemake, tiny_config, write_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


@pytest.fixture(scope="module")
def base_config(tiny_model_dir):
    return tiny_config({"tiny-a": tiny_model_dir, "tiny-b": tiny_model_dir})


def dry_run(workdir, config, name="test-config.yaml"):
    path = write_config(workdir / name, config)
    return snakemake(workdir, "-n", "--cores", "2", "--configfile", str(path), check=False)


def test_paper_config_dry_run_counts(workdir):
    result = snakemake(workdir, "-n", "--cores", "8", "--configfile", "configs/paper.yaml")
    counts = job_counts(result.stdout)
    # 3 models x (DPO, SimPO, SLIME) + 4 component ablations + 4 extra p values on Gemma.
    assert counts["sft"] == 3
    assert counts["align"] == 3 * 3 + 4 + 4
    assert counts["prepare_model"] == 3
    # base, SFT and every aligned run are evaluated, on the offline benchmark.
    assert counts["evaluate"] == 3 + 3 + 17
    # MT-Bench and Arena-Hard answers, judgments and scores for every evaluated model.
    assert counts["generate_answers"] == counts["judge_answers"] == counts["score_judgments"] == 2 * 23
    assert counts["baseline_answers"] == 1
    assert counts["tables"] == 1 and counts["figures"] == 1


def test_embedded_default_dry_run(workdir):
    result = snakemake(workdir, "-n", "--cores", "2")
    counts = job_counts(result.stdout)
    # DPO, SimPO, SLIME, StaPO + 4 component ablations + 5 p values, of which p=2.5 is the main SLIME run.
    assert counts["align"] == 4 + 4 + 4
    assert counts["evaluate"] == 2 + 12  # one job per model: offline and demo generation from one load
    assert "generate_answers" not in counts  # no judge configured: nothing judged, nothing stood in for it


def test_auto_precision_prints_its_resolution_once_and_names_the_runs(workdir, base_config):
    """`precision: auto` resolves at planning on this CPU: one start-up line, the resolved value in the run configs."""
    from prefopt.precision import resolve

    config = copy.deepcopy(base_config)
    config["precision"] = "auto"
    result = dry_run(workdir, config)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = resolve("auto", "cpu")
    assert result.stderr.count(f"precision: auto -> {expected.precision} ({expected.reason})") == 1

    def run_configs(output):
        return sorted(re.findall(r"--out (results/\S+/runs/\S+\.json)", output))

    explicit = copy.deepcopy(config)
    explicit["precision"] = expected.precision
    spelled_out = dry_run(workdir, explicit, name="explicit.yaml")
    assert "precision: auto" not in spelled_out.stderr
    # The same run names as the resolved value written out: `auto` is resolved into every run config.
    assert run_configs(result.stdout) and run_configs(result.stdout) == run_configs(spelled_out.stdout)


def test_auto_precision_waits_for_the_jobs_node_when_jobs_may_run_elsewhere(workdir, base_config):
    """Planned with `--jobs` and no `--cores` (what a cluster executor gets), `auto` stays in the run configs
    for each job to resolve on its node: other run names than any resolved precision's."""
    config = copy.deepcopy(base_config)
    config["precision"] = "auto"
    path = write_config(workdir / "auto-jobs.yaml", config)
    result = snakemake(workdir, "-n", "--jobs", "2", "--configfile", str(path))
    assert "precision: auto -> resolved by each job on its own node (jobs run elsewhere)" in result.stderr
    per_job = set(re.findall(r"--out (results/\S+/runs/\S+\.json)", result.stdout))
    for resolved in ("fp32", "bf16"):
        explicit = copy.deepcopy(config)
        explicit["precision"] = resolved
        names = set(re.findall(r"--out (results/\S+/runs/\S+\.json)", dry_run(workdir, explicit, "x.yaml").stdout))
        assert per_job - {"results/tiny-a/runs/sft.json", "results/tiny-b/runs/sft.json"} and per_job & names == {
            "results/tiny-a/runs/sft.json", "results/tiny-b/runs/sft.json"}


def test_training_and_evaluation_precision_are_separate(workdir, base_config):
    """`precision` reaches the model preparation and the run configs; `evaluation.precision` the evaluations."""
    config = copy.deepcopy(base_config)
    config["precision"] = "bf16"
    config["evaluation"]["precision"] = "fp32"
    result = dry_run(workdir, config)
    commands = [line for line in result.stdout.splitlines() if line.startswith("Shell command:")]
    evaluations = [line for line in commands if "workflow/scripts/evaluate.py" in line]
    preparations = [line for line in commands if "workflow/scripts/prepare_model.py" in line]
    assert evaluations and all("--precision fp32" in line for line in evaluations)
    assert preparations and all("--precision bf16" in line for line in preparations)


def test_same_settings_are_one_run(workdir, base_config):
    config = copy.deepcopy(base_config)
    config["ablations"]["sweeps"] = {"p": [2.5]}  # the default p: the main SLIME run, not a second job
    counts = job_counts(dry_run(workdir, config).stdout)
    assert counts["align"] == 2 * 4 + 4


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda c: c["methods"].update(foo={}), "foo"),
        (lambda c: c["ablations"].update(sweeps={"p": [0.0]}), "ablations.sweeps.p[0]"),
        (lambda c: c["methods"].update(slime={"hard_margin": -1.0}), "hard_margin"),
        (lambda c: c["methods"].update(slime={"soft_margin": -0.5}), "soft_margin"),
        (lambda c: c["models"]["tiny-a"].update(source={"path": "/nonexistent/model"}), "models.tiny-a.source.path"),
        (lambda c: c["models"]["tiny-a"].update(source={"gguf_package": "no_such_pkg", "gguf_file": "x.gguf"}),
         "models.tiny-a.source.gguf_package"),
        (lambda c: c["ablations"].update(model="missing-model"), "ablations.model"),
        (lambda c: c["sft"].update(learning_rate=-1), "learning_rate"),
        (lambda c: c.update(unknown_top_level=1), "unknown_top_level"),
        (lambda c: c["data"].update(on_bad_rows="ignore"), "on_bad_rows"),
    ],
)
def test_bad_config_names_the_key(workdir, base_config, edit, expected):
    config = copy.deepcopy(base_config)
    edit(config)
    result = dry_run(workdir, config)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert expected in output, output[-3000:]
    assert "Job stats" not in output  # nothing was scheduled


@pytest.mark.parametrize(
    "edit, line",
    [
        (lambda c: c["lora"].update(r=0), "config error: lora.r: 0 is less than the minimum of 1"),
        (lambda c: c["methods"].update(slme={}), "config error: unknown method 'slme'; did you mean 'slime'?"),
        (lambda c: c["ablations"].update(sweeps={"detla": [0.5]}),
         "config error: ablations.sweeps.detla: 'slime' has no hyperparameter 'detla'; did you mean 'delta'?"),
        (lambda c: c["ablations"].update(p_sweep=[1.0]),
         "config error: unknown key 'p_sweep' in ablations; did you mean 'sweeps'?"),
    ],
)
def test_schema_error_is_the_only_line_printed(workdir, base_config, edit, line):
    config = copy.deepcopy(base_config)
    edit(config)
    result = dry_run(workdir, config)
    assert result.returncode == 1
    printed = [text for text in (result.stdout + result.stderr).splitlines()
               if not text.startswith("Using workflow specific profile")]  # Snakemake's own first line
    assert printed == [line]


def test_an_unset_judge_key_is_one_warning_and_a_set_one_is_declared(workdir, base_config, monkeypatch):
    config = copy.deepcopy(base_config)
    config["judge"] = {"base_url": "http://127.0.0.1:9", "model": "j", "api_key_env": "PREFOPT_TEST_UNSET_KEY"}
    monkeypatch.delenv("PREFOPT_TEST_UNSET_KEY", raising=False)
    result = dry_run(workdir, config)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if "PREFOPT_TEST_UNSET_KEY" in line]
    assert warnings == ["warning: judge.api_key_env: PREFOPT_TEST_UNSET_KEY is not set; each judge job stops at its "
                        "start until it is"]
    monkeypatch.setenv("PREFOPT_TEST_UNSET_KEY", "secret-value")
    result = dry_run(workdir, config)
    assert result.returncode == 0 and "PREFOPT_TEST_UNSET_KEY" not in result.stderr
    common = (workdir / "Snakefile").read_text()
    assert "envvars:" in common and "get_envvars()" in common  # declared, so remote and cluster jobs get it


def test_sweeps_dry_run_shares_the_default_run(workdir, base_config):
    config = copy.deepcopy(base_config)
    config["ablations"]["components"] = []
    config["ablations"]["sweeps"] = {"p": [1.0], "delta": [0.5, 2.0], "simpo.beta": [1.0]}
    result = dry_run(workdir, config)
    counts = job_counts(result.stdout)
    # 2 models x 4 methods, then p=1, delta=0.5 and 2.0, SimPO beta=1 on tiny-a: the defaults are the main runs.
    assert counts["align"] == 2 * 4 + 4
    for name in ("table5", "sweep_delta", "sweep_simpo_beta"):
        assert f"results/tables/{name}.md" in result.stdout


def test_split_checks_prompt_lengths_before_sft_and_reruns_on_dataset_edits(tmp_path, base_config):
    """A too-long prompt stops the DAG at the split (before any SFT), naming its line; editing the
    local dataset file reruns the split."""
    from prefopt.demo_data import build_demo_dataset

    workdir = copy_workflow(tmp_path / "workflow")
    rows = build_demo_dataset(60, seed=0)
    rows[9]["chosen"][0]["content"] = rows[9]["rejected"][0]["content"] = "word " * 400
    dataset = tmp_path / "preferences.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = copy.deepcopy(base_config)
    config["data"] = {"source": "ultrafeedback", "ultrafeedback": {"dataset": str(dataset)}, "sft_fraction": 0.33,
                      "eval_size": 8, "seed": 0, "on_bad_rows": "error"}
    config["evaluation"]["benchmarks"] = ["offline"]
    config["models"]["tiny-b"]["enabled"] = False  # one model to prepare is enough
    path = write_config(workdir / "uf.yaml", config)

    failed = snakemake(workdir, "--cores", "2", "--configfile", str(path), check=False)
    assert failed.returncode != 0
    log = (workdir / "logs" / "split_data.log").read_text()
    assert f"{dataset}:10: prompt_too_long: prompt has " in log
    assert "> max_prompt_length 64 (tiny-a.sft)" in log and "fix them or set data.on_bad_rows: drop" in log
    assert not list((workdir / "results").glob("*/sft"))

    config["data"]["on_bad_rows"] = "drop"
    write_config(path, config)
    snakemake(workdir, "results/data/split/split.json", "--cores", "2", "--configfile", str(path))
    report = json.loads((workdir / "results" / "data" / "split" / "split.json").read_text())["validation"]
    assert [(bad["location"], bad["reason"]) for bad in report["bad_rows"]] == [(f"{dataset}:10", "prompt_too_long")]
    assert "split_data" not in job_counts(dry_run(workdir, config, "uf.yaml").stdout)

    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows[:-5]))  # rows deleted
    assert job_counts(dry_run(workdir, config, "uf.yaml").stdout)["split_data"] == 1


def test_lint_is_clean(workdir):
    result = snakemake(workdir, "--lint")
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr
