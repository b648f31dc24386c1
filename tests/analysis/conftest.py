"""Fabricated run dirs for the analysis tests: config.yaml, run.json and TensorBoard
events as ``lm train`` writes them (``make_run``; ``lr_sweep``: a sweep dir of them), and
``lm compare`` run on them (``run_main``); nothing trains."""

import copy
import csv
import json
import math

import pytest
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from lm.analysis.compare.runs import ELAPSED_TAG
from lm.commands.compare import main
from lm.training.hashing import config_hash

# A small config shaped like the resolved conf/train.yaml.
BASE_CONFIG = {
    "seed": 0,
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "dropout": 0.0},
    "data": {"source": "shakespeare", "tokenizer": "char", "batch_size": 4},
    "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3,
                  "betas": [0.9, 0.99]},
    "trainer": {"max_steps": 30, "val_check_interval": 10, "log_every_n_steps": 10},
    "paths": {"data_dir": "data", "output_dir": "somewhere"},
}


def make_config(changes: dict | None = None) -> dict:
    """BASE_CONFIG with ``{"dotted.key": value}`` changes applied."""
    cfg = copy.deepcopy(BASE_CONFIG)
    for dotted, value in (changes or {}).items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg


def make_run(root, name, changes=None, *, status="completed", val_loss=2.0,
             code=("c0ffee00" * 5, False), curve=None, elapsed=None, wall_times=None,
             elapsed_tag=ELAPSED_TAG):
    """A run dir like lm/train.py writes: config.yaml, run.json and val/loss events.

    ``elapsed``: a ``wallclock/elapsed_s`` value (seconds) per curve point, logged at its step
    (None: not at that step); without it none is logged, as by runs from before the tag.
    ``wall_times``: ``(first, [one per curve point])`` event wall times (Unix seconds):
    ``first`` for a train/loss event at step 1, written before the curve.
    """
    cfg = make_config(changes)
    run_dir = root / name
    run_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / "config.yaml")
    full = config_hash(cfg)
    record = {"status": status, "hash": full, "hash8": full[:8], "run_dir": str(run_dir),
              "overrides": [f"{k}={v}" for k, v in (changes or {}).items()],
              "code": {"commit": code[0], "dirty": code[1]}, "steps": 30, "wall_time_s": 1.5}
    if status == "completed":
        final = {"train/loss": val_loss, "val/loss": val_loss, "val/ppl": math.exp(val_loss)}
        record["metrics"] = {"final": final, "best": {"val/loss": val_loss}}
    elif status == "failed":
        record["error"] = "RuntimeError: boom"
    (run_dir / "run.json").write_text(json.dumps(record))
    if curve is None and math.isfinite(val_loss):
        curve = [(9, val_loss + 1.0), (19, val_loss + 0.5), (29, val_loss)]
    first, times = wall_times or (None, [None] * len(curve or []))
    with SummaryWriter(str(run_dir)) as writer:
        if first is not None:
            writer.add_scalar("train/loss", 5.0, 1, walltime=first)
        for i, ((step, value), wall_time) in enumerate(zip(curve or [], times)):
            writer.add_scalar("val/loss", value, step, walltime=wall_time)
            if elapsed is not None and elapsed[i] is not None:
                writer.add_scalar(elapsed_tag, elapsed[i], step, walltime=wall_time)
    return run_dir


def run_main(capsys, *argv):
    """``lm compare`` with ``argv`` (``lm.commands.compare.main``): exit code, stdout, stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


CURVE = [(10, 3.0), (20, 2.0), (30, 1.5)]  # (step, val/loss) of a fabricated run


def report_files(out):
    """(report.md text, report.csv rows)."""
    return (out / "report.md").read_text(), list(csv.DictReader((out / "report.csv").open()))


@pytest.fixture
def lr_sweep(tmp_path):
    """A sweep dir: lr 1e-3 and 3e-4, two seeds each (jobs 0-3)."""
    sweep = tmp_path / "sweep"
    for job, (lr, seed, loss) in enumerate([(1e-3, 0, 2.0), (1e-3, 1, 2.1),
                                            (3e-4, 0, 1.8), (3e-4, 1, 1.85)]):
        cfg = make_config({"optimizer.lr": lr, "seed": seed})
        make_run(sweep, f"{job}-{config_hash(cfg)[:8]}", {"optimizer.lr": lr, "seed": seed},
                 val_loss=loss)
    return sweep
