"""Write a JSON payload given on the command line to a file, atomically (used for run configs and manifests).

    python workflow/scripts/write_json.py --json '{"method": "slime"}' --out results/m/runs/x.json
"""

import argparse
import json

from prefopt.io import write_json


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="the payload, as JSON text")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    write_json(args.out, json.loads(args.json), sort_keys=True)


if __name__ == "__main__":
    main()
