"""``lm compare PATHS... [--baseline SPEC] [--target LOSS] [--strict] [--out DIR]``: a
baseline against its ablations, averaged over seeds, as a table with confidence
intervals and plots. The command is described and built in ``lm/analysis/compare/``
(its flags: ``cli.py``)."""

from collections.abc import Sequence

from lm.analysis.compare import cli


def main(argv: Sequence[str] | None = None) -> int:
    """``lm compare`` with ``argv`` (default: the command line); returns the exit code: 0,
    1 (``--strict`` and a group that changes more than one key), 2 (an error)."""
    return cli.main(argv)
