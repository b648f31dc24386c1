"""Hooks from the config: ``build_hooks(cfg)`` and the ``hooks.order`` resolver.

Each option ``conf/hooks/<name>.yaml`` is ``# @package hooks.<name>``, so
``hooks=[a,b]`` composes to ``hooks: {order: [a, b], a: {...}, b: {...}}``. The
``order`` key is ``${hook_order:}`` (``hook_order`` below): the hook keys in the order Hydra merged them,
which is the order of the defaults list / the override. It is a list, so it keeps
that order in the config hash (canonical JSON with sorted keys would lose the key
order of the dict), and it is the order ``build_hooks`` applies the hooks in.
"""

from __future__ import annotations

import dataclasses
import importlib

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lm.errors import ConfigError, first_line
from lm.hooks.base import Hook
from lm.model import GPT, GPTConfig

ORDER_KEY = "order"
PLACEHOLDER_VOCAB = 256  # hook point names do not depend on the vocabulary
__all__ = ["build_hooks", "hook_order"]


def hook_order(*, _parent_: DictConfig) -> list[str]:
    """Resolver ``${hook_order:}``: the keys of the node holding it except ``order``, in
    the order Hydra merged them, which is the order the hooks were given in
    (``hooks=[a,b]``). As a list it keeps that order in the config hash, whose
    canonical JSON sorts dict keys."""
    return [key for key in _parent_ if key != ORDER_KEY]


def build_hooks(cfg: DictConfig, model_config: GPTConfig | None = None) -> list[Hook]:
    """Instantiate ``cfg.hooks`` in ``cfg.hooks.order`` and check each against the model.

    Every check runs here, before any training: the order lists each hook once, each
    ``_target_`` is an importable ``lm.hooks.Hook`` subclass whose arguments are valid,
    and each pattern matches a hook point of a model built from ``model_config`` (default:
    from ``cfg.model``) on the meta device, so nothing is allocated. Returns the hooks,
    ``hook.name`` set to their key; ``[]`` for ``hooks=none``.

    Raises:
        ConfigError: one line naming ``hooks.<name>`` and the problem, e.g. a pattern
            that matches no hook point, with the closest names.
    """
    node = cfg.get("hooks") or OmegaConf.create({})
    order = _order(node)
    if not order:
        return []
    hooks = [_instantiate(name, node[name]) for name in order]
    model = _meta_model(cfg, model_config)
    for hook in hooks:
        try:
            hook.check(model)
        except ValueError as err:
            raise ConfigError(f"hooks.{hook.name}: {err}") from None
    return hooks


def _order(node: DictConfig) -> list[str]:
    names = [key for key in node if key != ORDER_KEY]
    order = list(node.get(ORDER_KEY) or [])
    if sorted(order) != sorted(names):
        raise ConfigError(f"hooks.order={order} is invalid: must list each configured hook "
                          f"once (configured: {', '.join(names) or 'none'})")
    return [str(name) for name in order]


def _instantiate(name: str, spec: object) -> Hook:
    target = spec.get("_target_") if isinstance(spec, DictConfig) else None
    if target is None:
        raise ConfigError(f"hooks.{name}._target_ is missing: each hook needs a _target_ "
                          "naming an lm.hooks.Hook subclass")
    cls = _locate(str(target), f"hooks.{name}._target_")
    if not (isinstance(cls, type) and issubclass(cls, Hook)):
        raise ConfigError(f"hooks.{name}._target_={target} is invalid: must be an lm.hooks.Hook "
                          "subclass (ForwardHook, BackwardHook, UpdateHook or AuxLossHook)")
    try:
        hook = hydra.utils.instantiate(spec, _convert_="all")
    except Exception as err:  # noqa: BLE001 - Hydra wraps the constructor's error
        cause = err.__cause__ or err
        raise ConfigError(f"hooks.{name}: {first_line(cause)}") from None
    hook.name = name
    return hook


def _locate(path: str, key: str) -> object:
    """The object at dotted ``path`` (``package.module.Class``).

    Raises:
        ConfigError: nothing importable is there (an import failing inside that
            module is named as such).
    """
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module and not module.startswith(f"{err.name}."):  # a dependency
                raise ConfigError(f"{key}={path} is invalid: importing {module}: {err}") from None
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ConfigError(f"{key}={path} is invalid: cannot be imported")


def _meta_model(cfg: DictConfig, config: GPTConfig | None = None) -> GPT:
    try:
        if config is None:
            config = GPTConfig(**OmegaConf.to_container(cfg.model, resolve=True))
        if config.vocab_size is None:  # a copy: the caller's config keeps its None
            config = dataclasses.replace(config, vocab_size=PLACEHOLDER_VOCAB)
        with torch.device("meta"):
            return GPT(config)
    except ValueError as err:
        raise ConfigError(str(err)) from None
