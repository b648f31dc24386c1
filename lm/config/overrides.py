"""A command line, read before Hydra runs it: argv split into flags and overrides,
free text quoted for Hydra's grammar, and every override checked, with one line saying
what is wrong (``check_overrides``), so that a bad one costs no run dir and no dozen lines
of Hydra's.
"""

import argparse
import functools
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lm.config.compose import CONF_DIR, compose_config, group_options, searchpath_dirs
from lm.config.schema import schema_error_line, unknown_key_line
from lm.config.validate import device_problem, unknown_key
from lm.errors import ConfigError, first_line

# --- the command line: flags, overrides, quoting ----------------------------------------


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


def only_prints(argv: Sequence[str]) -> bool:
    """Whether a command line only prints (``--help``, ``--hydra-help``, ``--cfg``,
    ``--info``), so that nothing it names needs to run here (``lm train trainer=gpu
    --cfg job`` on a laptop)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_intermixed_args(list(argv))
    return bool(args.help or args.hydra_help or args.cfg or args.info)


def named_positionals(argv: list[str], keys: Sequence[str]) -> list[str]:
    """``argv`` with its leading arguments that are neither flags nor ``key=value``
    written as ``key=value`` for ``keys`` in order (more of them than keys: left as they
    are, for the override check to name)."""
    named, keys = [], list(keys)
    for arg in argv:
        if keys and not arg.startswith("-") and "=" not in arg:
            arg = f"{keys.pop(0)}={arg}"
        named.append(arg)
    return named


def quote_verbatim(argv: list[str], keys: Sequence[str]) -> list[str]:
    """``argv`` with each ``key=value`` of ``keys`` rewritten as ``key='value'``, quoted
    for Hydra's grammar so that the value reaches the command exactly as typed."""
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        quoted.append(f"{key}={hydra_quote(value)}" if sep and key in keys else arg)
    return quoted


def hydra_quote(text: str) -> str:
    """``text`` as a single-quoted Hydra override value that parses back to ``text``.

    Inside quotes Hydra reads ``\\'`` as a quote and a run of backslashes before a
    quote (or the closing quote) as half as many; ``\\${`` keeps ``${`` from being an
    interpolation. Every other character stands for itself.
    """
    text = text.replace("${", "\\${")
    escaped = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), text)
    return f"'{escaped}'"


def first_sweep(overrides: list[str]) -> str | None:
    """The first override that sweeps (``seed=1,2``), or None (also when one does not
    parse: ``check_overrides`` says why)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return None
    return next((o.input_line for o in parsed if o.is_sweep_override()), None)


# --- the checks ---------------------------------------------------------------------


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


def schema_check(schema: type | None) -> Callable:
    """For ``check_overrides``: one line if a composed config does not fit ``schema``
    (required keys may still be unset: ``--help`` and ``--cfg`` need none). Without a
    schema the config is ``conf/train.yaml``'s (``lm inspect``): train's key check."""
    def check(cfg, multirun: bool) -> str | None:
        if schema is None:
            return unknown_key(cfg)
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        try:
            OmegaConf.merge(OmegaConf.structured(schema), cfg)
        except OmegaConfBaseException as err:
            return schema_error_line(err, cfg, schema)
        return None

    return check


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


def _can_create_in(directory: Path) -> bool:
    """Whether a directory can be made in ``directory`` (tried: permission bits do not
    tell for root or read-only file systems)."""
    try:
        os.rmdir(tempfile.mkdtemp(dir=directory, prefix=".lm-probe-"))
    except OSError:
        return False
    else:
        return True


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
