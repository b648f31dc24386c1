"""``lm <command> [settings]``: one entry point for every tool (also ``python -m lm``).

Each command maps to a function ``f(argv) -> exit code`` in the module that owns it,
imported only when that command runs, so ``lm --help`` is instant.
"""

import importlib
import sys
from collections.abc import Sequence

# name -> (module:function, one-line summary)
COMMANDS = {
    "train": ("lm.training.run:command", "train a GPT from conf/train.yaml + overrides"),
    "generate": ("lm.commands.generate:main", "sample text from a checkpoint"),
    "evaluate": ("lm.commands.evaluate:main", "val/loss, val/ppl, val/bpb of a checkpoint"),
    "inspect": ("lm.commands.inspect:main", "every hook point of a model with its shape"),
    "compare": ("lm.analysis.compare:main", "baseline vs ablations: table with CIs and plots"),
    "convert": ("lm.interop.hf:main", "import / export Hugging Face GPT-2 checkpoints"),
    "bench": ("lm.bench.train:main", "benchmarks (train, tokenizer, generate)"),
    "classify": ("lm.reference.classify:main", "the scalar autograd engine's demo"),
}


def usage() -> str:
    """``lm --help``: the commands and what each does."""
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())
    return (f"usage: lm <command> [settings]   (lm <command> --help for its settings)\n\n"
            f"commands:\n{rows}")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to its command; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module, function = COMMANDS[argv[0]][0].split(":")
    return getattr(importlib.import_module(module), function)(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
