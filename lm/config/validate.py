"""The checks a config passes before any work: keys, ranges, devices.

``validate`` checks the ranges that types cannot express and raises ``ConfigError`` with
one line naming the key, the value and the rule; ``lm train`` turns that into exit code 2.
``unknown_key`` and ``device_problem`` are the rules ``check_overrides`` (``overrides.py``)
applies too, before Hydra makes a run dir.
"""

import dataclasses
import inspect
import pydoc
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lm.adapters.build import adapter_name, check_adapter, check_adapter_layers
from lm.config.schema import SCHEMA_NODES, allowed_keys, unknown_key_line
from lm.errors import ConfigError, first_line
from lm.hooks.base import Hook
from lm.hooks.build import build_hooks
from lm.model import GPT, GPTConfig
from lm.training.finetune import (
    InitCheckpoint,
    check_adapter_needs_init,
    check_tokenizer_fits,
    fitted_model_config,
    is_checkpoint,
    read_init_checkpoint,
)


def unknown_key(cfg: DictConfig) -> str | None:
    """One line naming the first key of a typed node that its schema does not have
    (``+foo=1``, ``+data.foo=1``, ``+model.foo=1``), with the closest valid keys; None if
    every key is known. Each ``callbacks.<name>`` node is checked against its
    ``_target_``'s constructor (``unknown_callback_key``). Untyped groups (optimizer,
    scheduler, logger, hooks) are checked by building them."""
    for node in SCHEMA_NODES:
        sub = OmegaConf.select(cfg, node) if node else cfg
        if not isinstance(sub, DictConfig):
            if node and sub is not None:
                return f"{node}={sub} is invalid: must be a config node (keys: {_keys(node)})"
            continue
        allowed = allowed_keys(node)
        for key in sub:
            if key not in allowed:
                return unknown_key_line(f"{node}.{key}" if node else str(key), allowed)
    return unknown_callback_key(cfg.get("callbacks"))


# Keys hydra.utils.instantiate reads itself, beside a constructor's arguments.
INSTANTIATE_KEYS = frozenset({"_target_", "_partial_", "_args_", "_recursive_", "_convert_"})


def unknown_callback_key(node: Any) -> str | None:
    """One line naming the first entry of ``callbacks`` that is not a node with a
    ``_target_``, or the first key of one that its target's constructor does not take
    (``+callbacks.best_checkpoint.monitr=x``, with the closest); None if all are known.
    A target that cannot be imported is named too; other errors of a target's own (a
    value it rejects) are ``instantiate_callbacks``'s to say."""
    if node is None:
        return None
    if not isinstance(node, DictConfig):
        return f"callbacks={node} is invalid: must be a config node (name: callback node)"
    for name in node:
        spec = node.get(name)
        if not isinstance(spec, DictConfig) or "_target_" not in spec:
            return (f"callbacks.{name}={spec} is invalid: must be a node with a _target_ "
                    "naming a Lightning callback")
        try:
            target = pydoc.locate(str(spec["_target_"]))
        except pydoc.ErrorDuringImport as err:  # a module that fails while importing
            target, why = None, f" ({first_line(err.value)})"
        else:
            why = ""
        if target is None:
            return f"callbacks.{name}._target_={spec['_target_']} is invalid: cannot be imported{why}"
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):  # no signature to read: instantiating will tell
            continue
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        allowed = set(params) | INSTANTIATE_KEYS
        for key in spec:
            if key not in allowed:
                return unknown_key_line(f"callbacks.{name}.{key}", allowed)
    return None


def _keys(node: str) -> str:
    return ", ".join(sorted(allowed_keys(node)))


STRATEGIES = ("auto", "ddp", "fsdp")


def _validate_devices(trainer: DictConfig) -> None:
    """Devices, nodes, strategy and peak FLOP/s (``conf/trainer/``).

    Raises:
        ConfigError: one line naming the key, its value and the rule.
    """
    strategy = trainer.get("strategy", "auto")
    _check(strategy in STRATEGIES, "trainer.strategy", strategy,
           f"must be one of {', '.join(STRATEGIES)}" + (
               " (ddp_spawn is not supported: its processes do not hand their state back to "
               "the launching one; use ddp)" if strategy == "ddp_spawn" else ""))
    for key in ("devices", "num_nodes"):
        value = trainer.get(key, 1)
        _check(isinstance(value, int) and value >= 1, f"trainer.{key}", value, "must be an integer >= 1")
    peak = trainer.get("peak_tflops")
    _check(peak is None or peak > 0, "trainer.peak_tflops", peak, "must be null or > 0 (TFLOP/s of one device)")
    if problem := device_problem(trainer):
        raise ConfigError(problem)


GPU_ACCELERATORS = ("gpu", "cuda")  # Lightning's names for CUDA GPUs


def missing_device(accelerator: str) -> str | None:
    """What ``trainer.accelerator=accelerator`` needs that this machine lacks, or None.
    ``cpu`` needs nothing, nor does ``auto``: Lightning picks what there is."""
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        return "a CUDA GPU (torch.cuda.is_available() is False here)"
    if accelerator == "mps" and not torch.backends.mps.is_available():
        return "an Apple GPU (torch.backends.mps.is_available() is False here)"
    return None


def device_problem(trainer: DictConfig, chosen_as: str | None = None) -> str | None:
    """One line if ``trainer`` (``conf/trainer/``) cannot run on this machine, else None:
    FSDP on anything but GPUs, MPS on more than one device, or an accelerator whose device
    is not here (``missing_device``). ``chosen_as`` names how the user chose it
    (``trainer=gpu``); default ``trainer.accelerator=<value>``. The one rule both
    ``check_overrides`` (before Hydra makes a run dir) and ``validate`` apply."""
    accelerator, strategy = trainer.accelerator, trainer.get("strategy", "auto")
    if strategy == "fsdp" and accelerator not in GPU_ACCELERATORS:
        return (f"trainer.accelerator={accelerator} is invalid: must be gpu with "
                "trainer.strategy=fsdp (FSDP shards over GPUs; on CPUs use trainer=ddp)")
    if accelerator == "mps" and (trainer.devices, trainer.get("num_nodes", 1), strategy) != (1, 1, "auto"):
        return ("trainer.accelerator=mps is invalid: mps runs on one device: trainer.devices=1, "
                "num_nodes=1, strategy=auto")
    if (missing := missing_device(accelerator)) is None:
        return None
    if strategy == "fsdp":
        instead = "trainer=ddp (DDP runs on CPUs too)"
    else:
        instead = "trainer=cpu" if chosen_as else "trainer.accelerator=cpu or auto"
    return f"{chosen_as or f'trainer.accelerator={accelerator}'} needs {missing}; use {instead}"


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value} is invalid: {rule}")


class Validated(NamedTuple):
    """What ``validate`` built while checking a config; a run uses these, built once."""

    model_config: GPTConfig  # vocab_size None: to be taken from the tokenizer
    hooks: list[Hook]  # in the order applied (``cfg.hooks.order``)
    init: InitCheckpoint | None = None  # init_from=<a .ckpt>: its weights and tokenizer


def validate(cfg: DictConfig) -> Validated:
    """Check every range a user can set; return the model config and the hooks.

    Data-dependent rules (a readable corpus, ``block_size`` below the validation
    split's length) are checked by ``LMDataModule.setup``, the first thing a run does.

    Raises:
        ConfigError: one line, ``<key>=<value> is invalid: <rule>``.
    """
    if problem := unknown_key(cfg):
        raise ConfigError(problem)
    try:
        model = GPTConfig(**OmegaConf.to_container(cfg.model, resolve=True))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    data, trainer = cfg.data, cfg.trainer
    # Another source would train on its own corpus while the record named this file.
    _check(data.get("path") is None or data.source in ("text_file", "prepared"), "data.path",
           data.get("path"), f"data.source={data.source} reads its own corpus; to train on "
           f"this file: data=text_file data.path={data.get('path')}")
    _check((data.source == "prepared") == (data.tokenizer.name == "prepared"),
           "data.tokenizer.name", data.tokenizer.name,
           "data.source=prepared encodes with the dataset's own tokenizer (data/tokenizer="
           "prepared; choose it at lm prepare), and only it" if data.source == "prepared" else
           "data/tokenizer=prepared goes with data.source=prepared (data=prepared)")
    _check(0.0 < data.val_fraction < 1.0, "data.val_fraction", data.val_fraction, "must be in (0, 1)")
    for key in ("batch_size", "eval_iters"):
        _check(data[key] >= 1, f"data.{key}", data[key], "must be >= 1")
    _check(data.eval_seed >= 0, "data.eval_seed", data.eval_seed, "must be >= 0")
    _check(0 <= data.max_unk_fraction <= 1, "data.max_unk_fraction", data.max_unk_fraction,
           "must be in [0, 1]")
    for key in ("max_steps", "val_check_interval", "log_every_n_steps", "accumulate_grad_batches"):
        _check(trainer[key] >= 1, f"trainer.{key}", trainer[key], "must be >= 1")
    _check(trainer.gradient_clip_val >= 0, "trainer.gradient_clip_val", trainer.gradient_clip_val,
           "must be >= 0 (0 turns clipping off)")
    _check(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    _validate_devices(trainer)
    hooks = build_hooks(cfg, model)  # an unknown _target_, bad argument or pattern fails now
    every = cfg.tracking.checkpoint_every_n_steps
    _check(every >= 1, "tracking.checkpoint_every_n_steps", every, "must be >= 1")
    points = cfg.tracking.get("min_val_points")
    _check(points is None or points >= 1, "tracking.min_val_points", points, "must be null or >= 1")
    _check(cfg.resume in ("auto", "never") or Path(cfg.resume).is_file(), "resume", cfg.resume,
           "must be auto, never or the path of an existing .ckpt file")
    init, model = _validate_init_from(cfg, model)
    _validate_optimizer(cfg.optimizer)
    _try_build_optimizer(cfg)
    _check(cfg.sample.max_new_tokens >= 0, "sample.max_new_tokens", cfg.sample.max_new_tokens,
           "must be >= 0")
    _check(cfg.sample.temperature >= 0, "sample.temperature", cfg.sample.temperature, "must be >= 0")
    return Validated(model, hooks, init)


def _validate_init_from(cfg: DictConfig, model: GPTConfig) -> tuple[InitCheckpoint | None, GPTConfig]:
    """Check ``init_from`` and ``adapter``; read an ``init_from`` checkpoint and fit the
    model config to it (``lm/training/finetune.py``)."""
    adapter = OmegaConf.to_container(cfg.adapter, resolve=True) if "adapter" in cfg else None
    try:
        check_adapter(adapter or {"name": "none"})
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_adapter_needs_init(adapter, cfg.init_from)
    init = None
    if is_checkpoint(cfg.init_from):
        init = read_init_checkpoint(cfg.init_from)
        model = fitted_model_config(model, init)
        check_tokenizer_fits(OmegaConf.to_container(cfg.data.tokenizer), init)
    elif cfg.init_from is not None and not Path(cfg.init_from).is_dir():
        raise ConfigError(f"init_from={cfg.init_from} is invalid: must be null, a .ckpt of lm "
                          "train or a Hugging Face GPT-2 directory (config.json + model.safetensors)")
    if adapter_name(adapter) != "none":
        with torch.device("meta"):  # names only: no memory, nothing quantised
            shape = GPT(dataclasses.replace(model, vocab_size=model.vocab_size or 256))
        try:
            check_adapter_layers(shape, adapter)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return init, model


def _try_build_optimizer(cfg: DictConfig) -> None:
    """Build the optimizer and schedule on a dummy parameter, so that any argument
    they reject fails now, before data or model are built."""
    try:
        optimizer = hydra.utils.instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:
        raise ConfigError(f"optimizer: {first_line(err)}") from None
    try:
        hydra.utils.instantiate(cfg.scheduler)(optimizer)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"scheduler: {first_line(err)}") from None


def _validate_optimizer(opt: DictConfig) -> None:
    _check("_target_" in opt, "optimizer._target_", None, "every optimizer option needs a _target_")
    _check(opt.get("lr", 1.0) > 0, "optimizer.lr", opt.get("lr"), "must be > 0")
    wd = opt.get("weight_decay", 0.0)
    _check(wd >= 0, "optimizer.weight_decay", wd, "must be >= 0")
    for beta in opt.get("betas", []):
        _check(0.0 <= beta < 1.0, "optimizer.betas", list(opt.betas), "each must be in [0, 1)")
    momentum = opt.get("momentum", 0.0)
    _check(0.0 <= momentum < 1.0, "optimizer.momentum", momentum, "must be in [0, 1)")
