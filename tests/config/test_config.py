"""Config composition, validation errors and the config hash."""

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf, open_dict

from lm.config.compose import CONF_DIR, compose_config, register_configs
from lm.config.overrides import unknown_choice
from lm.data.corpus import DataError
from lm.errors import ConfigError
from lm.training.hashing import (
    HASH_EXCLUDED_KEYS,
    config_hash,
    hashable_config,
    register_resolvers,
)
from lm.training.run import run
from tests.conftest import ROOT


def test_defaults_are_the_nanogpt_cpu_recipe():
    cfg = compose_config(["paths.output_dir=x"])
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (4, 4, 128, 64)
    assert cfg.model.dropout == 0.0
    assert cfg.data.source == "shakespeare" and cfg.data.batch_size == 12
    assert cfg.optimizer.lr == 1e-3 and list(cfg.optimizer.betas) == [0.9, 0.99]
    assert cfg.trainer.max_steps == 2000 and cfg.scheduler.decay_steps == 2000


@pytest.mark.parametrize("name,sizes", [
    ("tiny", (2, 4, 64, 64, 0.0)), ("small", (4, 4, 128, 64, 0.0)),
    ("medium", (6, 6, 384, 256, 0.2)), ("gpt2", (12, 12, 768, 1024, 0.0)),
])
def test_model_options(name, sizes):
    m = compose_config([f"model={name}", "paths.output_dir=x"]).model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == sizes


def test_a_missing_key_takes_the_schema_default(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "partial.yaml").write_text("n_layer: 3\n")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{tmp_path}]", "model=partial",
                                           "paths.output_dir=x"])
    assert cfg.model.n_layer == 3 and cfg.model.n_embd == 128 and cfg.model.bias is True


def test_unknown_keys_and_wrong_types_are_rejected():
    with pytest.raises(Exception, match="nosuch"):
        compose_config(["model.nosuch=1"])
    with pytest.raises(Exception, match="n_head"):
        compose_config(["model.n_head=four"])
    with pytest.raises(MissingConfigException):
        compose_config(["model=nosuch"])


@pytest.mark.parametrize("overrides,key", [
    (["model.n_embd=100", "model.n_head=3"], "model.n_embd=100"),
    (["model.dropout=1.5"], "model.dropout=1.5"),
    (["model.n_layer=0"], "model.n_layer=0"),
    (["optimizer.lr=-1"], "optimizer.lr=-1"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay"),
    (["trainer.max_steps=0"], "trainer.max_steps=0"),
    (["data.val_fraction=1.0"], "data.val_fraction=1.0"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["scheduler.min_lr_ratio=2"], "min_lr_ratio"),
])
def test_bad_values_end_before_training_with_one_line(make_cfg, tmp_path, overrides, key):
    with pytest.raises(ConfigError) as err:
        run(make_cfg(*overrides))
    message = str(err.value)
    assert key in message and "\n" not in message
    assert not (tmp_path / "run" / "run.json").exists()  # nothing started


def test_bad_corpora_end_before_training(make_cfg, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be " * 20)  # 400 chars: val split of 40 < 65
    cases = [("/nonexistent", "/nonexistent"), (empty, "empty"), (short, "block_size")]
    for path, expected in cases:
        with pytest.raises(DataError, match=expected) as err:
            run(make_cfg(f"data.path={path}"))
        assert "\n" not in str(err.value)


def test_cli_exit_code_2_and_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "lm/train.py", "model.dropout=1.5", f"hydra.run.dir={tmp_path}/r"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model.dropout=1.5") and "[0, 1]" in last
    assert not (tmp_path / "r").exists()  # no empty run dir left in the registry


@pytest.mark.parametrize("overrides,message", [
    (["model=nosuch"], "model=nosuch is not an option; available: gpt2, medium, small, tiny"),
    (["hooks=[z_loss,nosuch]"], "hooks=nosuch is not an option; available: act_l2, "),
    (["optimizer=adamw,sgdd"], "optimizer=sgdd is not an option; available: adamw, muon, sgd"),
    (["data/tokenizer=bpee"], "data/tokenizer=bpee is not an option; available: bpe, byte, char"),
])
def test_unknown_group_options_are_named_in_one_line(overrides, message):
    assert unknown_choice(overrides).startswith(message)


def test_known_options_and_plain_keys_pass():
    assert unknown_choice(["model=tiny", "hooks=[z_loss,grad_clip_custom]", "~experiment",
                           "optimizer.lr=1e-3,3e-3", "seed=0,1", "data/tokenizer=bpe"]) is None


def test_options_in_a_searchpath_dir_and_hydras_own_groups_pass(tmp_path, monkeypatch):
    (tmp_path / "conf" / "hooks").mkdir(parents=True)
    (tmp_path / "conf" / "hooks" / "mine.yaml").write_text("# @package hooks.mine\n")
    monkeypatch.chdir(tmp_path)  # file://conf is read from the working directory
    assert unknown_choice(["hooks=[mine,z_loss]", "hydra.searchpath=[file://conf]"]) is None
    assert unknown_choice(["hooks=[mine,z_loss]"]).startswith("hooks=mine is not an option")
    assert unknown_choice(["hooks=[mine,nosuch]", "hydra.searchpath=[file://conf]"]).startswith(
        "hooks=nosuch is not an option; available: act_l2, ")
    assert unknown_choice(["hydra/help=default", "hydra/launcher=basic"]) is None  # Hydra's


def test_null_is_not_an_option_of_a_group():
    # Hydra cannot compose `group=null` (a 25-line ValueError); `~group` removes a group
    assert unknown_choice(["experiment=null"]).startswith("experiment=null is not an option")


# --- the config hash ------------------------------------------------------------

def _hash(*overrides):
    return config_hash(compose_config(["paths.output_dir=x", *overrides]))


def test_hash_is_stable_and_canonical():
    assert _hash() == _hash()
    assert len(_hash()) == 64
    # sorted-key canonical JSON: key order in the YAML cannot matter
    a = {"b": 1, "a": {"y": 2, "x": 3}}
    b = {"a": {"x": 3, "y": 2}, "b": 1}
    assert config_hash(a) == config_hash(b)


@pytest.mark.parametrize("override", [
    "optimizer.lr=3e-4", "seed=3", "model.n_layer=2", "data.batch_size=8",
    "trainer.max_steps=10", "trainer.precision=bf16-mixed", "trainer.deterministic=false",
    "model.pos_encoding=sinusoidal", "optimizer=sgd", "scheduler=constant",
])
def test_hash_changes_with_what_changes_the_numbers(override):
    assert _hash(override) != _hash()


@pytest.mark.parametrize("override", [
    "trainer.log_every_n_steps=1", "paths.output_dir=elsewhere", "paths.data_dir=/tmp/d",
    "trainer.enable_progress_bar=false", "logger=none", "sample.max_new_tokens=0",
    "tracking.checkpoint_every_n_steps=7", "~callbacks.progress_bar",
    "callbacks.best_checkpoint.save_top_k=2", "callbacks.progress_bar.refresh_rate=1",
])
def test_hash_ignores_what_cannot_change_the_numbers(override):
    assert _hash(override) == _hash()


def test_the_callbacks_group_keeps_the_hash_of_configs_without_it():
    cfg = compose_config(["paths.output_dir=x"])
    assert set(cfg.callbacks) == {"best_checkpoint", "last_checkpoint", "rng_state", "progress_bar",
                                  "target_loss", "text_samples", "compile", "throughput"}
    without = OmegaConf.to_container(cfg)
    del without["callbacks"]  # a config.yaml written before conf/callbacks/ existed
    assert config_hash(without) == config_hash(cfg)
    assert "callbacks" not in hashable_config(cfg)
    # these are the numbers of the issue: the default config and the tiny run
    assert _hash() == "67511eeaa6ec317b6845eca9c44277bec51c7954af419a9cf3ad50222a19e8d9"
    # 50 steps validate every 10 (tracking.min_val_points=5), and the hash holds the
    # interval used: 124ffc63... when they validated once, at step 50
    assert _hash("model=tiny", "trainer.max_steps=50", "seed=3", "data.eval_seed=3") == (
        "a0682353aa9969ed63624d3ddf54b43a776209563243eb56a3acd19e56463a04")


def test_a_callback_that_can_change_the_numbers_is_in_the_hash():
    swa = ["+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging",
           "+callbacks.swa.swa_lrs=0.01"]
    assert _hash(*swa) != _hash()
    assert hashable_config(compose_config(["paths.output_dir=x", *swa]))["callbacks"] == {
        "swa": {"_target_": "lightning.pytorch.callbacks.StochasticWeightAveraging",
                "swa_lrs": 0.01}}


@pytest.mark.parametrize(("args", "says"), [
    (["+callbacks.best_checkpoint.monitr=x"],
     "callbacks.best_checkpoint.monitr is not a config key; closest: callbacks.best_checkpoint.monitor"),
    (["callbacks.best_checkpoint.monitr=x"], "callbacks.best_checkpoint.monitr is not a config key"),
    (["+callbacks.foo=1"], "callbacks.foo=1 is invalid: must be a node with a _target_"),
    (["+callbacks.x._target_=nosuch.Thing"], "callbacks.x._target_=nosuch.Thing is invalid: cannot be imported"),
    (["callbacks=nosuch"], "callbacks=nosuch is not an option; available: default"),
])
def test_bad_callback_keys_are_named_in_one_line(args, says):
    from lm.config.overrides import check_overrides

    problem = check_overrides(args)
    assert problem is not None and "\n" not in problem and problem.startswith(says), problem


@pytest.mark.parametrize(("override", "says"), [
    ("callbacks.best_checkpoint.mode=sideways", "callbacks.best_checkpoint: `mode` can be min, max"),
    ("callbacks.last_checkpoint.every_n_steps=0", "callbacks.last_checkpoint: every_n_steps=0 is invalid"),
    ("+callbacks.x._target_=torch.nn.Identity", "callbacks.x._target_=torch.nn.Identity is invalid"),
])
def test_a_callback_that_cannot_be_built_stops_the_run_before_its_dir_is_written(
        make_cfg, tmp_path, override, says):
    with pytest.raises(ConfigError) as err:
        run(make_cfg(override))
    assert str(err.value).startswith(says) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_the_progress_bar_follows_trainer_enable_progress_bar():
    from lm.training.callbacks import LastCheckpoint, RNGState, instantiate_callbacks
    from lm.training.run_callbacks import CompileModel, TargetLoss, TextSamples, Throughput

    node = compose_config(["paths.output_dir=x"]).callbacks
    names = [type(c).__name__ for c in instantiate_callbacks(node, progress_bar=True)]
    assert names == ["ModelCheckpoint", "LastCheckpoint", "RNGState", "TargetLoss", "TextSamples",
                     "CompileModel", "Throughput", "TQDMProgressBar"]
    assert [type(c) for c in instantiate_callbacks(node, progress_bar=False)][1:] == [
        LastCheckpoint, RNGState, TargetLoss, TextSamples, CompileModel, Throughput]


def test_importing_lm_has_no_side_effects():
    """Importing every module registers nothing with Hydra or OmegaConf and leaves logging
    alone: ``lm train`` and ``compose_config`` do that, when they run."""
    code = """
import importlib, logging, pkgutil
import lm
names = [m.name for m in pkgutil.walk_packages(lm.__path__, "lm.") if m.name != "lm.__main__"]
for name in names:
    importlib.import_module(name)
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
assert "lm.training.run" in names and len(names) > 30, names
assert not any(OmegaConf.has_resolver(r) for r in ("config_hash", "hook_order"))
assert "train_schema.yaml" not in ConfigStore.instance().repo
assert not logging.getLogger("lightning.pytorch.utilities.rank_zero").filters
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_excluded_keys_are_listed_once_and_dropped():
    cfg = compose_config(["paths.output_dir=x"])
    plain = hashable_config(cfg)
    assert "paths" not in plain and "log_every_n_steps" not in plain["trainer"]
    assert "max_steps" in plain["trainer"]
    assert len(set(HASH_EXCLUDED_KEYS)) == len(HASH_EXCLUDED_KEYS)


def test_run_dir_resolver_matches_the_hash():
    register_configs()  # what compose_config and lm train do first; importing does not
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["optimizer.lr=3e-4"], return_hydra_config=True)
    run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    assert run_dir.endswith("-" + config_hash(cfg)[:8])
    with open_dict(cfg):  # hydra node present or not: one hash
        del cfg["hydra"]
    assert run_dir.endswith("-" + config_hash(cfg)[:8])
