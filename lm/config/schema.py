"""The typed schema of ``conf/train.yaml`` and the one-line errors of a key it lacks.

Hydra composes ``conf/train.yaml`` onto ``TrainConfig`` (stored in Hydra's ConfigStore as
``train_schema`` by ``store_schemas``), so every key has a type and a misspelt key is an
error; the values come from the YAML files. A command with a schema of its own (``lm
generate``'s ``GenerateConfig``) gets its composed config as an instance of it
(``typed``). Ranges that types cannot express are ``validate.py``'s.
"""

import difflib
import inspect
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from lm.errors import first_line
from lm.model import GPTConfig

# The schema gives each key its type; its value is written once, in conf/ (with its
# purpose and range beside it), so a field that a YAML file always sets has no default
# here (OmegaConf reads it as MISSING, ``???``, until the YAML fills it in). A default
# stays only where some option leaves the key out (``data.tokenizer.vocab_size`` and
# ``path``; ``model`` takes ``GPTConfig``'s, e.g. ``layer_norm_epsilon``).


@dataclass
class PathsConfig:
    data_dir: str
    output_dir: str


@dataclass
class TokenizerConfig:
    name: str
    vocab_size: int | None = None  # bpe only: bytes + merges + special tokens
    path: str | None = None  # bpe only: read GPT-2's vocab.json + merges.txt from here


@dataclass
class SourceConfig:
    """What ``lm prepare`` reads (``lm/data/sources.py``): local files or a dataset."""

    path: str | None = None  # a file, directory or glob of .txt/.jsonl/.jsonl.gz/.parquet
    dataset: str | None = None  # a Hugging Face dataset name, or a hub-layout directory
    subset: str | None = None  # the dataset's configuration (fineweb-edu: sample-10BT)
    split: str = "train"
    revision: str | None = None  # a commit, tag or branch of the dataset repo
    text_field: str = "text"  # the record field or parquet column holding the text


@dataclass
class PrepareConfig:
    """How ``lm prepare`` (and ``lm train``'s first use of a named dataset) makes a
    prepared dataset; meanings and ranges in ``conf/prepare.yaml``."""

    source: SourceConfig = field(default_factory=SourceConfig)
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(name="byte"))
    val_fraction: float = 0.005
    tokenizer_sample_mb: float = 10.0
    shard_tokens: int = 100_000_000
    max_document_mb: float = 256.0
    num_workers: int | None = None
    chunk_mb: float = 8.0


@dataclass
class DataConfig:
    source: str
    path: str | None
    tokenizer: TokenizerConfig
    val_fraction: float
    batch_size: int
    eval_iters: int
    eval_batch_size: int | None
    eval_seed: int = 1337  # the validation batches' own seed (lm/data/datamodule.py)
    max_unk_fraction: float = 0.05  # <unk> share a split may hold (lm/data/datamodule.py)
    verify_shards: bool = True  # source=prepared: check each shard's SHA-256 at the start
    prepare: PrepareConfig | None = None  # source=prepared: how to make data.path on first use


@dataclass
class PartialConfig:
    """A constructor that ``hydra.utils.instantiate`` returns as a partial, completed in
    code (the optimizer with the parameter groups, the schedule with the optimizer)."""

    _target_: str
    _partial_: bool


@dataclass
class AdamWConfig(PartialConfig):
    lr: float
    betas: list[float]
    eps: float
    weight_decay: float


@dataclass
class SGDConfig(PartialConfig):
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float


@dataclass
class MuonConfig(PartialConfig):
    lr: float
    momentum: float
    nesterov: bool
    ns_steps: int
    ns_dtype: str
    weight_decay: float
    adjust_lr_fn: str | None
    adamw_lr: float
    adamw_betas: list[float]
    adamw_eps: float
    adamw_weight_decay: float


@dataclass
class CosineConfig(PartialConfig):
    warmup_steps: int
    decay_steps: int
    min_lr_ratio: float


@dataclass
class ConstantConfig(PartialConfig):
    warmup_steps: int


@dataclass
class WSDConfig(PartialConfig):
    warmup_steps: int
    total_steps: int
    decay_fraction: float
    min_lr_ratio: float
    decay_shape: str


@dataclass
class TrainerConfig:
    _target_: str
    accelerator: str
    devices: int
    precision: str
    max_steps: int
    val_check_interval: int
    check_val_every_n_epoch: int | None
    num_sanity_val_steps: int
    gradient_clip_val: float
    gradient_clip_algorithm: str
    accumulate_grad_batches: int
    deterministic: bool
    benchmark: bool
    log_every_n_steps: int
    enable_progress_bar: bool
    enable_model_summary: bool
    compile: bool  # not a Trainer argument: callbacks.compile's switch (torch.compile)
    strategy: str = "auto"  # auto | ddp | fsdp (lm/training/strategies.py)
    num_nodes: int = 1
    peak_tflops: float | None = None  # not a Trainer argument: callbacks.throughput's (wallclock/mfu)


@dataclass
class AdapterConfig:
    """``conf/adapter/``: ``none`` sets the name only; ``lora`` adds ``r``, ``alpha``,
    ``dropout`` and ``targets``; ``qlora`` adds ``quantize``, ``quant_block_size`` and
    ``double_quant`` (lm/adapters/build.py)."""

    name: str
    r: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    targets: list[str] | None = None
    quantize: list[str] | None = None
    quant_block_size: int | None = None  # weights per NF4 scale, not the context length
    double_quant: bool | None = None


@dataclass
class SampleConfig:
    prompt: str
    max_new_tokens: int
    temperature: float
    top_k: int | None


@dataclass
class TrackingConfig:
    registry_dir: str
    skip_completed: bool
    checkpoint_every_n_steps: int
    divergence_guard: bool
    retry_diverged: bool
    target_loss: float | None
    min_val_points: int | None = 5  # validations per run at least (hashing.val_check_interval)


@dataclass(kw_only=True)  # so fields without defaults may follow those with, in key order
class TrainConfig:
    """The whole run. Groups with open-ended keys (optimizer, scheduler, logger, hooks)
    are typed by their own option schemas below or their constructors, and checked by
    ``validate``."""

    seed: int
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig
    optimizer: Any
    scheduler: Any
    trainer: TrainerConfig
    logger: Any = field(default_factory=dict)
    paths: PathsConfig
    sample: SampleConfig
    # hooks.<name>: one node per chosen conf/hooks option; hooks.order: their order (see
    # lm/hooks/build.py). Default: no hooks.
    hooks: Any = field(default_factory=lambda: {"order": "${hook_order:}"})
    # callbacks.<name>: one Lightning callback each, by _target_ (conf/callbacks/); each
    # node's keys are checked against its constructor (unknown_key). Default: none.
    callbacks: Any = field(default_factory=dict)
    tracking: TrackingConfig
    resume: str
    init_from: str | None  # a .ckpt of lm train, or a Hugging Face GPT-2 dir, whose weights start the run
    # Fine-tuning adapters (conf/adapter/); a config without the node (an older run) has none.
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(name="none"))


def store_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent): ``train_schema`` and the
    option schemas of the optimizer and scheduler groups.

    An option file opts in to its schema through its defaults list
    (``conf/optimizer/adamw.yaml``: ``defaults: [adamw_schema, _self_]``); a new option
    without a schema still works, untyped, and is range-checked by ``validate``.
    """
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="optimizer", name="adamw_schema", node=AdamWConfig)
    cs.store(group="optimizer", name="sgd_schema", node=SGDConfig)
    cs.store(group="optimizer", name="muon_schema", node=MuonConfig)
    cs.store(group="scheduler", name="cosine_schema", node=CosineConfig)
    cs.store(group="scheduler", name="constant_schema", node=ConstantConfig)
    cs.store(group="scheduler", name="wsd_schema", node=WSDConfig)


# The typed nodes of the config and the keys each may hold. Hydra's ``+key=value``
# appends a key even to a typed node, so ``validate`` checks these itself. The trainer
# also takes any other argument of ``lightning.Trainer`` (``+trainer.max_time=...``).
SCHEMA_NODES: dict[str, type] = {
    "": TrainConfig, "model": GPTConfig, "data": DataConfig, "data.tokenizer": TokenizerConfig,
    "data.prepare": PrepareConfig, "data.prepare.source": SourceConfig,
    "data.prepare.tokenizer": TokenizerConfig,
    "trainer": TrainerConfig, "paths": PathsConfig, "sample": SampleConfig,
    "tracking": TrackingConfig, "adapter": AdapterConfig,
}


def allowed_keys(node: str) -> set[str]:
    """The keys the typed config node ``node`` (a ``SCHEMA_NODES`` key) may hold."""
    keys = {f.name for f in fields(SCHEMA_NODES[node])}
    if node == "trainer":
        import lightning

        keys |= set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
    return keys | ({"hydra"} if node == "" else set())


def unknown_key_line(full_key: str, allowed: set[str]) -> str:
    """``<key> is not a config key; closest: <keys> (<node> keys: ...)``."""
    node, _, leaf = full_key.rpartition(".")
    prefix = f"{node}." if node else ""
    close = difflib.get_close_matches(leaf, sorted(allowed), n=3, cutoff=0.5)
    hint = f"closest: {', '.join(prefix + c for c in close)}; " if close else ""
    shown = sorted(k for k in allowed if not k.startswith("_"))
    listed = ", ".join(shown) if len(shown) <= 25 else ", ".join(shown[:25]) + ", ..."
    return f"{full_key} is not a config key; {hint}{node or 'top-level'} keys: {listed}"


def typed(cfg, schema: type) -> Any:
    """``cfg`` (a ``DictConfig`` without its ``hydra`` node) as an instance of the
    dataclass ``schema``.

    Raises:
        ValueError: one line: a key the schema does not have, a value of the wrong
            type, or a required key (``???``) left unset.
    """
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
    key = getattr(err, "full_key", None)
    message = first_line(err)
    if key and "not in" in message:
        return unknown_key_line(key, {f.name for f in fields(schema)})
    if key:
        return f"{key}={OmegaConf.select(cfg, key)} is invalid: {message}"
    return message
