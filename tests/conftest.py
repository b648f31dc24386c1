"""Shared fixtures: a small local corpus and configs composed from the real conf/."""

import pytest

from lm.training.config import compose_config

# About 6,000 characters of varied text: enough for a validation split of
# several block_size=64 windows, small enough to tokenise instantly.
LINES = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "All: Speak, speak. You are all resolved rather to die than to famish?",
    "MENENIUS: Either you must confess yourselves wondrous malicious,",
    "Or be accused of folly. I shall tell you a pretty tale.",
    "ROMEO: But soft, what light through yonder window breaks?",
]


@pytest.fixture
def corpus(tmp_path):
    """Path of a small UTF-8 corpus file."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES[i % len(LINES)] + f" ({i})" for i in range(90)) + "\n")
    return path


@pytest.fixture
def make_cfg(tmp_path, corpus):
    """``make_cfg(*overrides)``: the real train.yaml shrunk to a tiny CPU run in tmp_path."""

    def make(*overrides: str, out: str = "run"):
        return compose_config([
            "model=tiny", "data=text_file", f"data.path={corpus}", "data.batch_size=4",
            "data.eval_iters=2", "trainer.max_steps=6", "trainer.val_check_interval=3",
            "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
            f"tracking.registry_dir={tmp_path}",
            "trainer.enable_model_summary=false", "sample.max_new_tokens=8",
            f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / out}",
            *overrides,
        ])

    return make
