"""The probe a preflight job runs on the node:

    python -m clusterkit.preflight.probe_main --result PATH [--port P] [--output-dir D]

It collects every fact (``probes.collect_facts``) and writes them to PATH atomically. It
exits 0 whenever the facts were written, whatever they say (a node without a driver is a
finding, not a crash); checks run on the submit host.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clusterkit.preflight.probe_main")
    parser.add_argument("--result", type=Path, required=True, help="Where to write the facts (JSON).")
    parser.add_argument("--port", type=int, default=None, help="Rendezvous port to probe.")
    parser.add_argument("--output-dir", default=None, help="Directory whose free disk space matters.")
    parser.add_argument("--no-import-check", action="store_true",
                        help="Do not import flash-attn / xformers / apex / colossalai in subprocesses.")
    ns = parser.parse_args(argv)

    from clusterkit.launch.records import atomic_write_json
    from clusterkit.preflight.probes import Host, collect_facts

    facts = collect_facts(Host.for_machine(os.environ), output_dir=ns.output_dir, port=ns.port,
                          import_check=not ns.no_import_check)
    atomic_write_json(ns.result, facts)
    nvidia = facts.get("nvidia") or {}
    torch = facts.get("torch") or {}
    print(json.dumps({
        "host": (facts.get("host") or {}).get("hostname"),
        "driver": nvidia.get("driver_version") or nvidia.get("error"),
        "gpus": len(nvidia.get("gpus") or []),
        "torch": torch.get("version"),
        "torch_cuda": torch.get("cuda"),
        "facts": str(ns.result),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
