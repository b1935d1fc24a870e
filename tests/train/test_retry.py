"""retry.factor reaches the rule's resource, the job's out-of-memory line and the trainer alike."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from selectflow.data.records import read_dataset, write_jsonl
from selectflow.runtime.oom import attempt_size, scaled_resource

# A train job as Snakemake runs it: run_job around the stage function, the micro-batch taken
# from the rule's resource; the first optimizer step then runs out of memory.
OOM_JOB = textwrap.dedent("""
    import json, sys
    from types import SimpleNamespace
    import torch
    from selectflow.runtime.jobs import JobSettings, RetryConfig, run_job
    from selectflow.train import train

    model, data, out, log, cfg, factor, micro, attempt = sys.argv[1:]
    sm = SimpleNamespace(
        log=[log], rule="train",
        resources={"attempt": int(attempt), "micro_batch_size": int(micro), "gpu": 0},
        params=SimpleNamespace(job=JobSettings(RetryConfig(float(factor), True, None), gpu_id=None)),
    )

    def oom(step):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    run_job(sm, lambda: train(model, data, out, json.loads(cfg), micro_batch_size=sm.resources["micro_batch_size"],
                              attempt=sm.resources["attempt"], on_step=oom), size_name="micro_batch_size")
""")


@pytest.mark.parametrize(("base", "factor"), [(18, 3), (18, 2), (7, 1.5)])
def test_next_attempt_size_follows_from_the_current_one(base, factor):
    resource = scaled_resource(base, factor)
    for attempt in range(1, 6):
        now = resource(None, attempt)
        assert now == attempt_size(base, attempt, factor) >= 1
        assert attempt_size(now, 2, factor) == resource(None, attempt + 1)
    if float(factor).is_integer():  # the closed form of an integer factor
        assert [resource(None, a) for a in (1, 2, 3)] == [max(1, base // int(factor) ** k) for k in range(3)]


def test_retry_factor_3_gives_one_micro_batch_to_resource_log_and_trainer(demo_pool, demo_model, tmp_path):
    data = tmp_path / "selected.jsonl"
    write_jsonl(data, [{**r["record"], "sample_id": r["sample_id"]} for r in read_dataset(demo_pool, "demo")[:36]])
    factor, configured = 3, 18
    resource = scaled_resource(configured, factor)
    assert [resource(None, a) for a in (1, 2, 3)] == [18, 6, 2]  # the default factor 2 would give 18, 9, 4
    cfg = {
        "micro_batch_size": configured,
        "gradient_accumulation_steps": 1,
        "max_length": 32,
        "max_steps": 1,
        "save_every": 0,
        "device": "cpu",
    }
    log = tmp_path / "train.log"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            OOM_JOB,
            str(demo_model),
            str(data),
            str(tmp_path / "out"),
            str(log),
            json.dumps(cfg),
            str(factor),
            str(resource(None, 2)),
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = log.read_text()
    assert proc.returncode == 3, text[-3000:]  # EXIT_OOM: Snakemake retries
    # the trainer trained with the resource's micro-batch, the effective batch kept
    assert "attempt 2: micro-batch 6 (configured 18) x 3 accumulation steps = effective batch 18" in text
    assert "out of memory at step 1 with micro-batch 6 (attempt 2)" in text
    # the job's line names the resource's size now and the resource's size of the next attempt
    line = re.search(r"OUT OF MEMORY in rule train \(attempt 2\).*", text).group(0)
    assert "micro_batch_size=6; next attempt uses micro_batch_size=2." in line
    assert "next attempt uses micro_batch_size=2." in proc.stderr  # also on the console
