"""How a comparison writes things: config values as a Hydra override spells them, a
group's name (its change from the baseline) in the tables and the plots' legends, and
signed differences.
"""

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm.analysis.compare.configs import Content, config_diff, lookup
from lm.analysis.compare.runs import Group

LEGEND_VALUE_CHARS = 20  # a value longer than this is shortened in a plot's legend
LEGEND_CHARS = 60  # and a whole legend label


def describe_diff(diff: Sequence[tuple[str, Any, Any]]) -> str:
    """``model.n_layer: 4 -> 6; optimizer.lr: 1e-3 -> 3e-4`` (values: ``format_value``)."""
    return "; ".join(f"{key}: {format_value(old)} -> {format_value(new)}"
                     for key, old, new in diff)


def format_value(value: Any) -> str:
    """A config value as a Hydra override spells it (``3e-4``, ``true``, ``null``,
    ``[0.9,0.99]``, ``{a:1}``); a ``Content`` as ``<path> (sha256 <8 hex>)``."""
    if isinstance(value, Content):
        return f"{value.path} (sha256 {(value.sha256 or '?')[:8]})"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, list):
        return "[" + ",".join(map(format_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def format_float(x: float) -> str:
    """``x`` as written by hand: ``3e-4``, ``1.5e-3`` and ``1e6`` (the shortest exponent
    form that reads back as ``x``) below 0.01 or from 1e5 on, ``repr(x)`` otherwise."""
    if not math.isfinite(x) or x == 0 or 1e-2 <= abs(x) < 1e5:
        return repr(x)
    text = next(t for t in (f"{x:.{d}e}" for d in range(17)) if float(t) == x)
    mantissa, _, power = text.partition("e")
    return f"{mantissa}e{int(power)}"


def legend_value(value: Any) -> str:
    """``format_value`` for a plot's legend: a ``Content`` by file name and 6 hex of its
    digest, and any value over ``LEGEND_VALUE_CHARS`` cut in the middle."""
    if isinstance(value, Content):
        text = f"{Path(value.path).name}@{(value.sha256 or '?')[:6]}"
    else:
        text = format_value(value)
    return cut_middle(text, LEGEND_VALUE_CHARS)


def cut_middle(text: str, width: int) -> str:
    """``text``, or its start and end around ``…`` in ``width`` characters."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def signed(value: float | None, digits: int = 4) -> str:
    """A difference with its sign to ``digits`` decimals (``+0.1500``), None as ``-``."""
    return "-" if value is None else f"{value:+.{digits}f}"


# --- group names -----------------------------------------------------------------------


def name_parts(groups: Sequence[Group], baseline: Group) -> list[list[tuple[str, Any]]]:
    """Per group, the ``(dotted key, value)`` pairs that name it: each key it changes from
    the baseline with its own value; for the baseline, its values of every key that some
    group changes (``ABSENT`` where it lacks one without a default)."""
    diffs = [config_diff(baseline.comparable, g.comparable) for g in groups]
    varying = sorted({key for diff in diffs for key, _, _ in diff})
    return [[(key, lookup(baseline.comparable, key)) for key in varying] if g is baseline
            else [(key, new) for key, _, new in diff] for g, diff in zip(groups, diffs)]


def join_parts(parts: Sequence[tuple[str, Any]], value=format_value) -> str:
    """``model.norm=rmsnorm, optimizer.lr=3e-3`` (each value through ``value``)."""
    return ", ".join(f"{key}={value(v)}" for key, v in parts)


def group_names(groups: Sequence[Group], baseline: Group) -> list[str]:
    """Each group's name in the tables and the CSV: ``baseline``, or its change from the
    baseline (``optimizer.lr=3e-3``; ``(none)`` if it changes nothing)."""
    parts = name_parts(groups, baseline)
    return ["baseline" if g is baseline else join_parts(p) or "(none)"
            for g, p in zip(groups, parts)]


def legend_names(groups: Sequence[Group], baseline: Group) -> list[str]:
    """Each group's name in the plots' legends, at most ``LEGEND_CHARS`` characters:
    ``baseline (optimizer.lr=1e-3)``, ``optimizer.lr=3e-3``, long values shortened."""
    names = []
    for group, parts in zip(groups, name_parts(groups, baseline)):
        text = join_parts(parts, legend_value)
        if group is baseline:
            text = f"baseline ({text})" if text else "baseline"
        names.append(cut_middle(text or "(none)", LEGEND_CHARS))
    return names


def baseline_values(groups: Sequence[Group], baseline: Group) -> str:
    """``baseline: optimizer.lr=1e-3``: the baseline's values of the keys that vary across
    groups (``""`` when none does)."""
    parts = name_parts(groups, baseline)[list(groups).index(baseline)]
    return f"baseline: {join_parts(parts)}" if parts else ""
