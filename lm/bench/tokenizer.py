"""Benchmark: BPE training time and encoding throughput, our readable path vs tiktoken.

Trains `BPETokenizer` on the corpus (default: the Shakespeare corpus), then times
encoding: our readable pure-Python `encode` on the first `readable_mb` MB (with
an empty chunk cache, as a fresh tokenizer has), and tiktoken (the same ranks,
pattern and specials, via `to_tiktoken`) on the whole corpus. MB are 10^6 bytes
of UTF-8 text. Also checks that both give the same ids on the slice.

    lm bench tokenizer [vocab_size=4096] [corpus=<path>] [readable_mb=1]   (conf/bench_tokenizer.yaml)
"""

import time
from pathlib import Path

from lm.bench import BenchTokenizerConfig
from lm.data.corpus import shakespeare_text
from lm.data.tokens import split_text
from lm.errors import first_line
from lm.tokenizers.bpe import BPETokenizer

MB = 1e6


def bench_tokenizers(text: str, vocab_size: int = 4096, readable_mb: float = 1.0) -> dict:
    """Train BPE on `text` and time encoding; returns the figures as a dict.

    Keys: `corpus_mb`, `train_s`, `vocab_size`, `n_tokens` (whole corpus),
    `bytes_per_token`, `readable_mb`, `readable_mb_per_s`, `tiktoken_mb_per_s`,
    `readable_equals_tiktoken` (on the readable slice), `val_chars` and `val_equal`
    (readable == tiktoken on the whole validation split, last 10% of the text).
    """
    corpus_mb = len(text.encode("utf-8")) / MB
    start = time.perf_counter()
    tok = BPETokenizer.train(text, vocab_size)
    train_s = time.perf_counter() - start

    part = text.encode("utf-8")[: int(readable_mb * MB)].decode("utf-8", errors="ignore")
    fresh = BPETokenizer.from_dict(tok.to_dict())  # empty chunk cache
    start = time.perf_counter()
    readable_ids = fresh.encode(part)
    readable_s = time.perf_counter() - start

    enc = tok.to_tiktoken()
    start = time.perf_counter()
    ids = enc.encode(text, allowed_special="all")
    tiktoken_s = time.perf_counter() - start

    _, val_text = split_text(text, 0.1)  # the validation split, as lm/data/tokens.py makes it
    part_mb = len(part.encode("utf-8")) / MB
    return {
        "val_chars": len(val_text),
        "val_equal": fresh.encode(val_text) == enc.encode(val_text, allowed_special="all"),
        "corpus_mb": corpus_mb,
        "train_s": train_s,
        "vocab_size": tok.vocab_size,
        "n_tokens": len(ids),
        "bytes_per_token": corpus_mb * MB / max(len(ids), 1),
        "readable_mb": part_mb,
        "readable_mb_per_s": part_mb / readable_s,
        "tiktoken_mb_per_s": corpus_mb / tiktoken_s,
        "readable_equals_tiktoken": readable_ids == enc.encode(part, allowed_special="all"),
    }



def read_corpus(path: Path) -> str:
    """The UTF-8 text of ``path`` (ValueError: one line)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"corpus={path} cannot be read as UTF-8 text: {first_line(err)}") from None


def bench_tokenizer(cfg: BenchTokenizerConfig) -> int:
    """``lm bench tokenizer``: print BPE training time, encode MB/s and the parity checks.

    Raises:
        ValueError, DataError: a corpus that cannot be read, a bad size (one line).
    """
    if cfg.readable_mb <= 0:
        raise ValueError(f"readable_mb={cfg.readable_mb} is invalid: must be > 0")
    if cfg.corpus is None:
        name, text = "shakespeare", shakespeare_text(cfg.data_dir)
    else:
        name, text = cfg.corpus, read_corpus(Path(cfg.corpus))
    r = bench_tokenizers(text, cfg.vocab_size, cfg.readable_mb)
    print(f"corpus: {name}, {r['corpus_mb']:.2f} MB")
    print(f"BPE training: {r['train_s']:.1f} s to vocab_size {r['vocab_size']}")
    print(f"tokens: {r['n_tokens']} ({r['bytes_per_token']:.2f} bytes/token)")
    print(f"encode, readable path: {r['readable_mb_per_s']:6.2f} MB/s "
          f"(first {r['readable_mb']:.2f} MB, empty cache)")
    print(f"encode, tiktoken:      {r['tiktoken_mb_per_s']:6.2f} MB/s (whole corpus)")
    print(f"readable == tiktoken on the slice: {r['readable_equals_tiktoken']}")
    print(f"readable == tiktoken on the whole validation split ({r['val_chars']:,} chars): "
          f"{r['val_equal']}")
    return 0
