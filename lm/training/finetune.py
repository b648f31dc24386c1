"""Starting a run from a trained model: ``init_from=<a .ckpt>`` (or a GPT-2 directory),
with or without adapters (``adapter=lora|qlora``).

A fine-tune from one of our checkpoints takes its weights (``load_checkpoint``: the file
is checked before anything runs), its tokenizer (the new corpus is encoded with it,
so token ids keep their meaning) and nothing else: the optimizer, the schedule and
the step count start afresh. The run's model config must describe the same network
(``dropout`` may differ: it is a training choice); the config hash holds the SHA-256 of
the checkpoint's weights (``lm.checkpoint.weights_sha256``), not its path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from lm.adapters.build import adapter_name, apply_adapter, describe_params, is_adapter_key
from lm.adapters.lora import count_params
from lm.checkpoint import CheckpointError, load_checkpoint
from lm.errors import ConfigError
from lm.interop.hf import init_from_hf  # a GPT-2 directory's weights (see start_from)
from lm.metrics import mean_loss
from lm.model import GPT, GPTConfig
from lm.tokenizers import Tokenizer

if TYPE_CHECKING:
    from lm.training.module import LMModule

# GPTConfig fields a fine-tune may set apart from its checkpoint's.
TRAINING_ONLY_FIELDS = ("dropout",)


class InitCheckpoint(NamedTuple):
    """What ``init_from=<a .ckpt>`` gives a run."""

    path: str
    state: dict[str, torch.Tensor]  # the weights, names as in GPT.state_dict()
    model_config: GPTConfig
    tokenizer: Tokenizer


def is_checkpoint(init_from: str | None) -> bool:
    """Whether ``init_from`` names a checkpoint file (else a GPT-2 directory, or null)."""
    return init_from is not None and not Path(init_from).expanduser().is_dir()


def read_init_checkpoint(path: str) -> InitCheckpoint:
    """The weights, model config and tokenizer of checkpoint ``path``.

    Raises:
        ConfigError: one line: the file is missing or not a checkpoint of lm train, has
            non-finite weights, or is an adapter checkpoint (merge it first).
    """
    try:
        model, tokenizer, _ = load_checkpoint(path, nonfinite="error")
    except CheckpointError as err:
        message = str(err)  # "ckpt=<path> ...": the key is init_from here
        raise ConfigError("init_from" + message.removeprefix("ckpt") if message.startswith("ckpt=")
                          else f"init_from={path}: {message}") from None
    state = model.state_dict()
    if any(is_adapter_key(k) for k in state):
        raise ConfigError(f"init_from={path} is an adapter checkpoint (adapter weights over a "
                          f"base); start from a full one: lm merge {path} merged.ckpt, then "
                          "init_from=merged.ckpt")
    return InitCheckpoint(path, state, model.config, tokenizer)


def fitted_model_config(run: GPTConfig, init: InitCheckpoint) -> GPTConfig:
    """The run's model config with the checkpoint's ``vocab_size`` where the run leaves it
    null (the tokenizer is the checkpoint's).

    Raises:
        ConfigError: a field other than ``TRAINING_ONLY_FIELDS`` differs (one line naming
            each, with both values).
    """
    if run.vocab_size is None:
        run = dataclasses.replace(run, vocab_size=init.model_config.vocab_size)
    ours, theirs = dataclasses.asdict(run), dataclasses.asdict(init.model_config)
    differ = [k for k in ours if k not in TRAINING_ONLY_FIELDS and ours[k] != theirs[k]]
    if differ:
        listed = ", ".join(f"model.{k}={ours[k]} (checkpoint: {theirs[k]})" for k in differ)
        raise ConfigError(f"init_from={init.path} does not fit the model: {listed}; pick the "
                          "checkpoint's model option or set those keys to its values")
    return run


def check_tokenizer_fits(tokenizer_cfg: dict[str, Any], init: InitCheckpoint) -> None:
    """A fine-tune keeps the checkpoint's tokenizer; a data config asking for another kind
    (``data/tokenizer=bpe`` over a char model, another BPE vocab_size) is refused.

    Raises:
        ConfigError: one line naming both tokenizers.
    """
    if tokenizer_cfg.get("name") == "prepared":  # the dataset's own: LMDataModule compares
        return
    theirs = init.tokenizer.to_dict()["type"]
    name, size = tokenizer_cfg.get("name"), tokenizer_cfg.get("vocab_size")
    if name != theirs or (size is not None and size != init.tokenizer.vocab_size) \
            or tokenizer_cfg.get("path") is not None:
        asked = f"data.tokenizer.name={name}" + (f", vocab_size={size}" if size else "")
        raise ConfigError(f"init_from={init.path} has a {theirs} tokenizer of "
                          f"{init.tokenizer.vocab_size} tokens, but {asked}: a fine-tune encodes "
                          f"its text with the checkpoint's tokenizer; use data/tokenizer={theirs} "
                          "with no vocab_size or path")


def check_adapter_needs_init(adapter: dict[str, Any] | None, init_from: str | None) -> None:
    """An adapter adapts a trained model: ``adapter=lora|qlora`` needs ``init_from``.

    Raises:
        ConfigError: one line.
    """
    name = adapter_name(adapter)
    if name != "none" and init_from is None:
        raise ConfigError(f"adapter.name={name} is invalid without init_from: an adapter "
                          "fine-tunes a trained model; pass init_from=<a .ckpt of lm train>")
    if name != "none" and not is_checkpoint(init_from):
        raise ConfigError(f"adapter.name={name} is invalid with init_from={init_from} (a GPT-2 "
                          "directory): adapters start from a .ckpt; import it first with "
                          "lm convert direction=import")


def start_from(module: LMModule, path: str, init: InitCheckpoint | None, adapter: dict | None,
               weights_sha256: str | None, resuming: bool, verbose: bool = True) -> None:
    """Load ``init_from``'s weights into ``module.model`` and give it the configured
    adapter, printing trainable and total parameters (``verbose``). A resumed full
    fine-tune skips the load (its checkpoint has every weight); an adapter run always
    loads the base (its checkpoints hold the adapters only).

    Args:
        path: ``init_from``: a .ckpt (read into ``init`` by validation) or a GPT-2 dir.
        init: the checkpoint's weights; None for a GPT-2 directory.
        adapter: the resolved ``adapter`` node (None or name ``none``: no adapter).
        weights_sha256: the hash's digest of ``init_from`` (the adapter checkpoints'
            record of their base).

    Raises:
        ConfigError: a GPT-2 directory's weights do not fit the model (one line).
    """
    if not resuming or adapter_name(adapter) != "none":
        load_init_weights(module.model, init, path)
    if adapter_name(adapter) != "none":
        apply_adapter(module.model, adapter)
        module.use_adapter({"config": adapter, "init_from": str(Path(path).resolve()),
                            "weights_sha256": weights_sha256})
    if verbose:
        print(describe_params(*count_params(module.model)))


def load_init_weights(model: GPT, init: InitCheckpoint | None, path: str) -> None:
    """Copy ``init``'s weights into ``model`` (same names and shapes), or, ``init`` None,
    those of the Hugging Face GPT-2 directory ``path`` (``lm.interop.hf.init_from_hf``).

    Raises:
        ConfigError: the directory's weights do not fit the model (one line).
    """
    if init is not None:
        model.load_state_dict(init.state)
        return
    try:
        init_from_hf(model, path)
    except ValueError as err:
        raise ConfigError(f"init_from={path}: {err}") from None


def measure_initial(module: LMModule, loader) -> float:
    """``val/loss`` of ``module.model`` as it is (before training) over ``loader``'s batches
    (the run's own validation batches), in eval mode; kept in ``module.initial_metrics``,
    and so in checkpoints and run.json (``metrics.initial``)."""
    was_training = module.model.training
    module.model.eval()
    module.initial_metrics = {"val/loss": mean_loss(module.model, loader, module.device)}
    module.model.train(was_training)
    return module.initial_metrics["val/loss"]


def check_resumed_adapter(adapter: dict, adapter_keys: set[str], checkpoint: dict) -> None:
    """An adapter run resumes only from a checkpoint of the same adapters over the same
    base: ``checkpoint["state_dict"]`` must hold exactly ``adapter_keys`` (the run's
    adapter weights) and ``checkpoint["adapter"]`` the run's adapter config and
    ``init_from`` weights SHA-256 (``adapter``, as ``LMModule.use_adapter`` got it).

    Raises:
        ValueError: one line, when they differ.
    """
    theirs = checkpoint.get("adapter") or {}
    if set(checkpoint["state_dict"]) != adapter_keys or any(
            theirs.get(k) != adapter[k] for k in ("config", "weights_sha256")):
        raise ValueError("the checkpoint to resume from holds other adapters than this "
                         "run's (adapter config, init_from weights or layer names differ)")
