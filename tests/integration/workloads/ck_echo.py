"""Test workload: every rank writes its argv and chosen env vars to ranks-echo/rank-N.json,
then optionally sleeps (for cancel tests). Run by torchrun through clusterkit's launch layer."""

import json
import os
import sys
import time
from pathlib import Path

out = Path(os.environ["CLUSTERKIT_RUN_DIR"]) / "echo"
out.mkdir(exist_ok=True)
rank = int(os.environ["RANK"])
record = {
    "argv": sys.argv[1:],
    "env": {k: os.environ.get(k) for k in ("MY_VAR", "NCCL_DEBUG", "NCCL_P2P_DISABLE", "WORLD_SIZE", "MASTER_PORT")},
    "pid": os.getpid(),
}
tmp = out / f".rank-{rank}.tmp"
tmp.write_text(json.dumps(record))
tmp.rename(out / f"rank-{rank}.json")
if "--sleep" in sys.argv:
    time.sleep(float(sys.argv[sys.argv.index("--sleep") + 1]))
