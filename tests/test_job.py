"""prefopt.job: run identity, resume only under one's own identity, non-finite steps, atomic publish.

Kills are simulated by a callback that raises after a step, before that step's checkpoint."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import json
import logging

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from prefopt.guards import NonFiniteStepError
from prefopt.io import write_jsonl
from prefopt.job import IDENTITY_FILE, content_identity, job_identity, preference_stage, run_job, select_checkpoint, sft_stage
from prefopt.run_config import RunConfig, RunConfigError
from run_configs import checked_run_config, complete_run_config
from test_trainer import make_rows

SMALL = {"learning_rate": 1e-3, "max_steps": 4, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
         "save_steps": 2, "max_length": 128, "max_prompt_length": 96}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "modules_to_save": None}


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "pref.jsonl"
    write_jsonl(path, make_rows())  # 8 short arithmetic/sorting pairs
    return path


def align_config(precision=None, probes=None, **training):
    return checked_run_config("slime", training={**SMALL, **training}, lora=LORA, precision=precision, probes=probes)


def sft_config(precision=None, **training):
    return checked_run_config("sft", training={**SMALL, **training}, lora=LORA, precision=precision)


class CrashAfter(TrainerCallback):
    """Stands in for a kill: the job dies after step `step`, before that step could be checkpointed."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"simulated kill after step {self.step}")


class InfiniteGradientAt(TrainerCallback):
    """Multiplies one trainable parameter's gradient by inf during step `step` (the loss stays finite)."""

    def __init__(self, step):
        self.step, self.armed, self.hooked = step, False, False

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.armed = state.global_step + 1 == self.step
        if not self.hooked:
            parameter = next(p for p in model.parameters() if p.requires_grad)
            parameter.register_hook(lambda grad: grad * float("inf") if self.armed else grad)
            self.hooked = True


def with_callback(stage, callback):
    def build(*args):
        trainer = stage.build(*args)
        trainer.add_callback(callback)
        return trainer

    return dataclasses.replace(stage, build=build)


def run(stage, config, model_dir, train_file, root, name="run"):
    return run_job(stage, config, model_dir=model_dir, train_path=train_file, out_dir=root / name,
                   checkpoint_dir=root / f"{name}-checkpoints")


def steps(out_dir):
    return [json.loads(line)["step"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]


# ------------------------------------------------------------------------------------------ identity


def test_identity_covers_settings_and_input_content(tmp_path, train_file):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\x00" * 16)
    base = job_identity(align_config(), {"model": model, "train": train_file})
    assert base == job_identity(align_config(), {"model": model, "train": train_file})
    # The RunConfig hashes exactly the file's JSON object, as the dict read from it did.
    raw = complete_run_config("slime", training=SMALL, lora=LORA)
    assert base == job_identity(raw, {"model": model, "train": train_file})
    assert base["run_config"] == hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
    assert base["id"] != job_identity(align_config(learning_rate=2e-3), {"model": model, "train": train_file})["id"]
    (model / "weights.bin").write_bytes(b"\x01" + b"\x00" * 15)
    assert base["id"] != job_identity(align_config(), {"model": model, "train": train_file})["id"]
    before = content_identity(train_file)
    train_file.write_text(train_file.read_text().splitlines()[0] + "\n")  # a row deleted
    assert content_identity(train_file) != before


def test_select_checkpoint_resumes_only_complete_checkpoints_of_its_identity(tmp_path):
    def checkpoint(step, identity, complete=True):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        if identity:
            (path / IDENTITY_FILE).write_text(json.dumps({"id": identity}))
        if complete:
            (path / "trainer_state.json").write_text("{}")
        return path

    own_2, own_4 = checkpoint(2, "mine"), checkpoint(4, "mine")
    foreign, incomplete, unlabelled = checkpoint(6, "theirs"), checkpoint(8, "mine", complete=False), checkpoint(10, None)
    resume, stale = select_checkpoint(tmp_path, "mine")
    assert resume == own_4
    assert sorted(stale) == sorted([foreign, incomplete, unlabelled])
    assert own_2 not in stale
    assert select_checkpoint(tmp_path / "missing", "mine") == (None, [])


def test_run_config_must_be_complete():
    config = complete_run_config("slime")
    assert RunConfig.from_dict(config).to_dict() == config
    del config["training"]["weight_decay"]
    with pytest.raises(RunConfigError, match=r"'training\.weight_decay' is missing"):
        RunConfig.from_dict(config)
    config = complete_run_config("slime")
    del config["loss_kwargs"]["p"]
    with pytest.raises(RunConfigError, match=r"'loss_kwargs\.p' is missing"):
        RunConfig.from_dict(config)
    with pytest.raises(RunConfigError, match=r"'data\.on_bad'"):
        RunConfig.from_dict({**complete_run_config("slime"), "data": {"on_bad": "drop"}})


def test_run_job_takes_a_checked_run_config(tmp_path, train_file):
    with pytest.raises(TypeError, match="RunConfig"):
        run_job(preference_stage(), complete_run_config("slime"), model_dir=tmp_path, train_path=train_file,
                out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt")


# ---------------------------------------------------------------------------------------- alignment


def test_align_resumes_its_own_checkpoint_to_the_same_weights(tiny_model_dir, train_file, tmp_path, caplog):
    config = align_config()
    straight = run(preference_stage(), config, tiny_model_dir, train_file, tmp_path, "straight")
    assert straight["resumed_from"] is None and straight["global_step"] == 4
    assert not (tmp_path / "straight-checkpoints").exists()  # published runs leave no state to resume

    with pytest.raises(KeyboardInterrupt):
        run(with_callback(preference_stage(), CrashAfter(3)), config, tiny_model_dir, train_file, tmp_path)
    assert not (tmp_path / "run").exists()
    assert json.loads((tmp_path / "run-checkpoints" / "checkpoint-2" / IDENTITY_FILE).read_text())["id"] \
        == job_identity(config, {"model": tiny_model_dir, "train": train_file})["id"]
    with caplog.at_level(logging.INFO, logger="prefopt.job"):
        resumed = run(preference_stage(), config, tiny_model_dir, train_file, tmp_path)
    assert "resuming from checkpoint-2" in caplog.text
    assert resumed["resumed_from"] == "checkpoint-2" and resumed["identity"] == straight["identity"]
    assert steps(tmp_path / "run") == [1, 2, 3, 4]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "straight" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert json.loads((tmp_path / "run" / "identity.json").read_text())["id"] == resumed["identity"]


def test_align_never_resumes_a_checkpoint_of_other_settings(tiny_model_dir, train_file, tmp_path, caplog):
    with pytest.raises(KeyboardInterrupt):
        run(with_callback(preference_stage(), CrashAfter(3)), align_config(), tiny_model_dir, train_file, tmp_path)
    changed = align_config(learning_rate=5e-3)
    with caplog.at_level(logging.INFO, logger="prefopt.job"):
        summary = run(preference_stage(), changed, tiny_model_dir, train_file, tmp_path)
    lines = [r.getMessage() for r in caplog.records if "not resumable" in r.getMessage()]
    assert len(lines) == 1 and "checkpoint-2" in lines[0]
    assert summary["resumed_from"] is None and steps(tmp_path / "run") == [1, 2, 3, 4]
    assert summary["run_config"]["training"]["learning_rate"] == 5e-3
    fresh = run(preference_stage(), changed, tiny_model_dir, train_file, tmp_path, "fresh")
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "fresh" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert fresh["identity"] == summary["identity"]


@pytest.mark.parametrize("stage_factory, make_config", [(preference_stage, align_config), (sft_stage, sft_config)],
                         ids=["align", "sft"])
def test_the_job_prepares_its_metrics_file_once(stage_factory, make_config, tiny_model_dir, train_file, tmp_path,
                                                monkeypatch):
    import prefopt.checkpoints
    import prefopt.job
    import prefopt.trainer

    calls = []

    def counted(*args):
        calls.append(args)
        return prefopt.checkpoints.prepare_metrics_file(*args)

    for module in (prefopt.job, prefopt.trainer):
        monkeypatch.setattr(module, "prepare_metrics_file", counted)
    summary = run(stage_factory(), make_config(max_steps=2), tiny_model_dir, train_file, tmp_path)
    assert len(calls) == 1 and summary["global_step"] == 2 and steps(tmp_path / "run") == [1, 2]


@pytest.mark.parametrize("stage_factory, make_config", [(preference_stage, align_config), (sft_stage, sft_config)],
                         ids=["align", "sft"])
def test_non_finite_gradient_stops_before_the_update(stage_factory, make_config, tiny_model_dir, train_file,
                                                     tmp_path):
    config = make_config(save_steps=1)
    stage = with_callback(stage_factory(), InfiniteGradientAt(3))
    with pytest.raises(NonFiniteStepError, match=r"global step 3: loss terms finite, gradient norm non-finite"):
        run(stage, config, tiny_model_dir, train_file, tmp_path)
    checkpoints = sorted(p.name for p in (tmp_path / "run-checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]  # step 3 was neither applied nor saved
    for file in (tmp_path / "run-checkpoints").rglob("*.safetensors"):
        for name, tensor in load_file(file).items():
            assert torch.isfinite(tensor).all(), f"{file.parent.name}/{name}"
    assert not (tmp_path / "run").exists()
    # A rerun of the same settings resumes the last finite checkpoint and meets the same step again.
    with pytest.raises(NonFiniteStepError, match="global step 3"):
        run(with_callback(stage_factory(), InfiniteGradientAt(3)), config, tiny_model_dir, train_file, tmp_path)


def test_sft_resumes_and_publishes_a_merged_model(tiny_model_dir, train_file, tmp_path):
    from prefopt.models import load_for_inference

    with pytest.raises(KeyboardInterrupt):
        run(with_callback(sft_stage(), CrashAfter(3)), sft_config(), tiny_model_dir, train_file, tmp_path)
    summary = run(sft_stage(), sft_config(), tiny_model_dir, train_file, tmp_path)
    assert summary["resumed_from"] == "checkpoint-2" and summary["merged_lora"]
    assert steps(tmp_path / "run") == [1, 2, 3, 4]
    straight = run(sft_stage(), sft_config(), tiny_model_dir, train_file, tmp_path, "straight")
    assert straight["resumed_from"] is None
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == (tmp_path / "straight" / "model.safetensors").read_bytes()
    model, tokenizer = load_for_inference(tmp_path / "run")
    assert tokenizer.chat_template is not None
    # Other SFT settings: never the old checkpoint.
    with pytest.raises(KeyboardInterrupt):
        run(with_callback(sft_stage(), CrashAfter(3)), sft_config(), tiny_model_dir, train_file, tmp_path, "other")
    changed = run(sft_stage(), sft_config(learning_rate=2e-3), tiny_model_dir, train_file, tmp_path, "other")
    assert changed["resumed_from"] is None and changed["run_config"]["training"]["learning_rate"] == 2e-3
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != (tmp_path / "run" / "model.safetensors").read_bytes()


def test_run_config_to_training_arguments():
    from prefopt.trainer import PreferenceConfig
    from prefopt.training_args import to_training_arguments

    config = checked_run_config("slime", loss_kwargs={"p": 2.0})
    args = to_training_arguments(config, "ckpt", PreferenceConfig)
    assert args.loss_type == "slime" and args.loss_kwargs["p"] == 2.0 and args.loss_kwargs == dict(config.loss_kwargs)
    assert args.max_grad_norm == 0.0  # null -> no clipping (paper, section 4.1)
    assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing
    assert args.save_total_limit == 2 and args.lr_scheduler_type == "linear" and args.learning_rate == 5e-7


def test_full_finetune_dpo_with_held_out_rows(tiny_model_dir, train_file, tmp_path):
    config = checked_run_config("dpo", training={**SMALL, "learning_rate": 1e-5, "max_steps": 2,
                                                 "gradient_accumulation_steps": 2, "save_steps": 50}, lora=None)
    summary = run_job(preference_stage(), config, model_dir=tiny_model_dir, train_path=train_file,
                      out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", eval_path=train_file)
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()
    assert summary["reference_forward_calls"] == 2 * 2 + 1  # 2 steps x 2 micro-batches, + 1 eval batch of 8 (<= 16)
    assert {"eval_loss", "eval_rewards/accuracies", "eval_logps/chosen"} <= set(summary["eval_metrics"])
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["total"] == 8 and report["bad"] == 0


def test_probes_score_the_same_pairs_at_step_0_and_every_k_steps_across_a_resume(tiny_model_dir, train_file, tmp_path):
    from prefopt.checkpoints import read_metric_records
    from prefopt.probes import probe_records

    config = align_config(probes={"every_steps": 2, "pairs": 3})
    with pytest.raises(KeyboardInterrupt):
        run_job(with_callback(preference_stage(), CrashAfter(3)), config, model_dir=tiny_model_dir,
                train_path=train_file, out_dir=tmp_path / "run", checkpoint_dir=tmp_path / "ckpt", probe_path=train_file)
    summary = run_job(preference_stage(), config, model_dir=tiny_model_dir, train_path=train_file,
                      out_dir=tmp_path / "run", checkpoint_dir=tmp_path / "ckpt", probe_path=train_file)
    assert summary["resumed_from"] == "checkpoint-2"
    probes = probe_records(read_metric_records(tmp_path / "run" / "metrics.jsonl"))
    assert [record["step"] for record in probes] == [0, 2, 4]
    assert all(len(record["probe"]["chosen"]) == 3 for record in probes)
    first, last = probes[0]["probe"], probes[-1]["probe"]
    assert first["margin_mean"] == pytest.approx(first["chosen_logp_mean"] - first["rejected_logp_mean"], abs=1e-6)
    assert last["chosen"] != first["chosen"]  # the model moved between step 0 and step 4
    with pytest.raises(ValueError, match="no probe rows"):
        run_job(preference_stage(), config, model_dir=tiny_model_dir, train_path=train_file,
                out_dir=tmp_path / "other", checkpoint_dir=tmp_path / "ckpt2")


def test_kept_checkpoints_of_a_published_job_are_never_resumed(tiny_model_dir, train_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFOPT_KEEP_CHECKPOINTS", "1")
    first = run(preference_stage(), align_config(), tiny_model_dir, train_file, tmp_path)
    kept = tmp_path / "run-checkpoints"
    assert (kept / "published.json").exists() and (kept / "checkpoint-4").exists()
    assert select_checkpoint(kept, first["identity"]) == (None, sorted(kept.glob("checkpoint-*"), reverse=True))
    monkeypatch.delenv("PREFOPT_KEEP_CHECKPOINTS")
    again = run(preference_stage(), align_config(), tiny_model_dir, train_file, tmp_path)
    assert again["resumed_from"] is None and not kept.exists()


@pytest.mark.parametrize("stage_factory, make_config", [(preference_stage, align_config), (sft_stage, sft_config)],
                         ids=["align", "sft"])
def test_bf16_jobs_train_fp32_master_weights(stage_factory, make_config, tiny_model_dir, train_file, tmp_path):
    """precision bf16: autocast over a bf16 base with fp32 trained parameters; finite, published weights."""
    config = make_config(max_steps=2, precision="bf16")
    summary = run(stage_factory(), config, tiny_model_dir, train_file, tmp_path)
    assert summary["precision"] == "bf16" and summary["global_step"] == 2
    assert summary["run_config"] == config.to_dict()
    assert all(math.isfinite(record["loss"]) for record in
               (json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
               if "loss" in record)
