"""``lm <command> [settings]``: one entry point for every tool (also ``python -m lm``).

Every command that takes settings takes them as ``lm train`` does: Hydra composes
``conf/<command>.yaml`` with ``key=value`` (and ``group=option``) overrides, so
``lm <command> --help`` lists the keys with their defaults and ``--cfg job`` prints the
composed config. The overrides are checked before Hydra starts
(``lm.config.overrides.check_overrides``); a bad one, like any ``ValueError`` a command
raises, is one ``error:`` line and exit code 2. Only ``lm train`` sweeps (``-m``);
commands other than ``train`` make no run dir and write no log (``conf/command.yaml``).
``lm compare`` keeps its flags (``PATHS... --baseline SPEC``): paths are not settings.
However it starts (``lm``, ``python -m lm``, ``python lm/train.py``), the user's own
modules (a hook's ``_target_``) import from the working directory
(``import_from_working_dir``).

The tables below are the whole interface: each command's function, and for a Hydra
command its config and the dataclass that types it (its defaults live in the YAML).
How a row runs is ``lm/config/app.py``'s (``Command``, ``run_hydra``). A command's module
is imported only when it runs, so ``lm --help`` is instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from lm.config.app import Command, closed_stdout, fail, load, run_hydra

BENCHMARKS: dict[str, Command] = {  # lm bench <name> [settings]
    "train": Command("tokens/s: the harness against a plain PyTorch loop",
                     "lm.bench.train:bench_train", "bench_train", "lm.bench:BenchTrainConfig"),
    "tokenizer": Command("BPE training time and encode MB/s against tiktoken",
                         "lm.bench.tokenizer:bench_tokenizer", "bench_tokenizer",
                         "lm.bench:BenchTokenizerConfig"),
    "generate": Command("greedy tokens/s with and without the KV cache, and Hugging Face's",
                        "lm.bench.generate:bench_generate", "bench_generate",
                        "lm.bench:BenchGenerateConfig"),
    "gpu": Command("training tokens/s and MFU on a GPU, bf16 + compile: models=[medium,gpt2]",
                   "lm.bench.gpu:bench_gpu", "bench_gpu", "lm.bench:BenchGpuConfig"),
    "speedrun": Command("time to a target val/loss: speedrun recipe against the baseline",
                        "lm.bench.speedrun:bench_speedrun", "bench_speedrun",
                        "lm.bench:BenchSpeedrunConfig"),
    "prepare": Command("lm prepare MB/s and peak memory against fineweb.py's Pool + tiktoken",
                       "lm.bench.prepare:bench_prepare", "bench_prepare",
                       "lm.bench:BenchPrepareConfig"),
}

COMMANDS: dict[str, Command] = {
    "train": Command("train a GPT from conf/train.yaml + overrides",
                     "lm.commands.train:train_command", "train", sweeps=True),
    "generate": Command("sample text from a checkpoint", "lm.commands.generate:generate_command",
                        "generate", "lm.commands.generate:GenerateConfig",
                        verbatim=("prompt", "stop")),
    "evaluate": Command("val/loss, val/ppl, val/bpb of a checkpoint",
                        "lm.commands.evaluate:evaluate_command", "evaluate",
                        "lm.commands.evaluate:EvaluateConfig"),
    "inspect": Command("every hook point of a model with its shape",
                       "lm.commands.inspect:inspect_command", "inspect"),
    "analyze": Command("attention, logit lens, patching, attribution, head scores of a checkpoint",
                       "lm.commands.analyze:analyze_command", "analyze",
                       "lm.commands.analyze:AnalyzeConfig",
                       verbatim=("prompt", "prompt_corrupt", "target", "contrast", "names")),
    "merge": Command("fold an adapter run's LoRA weights into a plain checkpoint",
                     "lm.commands.merge:merge_command", "merge", "lm.commands.merge:MergeConfig",
                     verbatim=("ckpt", "out"), positional=("ckpt", "out")),
    "prepare": Command("tokenize a large corpus in parallel into token shards + manifest",
                       "lm.commands.prepare:prepare_command", "prepare",
                       "lm.commands.prepare:PrepareCommandConfig"),
    "compare": Command("baseline vs ablations: table with CIs and plots",
                       "lm.commands.compare:main"),
    "convert": Command("import / export Hugging Face GPT-2 checkpoints",
                       "lm.commands.convert:convert_command", "convert",
                       "lm.commands.convert:ConvertConfig"),
    "bench": Command(f"benchmarks: lm bench {' | '.join(BENCHMARKS)}", "lm.cli:bench"),
    "classify": Command("two-moons classification with the scalar autograd engine",
                        "lm.commands.classify:classify_command", "classify",
                        "lm.commands.classify:ClassifyConfig"),
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


def bench(argv: list[str]) -> int:
    """``lm bench <name> [settings]``: one benchmark of ``BENCHMARKS``."""
    return dispatch("lm bench", BENCHMARKS, argv)


def settings(name: str, *overrides: str) -> Any:
    """The typed config that ``lm <name> overrides...`` composes (``"bench train"`` for a
    benchmark), without running it: for tests and notebooks.

    Raises:
        ValueError: one line, as the command would print it.
    """
    from lm.config.compose import compose_config
    from lm.config.overrides import quote_verbatim
    from lm.config.schema import typed

    prog, _, sub = name.partition(" ")
    command = BENCHMARKS[sub] if prog == "bench" else COMMANDS[name]
    cfg = compose_config(quote_verbatim(list(overrides), command.verbatim),
                         config_name=command.config)
    return typed(cfg, load(command.schema)) if command.schema else cfg
