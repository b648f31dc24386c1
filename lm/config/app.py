"""An ``lm`` command as a Hydra app: its command line checked, then its function run under
``@hydra.main`` in this process, so that ``--help``, ``--cfg job``, ``--info`` and ``-m``
are Hydra's own.

``Command`` describes one row of ``lm/cli.py``'s tables; ``run_hydra`` runs it. Bad input,
and any ``ValueError`` a command raises, is one ``error:`` line and exit code 2 (``fail``).
Hydra, and the rest of ``lm.config``, are imported when a command runs, not with this
module, so that ``lm --help`` stays instant.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lm.errors import ConfigError, first_line


@dataclass(frozen=True)
class Command:
    """One ``lm`` command.

    Attributes:
        summary: one line for ``lm --help``.
        function: ``"module:function"``. With ``config``: called with the composed
            config (an instance of ``schema``, or the ``DictConfig`` when there is no
            schema) and returns an exit code or None (0); without: called with the
            command line's arguments.
        config: the primary config in ``conf/`` that Hydra composes, or None.
        schema: ``"module:dataclass"`` typing that config: its fields and their types
            (the defaults are the YAML's values). None: the config is used untyped.
        verbatim: keys whose values are free text, taken as typed rather than parsed by
            Hydra's override grammar (where ``,`` makes a sweep and ``(`` a function).
        positional: keys that leading arguments without ``=`` stand for, in order
            (``lm merge a.ckpt b.ckpt`` is ``lm merge ckpt=a.ckpt out=b.ckpt``).
        sweeps: whether ``-m`` (Hydra's multirun) may run it once per job of a sweep, as
            ``lm train`` does. Its config is then checked as a training run's
            (``check_overrides``' default: output dirs writable, the trainer's devices
            here), the keys a sweep varies are recorded for the jobs' dir names
            (``mark_swept_keys``), and ``function`` is Hydra's task function: it returns
            the job's value (what a sweeper minimises) and ends a failed job with
            ``sys.exit(code)``.
    """

    summary: str
    function: str
    config: str | None = None
    schema: str | None = None
    verbatim: tuple[str, ...] = ()
    positional: tuple[str, ...] = ()
    sweeps: bool = False


def run_hydra(prog: str, command: Command, argv: list[str]) -> int:
    """Check ``argv``, then run ``command`` under ``@hydra.main`` in this process (so
    ``--help``, ``--cfg job``, ``--info`` are Hydra's own); return the exit code."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from lm.config.compose import CONF_DIR, register_configs
    from lm.config.overrides import (
        check_overrides,
        first_sweep,
        named_positionals,
        quote_verbatim,
        schema_check,
        split_argv,
    )
    from lm.training.naming import mark_swept_keys

    argv = quote_verbatim(named_positionals(argv, command.positional), command.verbatim)
    try:
        overrides, multirun = split_argv(argv)
    except ConfigError as err:
        return fail(str(err))
    if not command.sweeps and (multirun or (sweep := first_sweep(overrides))):
        return fail(f"{'-m (--multirun)' if multirun else sweep}: sweeps are for lm train; "
                    f"{prog} runs once (quote a value that holds commas: key='a,b')")
    schema = load(command.schema) if command.schema else None
    register_configs()
    check = None if command.sweeps else schema_check(schema)  # None: a training run's
    if problem := check_overrides(argv, command.config, check=check):
        return fail(problem)
    if command.sweeps:
        mark_swept_keys(overrides)  # the jobs' dir names say what the sweep varies
    codes: list[int] = []

    def task(cfg) -> Any:
        function = load(command.function)
        if command.sweeps:  # a job: its value for the sweeper; it exits with its own code
            return function(cfg)
        codes.append(call(function, cfg, schema))
        return None

    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=command.config)
    flags = [a for a in argv if a not in overrides]  # Hydra's parser wants flags first
    saved, sys.argv = sys.argv, [prog, *flags, *overrides]  # @hydra.main reads sys.argv
    hydra_config = HydraConfig.instance().cfg  # --help and --cfg set it and leave it set
    try:
        app(task)()
    except SystemExit as exit:  # --help, --hydra-help; a training job's exit code
        return exit.code if isinstance(exit.code, int) else 0
    finally:
        sys.argv, HydraConfig.instance().cfg = saved, hydra_config
    return max(codes, default=0)


def call(function: Callable, cfg, schema: type | None) -> int:
    """``function(cfg)``, typed by ``schema``; a ``ValueError`` is one ``error:`` line, 2."""
    from lm.config.schema import typed

    try:
        return function(typed(cfg, schema) if schema else cfg) or 0
    except ValueError as err:  # ConfigError, CheckpointError, DataError are ValueErrors
        return fail(first_line(err))
    except BrokenPipeError:  # here, or Hydra prints a traceback
        return closed_stdout()


def load(target: str) -> Any:
    """The object ``"module:name"`` names, importing its module."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def fail(problem: str) -> int:
    """Print ``error: <problem>`` on stderr; return exit code 2."""
    print(f"error: {problem}", file=sys.stderr)
    return 2


def closed_stdout() -> int:
    """The reader of stdout has gone (``lm inspect | head``): stop without a traceback.
    Exit code 1, as Python's docs advise; stdout goes to devnull so that the final
    flush does not raise again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1
