"""Rule grow: hold ``alloc_mb`` MiB of resident memory for a moment, then write
{"attempt": N, "mem_mb": M, "held": bytes} so the test can tell which attempt succeeded."""

import json
import time

from selectflow.runtime.fsutil import atomic_open

sm = snakemake  # noqa: F821 - injected by Snakemake
# a repeated non-zero byte: every page is written, so all of it is resident
block = b"\x01" * (sm.params.alloc_mb * 2**20)
# slurmstepd samples RSS every second (JobAcctGatherFrequency=task=1)
time.sleep(3)
with atomic_open(sm.output[0], "w") as fh:
    json.dump({"attempt": sm.resources.attempt, "mem_mb": sm.resources.mem_mb, "held": len(block)}, fh)
