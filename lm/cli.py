"""``lm <command> [settings]``: one entry point for every tool (also ``python -m lm``).

Every command that takes settings takes them as ``lm train`` does: Hydra composes
``conf/<command>.yaml`` with ``key=value`` (and ``group=option``) overrides, so
``lm <command> --help`` lists the keys with their defaults and ``--cfg job`` prints the
composed config. The overrides are checked before Hydra starts
(``lm.config.check_overrides``); a bad one, like any ``ValueError`` a command
raises, is one ``error:`` line and exit code 2. Commands other than ``train`` make no
run dir and write no log (``conf/command.yaml``). ``lm compare`` keeps its flags
(``PATHS... --baseline SPEC``): paths are not settings. However it starts (``lm``,
``python -m lm``, ``python lm/train.py``), the user's own modules (a hook's
``_target_``) import from the working directory (``import_from_working_dir``).

The tables below are the whole interface: each command's function, and for a Hydra
command its config and the dataclass that types it (its defaults live in the YAML).
A command's module is imported only when it runs, so ``lm --help`` is instant.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lm.errors import first_line


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
    """

    summary: str
    function: str
    config: str | None = None
    schema: str | None = None
    verbatim: tuple[str, ...] = ()
    positional: tuple[str, ...] = ()


BENCHMARKS: dict[str, Command] = {  # lm bench <name> [settings]
    "train": Command("tokens/s: the harness against a plain PyTorch loop",
                     "lm.bench.train:bench_train", "bench_train", "lm.bench:BenchTrainConfig"),
    "tokenizer": Command("BPE training time and encode MB/s against tiktoken",
                         "lm.bench.tokenizer:bench_tokenizer", "bench_tokenizer",
                         "lm.bench:BenchTokenizerConfig"),
    "generate": Command("greedy tokens/s with and without the KV cache",
                        "lm.bench.generate:bench_generate", "bench_generate",
                        "lm.bench:BenchGenerateConfig"),
    "gpu": Command("training tokens/s and MFU on a GPU: model=medium and model=gpt2, bf16 + compile",
                   "lm.bench.gpu:bench_gpu", "bench_gpu", "lm.bench:BenchGpuConfig"),
    "speedrun": Command("time to a target val/loss: speedrun recipe against the baseline",
                        "lm.bench.speedrun:bench_speedrun", "bench_speedrun",
                        "lm.bench:BenchSpeedrunConfig"),
}

COMMANDS: dict[str, Command] = {
    "train": Command("train a GPT from conf/train.yaml + overrides", "lm.training.run:command"),
    "generate": Command("sample text from a checkpoint", "lm.commands.generate:generate_command",
                        "generate", "lm.commands.generate:GenerateConfig",
                        verbatim=("prompt", "stop")),
    "evaluate": Command("val/loss, val/ppl, val/bpb of a checkpoint",
                        "lm.commands.evaluate:evaluate_command", "evaluate",
                        "lm.commands.evaluate:EvaluateConfig"),
    "inspect": Command("every hook point of a model with its shape",
                       "lm.commands.inspect:inspect_command", "inspect"),
    "merge": Command("fold an adapter run's LoRA weights into a plain checkpoint",
                     "lm.commands.merge:merge_command", "merge", "lm.commands.merge:MergeConfig",
                     verbatim=("ckpt", "out"), positional=("ckpt", "out")),
    "compare": Command("baseline vs ablations: table with CIs and plots",
                       "lm.analysis.compare:main"),
    "convert": Command("import / export Hugging Face GPT-2 checkpoints",
                       "lm.interop.hf:convert_command", "convert", "lm.interop.hf:ConvertConfig"),
    "bench": Command(f"benchmarks: lm bench {' | '.join(BENCHMARKS)}", "lm.cli:bench"),
    "classify": Command("two-moons classification with the scalar autograd engine",
                        "lm.reference.classify:classify_command", "classify",
                        "lm.reference.classify:ClassifyConfig"),
}


def usage(prog: str, commands: dict[str, Command]) -> str:
    """``lm --help`` (or ``lm bench --help``): the commands and what each does."""
    width = max(map(len, commands))
    rows = "\n".join(f"  {name:<{width}}  {c.summary}" for name, c in commands.items())
    return (f"usage: {prog} <command> [settings]   ({prog} <command> --help for its settings)"
            f"\n\ncommands:\n{rows}")


def dispatch(prog: str, commands: dict[str, Command], argv: list[str]) -> int:
    """Run ``argv[0]``'s command of ``commands`` with the rest of ``argv``; its exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog, commands), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        return fail(f"unknown command {prog} {name!r}; commands: {', '.join(commands)}")
    command = commands[name]
    if command.config is None:
        return load(command.function)(rest) or 0
    return run_hydra(f"{prog} {name}", command, rest)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` to its command; return the exit code (also when the command calls
    ``sys.exit``, as ``@hydra.main`` apps do). Default: this process's command line,
    ``sys.argv[1:]``, as the console script ``lm`` and ``python -m lm`` run it, whose
    modules import from the working directory (``import_from_working_dir``)."""
    if argv is None:
        import_from_working_dir()
    try:
        return dispatch("lm", COMMANDS, list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    except BrokenPipeError:
        return closed_stdout()


def import_from_working_dir() -> None:
    """Make the working directory the first place Python imports from, as ``python -m``
    does, so that a ``_target_`` naming the user's own module (``my_hooks.ResidScale``
    from ``./my_hooks.py``, README "Writing a hook") imports however ``lm`` was started.

    The rule of every entry point: ``lm`` and ``python -m lm`` (``main``) and
    ``python lm/train.py``. Python puts the directory of the script it runs at
    ``sys.path[0]``: the virtualenv's ``bin/`` for the console script ``lm``; ``lm/``
    itself for ``python lm/train.py``, where ``lm/tokenizers/`` would shadow Hugging
    Face's ``tokenizers``; the working directory already for ``python -m lm``. That entry
    is replaced.
    """
    sys.path[0] = os.getcwd()


def closed_stdout() -> int:
    """The reader of stdout has gone (``lm inspect | head``): stop without a traceback.
    Exit code 1, as Python's docs advise; stdout goes to devnull so that the final
    flush does not raise again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def bench(argv: list[str]) -> int:
    """``lm bench <name> [settings]``: one benchmark of ``BENCHMARKS``."""
    return dispatch("lm bench", BENCHMARKS, argv)


def fail(problem: str) -> int:
    """Print ``error: <problem>`` on stderr; return exit code 2."""
    print(f"error: {problem}", file=sys.stderr)
    return 2


def load(target: str) -> Any:
    """The object ``"module:name"`` names, importing its module."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


# --- Hydra commands ---------------------------------------------------------------


def run_hydra(prog: str, command: Command, argv: list[str]) -> int:
    """Check ``argv``, then run ``command`` under ``@hydra.main`` in this process (so
    ``--help``, ``--cfg job``, ``--info`` are Hydra's own); return the exit code."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from lm.config import (
        CONF_DIR,
        ConfigError,
        check_overrides,
        register_configs,
        split_argv,
    )

    argv = quote_verbatim(named_positionals(argv, command.positional), command.verbatim)
    try:
        overrides, multirun = split_argv(argv)
    except ConfigError as err:
        return fail(str(err))
    if multirun or (sweep := first_sweep(overrides)):
        return fail(f"{'-m (--multirun)' if multirun else sweep}: sweeps are for lm train; "
                    f"{prog} runs once (quote a value that holds commas: key='a,b')")
    schema = load(command.schema) if command.schema else None
    register_configs()
    if problem := check_overrides(argv, command.config, check=schema_check(schema)):
        return fail(problem)
    codes: list[int] = []

    def task(cfg) -> None:
        codes.append(call(load(command.function), cfg, schema))

    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=command.config)
    flags = [a for a in argv if a not in overrides]  # Hydra's parser wants flags first
    saved, sys.argv = sys.argv, [prog, *flags, *overrides]  # @hydra.main reads sys.argv
    hydra_config = HydraConfig.instance().cfg  # --help and --cfg set it and leave it set
    try:
        app(task)()
    except SystemExit as exit:  # --help, --hydra-help
        return exit.code if isinstance(exit.code, int) else 0
    finally:
        sys.argv, HydraConfig.instance().cfg = saved, hydra_config
    return max(codes, default=0)


def first_sweep(overrides: list[str]) -> str | None:
    """The first override that sweeps (``seed=1,2``), or None (also when one does not
    parse: ``check_overrides`` says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return None
    return next((o.input_line for o in parsed if o.is_sweep_override()), None)


def call(function: Callable, cfg, schema: type | None) -> int:
    """``function(cfg)``, typed by ``schema``; a ``ValueError`` is one ``error:`` line, 2."""
    try:
        return function(typed(cfg, schema) if schema else cfg) or 0
    except ValueError as err:  # ConfigError, CheckpointError, DataError are ValueErrors
        return fail(first_line(err))
    except BrokenPipeError:  # here, or Hydra prints a traceback
        return closed_stdout()


def typed(cfg, schema: type) -> Any:
    """``cfg`` (a ``DictConfig`` without its ``hydra`` node) as an instance of the
    dataclass ``schema``.

    Raises:
        ValueError: one line: a key the schema does not have, a value of the wrong
            type, or a required key (``???``) left unset.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
    except MissingMandatoryValue as err:
        key = err.full_key or str(err).rpartition(": ")[2].strip()
        raise ValueError(f"{key} is required: give {key}=<value> (--help lists the keys)") from None
    except OmegaConfBaseException as err:
        raise ValueError(schema_error_line(err, cfg, schema)) from None


def schema_error_line(err: Exception, cfg, schema: type) -> str:
    """One line for an OmegaConf error raised while typing ``cfg`` by ``schema``: a key
    it does not have (appended with ``+key=value``) or a value of the wrong type."""
    from dataclasses import fields

    from omegaconf import OmegaConf

    from lm.config import unknown_key_line

    key = getattr(err, "full_key", None)
    message = first_line(err)
    if key and "not in" in message:
        return unknown_key_line(key, {f.name for f in fields(schema)})
    if key:
        return f"{key}={OmegaConf.select(cfg, key)} is invalid: {message}"
    return message


def schema_check(schema: type | None) -> Callable:
    """For ``check_overrides``: one line if a composed config does not fit ``schema``
    (required keys may still be unset: ``--help`` and ``--cfg`` need none). Without a
    schema the config is ``conf/train.yaml``'s (``lm inspect``): train's key check."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from lm.config import unknown_key

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


def settings(name: str, *overrides: str) -> Any:
    """The typed config that ``lm <name> overrides...`` composes (``"bench train"`` for a
    benchmark), without running it: for tests and notebooks.

    Raises:
        ValueError: one line, as the command would print it.
    """
    from lm.config import compose_config

    prog, _, sub = name.partition(" ")
    command = BENCHMARKS[sub] if prog == "bench" else COMMANDS[name]
    cfg = compose_config(quote_verbatim(list(overrides), command.verbatim),
                         config_name=command.config)
    return typed(cfg, load(command.schema)) if command.schema else cfg
