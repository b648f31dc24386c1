"""Print every hook point of a model with its activation shape: ``lm inspect [overrides]``.

The model comes from the training config (``conf/inspect.yaml`` composes
``conf/train.yaml`` with the overrides ``lm train`` takes), or with
``init_from=<a .ckpt>`` from a checkpoint (a plain one or an adapter run's), and runs one
batch of 1 x block_size zeros on the CPU. A third column names the configured hooks
(``hooks=...``) attached at each point. With an adapter (``adapter=lora``, or an adapter
checkpoint), a line names the adapted layers and the trainable parameters.

Examples:
    lm inspect model=small
    lm inspect model=tiny 'hooks=[resid_noise,z_loss]'
    lm inspect model=tiny model.pos_encoding=rope model.norm=rmsnorm model.activation=swiglu
    lm inspect model=tiny model.mlp=false
    lm inspect init_from=outputs/runs/<date>/<run>/checkpoints/best.ckpt adapter=lora
"""

import dataclasses

import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from lm.adapters.build import apply_adapter, describe_params
from lm.adapters.lora import LoRALinear, count_params
from lm.checkpoint import load_checkpoint
from lm.config.validate import unknown_key
from lm.errors import ConfigError, first_line
from lm.hooks import ForwardHook, build_hooks
from lm.model import GPT, GPTConfig
from lm.training.finetune import is_checkpoint

PLACEHOLDER_VOCAB = 256


def hook_shapes(model: GPT) -> dict[str, tuple[int, ...]]:
    """Hook point name -> activation shape for a (1, block_size) batch, in data order."""
    idx = torch.zeros(1, model.config.block_size, dtype=torch.long)  # (1, T)
    with torch.no_grad():
        _, cache = model.eval().run_with_cache(idx)
    return {name: tuple(act.shape) for name, act in cache.items()}


def build_model(cfg: DictConfig, config: GPTConfig) -> tuple[GPT, str]:
    """(the model to inspect, a note for the header): ``init_from``'s if it is a checkpoint
    (adapters and all), else ``GPT(config)``; then ``cfg.adapter`` applied unless the model
    has adapters already."""
    note = ""
    if is_checkpoint(cfg.init_from):
        model, _, _ = load_checkpoint(cfg.init_from)
        note = f" (from {cfg.init_from})"
    else:
        if config.vocab_size is None:  # set from the tokenizer at train time; no data is read
            config = dataclasses.replace(config, vocab_size=PLACEHOLDER_VOCAB)
            note = f" (model.vocab_size=null: V={PLACEHOLDER_VOCAB} is a placeholder)"
        model = GPT(config)
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        apply_adapter(model, OmegaConf.to_container(cfg.adapter, resolve=True))
    return model, note


def inspect_command(cfg: DictConfig) -> int:
    """``lm inspect``: print a header line, then ``name  shape  hooks`` per hook point.

    Raises:
        ValueError: one line, for a bad model or hook setting.
    """
    if problem := unknown_key(cfg):
        raise ConfigError(problem)
    try:
        config = GPTConfig(**OmegaConf.to_container(cfg.model, resolve=True))
        hooks = build_hooks(cfg)
    except HydraException as err:  # a hook's _target_ that cannot be instantiated
        raise ConfigError(first_line(err)) from None
    model, note = build_model(cfg, config)
    config = model.config
    attached: dict[str, list[str]] = {}
    for hook in hooks:
        if isinstance(hook, ForwardHook):
            for name in model.hook_names(hook.patterns):
                attached.setdefault(name, []).append(hook.name)
    print(f"# n_layer={config.n_layer} n_head={config.n_head} n_embd={config.n_embd} "
          f"block_size={config.block_size}; batch 1 x {config.block_size}{note}")
    if adapted := [n for n, m in model.named_layers().items() if isinstance(m, LoRALinear)]:
        print(f"# adapters on {len(adapted)} layers ({', '.join(adapted[:2])}, ...); "
              f"{describe_params(*count_params(model))}")
    shapes = hook_shapes(model)
    width = max(map(len, shapes))
    for name, shape in shapes.items():
        print(f"{name:<{width}}  {shape!s:<20}  {', '.join(attached.get(name, []))}".rstrip())
    return 0
