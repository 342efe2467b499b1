"""Write a JSON payload given on the command line to a file, atomically (used for run configs and manifests).

    python workflow/scripts/write_json.py --json '{"method": "slime"}' --out results/m/runs/x.json
"""

import argparse
import json
import os
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="the payload, as JSON text")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    payload = json.loads(args.json)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
