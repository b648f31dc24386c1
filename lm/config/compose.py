"""Composing a config: ``conf/<name>.yaml`` and overrides through Hydra's compose API.

``register_configs`` is the hook every entry point calls first (importing registers
nothing): the schemas (``schema.py``) and the resolvers the YAML uses. ``config_groups``
lists, for ``--help``, the options a user can choose in each group.
"""

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from lm.config.schema import store_schemas
from lm.hooks.build import hook_order
from lm.training.hashing import register_resolvers
from lm.training.naming import register_resolver as register_label_resolver

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def register_configs() -> None:
    """Register what ``conf/train.yaml`` needs: the schemas with Hydra's ConfigStore
    (``store_schemas``) and the ``${hook_order:}``, ``${config_hash:}``, ``${run_label:}``
    and ``${config_groups:}`` (``--help``) resolvers (idempotent; ``compose_config`` and
    the ``lm`` commands call it, importing does not).
    """
    if not OmegaConf.has_resolver("hook_order"):
        OmegaConf.register_new_resolver("hook_order", hook_order)
    if not OmegaConf.has_resolver("config_groups"):
        OmegaConf.register_new_resolver("config_groups", config_groups)
    register_resolvers()
    register_label_resolver()
    store_schemas()


def compose_config(overrides: Sequence[str] = (), with_hydra: bool = False,
                   config_name: str = "train") -> DictConfig:
    """``conf/<config_name>.yaml`` (default ``train.yaml``) composed with ``overrides``
    through Hydra's compose API (with the ``hydra`` node too if ``with_hydra``).

    For code outside ``@hydra.main`` (tests, the benchmark): pass
    ``paths.output_dir=...``, since there is no Hydra run dir to interpolate.
    """
    register_configs()
    inside_app = GlobalHydra.instance().is_initialized()  # an lm command's @hydra.main: conf/
    with nullcontext() if inside_app else hydra.initialize_config_dir(
            config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra.compose(config_name=config_name, overrides=list(overrides),
                             return_hydra_config=with_hydra)


def group_options(group: str, dirs: Sequence[Path]) -> list[str]:
    """The options of config group ``group`` a user can choose, sorted: its YAML files in
    ``dirs``. The schemas registered in the ConfigStore (``optimizer/adamw_schema``) are
    not options: an option file opts in to one (``store_schemas``)."""
    return sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})


def searchpath_dirs(overrides: Sequence[str]) -> list[Path]:
    """The directories of the ``file://`` entries of a ``hydra.searchpath=[...]``
    override (relative ones from the working directory, as Hydra reads them); [] if there
    is none or it does not parse (``check_overrides`` says why)."""
    for override in overrides:
        if override.lstrip("+~").partition("=")[0] != "hydra.searchpath":
            continue
        try:
            value = OverridesParser.create().parse_override(override).value()
        except HydraException:
            return []
        return _file_dirs(value if isinstance(value, list) else [value])
    return []


def _file_dirs(searchpath: Sequence[Any]) -> list[Path]:
    return [Path(str(e).removeprefix("file://")) for e in searchpath if str(e).startswith("file://")]


def config_groups(*, _root_: DictConfig) -> str:
    """Resolver ``${config_groups:}`` of the ``--help`` templates: a line
    ``group: option, ...`` for each config group a user can choose, as Hydra's
    ``$APP_CONFIG_GROUPS`` would list them less what no override can pick: the schemas
    (``group_options``), groups only other options pick (``model/base``, not in the
    composed config's choices) and a group whose one option is already its choice
    (``callbacks: default``; ``hparams_search``, null by default, stays). "" for a
    config without groups."""
    hydra_node = _root_.hydra
    dirs = [CONF_DIR, *_file_dirs(hydra_node.get("searchpath") or [])]
    lines = []
    for group, choice in sorted(hydra_node.runtime.choices.items()):
        options = [] if group.startswith("hydra/") else group_options(group, dirs)
        if options and options != [choice]:
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)
