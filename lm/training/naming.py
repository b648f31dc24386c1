"""Run names that say what was run: ``lr:1e-3`` in a dir name, a TensorBoard run name
and the HParams tab's Trial ID, instead of a bare hash.

A run's *label* is built from its Hydra overrides: in a sweep (``-m``), only the keys
the sweep varies (``optimizer.lr=1e-4,1e-3`` -> ``lr:1e-3``); in a single run, every
override that can change the numbers (``model:tiny+max_steps:50``). Keys are shortened
to their last part where that stays unambiguous, and the label to ``MAX_LABEL``
characters; the config hash beside it in every name keeps names unique. Hydra's own
``hydra.job.override_dirname`` does the same job without the shortening or the
sweep's choice of keys, so names run to hundreds of characters.

``lm train`` records which keys its ``-m`` sweeps in ``SWEPT_KEYS_ENV`` before Hydra
starts (``mark_swept_keys``); each job's ``${run_label:}`` (``conf/train.yaml``,
``hydra.run.dir`` and ``hydra.sweep.subdir``) reads it back.
"""

import json
import os
import re
from collections.abc import Sequence

from hydra.core.hydra_config import HydraConfig

from lm.training.hashing import HASH_EXCLUDED_KEYS

SWEPT_KEYS_ENV = "LM_SWEPT_KEYS"  # JSON list of the keys a `lm train -m` sweeps
MAX_LABEL = 48  # characters of the overrides part of a name
MAX_VALUE = 16  # characters of one value in it

# Overrides that change nothing a name should say: the keys left out of the config hash
# (where things go, how often logs are written, the sweeper and launcher's settings).
_UNNAMED = re.compile(rf"^({'|'.join(map(re.escape, HASH_EXCLUDED_KEYS))})([./]|$)")
# Characters kept in a name: those Hydra reads unquoted in an override's value, so a
# path through the dir can be passed as it is (ckpt=<run dir>/checkpoints/best.ckpt);
# "=" and "," are not among them, hence key:value pairs joined by "+".
_UNSAFE = re.compile(r"[^A-Za-z0-9._:+@-]")


def override_key(override: str) -> str:
    """The key of a Hydra override: ``+optimizer.lr=1`` -> ``optimizer.lr``,
    ``data/tokenizer=bpe`` -> ``data/tokenizer``."""
    return override.split("=", 1)[0].lstrip("+~")


def swept_keys(overrides: Sequence[str]) -> list[str]:
    """The keys of the sweep overrides among command-line ``overrides``
    (``optimizer.lr=1e-4,1e-3``, ``seed=range(3)``, ``model=glob(*)``), parsed by Hydra's
    own override grammar; a malformed override is left to Hydra to report."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keys = []
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except Exception:  # noqa: BLE001, S112 - Hydra reports it itself, in one place
            continue
        if override.is_sweep_override():
            keys.append(override.get_key_element().lstrip("+~"))
    return keys


def mark_swept_keys(overrides: Sequence[str]) -> None:
    """Record the keys ``overrides`` sweep in the environment, where the jobs' names
    (``run_label``) read them; launchers that start jobs in other processes inherit it."""
    os.environ[SWEPT_KEYS_ENV] = json.dumps(swept_keys(overrides))


def run_label(overrides: Sequence[str], swept: Sequence[str] | None = None) -> str:
    """A short, file-name-safe description of a run's ``overrides``: only the ``swept``
    keys when given (a sweep job), else every override a name should show.

    >>> run_label(["model=tiny", "optimizer.lr=1e-3"], swept=["optimizer.lr"])
    'lr:1e-3'
    >>> run_label(["model=tiny", "trainer.max_steps=50", "hydra.run.dir=x"])
    'model:tiny+max_steps:50'
    """
    chosen = [o for o in overrides if "=" in o and not _UNNAMED.match(override_key(o))]
    if swept is not None:
        chosen = [o for o in chosen if override_key(o) in swept]
    keys = [override_key(o) for o in chosen]
    short = [re.split(r"[./]", k)[-1] for k in keys]
    parts = []
    for override, key, name in zip(chosen, keys, short):
        value = override.split("=", 1)[1]
        if len(value) > MAX_VALUE:
            value = value[: MAX_VALUE - 2] + ".."
        parts.append(f"{name if short.count(name) == 1 else key}:{value}")
    label = _UNSAFE.sub("_", "+".join(parts))
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 2] + ".."


def job_label() -> str:
    """``run_label`` of the current Hydra job: its swept keys in a multirun started by
    ``lm train -m`` (all its overrides otherwise); "" outside a Hydra job."""
    if not HydraConfig.initialized():
        return ""
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return run_label(overrides)
    # The command line's sweeps, and a sweeper's own search space (optuna's params).
    swept = json.loads(os.environ.get(SWEPT_KEYS_ENV) or "[]")
    swept += list((hydra_cfg.sweeper.get("params") or {}).keys())
    return run_label(overrides, swept or None)


def register_resolver() -> None:
    """Register ``${run_label:}`` (idempotent; ``register_configs`` calls it)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_label"):
        OmegaConf.register_new_resolver("run_label", _label_resolver)


def _label_resolver() -> str:
    """``${run_label:}``: ``<label>-`` for a run with a label, "" for one without, so
    a dir name reads ``<time>-<label>-<hash8>`` or ``<time>-<hash8>``."""
    label = job_label()
    return f"{label}-" if label else ""
