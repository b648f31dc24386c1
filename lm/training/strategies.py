"""The Lightning strategy of ``trainer.strategy`` (``conf/trainer/``): how several devices
share a run. ``auto`` and ``ddp`` are Lightning's own names; ``fsdp`` is built here so
each transformer block is its own FSDP unit."""

from lightning.pytorch.strategies import FSDPStrategy, Strategy

from lm.model import Block


def build_strategy(name: str) -> str | Strategy:
    """The ``strategy`` argument of ``lightning.Trainer`` for ``trainer.strategy=name``.

    ``fsdp``: Fully Sharded Data Parallel (Zhao et al. 2023, "PyTorch FSDP"; Lightning's
    ``FSDPStrategy``): parameters, gradients and optimizer state sharded over the ranks
    (``FULL_SHARD``), each ``Block`` wrapped as its own unit, so only one block's full
    weights are gathered at a time; checkpoints gathered into one file on rank 0
    (``state_dict_type="full"``), an ordinary ``.ckpt`` that ``lm generate`` and
    ``lm evaluate`` read. Any other name (``auto``, ``ddp``) is Lightning's and is
    returned as it is (``validate`` has checked it).
    """
    if name == "fsdp":
        return FSDPStrategy(auto_wrap_policy={Block}, sharding_strategy="FULL_SHARD",
                            state_dict_type="full")
    return name
