"""Tokenize a large corpus into shards: ``lm prepare [key=value ...]``.

Reads local files or a Hugging Face dataset (``source.*``), encodes it in
``num_workers`` processes and writes token shards + ``manifest.json`` + ``tokenizer.json``
to ``out`` (``lm/data/prepare.py``); ``lm train data=prepared data.path=<out>`` trains on
it. With ``data=<option>`` (``tinystories``, ``fineweb_edu``) it prepares that data
config's ``prepare`` node into its ``data.path``, as ``lm train`` would on first use.

Examples:
    lm prepare source.path=corpus.jsonl out=data/prepared/corpus tokenizer.name=bpe \\
        tokenizer.vocab_size=8192
    lm prepare data=tinystories

The keys and their defaults are in ``conf/prepare.yaml`` (``lm prepare --help``).
"""

from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from lm.config.schema import SourceConfig, TokenizerConfig
from lm.data.corpus import DataError
from lm.data.prepare import prepare, settings_from_config

HOW_KEYS = ("num_workers", "chunk_mb")  # how to run, not what to make: taken from the command


@dataclass
class PrepareCommandConfig:
    """The settings of ``lm prepare``: their types. Meaning: ``conf/prepare.yaml``."""

    source: SourceConfig
    tokenizer: TokenizerConfig
    val_fraction: float
    tokenizer_sample_mb: float
    shard_tokens: int
    max_document_mb: float
    out: str | None
    num_workers: int | None
    chunk_mb: float
    paths: Any
    data: Any = None  # the conf/data option chosen with data=..., if any


def prepare_command(cfg: PrepareCommandConfig) -> int:
    """``lm prepare``: prepare, printing progress and one summary line.

    Raises:
        DataError: a bad source, setting or output directory (one line).
    """
    node = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    out = node["out"]
    if node.get("data") is not None:
        data = node["data"]
        if not data.get("prepare"):
            raise DataError(f"data={data.get('source')} has no prepare node: lm prepare "
                            "makes datasets for data.source=prepared options (tinystories, "
                            "fineweb_edu), or from source.path=... / source.dataset=...")
        if out is not None and out != data["path"]:
            raise DataError(f"out={out} and data.path={data['path']} differ; with data=<option> "
                            "the dataset goes to its data.path: leave out unset")
        node = {**data["prepare"], **{key: node[key] for key in HOW_KEYS}}
        out = data["path"]
    if out is None:
        raise DataError("out=<directory> is required: where the shards and manifest go")
    prepare(settings_from_config(node, out))
    print(f"train on it: lm train data=prepared data.path={out}")
    return 0
