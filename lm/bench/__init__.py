"""Benchmarks (``lm bench <name>``): each measures its variants alternately, in one run,
and prints them side by side. The settings of each, typed here; their defaults and
meaning are in ``conf/bench_<name>.yaml``."""

from dataclasses import dataclass


@dataclass
class BenchTrainConfig:
    """``lm bench train``: the harness against a plain PyTorch loop (``compare=harness``),
    or training from prepared shards against one array (``compare=data``)."""

    steps: int
    skip: int
    repeats: int
    model: str
    compare: str
    shard_tokens: int
    prepare: list[str]


@dataclass
class BenchPrepareConfig:
    """``lm bench prepare``: ``lm prepare`` against fineweb.py's loop, MB/s and peak memory."""

    size_mb: float
    small_mb: float
    vocab_size: int
    tokenizer_sample_mb: float
    workers: int
    repeats: int
    val_fraction: float
    shard_tokens: int
    corpus: str | None
    data_dir: str
    work_dir: str


@dataclass
class BenchTokenizerConfig:
    """``lm bench tokenizer``: BPE training time and encode MB/s."""

    vocab_size: int
    corpus: str | None
    data_dir: str
    readable_mb: float


@dataclass
class BenchGenerateConfig:
    """``lm bench generate``: greedy tokens/s with and without the KV cache."""

    new_tokens: int
    prompt_tokens: int
    repeats: int
    device: str


@dataclass
class BenchSpeedrunConfig:
    """``lm bench speedrun``: time to a target val/loss, baseline recipe against speedrun."""

    baseline: str
    speedrun: str
    runs: int
    target: float
    val_check_interval: int
    max_steps: int | None
    overrides: list[str]
    data_dir: str
    whole_split: str


@dataclass
class BenchGpuConfig:
    """``lm bench gpu``: tokens/s and MFU of GPT shapes, bf16 and compiled."""

    models: list[str]
    device: str
    precision: str
    compile: bool
    steps: int
    skip: int
    repeats: int
    batch_size: dict[str, int]
    vocab_size: dict[str, int]
    peak_tflops: float | None
