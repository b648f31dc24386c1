"""The typed config schema and the checks that run before any work.

Hydra composes ``conf/train.yaml`` onto ``TrainConfig`` (registered below as
``train_schema``), so every key has a type and a misspelt key is an error; the values
come from the YAML files. ``validate`` then checks the ranges that
types cannot express and raises ``ConfigError`` with one line naming the key, the
value and the rule. ``lm/train.py`` turns that into exit code 2.
"""

import argparse
import dataclasses
import difflib
import functools
import inspect
import os
import pydoc
import tempfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lm.adapters.build import adapter_name, check_adapter, check_adapter_layers
from lm.errors import ConfigError, first_line
from lm.hooks.base import Hook
from lm.hooks.build import build_hooks, hook_order
from lm.model import GPT, GPTConfig
from lm.training.finetune import (
    InitCheckpoint,
    check_adapter_needs_init,
    check_tokenizer_fits,
    fitted_model_config,
    is_checkpoint,
    read_init_checkpoint,
)
from lm.training.naming import register_resolver as register_label_resolver
from lm.training.registry import register_resolvers

# The schema gives each key its type; its value is written once, in conf/ (with its
# purpose and range beside it), so a field that a YAML file always sets has no default
# here (OmegaConf reads it as MISSING, ``???``, until the YAML fills it in). A default
# stays only where some option leaves the key out (``data.tokenizer.vocab_size`` and
# ``path``; ``model`` takes ``GPTConfig``'s, e.g. ``layer_norm_epsilon``).


@dataclass
class PathsConfig:
    data_dir: str
    output_dir: str


@dataclass
class TokenizerConfig:
    name: str
    vocab_size: int | None = None  # bpe only: bytes + merges + special tokens
    path: str | None = None  # bpe only: read GPT-2's vocab.json + merges.txt from here


@dataclass
class DataConfig:
    source: str
    path: str | None
    tokenizer: TokenizerConfig
    val_fraction: float
    batch_size: int
    eval_iters: int
    eval_batch_size: int | None
    eval_seed: int = 1337  # the validation batches' own seed (lm/data/datamodule.py)
    max_unk_fraction: float = 0.05  # <unk> share a split may hold (lm/data/datamodule.py)


@dataclass
class PartialConfig:
    """A constructor that ``hydra.utils.instantiate`` returns as a partial, completed in
    code (the optimizer with the parameter groups, the schedule with the optimizer)."""

    _target_: str
    _partial_: bool


@dataclass
class AdamWConfig(PartialConfig):
    lr: float
    betas: list[float]
    eps: float
    weight_decay: float


@dataclass
class SGDConfig(PartialConfig):
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float


@dataclass
class MuonConfig(PartialConfig):
    lr: float
    momentum: float
    nesterov: bool
    ns_steps: int
    ns_dtype: str
    weight_decay: float
    adjust_lr_fn: str | None
    adamw_lr: float
    adamw_betas: list[float]
    adamw_eps: float
    adamw_weight_decay: float


@dataclass
class CosineConfig(PartialConfig):
    warmup_steps: int
    decay_steps: int
    min_lr_ratio: float


@dataclass
class ConstantConfig(PartialConfig):
    warmup_steps: int


@dataclass
class WSDConfig(PartialConfig):
    warmup_steps: int
    total_steps: int
    decay_fraction: float
    min_lr_ratio: float
    decay_shape: str


@dataclass
class TrainerConfig:
    _target_: str
    accelerator: str
    devices: int
    precision: str
    max_steps: int
    val_check_interval: int
    check_val_every_n_epoch: int | None
    num_sanity_val_steps: int
    gradient_clip_val: float
    gradient_clip_algorithm: str
    accumulate_grad_batches: int
    deterministic: bool
    benchmark: bool
    log_every_n_steps: int
    enable_progress_bar: bool
    enable_model_summary: bool
    compile: bool  # not a Trainer argument: LMModule's (torch.compile)
    strategy: str = "auto"  # auto | ddp | fsdp (lm/training/strategies.py)
    num_nodes: int = 1
    peak_tflops: float | None = None  # not a Trainer argument: LMModule's (wallclock/mfu)


@dataclass
class AdapterConfig:
    """``conf/adapter/``: ``none`` sets the name only; ``lora`` adds ``r``, ``alpha``,
    ``dropout`` and ``targets``; ``qlora`` adds ``quantize``, ``block_size`` and
    ``double_quant`` (lm/adapters/build.py)."""

    name: str
    r: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    targets: list[str] | None = None
    quantize: list[str] | None = None
    block_size: int | None = None
    double_quant: bool | None = None


@dataclass
class SampleConfig:
    prompt: str
    max_new_tokens: int
    temperature: float
    top_k: int | None


@dataclass
class TrackingConfig:
    registry_dir: str
    skip_completed: bool
    checkpoint_every_n_steps: int
    divergence_guard: bool
    retry_diverged: bool
    target_loss: float | None
    min_val_points: int | None = 5  # validations per run at least (registry.val_check_interval)


@dataclass(kw_only=True)  # so fields without defaults may follow those with, in key order
class TrainConfig:
    """The whole run. Groups with open-ended keys (optimizer, scheduler, logger, hooks)
    are typed by their own option schemas below or their constructors, and checked by
    ``validate``."""

    seed: int
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig
    optimizer: Any
    scheduler: Any
    trainer: TrainerConfig
    logger: Any = field(default_factory=dict)
    paths: PathsConfig
    sample: SampleConfig
    # hooks.<name>: one node per chosen conf/hooks option; hooks.order: their order (see
    # lm/hooks/build.py). Default: no hooks.
    hooks: Any = field(default_factory=lambda: {"order": "${hook_order:}"})
    # callbacks.<name>: one Lightning callback each, by _target_ (conf/callbacks/); each
    # node's keys are checked against its constructor (unknown_key). Default: none.
    callbacks: Any = field(default_factory=dict)
    tracking: TrackingConfig
    resume: str
    init_from: str | None  # a .ckpt of lm train, or a Hugging Face GPT-2 dir, whose weights start the run
    # Fine-tuning adapters (conf/adapter/); a config without the node (an older run) has none.
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(name="none"))

def register_configs() -> None:
    """Register what ``conf/train.yaml`` needs: the schemas with Hydra's ConfigStore and
    the ``${hook_order:}``, ``${config_hash:}`` and ``${config_groups:}`` (``--help``)
    resolvers (idempotent; ``compose_config`` and the ``lm`` commands call it, importing
    does not).

    An option file opts in to its schema through its defaults list
    (``conf/optimizer/adamw.yaml``: ``defaults: [adamw_schema, _self_]``); a new option
    without a schema still works, untyped, and is range-checked by ``validate``.
    """
    if not OmegaConf.has_resolver("hook_order"):
        OmegaConf.register_new_resolver("hook_order", hook_order)
    if not OmegaConf.has_resolver("config_groups"):
        OmegaConf.register_new_resolver("config_groups", config_groups)
    register_resolvers()
    register_label_resolver()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="optimizer", name="adamw_schema", node=AdamWConfig)
    cs.store(group="optimizer", name="sgd_schema", node=SGDConfig)
    cs.store(group="optimizer", name="muon_schema", node=MuonConfig)
    cs.store(group="scheduler", name="cosine_schema", node=CosineConfig)
    cs.store(group="scheduler", name="constant_schema", node=ConstantConfig)
    cs.store(group="scheduler", name="wsd_schema", node=WSDConfig)


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


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


def unknown_choice(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> str | None:
    """One line naming the first ``group=option`` override whose option file does not
    exist (``model=nosuch``, ``'hooks=[z_loss,nosuch]'``, ``-m optimizer=adamw,nosuch``)
    and the options there are; None if every choice exists.

    Hydra would say the same over a dozen lines; this is checked before it composes.
    Option files are looked for in ``conf_dir`` and the ``file://`` dirs of a
    ``hydra.searchpath=[...]`` override (a user's own ``conf/hooks/``). Overrides with
    sweep functions (``range(...)``, ``glob(...)``) and Hydra's own groups
    (``hydra/launcher=...``) are left to Hydra.
    """
    dirs = [conf_dir, *searchpath_dirs(overrides)]
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep or key.startswith("hydra/") or "(" in value or not any((d / key).is_dir() for d in dirs):
            continue
        available = group_options(key, dirs)
        for option in value.strip("[]").split(","):
            option = option.strip()
            if option and option not in available:
                return f"{key}={option} is not an option; available: {', '.join(available)}"
    return None


def group_options(group: str, dirs: Sequence[Path]) -> list[str]:
    """The options of config group ``group`` a user can choose, sorted: its YAML files in
    ``dirs``. The schemas registered in the ConfigStore (``optimizer/adamw_schema``) are
    not options: an option file opts in to one (``register_configs``)."""
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


# The typed nodes of the config and the keys each may hold. Hydra's ``+key=value``
# appends a key even to a typed node, so ``validate`` checks these itself. The trainer
# also takes any other argument of ``lightning.Trainer`` (``+trainer.max_time=...``).
SCHEMA_NODES: dict[str, type] = {
    "": TrainConfig, "model": GPTConfig, "data": DataConfig, "data.tokenizer": TokenizerConfig,
    "trainer": TrainerConfig, "paths": PathsConfig, "sample": SampleConfig,
    "tracking": TrackingConfig, "adapter": AdapterConfig,
}


def allowed_keys(node: str) -> set[str]:
    """The keys the typed config node ``node`` (a ``SCHEMA_NODES`` key) may hold."""
    keys = {f.name for f in fields(SCHEMA_NODES[node])}
    if node == "trainer":
        import lightning

        keys |= set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
    return keys | ({"hydra"} if node == "" else set())


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


def unknown_key_line(full_key: str, allowed: set[str]) -> str:
    """``<key> is not a config key; closest: <keys> (<node> keys: ...)``."""
    node, _, leaf = full_key.rpartition(".")
    prefix = f"{node}." if node else ""
    close = difflib.get_close_matches(leaf, sorted(allowed), n=3, cutoff=0.5)
    hint = f"closest: {', '.join(prefix + c for c in close)}; " if close else ""
    shown = sorted(k for k in allowed if not k.startswith("_"))
    listed = ", ".join(shown) if len(shown) <= 25 else ", ".join(shown[:25]) + ", ..."
    return f"{full_key} is not a config key; {hint}{node or 'top-level'} keys: {listed}"


def _keys(node: str) -> str:
    return ", ".join(sorted(allowed_keys(node)))


def check_overrides(argv: Sequence[str], config_name: str = "train",
                    check: Callable[[DictConfig, bool], str | None] | None = None) -> str | None:
    """One line saying what is wrong with the command line of ``lm train`` (or of the
    command that composes ``conf/<config_name>.yaml``), or None.

    Checked before Hydra starts (which would print a dozen lines and make a run dir):
    unknown flags, unknown group options, overrides that do not parse, keys that do not
    exist (with the closest), values of the wrong type, then ``check(cfg, multirun)`` on
    each composed config (default: train's, keys no schema has, output dirs that
    cannot be written and, unless the command only prints, a trainer this machine cannot
    run: ``device_problem``). A sweep (``-m a=1,2``) is composed with each of its values.
    Sweeps by function (``range``, ``interval``) are left to Hydra.
    """
    try:
        overrides, multirun = split_argv(argv)
    except ConfigError as err:
        return str(err)
    if problem := unknown_choice(overrides):
        return problem
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        return first_line(err)
    check = check or functools.partial(_train_checks, runs=not only_prints(argv))
    for variant in _variants(parsed, multirun):
        if isinstance(variant, str):
            return variant
        try:
            cfg = compose_config(variant, with_hydra=True, config_name=config_name)
        except (HydraException, OmegaConfBaseException) as err:
            return compose_error_line(err, variant, config_name)
        if problem := check(cfg, multirun):
            return problem
    return None


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"  # jobs in this process


def _train_checks(cfg: DictConfig, multirun: bool, runs: bool = True) -> str | None:
    # A launcher other than Hydra's basic one may run the jobs on other machines (SLURM
    # GPU nodes): there each job's validate checks the devices.
    here = runs and (not multirun or cfg.hydra.launcher.get("_target_") == BASIC_LAUNCHER)
    return (unknown_key(cfg) or unwritable_output(cfg, multirun)
            or (device_problem(cfg.trainer, _trainer_choice(cfg)) if here else None))


def _trainer_choice(cfg: DictConfig) -> str | None:
    """``trainer=<option>`` if that option set the accelerator of ``cfg`` (composed with
    its ``hydra`` node); None where an override or an experiment may have set it."""
    choices, task = cfg.hydra.runtime.choices, cfg.hydra.overrides.task
    if choices.get("experiment") is not None or any(
            o.lstrip("+~").startswith("trainer.accelerator=") for o in task):
        return None
    return f"trainer={choices.get('trainer')}"


def only_prints(argv: Sequence[str]) -> bool:
    """Whether a command line only prints (``--help``, ``--hydra-help``, ``--cfg``,
    ``--info``), so that nothing it names needs to run here (``lm train trainer=gpu
    --cfg job`` on a laptop)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_intermixed_args(list(argv))
    return bool(args.help or args.hydra_help or args.cfg or args.info)


def split_argv(argv: Sequence[str]) -> tuple[list[str], bool]:
    """(the overrides, whether ``-m``/``--multirun`` is given) of a command line, read
    by the parser ``@hydra.main`` uses, so ``--cfg job`` or ``--help`` are set aside.

    Raises:
        ConfigError: one line, for an unknown flag or a flag without its value.
    """
    from hydra._internal.utils import get_args_parser  # @hydra.main's own parser

    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        args, unknown = parser.parse_known_intermixed_args(list(argv))
    except argparse.ArgumentError as err:
        raise ConfigError(str(err)) from None
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a flag (--hydra-help lists them) nor key=value")
    return args.overrides, args.multirun


def unwritable_output(cfg: DictConfig, multirun: bool) -> str | None:
    """One line if the run (or sweep) dir Hydra is about to make, or the registry, cannot
    be created: its nearest existing ancestor is not a writable directory."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    for name, value in ((key, OmegaConf.select(cfg, key)),
                        ("tracking.registry_dir", cfg.tracking.registry_dir)):
        path = Path(str(value)).absolute()
        ancestor = next(p for p in (path, *path.parents) if p.exists())
        if not (ancestor.is_dir() and _can_create_in(ancestor)):
            return (f"{name}={value} cannot be written: {ancestor} is not a writable "
                    "directory; pick another path")
    return None


def _variants(parsed: list, multirun: bool) -> list:
    """Override lists to compose: each sweep's first value, then each other value in
    turn; or one line if a sweep is given without ``-m``."""
    base, sweeps = [], []
    for o in parsed:
        text = o.input_line
        if not o.is_sweep_override():
            base.append(text)
            continue
        if not multirun:
            return [f"{text} is a sweep: add -m (--multirun) to run one job per value"]
        try:
            values = list(o.sweep_string_iterator())
        except Exception:  # noqa: BLE001, S112 - range/interval/glob sweeps: Hydra checks them
            continue
        sweeps.append((o.get_key_element(), values))
    first = base + [f"{key}={values[0]}" for key, values in sweeps if values]
    variants = [first]
    for i, (key, values) in enumerate(sweeps):
        others = [f"{k}={v[0]}" for j, (k, v) in enumerate(sweeps) if j != i and v]
        variants += [base + others + [f"{key}={value}"] for value in values[1:]]
    return variants


def compose_error_line(err: Exception, overrides: Sequence[str], config_name: str = "train") -> str:
    """One line for a Hydra composition error: a missing key (with the closest ones) or
    a value of the wrong type."""
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    full_key = getattr(cause, "full_key", None)
    message = first_line(cause)
    if full_key and ("not in struct" in str(cause) or "Key '" in message):
        node, _, _ = full_key.rpartition(".")
        base = compose_config([o for o in overrides if not o.lstrip("+~").startswith(full_key)],
                              config_name=config_name)
        sub = OmegaConf.select(base, node) if node else base
        allowed = set(sub.keys()) if isinstance(sub, DictConfig) else set()
        return unknown_key_line(full_key, allowed)
    if full_key:
        value = next((o.partition("=")[2] for o in overrides
                      if o.lstrip("+~").partition("=")[0] == full_key), None)
        return f"{full_key}={value} is invalid: {message}"
    return message


def _can_create_in(directory: Path) -> bool:
    """Whether a directory can be made in ``directory`` (tried: permission bits do not
    tell for root or read-only file systems)."""
    try:
        os.rmdir(tempfile.mkdtemp(dir=directory, prefix=".lm-probe-"))
    except OSError:
        return False
    else:
        return True


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
    _check(data.get("path") is None or data.source == "text_file", "data.path", data.get("path"),
           f"data.source={data.source} reads its own corpus; to train on this file: "
           f"data=text_file data.path={data.get('path')}")
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
