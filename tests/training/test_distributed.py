"""Data parallelism: each rank's batches, the plan rank 0 hands the other ranks, and (slow)
DDP runs on two CPU processes with gloo: issue 13's acceptance."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lm.data.datamodule import _TrainBatches, _ValBatches
from lm.data.tokens import VAL_STREAM, get_batch
from lm.errors import ConfigError
from lm.training.distributed import PLAN_ENV, checked_plan, children_follow, encode_plan
from lm.training.registry import Plan
from lm.training.run import check_world_size, progress
from tests.conftest import ROOT

IDS = np.arange(5000, dtype=np.uint16) % 97  # (N,) token ids


# --- each rank's batches -----------------------------------------------------------

def test_ranks_draw_different_windows_reproducibly():
    for step in (0, 1, 7):
        x0, _ = get_batch(IDS, 16, 4, seed=3, step=step, rank=0, world_size=2)
        x1, _ = get_batch(IDS, 16, 4, seed=3, step=step, rank=1, world_size=2)
        assert not torch.equal(x0, x1)
        again, _ = get_batch(IDS, 16, 4, seed=3, step=step, rank=1, world_size=2)
        assert torch.equal(x1, again)  # a pure function of (seed, step, rank, world size)


def test_global_batch_of_two_ranks_is_one_process_batch_of_twice_the_size():
    x0, y0 = get_batch(IDS, 16, 4, seed=3, step=5, rank=0, world_size=2)
    x1, y1 = get_batch(IDS, 16, 4, seed=3, step=5, rank=1, world_size=2)
    x, y = get_batch(IDS, 16, 8, seed=3, step=5)
    assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_one_process_draws_what_it_always_did():
    offsets = np.random.default_rng([3, 0, 5]).integers(0, len(IDS) - 16, size=4)  # by hand
    x, y = get_batch(IDS, 16, 4, seed=3, step=5)
    assert torch.equal(x, torch.from_numpy(IDS[offsets[:, None] + np.arange(16)].astype(np.int64)))
    assert torch.equal(y, torch.from_numpy(IDS[offsets[:, None] + np.arange(1, 17)].astype(np.int64)))


def test_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size=2\)"):
        get_batch(IDS, 16, 4, seed=3, step=0, rank=2, world_size=2)


def test_train_stream_of_a_rank_continues_from_the_resumed_step():
    stream = iter(_TrainBatches(IDS, 16, 4, seed=3, start=10, rank=1, world_size=2))
    for step in (10, 11):
        assert torch.equal(next(stream)[0], get_batch(IDS, 16, 4, 3, step, rank=1, world_size=2)[0])


def test_validation_batches_are_split_over_ranks_each_once():
    whole = [_ValBatches(IDS, 16, 4, seed=3, n=5)[i][0] for i in range(5)]
    shares = [_ValBatches(IDS, 16, 4, seed=3, n=5, rank=r, world_size=2) for r in (0, 1)]
    assert [len(s) for s in shares] == [3, 2]
    got = [shares[i % 2][i // 2][0] for i in range(5)]  # batch i lives on rank i % 2
    assert all(torch.equal(a, b) for a, b in zip(got, whole))
    assert torch.equal(whole[4], get_batch(IDS, 16, 4, 3, 4, VAL_STREAM)[0])
    with pytest.raises(IndexError):
        shares[1][2]


# --- what the run records ---------------------------------------------------------

def test_tokens_seen_count_every_rank(make_cfg):
    cfg = make_cfg("trainer.devices=2", "trainer.accumulate_grad_batches=3")
    seen = progress(SimpleNamespace(global_step=50), cfg)
    assert seen == {"steps": 50, "tokens_seen": 50 * 2 * 4 * 64 * 3}  # steps * W * B * T * accum


def test_several_processes_need_a_command_and_a_validation_batch_each(make_cfg):
    with pytest.raises(ConfigError) as err:
        check_world_size(make_cfg("trainer.devices=3", "data.eval_iters=2"))
    assert str(err.value) == ("data.eval_iters=2 is invalid with 3 processes (trainer.devices * "
                              "trainer.num_nodes): must be >= 3, each rank validates its own share "
                              "of the batches")
    with pytest.raises(ConfigError, match=r"2 processes need a command \(lm train"):
        check_world_size(make_cfg("trainer.devices=2"))


# --- the plan rank 0 hands the others ------------------------------------------------

def test_plan_round_trip_and_mismatched_config(tmp_path):
    plan = Plan("ab" * 32, tmp_path / "job", tmp_path / "run", tmp_path / "run/last.ckpt",
                {"status": "interrupted"}, 41)
    followed = checked_plan(json.loads(json.dumps(encode_plan(plan))), "ab" * 32)
    assert followed == Plan(**{**plan.__dict__, "leader": False})
    with pytest.raises(ConfigError, match="this rank composed config cdcdcdcd but rank 0 composed abababab"):
        checked_plan(encode_plan(plan), "cd" * 32)
    with pytest.raises(ConfigError, match="rank 0 stopped: registry unwritable"):
        checked_plan({"error": "registry unwritable"}, "ab" * 32)


def test_children_get_the_plan_and_the_job_command_while_rank_0_fits(make_cfg, tmp_path):
    plan = Plan("ab" * 32, tmp_path / "job", tmp_path / "job")
    argv = list(sys.argv)
    with children_follow(make_cfg("trainer.devices=2"), plan, ["model=tiny", "seed=3"]):
        assert json.loads(os.environ[PLAN_ENV])["run_dir"] == str(tmp_path / "job")
        assert sys.argv == [str(ROOT / "lm" / "train.py"), "model=tiny", "seed=3"]
        assert sys.modules["__main__"].__spec__ is None
        os.environ["LOCAL_RANK"] = "0"  # as Lightning's launcher sets it
    assert PLAN_ENV not in os.environ and "LOCAL_RANK" not in os.environ and sys.argv == argv
    with children_follow(make_cfg(), plan, ["model=tiny"]):  # one process: nothing to start
        assert PLAN_ENV not in os.environ and sys.argv == argv


# --- DDP on two CPU processes (slow) -----------------------------------------------

def lm_train(cwd: Path, *overrides: str, wait: bool = True):
    command = [str(Path(sys.executable).parent / "lm"), "train", "model=tiny", "data=text_file",
               f"data.path={cwd / 'corpus.txt'}", f"paths.data_dir={cwd / 'data'}",
               "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
               "sample.max_new_tokens=0", "trainer.max_steps=50", "trainer.log_every_n_steps=1",
               "trainer.val_check_interval=25", *overrides]
    output = subprocess.PIPE if wait else subprocess.DEVNULL  # nobody reads a killed run's pipe
    proc = subprocess.Popen(command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


def records(registry: Path) -> list[tuple[Path, dict]]:
    found = [(p.parent, json.loads(p.read_text())) for p in registry.glob("**/run.json")]
    return [(d, r) for d, r in found if not r.get("same_as")]


DDP = ("trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu")


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_is_one_run_of_the_global_batch(tmp_path, corpus):
    from tests.conftest import curves

    (tmp_path / "corpus.txt").write_text(corpus.read_text())
    lm_train(tmp_path, *DDP, "hydra.run.dir=ddp")
    (ddp_dir, ddp), = records(tmp_path / "ddp")
    assert ddp["status"] == "completed" and ddp["world_size"] == 2
    assert ddp["steps"] == 50 and ddp["tokens_seen"] == 50 * 2 * 12 * 64  # steps * W * B * T
    assert sorted(p.name for p in (ddp_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(ddp_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 50
    lm_train(tmp_path, "hydra.run.dir=one")  # one process, batch 12
    lm_train(tmp_path, "data.batch_size=24", "data.eval_batch_size=12", "hydra.run.dir=double")  # one process, batch 24, the same val batches
    (one_dir, one), = records(tmp_path / "one")
    (double_dir, double), = records(tmp_path / "double")
    assert one["hash"] != ddp["hash"]  # the world size is in the hash
    ddp_curve, one_curve, double_curve = (curves(d)["train/loss"] for d in (ddp_dir, one_dir, double_dir))
    assert ddp_curve[1] != pytest.approx(one_curve[1], abs=1e-4)  # rank 1 drew other windows
    # Rank 0 and 1 together drew the one-process batch of 24: the same mean loss and
    # gradient, up to float rounding in the all-reduce.
    assert ddp_curve[1] == pytest.approx(double_curve[1], abs=1e-5)
    assert ddp["metrics"]["final"]["val/loss"] == pytest.approx(double["metrics"]["final"]["val/loss"], abs=1e-4)


@pytest.mark.slow
def test_ranks_started_together_by_torchrun_follow_rank_0(tmp_path, corpus):
    (tmp_path / "corpus.txt").write_text(corpus.read_text())
    lm_train(tmp_path, *DDP, "hydra.run.dir=ddp", "tracking.registry_dir=ddp")
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
               str(ROOT / "lm" / "train.py"), "model=tiny", "data=text_file",
               f"data.path={tmp_path / 'corpus.txt'}", f"paths.data_dir={tmp_path / 'data'}",
               "trainer.enable_progress_bar=false", "sample.max_new_tokens=0", "trainer.max_steps=50",
               "trainer.log_every_n_steps=1", "trainer.val_check_interval=25", *DDP,
               "hydra.run.dir=torchrun", "tracking.registry_dir=torchrun"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    (_, launched), = records(tmp_path / "ddp")
    (_, together), = records(tmp_path / "torchrun")  # one record: rank 1 wrote none
    assert together["hash"] == launched["hash"] and together["status"] == "completed"
    assert together["metrics"]["final"] == launched["metrics"]["final"]


@pytest.mark.slow
def test_ddp_killed_mid_way_resumes_to_the_uninterrupted_result(tmp_path, corpus):
    (tmp_path / "corpus.txt").write_text(corpus.read_text())
    whole = ("tracking.registry_dir=whole", "hydra.run.dir=whole/${now:%H-%M-%S-%f}")
    lm_train(tmp_path, *DDP, *whole, "tracking.checkpoint_every_n_steps=5")
    killed = ("tracking.registry_dir=killed", "hydra.run.dir=killed/${now:%H-%M-%S-%f}")
    proc = lm_train(tmp_path, *DDP, *killed, "tracking.checkpoint_every_n_steps=5", wait=False)
    deadline = time.time() + 300
    while not (run_json := next((tmp_path / "killed").glob("*/run.json"), None)) or \
            json.loads(run_json.read_text()).get("steps", 0) < 20:
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # rank 0, the process the user started
    proc.wait()
    out = lm_train(tmp_path, *DDP, *killed, "tracking.checkpoint_every_n_steps=5")
    assert "resume" in out
    (_, resumed), = records(tmp_path / "killed")
    (_, uninterrupted), = records(tmp_path / "whole")
    assert resumed["status"] == "completed" and len(resumed["resumed_from"]) == 1
    assert resumed["steps"] == 50 and resumed["tokens_seen"] == uninterrupted["tokens_seen"]
    assert resumed["metrics"]["final"] == uninterrupted["metrics"]["final"]


@pytest.mark.slow
def test_a_sweep_of_ddp_jobs_runs_each_on_its_own_ranks(tmp_path, corpus):
    (tmp_path / "corpus.txt").write_text(corpus.read_text())
    lm_train(tmp_path, "-m", *DDP, "seed=1,2", "trainer.max_steps=10", "hydra.sweep.dir=sweep")
    jobs = records(tmp_path / "sweep")
    assert sorted((r["status"], r["steps"], r["world_size"]) for _, r in jobs) == [("completed", 10, 2)] * 2
    assert len({r["hash"] for _, r in jobs}) == 2


def test_a_lost_peer_is_told_apart_from_other_errors():
    from lm.commands.train import peer_lost

    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:20881: "
                        "Connection reset by peer. This is typically caused by a remote worker")
    assert peer_lost(gloo) == "gloo: connection reset by peer"
    assert peer_lost(torch.distributed.DistBackendError("NCCL communicator was aborted")) == \
        "DistBackendError: NCCL communicator was aborted"
    assert peer_lost(RuntimeError("shape mismatch")) is None
