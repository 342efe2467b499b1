"""`precision: auto`: what it resolves to on faked CPUs and GPUs, where it resolves, the start-up line,
the warning for an explicit bf16 without native bf16, and that a job never resumes another precision."""

from __future__ import annotations

import json
import logging

import pytest

from prefopt import plan, precision
from prefopt.job import (IDENTITY_FILE, TRAINER_STATE_NAME, clear_checkpoints, job_identity, resolve_job_precision,
                         select_checkpoint)
from run_configs import experiment_config

AVX2_FLAGS = {"fpu", "sse2", "avx", "avx2", "fma"}
AVX512_BF16_FLAGS = AVX2_FLAGS | {"avx512f", "avx512bw", "avx512_bf16"}


def fake_cpu(monkeypatch, native: bool, why: str | None = None):
    why = why or ("native bf16 on this CPU: avx512_bf16" if native else "no native bf16 on this CPU: AVX2")
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda *args, **kwargs: (native, why))


@pytest.mark.parametrize(("flags", "environ", "native", "why"), [
    (AVX2_FLAGS, {}, False, "no native bf16 on this CPU: AVX2"),
    (AVX2_FLAGS | {"avx512f"}, {}, False, "no native bf16 on this CPU: AVX512"),
    (AVX512_BF16_FLAGS, {}, True, "native bf16 on this CPU: avx512_bf16"),
    (AVX2_FLAGS | {"amx_bf16"}, {}, True, "native bf16 on this CPU: amx_bf16"),
    ({"fp", "asimd", "bf16"}, {}, True, "native bf16 on this CPU: bf16"),
    ({"fp", "asimd"}, {}, False, "no native bf16 on this CPU: NEON"),
    (AVX512_BF16_FLAGS, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False,
     "this CPU has avx512_bf16, but ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN off bf16"),
    (AVX512_BF16_FLAGS, {"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}, True, "native bf16 on this CPU: avx512_bf16"),
])
def test_cpu_capability_from_flags(flags, environ, native, why):
    assert precision.cpu_native_bf16(flags, environ) == (native, why)


def test_cpu_flags_read_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert precision.cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(arm) == {"fp", "asimd", "bf16", "i8mm"}
    assert precision.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize("native", [False, True])
def test_auto_resolves_at_planning_into_every_run_config_and_name(monkeypatch, native):
    fake_cpu(monkeypatch, native)
    config = experiment_config(precision="auto", evaluation={"precision": "auto"})
    lines = plan.resolve_precisions(config, jobs_run_here=True)
    expected = "bf16" if native else "fp32"
    reason = "native bf16 on this CPU: avx512_bf16" if native else "no native bf16 on this CPU: AVX2"
    assert lines == [f"precision: auto -> {expected} ({reason})",
                     f"evaluation.precision: auto -> {expected} ({reason})"]
    assert config["precision"] == config["evaluation"]["precision"] == expected
    made = plan.make_plan(config)
    assert {run["training"]["precision"] for run in made.runs.values()} == {expected}
    explicit = plan.make_plan(experiment_config(precision=expected))
    assert set(made.runs) == set(explicit.runs)  # the same names as the resolved value spelled out


def test_the_two_resolutions_are_different_runs(monkeypatch):
    names = []
    for native in (False, True):
        fake_cpu(monkeypatch, native)
        config = experiment_config(precision="auto")
        plan.resolve_precisions(config, jobs_run_here=True)
        names.append(set(plan.make_plan(config).runs))
    assert names[0].isdisjoint(names[1])


@pytest.mark.parametrize(("device", "jobs_run_here", "where"), [
    ("cuda", True, "device cuda"), ("cpu", False, "jobs run elsewhere"), ("cuda", False, "device cuda")])
def test_auto_waits_for_the_jobs_node_on_gpus_and_clusters(monkeypatch, device, jobs_run_here, where):
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda *a, **k: pytest.fail("the planning node was probed"))
    config = experiment_config(precision="auto", device=device)
    lines = plan.resolve_precisions(config, jobs_run_here=jobs_run_here)
    assert lines == [f"precision: auto -> resolved by each job on its own node ({where})"]
    assert config["precision"] == "auto"
    assert plan.accelerate_mixed_precision(config) == f"$(python -m prefopt.precision --device {device} --accelerate)"


def test_explicit_bf16_without_native_bf16_warns_with_the_measured_slowdown(monkeypatch):
    fake_cpu(monkeypatch, False)
    monkeypatch.setattr(precision, "bf16_slowdown", lambda **kwargs: 44.0)
    config = experiment_config(precision="bf16", evaluation={"precision": "fp32"})
    assert plan.resolve_precisions(config, jobs_run_here=True) == [
        "warning: precision: bf16 requested, but no native bf16 on this CPU: AVX2; a bf16 matmul measured 44x "
        "slower than fp32 here (set precision: auto or fp32 to run at this CPU's speed)"]
    assert config["precision"] == "bf16"  # a warning, not an error: bf16 numerics may be wanted
    fake_cpu(monkeypatch, True)
    assert plan.resolve_precisions(experiment_config(precision="bf16"), jobs_run_here=True) == []


def test_bf16_slowdown_is_measured():
    assert precision.bf16_slowdown(size=64, repeats=1) > 0


@pytest.mark.parametrize(("native", "printed"), [(False, ["fp32", "no"]), (True, ["bf16", "bf16"])])
def test_the_node_side_command(monkeypatch, capsys, native, printed):
    monkeypatch.setattr(precision, "cuda_native_bf16", lambda: (native, "fake GPU"))
    for args, expected in ((["--device", "cuda"], printed[0]), (["--device", "cuda", "--accelerate"], printed[1])):
        assert precision.main(args) == 0
        assert capsys.readouterr().out.strip() == expected


@pytest.mark.parametrize("native", [False, True])
def test_a_job_resolves_auto_on_its_node_and_its_identity_records_it(monkeypatch, native):
    fake_cpu(monkeypatch, native)
    config = experiment_config(precision="auto")
    run_config = next(iter(plan.make_plan(config).runs.values()))
    assert run_config["training"]["precision"] == "auto"
    resolved = resolve_job_precision(run_config)
    assert resolved["training"]["precision"] == ("bf16" if native else "fp32")
    assert run_config["training"]["precision"] == "auto"  # the file's config is not changed in place
    assert job_identity(resolved, {})["precision"] == resolved["training"]["precision"]


def test_a_checkpoint_of_another_precision_is_never_resumed(tmp_path, caplog):
    run_config = next(iter(plan.make_plan(experiment_config(precision="fp32")).runs.values()))
    bf16_identity = job_identity({**run_config, "training": {**run_config["training"], "precision": "bf16"}}, {})
    fp32_identity = job_identity(run_config, {})
    assert bf16_identity["id"] != fp32_identity["id"]
    checkpoint = tmp_path / "checkpoint-8"
    checkpoint.mkdir()
    (checkpoint / IDENTITY_FILE).write_text(json.dumps(bf16_identity))
    (checkpoint / TRAINER_STATE_NAME).write_text(json.dumps({"global_step": 8}))
    resume, stale = select_checkpoint(tmp_path, fp32_identity["id"])
    assert resume is None and stale == [checkpoint]
    with caplog.at_level(logging.WARNING):
        clear_checkpoints(tmp_path, resume, stale, fp32_identity["id"], "fp32")
    assert not checkpoint.exists()
    assert "checkpoint-8 was trained in bf16; this job trains in fp32" in caplog.text
