"""The default recipe's numbers stay what they were before the architecture options,
Muon, WSD and compile existed: every new key at its default computes the old network.

The pinned values were produced by the code at commit 5fdc9f0 (before issue 11), on this
project's CPU machine, for the same config: not by the code under test.
"""

import pytest

from lm.config.compose import compose_config
from lm.training.hashing import config_hash
from lm.training.run import run

# commit 5fdc9f0: tests/conftest.py's tiny run on its corpus, 12 steps, seed 3
PINNED_TINY = {"val/loss": 3.922898769378662, "train/loss": 3.901149034500122, "hash8": "308d4584"}


def test_tiny_default_run_gives_the_numbers_of_the_code_before_the_options(make_cfg):
    # data.eval_seed=3: the validation batches came from `seed` before it existed
    cfg = make_cfg("trainer.max_steps=12", "trainer.val_check_interval=6", "seed=3", "data.eval_seed=3")
    record = run(cfg)
    final = record["metrics"]["final"]
    assert (final["val/loss"], final["train/loss"], record["hash8"]) == (
        PINNED_TINY["val/loss"], PINNED_TINY["train/loss"], PINNED_TINY["hash8"])


def test_new_keys_at_their_defaults_leave_the_hash_alone(tmp_path):
    explicit = ["model.norm=layernorm", "model.qk_norm=false", "model.rope_base=10000.0",
                "model.zero_init_proj=false", "model.logit_softcap=null", "model.mlp=true",
                "data.eval_batch_size=null", "trainer.compile=false"]
    base = compose_config([f"paths.output_dir={tmp_path}"])
    assert config_hash(compose_config([f"paths.output_dir={tmp_path}", *explicit])) == config_hash(base)
    assert config_hash(compose_config([f"paths.output_dir={tmp_path}", "model.qk_norm=true"])) != config_hash(base)
    assert config_hash(compose_config([f"paths.output_dir={tmp_path}", "model.mlp=false"])) != config_hash(base)


@pytest.mark.slow
def test_make_train_ends_at_the_documented_val_loss(tmp_path):
    """`make train` (the default config, the real corpus in data/): 1.8850915431976318 on
    this machine before and after issue 11 (hash 67511eea)."""
    cfg = compose_config([f"tracking.registry_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}",
                          "trainer.enable_progress_bar=false"])
    record = run(cfg)
    assert record["hash8"] == "67511eea"
    assert record["metrics"]["final"]["val/loss"] == 1.8850915431976318
