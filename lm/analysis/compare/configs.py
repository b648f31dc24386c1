"""What a run's config is compared on: ``comparable_config`` (the resolved config as the
config hash sees it, defaults included) and ``config_diff`` (the keys two such configs
differ in). Group names (``labels.py``) and the baseline spec (``runs.py``) read these.
"""

import copy
from dataclasses import dataclass, field
from typing import Any

from lm.training.hashing import (
    CONTENT_KEYS,
    MISSING_KEY,
    fill_neutral_defaults,
    get_dotted,
    parent_node,
)

ABSENT = "(absent)"  # a key one config has and the other lacks (and that has no default)


@dataclass(frozen=True)
class Content:
    """A ``CONTENT_KEYS`` path in ``comparable_config``: equal to another by the SHA-256 of what
    it held (None: unreadable), as in the config hash, and shown by its path."""

    path: str = field(compare=False)
    sha256: str | None


def comparable_config(hashable: dict, resolved: dict) -> dict:
    """What a run's group is named by and diffed on: its resolved config without
    ``HASH_EXCLUDED_KEYS`` (keys that cannot change the numbers), defaults included.

    Built from ``hashable`` (the run's ``hashable_config``), which leaves out a
    ``HASH_NEUTRAL_DEFAULTS`` key at its default: each such key it lacks is put back at its
    default (``fill_neutral_defaults``, as the HParams tab's ``settings`` fills one), which
    also fills a key that an older ``config.yaml`` predates. Each
    ``CONTENT_KEYS`` digest ``{"sha256": ...}`` becomes a ``Content`` with the path from
    ``resolved``, still compared by digest. Apart from the paths shown, it follows from
    ``hashable`` alone, so the runs of a group share it.
    """
    values = fill_neutral_defaults(copy.deepcopy(hashable), new_groups=True)
    for dotted in CONTENT_KEYS:
        parent, leaf = parent_node(values, dotted, create=False)
        digest = None if parent is None else parent.get(leaf)
        if isinstance(digest, dict) and "sha256" in digest:
            parent[leaf] = Content(str(lookup(resolved, dotted)), digest["sha256"])
    return values


def lookup(tree: dict, dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``, or ``ABSENT``."""
    value = get_dotted(tree, dotted)
    return ABSENT if value is MISSING_KEY else value


def without_seed(config: dict) -> dict:
    """``config`` without its top-level ``seed`` (nor ``data.eval_seed``, which the hash
    leaves out where it equals ``seed``: a seed sweep is one group either way)."""
    config = {k: v for k, v in config.items() if k != "seed"}
    if isinstance(config.get("data"), dict) and "eval_seed" in config["data"]:
        config["data"] = {k: v for k, v in config["data"].items() if k != "eval_seed"}
    return config


def config_diff(base: dict, other: dict) -> list[tuple[str, Any, Any]]:
    """``(dotted key, base value, other value)`` for each key that differs, sorted by key.

    Give it ``comparable_config``s (or hashable configs): keys that cannot change the numbers
    are already out. ``seed`` is ignored; a missing key reads ``ABSENT``. A
    node present on one side only is one change (adding a hook is one ablation, however
    many keys its YAML has), and ``hooks.order`` counts only when the same hooks were
    reordered: when hooks are added or removed, their nodes already say so.
    """
    diff = _node_diff(without_seed(base), without_seed(other), "")
    return [d for d in diff if d[0] != "hooks.order" or _same_members(d[1], d[2])]


def _node_diff(a: dict, b: dict, prefix: str) -> list[tuple[str, Any, Any]]:
    out = []
    for key in sorted(a.keys() | b.keys()):
        old, new = a.get(key, ABSENT), b.get(key, ABSENT)
        if isinstance(old, dict) and isinstance(new, dict):
            out += _node_diff(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append((f"{prefix}{key}", old, new))
    return out


def _same_members(old: Any, new: Any) -> bool:
    return isinstance(old, list) and isinstance(new, list) and sorted(old) == sorted(new)
