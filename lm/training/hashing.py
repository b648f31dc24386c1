"""The config hash: a run named by what it computes.

SHA-256 of the canonical JSON (sorted keys) of the resolved config, leaving out
``HASH_EXCLUDED_KEYS``, the keys that cannot change the numbers (and a
``HASH_NEUTRAL_DEFAULTS`` key at the value that reproduces the code before it), and
with each key of ``CONTENT_KEYS`` (a path) replaced by the SHA-256 of what the path
holds. Two runs with one hash trained the same thing; the code version (git commit +
dirty flag, ``code_version``) is recorded beside the hash, not in it, so a comparison
can flag one hash run on different code. The registry (``lm/training/registry.py``)
finds runs by this hash.
"""

import copy
import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lm.checkpoint import checkpoint_weights_sha256
from lm.data.corpus import (  # the readers' rule: the hash describes what is read
    corpus_files,
    listed_files,
)
from lm.data.shards import prepared_digest

# Keys that cannot change the numbers a run produces: where files go, how often
# they are written, what is printed. Everything else (seed, model, data, tokenizer,
# optimizer, schedule, steps, batch size, precision, determinism) is in the hash.
HASH_EXCLUDED_KEYS: tuple[str, ...] = (
    "hydra",
    "paths",
    "logger",
    "sample",
    "tracking",
    "resume",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.peak_tflops",  # the device's peak, for wallclock/mfu: a measure, not the numbers
    # The default callbacks (conf/callbacks/default.yaml) write checkpoints, keep the RNG
    # state for an exact resume and draw the progress bar: an uninterrupted run computes
    # the same numbers with or without them. Listed by name, not the whole node, so a
    # callback that does change the numbers (early stopping, weight averaging) added
    # beside them is in the hash; a node left empty is dropped, so configs without a
    # callbacks node (older runs) hash as before.
    "callbacks.best_checkpoint",
    "callbacks.last_checkpoint",
    "callbacks.rng_state",
    "callbacks.progress_bar",
    "callbacks.snapshots",     # checkpoints every n steps, kept (experiment=induction_heads)
    # The side jobs (lm/training/run_callbacks.py) only watch the run: their arguments
    # are interpolated from keys that are excluded above (sample.*, tracking.target_loss,
    # trainer.peak_tflops, seed for the sample's own generator) or hashed themselves
    # (trainer.compile, which the compile callback only carries out; run.check_compile
    # keeps the two equal).
    "callbacks.target_loss",   # prints and records the first validation <= the target
    "callbacks.text_samples",  # draws with its own generator, eagerly: training RNG untouched
    "callbacks.compile",       # reads trainer.compile; its trial restores the RNG, clears grads
    "callbacks.throughput",    # times the steps: wallclock/tokens_per_sec, wallclock/mfu
    "data.max_unk_fraction",  # whether a run starts, not what it computes once it does
    "data.verify_shards",  # whether shards are re-hashed at the start (a check, not the numbers)
    # How a prepared dataset is made on first use: what it made is in the hash as the
    # manifest's digest (``data.path`` of ``data.source=prepared``, ``content_digest``).
    "data.prepare",
)

# Keys added after runs were recorded, with the value that reproduces the code before
# them: at that value a key is left out of the hash, so adding an option (a new model
# key, a trainer switch) keeps every existing run's hash and the registry still finds
# it. Any other value is hashed like every other key.
HASH_NEUTRAL_DEFAULTS: dict[str, Any] = {
    "model.norm": "layernorm",
    "model.norm_position": "pre",
    "model.mlp": True,
    "model.qk_norm": False,
    "model.rope_base": 10000.0,
    "model.zero_init_proj": False,
    "model.logit_softcap": None,
    "data.eval_batch_size": None,
    "trainer.compile": False,
    "trainer.strategy": "auto",
    "trainer.num_nodes": 1,
    **{f"adapter.{key}": None for key in ("r", "alpha", "dropout", "targets", "quantize",
                                          "quant_block_size", "double_quant")},
    "adapter.name": "none",
}

# Keys that took their value from another key before they existed: at that key's value
# they are left out of the hash (the validation batches came from ``seed`` before
# ``data.eval_seed``), so a run that matches an older one keeps its hash.
HASH_NEUTRAL_SAME_AS: dict[str, str] = {"data.eval_seed": "seed"}


def dir_files(path: str | os.PathLike) -> list[Path]:
    """The files of an ``init_from`` or ``data.tokenizer.path`` directory (``listed_files``:
    not recursive, sorted by name), or the file itself, for the digest of what it holds.

    Links that cannot be followed are left out: these readers open the files they need
    by name and pass over the rest, so a stray dangling link is not read and the digest
    stays that of the files that are (a corpus's ``corpus_files`` keeps them instead:
    its reader refuses them).
    """
    files = listed_files(path, "*")
    return [p for p in files if p.exists()] if Path(path).expanduser().is_dir() else files


# Keys whose value is a path: in the hash, the path gives way to the SHA-256 of what it
# holds, so editing a corpus changes the hash and `d`, `d/` and `../x/d` do not. The
# function lists the files read, in order; the digest is of their bytes concatenated
# (for a corpus: of its text as read, the same digest as the token cache's text_sha256).
# An init_from checkpoint file is digested by its weights alone, and the ``data.path`` of a
# prepared dataset (``data.source=prepared``) by its manifest's digest (``content_digest``).
CONTENT_KEYS: dict[str, Callable[[str], list[Path]]] = {
    "data.path": corpus_files,
    "data.tokenizer.path": dir_files,
    "init_from": dir_files,
}
_digest_cache: dict[tuple, str] = {}


def content_sha256(files: list[Path]) -> str | None:
    """SHA-256 hex digest of the bytes of ``files`` concatenated; None if one cannot be
    read. Cached per (path, size, mtime) within the process, so a big corpus is read once."""
    try:
        key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    except (OSError, RuntimeError):  # RuntimeError: a link loop, from resolve() on Python < 3.13
        return None
    if key not in _digest_cache:
        digest = hashlib.sha256()
        try:
            for path in files:
                with path.open("rb") as f:
                    for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                        digest.update(chunk)
        except OSError:
            return None
        _digest_cache[key] = digest.hexdigest()
    return _digest_cache[key]


def content_digests(cfg: DictConfig | dict) -> dict[str, str | None]:
    """``{key: sha256}`` for each ``CONTENT_KEYS`` key set in ``cfg`` (None: unreadable)."""
    plain = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    digests = {}
    prepared = OmegaConf.select(plain, "data.source", default=None) == "prepared"
    for key, files in CONTENT_KEYS.items():
        value = OmegaConf.select(plain, key, default=None)
        if value is not None and str(value) != "":
            digests[key] = content_digest(key, str(value), files, prepared)
    return digests


def content_digest(key: str, value: str, files: Callable[[str], list[Path]],
                   prepared: bool = False) -> str | None:
    """The SHA-256 standing for path ``value`` of ``CONTENT_KEYS`` key ``key``: of the
    bytes of its files; for an ``init_from`` checkpoint file, of its weights (so a
    checkpoint re-saved with another optimizer state or step fine-tunes the same run);
    for the ``data.path`` of a prepared dataset (``prepared``), its manifest's digest
    (source identity, tokenizer, shard SHA-256s: not a re-read of every shard)."""
    if key == "init_from" and Path(value).expanduser().is_file():
        return checkpoint_weights_sha256(value)
    if key == "data.path" and prepared:
        return prepared_digest(value)
    return content_sha256(files(value))


def hashable_config(cfg: DictConfig | dict, digests: dict | None = None) -> dict:
    """The resolved config as plain data, without ``HASH_EXCLUDED_KEYS`` (nor a
    ``HASH_NEUTRAL_DEFAULTS`` key at its neutral value), and with each
    ``CONTENT_KEYS`` path replaced by ``{"sha256": <digest of its content>}``.

    ``digests`` (from ``content_digests``, e.g. as recorded in a ``run.json``) saves
    reading the files again, and keeps a record's hash when its files have moved.
    Excluded keys are dropped before resolving, so an excluded key may interpolate
    things that do not exist yet (``${hydra:runtime.output_dir}``).
    """
    raw = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    raw = copy.deepcopy(raw)
    if isinstance(cfg, DictConfig):  # a path may interpolate an excluded key (paths.data_dir)
        for key in CONTENT_KEYS:
            parent, leaf = parent_node(raw, key, create=False)
            if parent is not None and isinstance(parent.get(leaf), str) and "${" in parent[leaf]:
                parent[leaf] = OmegaConf.select(cfg, key)
    min_val_points = (raw.get("tracking") or {}).get("min_val_points")
    for dotted in HASH_EXCLUDED_KEYS:
        drop_dotted(raw, dotted)
    plain = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    if isinstance(plain.get("trainer"), dict) and "val_check_interval" in plain["trainer"]:
        # The cadence the run validates at (best.ckpt and the curve follow it).
        plain["trainer"]["val_check_interval"] = val_check_interval(plain["trainer"], min_val_points)
    for dotted, neutral in neutral_values(plain).items():
        if get_dotted(plain, dotted) == neutral:
            drop_dotted(plain, dotted)
    digests = content_digests(plain) if digests is None else digests
    for key in CONTENT_KEYS:
        *parents, leaf = key.split(".")
        node = plain
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf) not in (None, ""):
            node[leaf] = {"sha256": digests.get(key)}
    return plain


MISSING_KEY = object()  # what ``get_dotted`` returns for a key that is not there


def neutral_values(plain: dict) -> dict[str, Any]:
    """The value of each key that reproduces the code before it (``HASH_NEUTRAL_DEFAULTS``,
    and ``HASH_NEUTRAL_SAME_AS`` read from ``plain``, a resolved config)."""
    same = {dotted: get_dotted(plain, other) for dotted, other in HASH_NEUTRAL_SAME_AS.items()}
    return {**HASH_NEUTRAL_DEFAULTS, **{k: v for k, v in same.items() if v is not MISSING_KEY}}


def get_dotted(tree: dict, dotted: str) -> Any:
    """The value at key ``dotted`` of nested dicts ``tree``; ``MISSING_KEY`` if there is none."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return MISSING_KEY
        tree = tree[part]
    return tree


def drop_dotted(tree: dict, dotted: str) -> None:
    """Remove the key ``dotted`` from ``tree``, and every node on its path that this
    leaves empty."""
    head, _, rest = dotted.partition(".")
    if not rest:
        tree.pop(head, None)
        return
    child = tree.get(head)
    if isinstance(child, dict):
        drop_dotted(child, rest)
        if not child:
            del tree[head]


def config_hash(cfg: DictConfig | dict, digests: dict | None = None) -> str:
    """SHA-256 hex digest (64 characters) of the canonical JSON of ``hashable_config``."""
    return canonical_sha256(hashable_config(cfg, digests))


def canonical_sha256(data: Any) -> str:
    """SHA-256 hex digest of the canonical JSON (sorted keys, no spaces) of ``data``."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _hash8_resolver(*, _root_: DictConfig) -> str:
    return config_hash(_root_)[:8]


def register_resolvers() -> None:
    """Register ``${config_hash:}`` (first 8 hex digits), used in the run dir names with
    ``${run_label:}`` (``lm/training/naming.py``) (idempotent; ``compose_config`` and
    ``lm train`` call it, importing does not)."""
    if not OmegaConf.has_resolver("config_hash"):
        OmegaConf.register_new_resolver("config_hash", _hash8_resolver)


def val_check_interval(trainer: dict, min_val_points: int | None) -> int:
    """The steps between validations a run uses: ``trainer.val_check_interval``, or
    fewer, so that a run of ``trainer.max_steps`` validates at least ``min_val_points``
    times (``tracking.min_val_points``; None: no floor, as runs recorded before it).
    ``make train`` (2000 steps, every 250) is unchanged; 300 steps validate every 60."""
    interval, max_steps = int(trainer["val_check_interval"]), int(trainer["max_steps"])
    if not min_val_points:
        return interval
    return min(interval, max(1, max_steps // int(min_val_points)))


def code_version(repo: str | Path | None = None) -> dict[str, Any]:
    """The git commit of ``repo`` (default: this package's checkout) and a dirty flag.

    Returns ``{"commit": None, "dirty": None}`` outside a git checkout.
    """
    repo = Path(repo or Path(__file__).resolve().parents[2])

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain"))
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def fill_neutral_defaults(tree: dict, new_groups: bool) -> dict:
    """Set each key of ``neutral_values(tree)`` that ``tree`` lacks to that value, in place,
    and return ``tree`` (a resolved config as plain data). That value reproduces the code
    before the key existed: it is what a config that predates the key means, and what a
    ``hashable_config``, which leaves the key out at that value, holds.

    With ``new_groups``, a top-level node the key needs and ``tree`` lacks is made (the
    hashable config of a run without an adapter has no ``adapter``); without, the key is
    left out (a group an older config never had stays out). A node on the way that is
    not a dict keeps its value, and the key is left out.
    """
    for dotted, value in neutral_values(tree).items():
        if not new_groups and dotted.partition(".")[0] not in tree:
            continue
        parent, leaf = parent_node(tree, dotted, create=True)
        if parent is not None:
            parent.setdefault(leaf, value)
    return tree


def parent_node(tree: dict, dotted: str, create: bool) -> tuple[dict | None, str]:
    """(the dict of ``tree`` holding key ``dotted``, the key's last part); the dicts on the
    way are made when ``create``. None for the dict when one on the way is missing or is
    not a dict."""
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node.setdefault(part, {}) if create else node.get(part)
        if not isinstance(node, dict):
            return None, leaf
    return node, leaf
