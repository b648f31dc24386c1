"""lm bench prepare and lm bench train compare=data, on a tiny corpus: the rows name both
variants, both sides wrote as many tokens as tiktoken counts by hand, and the stream
check says yes for the same streams and no for a changed one."""

import json
import re

import numpy as np
import pytest

from lm.bench import BenchTrainConfig
from lm.bench import prepare as bench
from lm.bench.train import bench_train
from lm.cli import main as lm
from lm.data.prepare import PrepareSettings, prepare
from lm.data.sources import Source
from lm.tokenizers.bpe import BPETokenizer
from tests.conftest import LINES

VOCAB = 300


def write_text(path, paragraphs: int = 300):
    """A corpus of ``paragraphs`` numbered 3-line paragraphs between blank lines (about
    200 characters each); return ``path``."""
    text = "\n\n".join("\n".join(f"{LINES[(i + k) % len(LINES)]} ({i}.{k})" for k in range(3))
                       for i in range(paragraphs))
    path.write_text(text + "\n")
    return path


def small_settings(tmp_path) -> list[str]:
    """``lm bench prepare`` settings for a run of a few seconds in ``tmp_path``."""
    return [f"corpus={write_text(tmp_path / 'corpus.txt')}", f"work_dir={tmp_path / 'work'}",
            "size_mb=0.3", "small_mb=0.1", f"vocab_size={VOCAB}", "tokenizer_sample_mb=0.05",
            "val_fraction=0.1", "shard_tokens=30000"]


def hand_tokens(jsonl, tokenizer_dir) -> int:
    """End-of-text + tiktoken's ``encode_ordinary`` ids of every document of ``jsonl``."""
    enc = BPETokenizer.load_gpt2(tokenizer_dir).to_tiktoken()
    with open(jsonl) as f:
        return sum(1 + len(enc.encode_ordinary(json.loads(line)["text"])) for line in f)


def test_documents_are_the_text_cut_at_blank_lines(tmp_path):
    text = write_text(tmp_path / "corpus.txt").read_text()
    docs = bench.documents_of(text, chars=1000)
    assert "\n\n".join(docs) == text
    assert len(docs) > 10 and all(len(doc) >= 1000 for doc in docs[:-1])
    assert all(len(doc) < 1000 + 300 for doc in docs)  # cut at the first blank line past 1000


def test_bench_prepare_prints_both_variants_the_tokens_and_the_ratio(tmp_path, capsys):
    assert lm(["bench", "prepare", "repeats=1", *small_settings(tmp_path)]) == 0
    out = capsys.readouterr().out
    work = tmp_path / "work"
    rows = re.findall(r"^  repeat 1: (lm prepare|fineweb.py) +([\d.]+) MB/s .* ([\d,]+) tokens$",
                      out, re.MULTILINE)
    assert [variant for variant, _, _ in rows] == ["lm prepare", "fineweb.py"], out
    want = hand_tokens(work / "corpus-0.3mb.jsonl", work / f"corpus-bpe{VOCAB}-0.05mb")
    assert [int(tokens.replace(",", "")) for _, _, tokens in rows] == [want, want]
    assert "token streams identical: yes" in out
    assert re.search(r"^ratio lm/reference MB/s: \d+\.\d{3} \(target >= 0\.8\)$", out, re.MULTILINE)
    assert re.search(r"^  0.1 MB input: lm prepare .* MB/s", out, re.MULTILINE)
    assert "lm prepare peak RSS by input size: 0.1 MB " in out
    kept = bench.dataset_dir(work, work / "corpus-0.3mb.jsonl", work / f"corpus-bpe{VOCAB}-0.05mb",
                             30000)
    assert (kept / "manifest.json").is_file()  # for lm bench train compare=data
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("run-")) == []


def test_the_stream_check_says_no_when_a_token_differs(tmp_path):
    text = write_text(tmp_path / "corpus.txt").read_text()
    corpus, _ = bench.corpus_file(text, "corpus", tmp_path, 0.1)
    tokenizer = bench.tokenizer_files(text, "corpus", tmp_path, VOCAB, 0.05)
    prepare(PrepareSettings(source=Source(path=str(corpus)), out=str(tmp_path / "lm"),
                            tokenizer={"name": "bpe", "path": str(tokenizer)}, val_fraction=0.1,
                            num_workers=2, shard_tokens=7000, progress=False))
    (tmp_path / "ref").mkdir()
    files = bench.reference(str(corpus), str(tmp_path / "ref"), str(tokenizer), 2, 10000)
    assert len(files) > 2  # the shard-filling loop cut documents across shards
    assert bench.same_streams(tmp_path / "lm", files, tokenizer)
    ids = np.fromfile(files[1], dtype=np.uint16)
    ids[5] = (ids[5] + 1) % 256  # an ordinary byte token for another
    ids.tofile(files[1])
    assert not bench.same_streams(tmp_path / "lm", files, tokenizer)


@pytest.mark.slow
def test_bench_train_compare_data_prints_the_ratio_and_peak_rss(tmp_path, capsys):
    settings = [s for s in small_settings(tmp_path) if not s.startswith("shard_tokens")]
    cfg = BenchTrainConfig(steps=4, skip=1, repeats=1, model="tiny", compare="data",
                           shard_tokens=2000, prepare=settings)
    assert bench_train(cfg) == 0
    out = capsys.readouterr().out
    shards = re.search(r"\((\d+) train shards\) against", out)
    assert shards and int(shards.group(1)) > 1, out
    assert re.search(r"^  repeat 1: prepared +\d+ tokens/s$", out, re.MULTILINE)
    assert re.search(r"^  repeat 1: in-memory +\d+ tokens/s$", out, re.MULTILINE)
    assert re.search(r"^ratio prepared/in-memory: \d+\.\d{3} \(target >= 0\.97\)$", out,
                     re.MULTILINE)
    assert re.search(r"^peak memory of lm train \(process tree\): prepared .* MB, large .* MB; "
                     r"large - prepared: PSS [+-]\d+ MB \(target within 200 MB\)$", out,
                     re.MULTILINE)
