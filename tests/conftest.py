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


def write_corpus(path):
    """Write the small corpus (LINES, 90 numbered lines) to ``path``; return ``path``."""
    path.write_text("\n".join(LINES[i % len(LINES)] + f" ({i})" for i in range(90)) + "\n")
    return path


def tiny_overrides(tmp, corpus, out: str = "run") -> list[str]:
    """Overrides shrinking the real train.yaml to a tiny CPU run on ``corpus``, with its
    data cache, run dir (``tmp/out``) and registry in ``tmp``."""
    return [
        "model=tiny", "data=text_file", f"data.path={corpus}", "data.batch_size=4",
        "data.eval_iters=2", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", f"tracking.registry_dir={tmp}",
        "tracking.min_val_points=null",  # validate at trainer.val_check_interval exactly
        f"paths.data_dir={tmp / 'data'}", f"paths.output_dir={tmp / out}",
    ]


@pytest.fixture
def corpus(tmp_path):
    """Path of a small UTF-8 corpus file."""
    return write_corpus(tmp_path / "corpus.txt")


@pytest.fixture
def make_cfg(tmp_path, corpus):
    """``make_cfg(*overrides)``: the real train.yaml shrunk to a tiny CPU run in tmp_path."""

    def make(*overrides: str, out: str = "run"):
        return compose_config([
            *tiny_overrides(tmp_path, corpus, out), "trainer.max_steps=6",
            "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
            "sample.max_new_tokens=8", *overrides,
        ])

    return make
