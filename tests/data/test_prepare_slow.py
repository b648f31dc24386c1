"""Issue 22's acceptance, end to end (slow): ``lm prepare`` killed with SIGKILL half-way and
run again gives the uninterrupted manifest digest; training from the shards killed and
re-run ends at the uninterrupted val/loss; DDP on two CPU processes trains one record."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LINES

LM = str(Path(sys.executable).parent / "lm")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_documents(path: Path, n: int) -> Path:
    """``n`` JSON-lines documents of 1 to 40 lines of varied text."""
    with path.open("w") as f:
        for i in range(n):
            text = "\n".join(f"{LINES[(i * 7 + j) % len(LINES)]} [{i}:{j}]" for j in range(1 + i % 40))
            f.write(json.dumps({"text": text}) + "\n")
    return path


def lm_prepare(source: Path, out: Path, wait: bool = True):
    command = [LM, "prepare", f"source.path={source}", f"out={out}", "tokenizer.name=bpe",
               "tokenizer.vocab_size=512", "tokenizer_sample_mb=1", "chunk_mb=0.5",
               "num_workers=2", "shard_tokens=1000000", "val_fraction=0.02"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE if wait else subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
    if wait:
        out_text, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out_text
    return proc


@pytest.mark.slow
def test_prepare_killed_half_way_then_run_again_gives_the_uninterrupted_digest(tmp_path):
    source = write_documents(tmp_path / "docs.jsonl", 60_000)  # about 40 MB, 80 chunks
    lm_prepare(source, tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    proc = lm_prepare(source, tmp_path / "killed", wait=False)
    parts = tmp_path / "killed" / ".parts"
    deadline = time.time() + 300
    while len(list(parts.glob("[0-9]*.json"))) < 10:
        assert proc.poll() is None and time.time() < deadline, "it ended before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its workers, mid-chunk
    proc.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists()
    lm_prepare(source, tmp_path / "killed")
    killed = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert killed["digest"] == whole["digest"]
    for shard in killed["shards"]["train"] + killed["shards"]["val"]:
        assert (tmp_path / "killed" / shard["file"]).read_bytes() == \
            (tmp_path / "whole" / shard["file"]).read_bytes()


def lm_train(cwd: Path, data: Path, *overrides: str, wait: bool = True):
    command = [LM, "train", "data=prepared", f"data.path={data}", "model=tiny",
               "trainer.max_steps=200", "trainer.val_check_interval=50", "model.dropout=0.1",
               "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
               "sample.max_new_tokens=0", "tracking.checkpoint_every_n_steps=10", *overrides]
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE if wait else subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, text=True, env=ENV)
    if wait:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    return proc


def records(registry: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in registry.glob("**/run.json")]
    return [r for r in found if not r.get("same_as")]


@pytest.mark.slow
def test_training_from_shards_killed_and_rerun_equals_an_uninterrupted_run_also_under_ddp(tmp_path):
    data = tmp_path / "prepared"
    lm_prepare(write_documents(tmp_path / "docs.jsonl", 3000), data)
    lm_train(tmp_path, data, "tracking.registry_dir=whole", "hydra.run.dir=whole/${now:%H-%M-%S-%f}")
    killed = ("tracking.registry_dir=killed", "hydra.run.dir=killed/${now:%H-%M-%S-%f}")
    proc = lm_train(tmp_path, data, *killed, wait=False)
    deadline = time.time() + 300
    while not (run_json := next((tmp_path / "killed").glob("*/run.json"), None)) or \
            json.loads(run_json.read_text()).get("steps", 0) < 60:
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lm_train(tmp_path, data, *killed)
    (whole,), (resumed,) = records(tmp_path / "whole"), records(tmp_path / "killed")
    assert resumed["status"] == "completed" and len(resumed["resumed_from"]) == 1
    assert resumed["metrics"]["final"] == whole["metrics"]["final"]
    assert resumed["hash"] == whole["hash"]

    lm_train(tmp_path, data, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
             "trainer.max_steps=50", "tracking.registry_dir=ddp", "hydra.run.dir=ddp/run")
    (ddp,) = records(tmp_path / "ddp")  # one record: rank 1 wrote none
    assert ddp["status"] == "completed" and ddp["world_size"] == 2
    assert ddp["tokens_seen"] == 50 * 2 * 12 * 64  # steps * ranks * batch * block_size
