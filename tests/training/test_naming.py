"""Run names (lm/training/naming.py), the validation cadence floor and what TensorBoard's
HParams tab gets (lm/training/hparams.py): checked against hand-written expectations and
read back through TensorBoard's own hparams plugin parser."""

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from lm.analysis.sweep_summary import JOB_DIR, tensorboard_command
from lm.training import naming
from lm.training.hashing import hashable_config, val_check_interval
from lm.training.hparams import differing_keys, hparam_values, write_experiment
from lm.training.run import trial_name


@pytest.mark.parametrize(("overrides", "swept", "label"), [
    (["model=tiny", "trainer.max_steps=300", "optimizer.lr=1e-4"], ["optimizer.lr"], "lr:1e-4"),
    (["model=tiny", "optimizer.lr=1e-4"], None, "model:tiny+lr:1e-4"),
    # keys left out of the hash say nothing about the run
    (["model=tiny", "trainer.enable_progress_bar=false", "hydra.run.dir=x", "tracking.registry_dir=y",
      "sample.prompt=ROMEO"], None, "model:tiny"),
    # a short name that two keys share keeps its full key
    (["model.dropout=0.1", "adapter.dropout=0.2"], None, "model.dropout:0.1+adapter.dropout:0.2"),
    (["data/tokenizer=bpe", "+model.qk_norm=true"], None, "tokenizer:bpe+qk_norm:true"),
    (["data.path=/home/me/corpora/milton.txt"], None, "path:_home_me_corpo.."),
    ([], None, ""),
])
def test_run_label(overrides, swept, label):
    assert naming.run_label(overrides, swept) == label


def test_a_path_through_a_labelled_dir_is_one_hydra_value():
    """ckpt=<run dir>/checkpoints/best.ckpt must parse as one string, unquoted."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    label = naming.run_label(["model=tiny", "optimizer.betas=[0.9,0.95]", "data.path=/a b/c.txt"])
    path = f"outputs/runs/2026-12-02/17-50-02-{label}-1efc3874/checkpoints/best.ckpt"
    assert OverridesParser.create().parse_override(f"ckpt={path}").value() == path


def test_a_long_label_is_cut_to_max_label():
    label = naming.run_label([f"model.k{i}=value{i}" for i in range(20)])
    assert len(label) == naming.MAX_LABEL and label.endswith("..")


def test_swept_keys_are_hydra_sweep_overrides():
    assert naming.swept_keys(["model=tiny", "optimizer.lr=1e-4,1e-3", "seed=range(3)",
                              "+model.qk_norm=true,false", "model.norm=rmsnorm"]) == \
        ["optimizer.lr", "seed", "model.qk_norm"]


def test_trial_name_and_job_dir_pattern():
    h = "1efc3874" + "0" * 56
    assert trial_name(Path("0-lr:1e-4-1efc3874"), h) == "lr:1e-4 1efc3874"
    assert trial_name(Path("17-50-02-model:tiny-1efc3874"), h) == "model:tiny 1efc3874"
    assert trial_name(Path("17-50-02-1efc3874"), h) == "1efc3874"
    assert JOB_DIR.match("12-lr:1e-4+seed:2-1efc3874").group(1) == "12"
    assert JOB_DIR.match("3-1efc3874").group(1) == "3"


@pytest.mark.parametrize(("max_steps", "interval", "points", "used"), [
    (2000, 250, 5, 250),   # make train: unchanged
    (300, 250, 5, 60),     # 5 points: 60, 120, ..., 300
    (50, 250, 5, 10),
    (3, 250, 5, 1),
    (300, 250, None, 250),  # no floor (runs recorded before it): as configured
])
def test_val_check_interval_floor(max_steps, interval, points, used):
    assert val_check_interval({"max_steps": max_steps, "val_check_interval": interval}, points) == used


def test_the_hash_holds_the_interval_used():
    base = {"seed": 0, "trainer": {"max_steps": 300, "val_check_interval": 250},
            "tracking": {"min_val_points": 5}}
    assert hashable_config(base)["trainer"]["val_check_interval"] == 60
    as_written = {**base, "trainer": {"max_steps": 300, "val_check_interval": 60}}
    assert hashable_config(as_written) == hashable_config(base)  # config.yaml rehashes equal
    no_floor = {**base, "tracking": {}}
    assert hashable_config(no_floor)["trainer"]["val_check_interval"] == 250


def test_hparam_values_keep_defaults_and_drop_instantiation_keys():
    cfg = OmegaConf.create({
        "seed": 1, "model": {"norm": "layernorm", "n_layer": 2},
        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3,
                      "betas": [0.9, 0.99]},
        "paths": {"output_dir": "x"}, "trainer": {"log_every_n_steps": 10, "max_steps": 5},
    })
    values = hparam_values(cfg)
    assert values["model.norm"] == "layernorm"  # a hash-neutral default still has a column
    assert values["optimizer.lr"] == 1e-3 and values["optimizer.betas"] == "[0.9, 0.99]"
    assert not any(k.endswith(("_target_", "_partial_")) for k in values)
    assert "paths.output_dir" not in values and "trainer.log_every_n_steps" not in values
    # an older config without a later key gets its neutral default
    assert hparam_values(OmegaConf.create({"model": {"n_layer": 2}}))["model.qk_norm"] is False


def test_differing_keys():
    runs = [{"a": 1, "b": "x", "c": True}, {"a": 1, "b": "y", "c": True}, {"a": 1, "b": "x"}]
    assert differing_keys(runs) == ["b", "c"]


def test_experiment_summary_lists_differing_keys_first(tmp_path):
    runs = [{"model.norm": "rmsnorm", "optimizer.lr": 1e-3, "data.batch_size": 12},
            {"model.norm": "layernorm", "optimizer.lr": 1e-3, "data.batch_size": 12}]
    assert write_experiment(tmp_path, runs) == ["model.norm"]
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    assert [(h.name, h.differs) for h in experiment.hparam_infos] == [
        ("model.norm", True), ("data.batch_size", False), ("optimizer.lr", False)]
    assert [m.name.tag for m in experiment.metric_infos][:2] == ["val/loss", "val/ppl"]


def test_a_rerun_sweep_points_tensorboard_at_the_runs_events(tmp_path):
    sweep, earlier = tmp_path / "sweep", tmp_path / "earlier" / "0-lr:1e-3-1efc3874"
    rows = [{"job": 0, "overrides": ["optimizer.lr=1e-3"], "events": earlier},
            {"job": 1, "overrides": ["optimizer.lr=3e-3"], "events": sweep / "1-lr:3e-3-2a2a2a2a"}]
    command = tensorboard_command(sweep, rows)
    assert command.startswith("tensorboard --logdir_spec ")
    assert f"0-optimizer.lr=1e-3:{earlier}" in command and f"sweep:{sweep}" in command
    all_here = [{**rows[1]}]
    assert tensorboard_command(sweep, all_here) == f"tensorboard --logdir {sweep}"


def test_mark_swept_keys_sets_the_environment(monkeypatch):
    monkeypatch.delenv(naming.SWEPT_KEYS_ENV, raising=False)
    naming.mark_swept_keys(["optimizer.lr=1e-4,1e-3", "model=tiny"])
    assert json.loads(os.environ[naming.SWEPT_KEYS_ENV]) == ["optimizer.lr"]
