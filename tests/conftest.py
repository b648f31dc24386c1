"""Shared fixtures and helpers: a small local corpus, configs composed from the real conf/,
tiny models and inputs, a simulated crash, TensorBoard curves and hand-computed losses.

Test modules import the plain helpers from here (``from tests.conftest import ...``);
pytest injects the fixtures.
"""

from pathlib import Path
from typing import NamedTuple

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tbparse import SummaryReader

from lm.checkpoint import load_checkpoint
from lm.config.compose import compose_config
from lm.data.tokens import split_text
from lm.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent  # the repository

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


TINY_STEPS = ("trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
              "sample.max_new_tokens=8")  # make_cfg's run: 6 steps, validated at 3 and 6


@pytest.fixture
def corpus(tmp_path):
    """Path of a small UTF-8 corpus file."""
    return write_corpus(tmp_path / "corpus.txt")


@pytest.fixture
def make_cfg(tmp_path, corpus):
    """``make_cfg(*overrides)``: the real train.yaml shrunk to a tiny CPU run in tmp_path."""

    def make(*overrides: str, out: str = "run"):
        return compose_config([
            *tiny_overrides(tmp_path, corpus, out), *TINY_STEPS, *overrides,
        ])

    return make



class TinyRun(NamedTuple):
    """A finished tiny run: its run.json record, last checkpoint, corpus and run dir."""

    record: dict
    ckpt: Path
    corpus: Path
    run_dir: Path


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> TinyRun:
    """The tiny run ``make_cfg()`` composes, trained once per test session (per worker
    under ``pytest -n``) for the tests that only read its checkpoint and record."""
    from lm.training.run import run

    tmp = tmp_path_factory.mktemp("tiny_trained")
    corpus = write_corpus(tmp / "corpus.txt")
    record = run(compose_config([*tiny_overrides(tmp, corpus), *TINY_STEPS]))
    assert record["status"] == "completed", record
    return TinyRun(record, Path(record["checkpoints"]["last"]), corpus, tmp / "run")

# --- tiny models and inputs --------------------------------------------------

V = 37  # vocabulary size of the tiny test models


def tiny(**overrides) -> GPT:
    """A 2-layer, 32-wide, 4-head model in eval mode, seeded for reproducibility."""
    kwargs = {"vocab_size": V, "block_size": 16, "n_layer": 2, "n_head": 4, "n_embd": 32}
    kwargs.update(overrides)
    torch.manual_seed(0)
    return GPT(GPTConfig(**kwargs)).eval()


def tokens(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    """(B, T) random token ids below V, from their own seeded generator."""
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def arch_options(logit_softcap: float) -> dict[str, dict]:
    """GPTConfig options beyond GPT-2, each alone, then all together two ways (rope and
    swiglu; learned positions and relu2) in pre-norm blocks, once in post-norm (GPT-1)
    blocks and once attention-only, by a short name; ``logit_softcap``: the cap used."""
    every = {"pos_encoding": "rope", "rope_base": 100.0, "norm": "rmsnorm", "qk_norm": True,
             "activation": "swiglu", "zero_init_proj": True, "logit_softcap": logit_softcap,
             "tie_weights": False, "bias": False}
    return {
        "rope": {"pos_encoding": "rope"},
        "rope_base_100": {"pos_encoding": "rope", "rope_base": 100.0},
        "rmsnorm": {"norm": "rmsnorm"},
        "post_norm": {"norm_position": "post"},
        "post_norm_rmsnorm": {"norm_position": "post", "norm": "rmsnorm"},
        "attn_only": {"mlp": False},
        "attn_only_post_norm": {"mlp": False, "norm_position": "post"},
        "qk_norm": {"qk_norm": True},
        "relu2": {"activation": "relu2"},
        "swiglu": {"activation": "swiglu"},
        "zero_init_proj": {"zero_init_proj": True},
        "logit_softcap": {"logit_softcap": logit_softcap},
        "untied": {"tie_weights": False},
        "all": every,
        "all_relu2_learned": {**every, "pos_encoding": "learned", "activation": "relu2", "bias": True},
        "all_post_norm": {**every, "norm_position": "post"},
        "all_attn_only": {**every, "mlp": False},
    }


# --- runs ----------------------------------------------------------------------

class Crash(L.Callback):
    """Raises at ``hook`` of step ``step`` (as a kill there would stop the run)."""

    def __init__(self, hook: str, step: int):
        self.hook, self.step = hook, step

    def _maybe(self, trainer, hook):
        if hook == self.hook and trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at {hook} {self.step}")

    def on_train_batch_end(self, trainer, *args):
        self._maybe(trainer, "train_batch_end")

    def on_validation_batch_end(self, trainer, *args):
        self._maybe(trainer, "validation_batch_end")

    def on_validation_end(self, trainer, *args):
        self._maybe(trainer, "validation_end")


def curves(run_dir: Path, tags=("val/loss", "train/lr", "train/loss")) -> dict:
    """{tag: {step: value}}, the last event written per step winning (what TensorBoard
    shows after a resume purges the steps it trains again)."""
    df = SummaryReader(str(run_dir), extra_columns={"wall_time"}).scalars
    df = df.sort_values("wall_time", kind="stable")
    return {tag: dict(zip(df[df.tag == tag].step, df[df.tag == tag].value)) for tag in tags}


def validation_ids(ckpt, corpus) -> tuple[torch.nn.Module, torch.Tensor, str, int]:
    """(model, validation ids (N,) int64, validation text, seed) of a run on ``corpus``,
    by hand: the last 10% of its characters encoded with the checkpoint's tokenizer."""
    model, tokenizer, run_config = load_checkpoint(ckpt)
    _, val_text = split_text(corpus.read_text(), run_config["data"]["val_fraction"])
    return model, torch.tensor(tokenizer.encode(val_text)), val_text, run_config["seed"]


@torch.no_grad()
def hand_whole_split_loss(model, ids: torch.Tensor) -> tuple[float, int, int]:
    """(summed cross-entropy / count, count, windows): one window at a time, start 0, T,
    2T, ..., each predicting the next T ids (the last one fewer)."""
    T, total, count, windows, start = model.config.block_size, 0.0, 0, 0, 0
    while start + 1 < len(ids):
        x, y = ids[start : start + T], ids[start + 1 : start + T + 1]
        x = x[: len(y)]  # the last window: as many inputs as targets remain
        logits, _ = model(x[None])  # (1, t, V)
        total += F.cross_entropy(logits[0], y, reduction="sum").item()
        count, windows, start = count + len(y), windows + 1, start + T
    return total / count, count, windows
