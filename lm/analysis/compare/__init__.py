"""``lm compare``: a baseline against its ablations, averaged over seeds (the command and
its flags: ``cli.py``). The modules, each importing only those above it:

- ``stats.py``: means with Student t intervals, Welch's difference, interval and p-value;
- ``configs.py``: what a run's config is compared on (``comparable_config``, ``config_diff``);
- ``runs.py``: run dirs found and read, grouped by config without ``seed``, the baseline
  spec, the ``val/loss`` curves;
- ``labels.py``: config values as overrides spell them, group names and legend labels;
- ``target.py``: time to a target ``val/loss``;
- ``plots.py``: ``curves.png`` and ``curves_time.png``;
- ``report.py``: ``compare`` (rows, flags) and ``write_report`` (the report files);
- ``cli.py``: the flags, what is printed, the exit code.
"""

from lm.analysis.compare.report import compare

__all__ = ["compare"]
