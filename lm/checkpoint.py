"""Load a trained model from a checkpoint alone.

A checkpoint written by ``lm/train.py`` carries the model weights (``state_dict``,
keys prefixed ``model.``), the model config, the tokenizer and the resolved run
config, so nothing else is needed. Loaded with ``weights_only=True``: a checkpoint
is data, never code.
"""

from pathlib import Path

import torch

from lm.model import GPT, GPTConfig
from lm.tokenizer import tokenizer_from_dict


class CheckpointError(ValueError):
    """A checkpoint path that is missing, unreadable or not written by lm/train.py."""


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[GPT, object, dict]:
    """(model in eval mode, tokenizer, resolved run config) from a Lightning checkpoint.

    Raises:
        CheckpointError: one line naming the path and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt={path} does not exist (pass a .ckpt file from a run's "
                              "checkpoints/ dir, e.g. outputs/runs/<date>/<run>/checkpoints/best.ckpt)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to a user
        raise CheckpointError(f"ckpt={path} could not be loaded as a torch checkpoint: "
                              f"{str(err).splitlines()[0]}") from None
    missing = [k for k in ("state_dict", "model_config", "tokenizer") if k not in ckpt]
    if missing:
        raise CheckpointError(f"ckpt={path} was not written by lm/train.py (no {', '.join(missing)})")
    model = GPT(GPTConfig(**ckpt["model_config"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(state)
    model.to(device).eval()
    return model, tokenizer_from_dict(ckpt["tokenizer"]), ckpt.get("run_config", {})
