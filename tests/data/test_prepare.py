"""``lm prepare`` and training from its shards: the output depends on the documents and
settings only (not on workers, chunking or interruptions), a window drawn across shards is
the window of the concatenated stream, ranks draw disjoint windows, and the config hash
holds the manifest's digest."""

import json
import shutil

import numpy as np
import pytest
import torch

from lm.checkpoint import load_checkpoint
from lm.data.corpus import DataError
from lm.data.datamodule import build_datamodule
from lm.data.prepare import PARTS, PrepareSettings, is_val, prepare
from lm.data.shards import MANIFEST, TokenStream, load_tokenizer, open_split, read_manifest
from lm.data.sources import Source
from lm.data.tokens import get_batch
from lm.training.hashing import config_hash
from tests.conftest import LINES


def documents(n: int = 120) -> list[str]:
    """``n`` documents of varied length (1 to 7 lines of the test corpus)."""
    return ["\n".join(f"{LINES[(i + j) % len(LINES)]} ({i}.{j})" for j in range(1 + i % 7))
            for i in range(n)]


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents()))
    return path


def settings(path, out, **kw) -> PrepareSettings:
    options = {"tokenizer": {"name": "bpe", "vocab_size": 300}, "val_fraction": 0.1,
               "shard_tokens": 1000, "chunk_mb": 0.002, "num_workers": 1, "progress": False}
    return PrepareSettings(source=Source(path=str(path)), out=str(out), **{**options, **kw})


def shard_bytes(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".bin", ".json")}


def test_shards_hold_each_document_after_an_end_of_text_token_and_val_is_every_kth(jsonl, tmp_path):
    manifest = prepare(settings(jsonl, tmp_path / "out"))
    out = tmp_path / "out"
    tokenizer = load_tokenizer(out)
    expected = {"train": [], "val": []}
    for i, doc in enumerate(documents()):
        split = "val" if is_val(i, 10) else "train"
        expected[split] += [tokenizer.eos_id, *tokenizer.encode(doc)]
    for split in ("train", "val"):
        stream = open_split(out, manifest, split)
        assert stream[np.arange(len(stream))].tolist() == expected[split]
    assert manifest["documents"] == {"train": 108, "val": 12}
    assert [s["tokens"] for s in manifest["shards"]["train"]][:-1] == \
        [1000] * (len(manifest["shards"]["train"]) - 1)  # fixed-size shards, the rest last
    assert manifest["dtype"] == "uint16" and not (out / PARTS).exists()
    assert read_manifest(out)["digest"] == manifest["digest"]


def test_output_does_not_depend_on_workers_or_chunking(jsonl, tmp_path):
    one = prepare(settings(jsonl, tmp_path / "one", num_workers=1, chunk_mb=0.001))
    two = prepare(settings(jsonl, tmp_path / "two", num_workers=2, chunk_mb=0.05))
    assert one["digest"] == two["digest"]
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")


def test_a_prepare_stopped_half_way_then_run_again_gives_the_same_bytes(jsonl, tmp_path, monkeypatch):
    whole = prepare(settings(jsonl, tmp_path / "whole"))
    stopped = settings(jsonl, tmp_path / "stopped")
    real, passes = Source.documents, []

    def interrupted(self):
        passes.append(1)  # the first pass samples the tokenizer's text, the second encodes
        for i, doc in enumerate(real(self)):
            if len(passes) == 2 and i == 70:
                raise KeyboardInterrupt  # Ctrl-C while reading, chunks in flight
            yield doc

    monkeypatch.setattr(Source, "documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(stopped)
    monkeypatch.setattr(Source, "documents", real)
    parts = tmp_path / "stopped" / PARTS
    markers = sorted(parts.glob("[0-9]*.json"))
    assert len(markers) > 2 and not (tmp_path / "stopped" / MANIFEST).exists()
    # A kill -9 may leave a temporary and a part without its marker: both are redone.
    (parts / ".000001.train.bin.x.tmp").write_bytes(b"half")
    markers[-2].unlink()
    again = prepare(settings(jsonl, tmp_path / "stopped"))
    assert again["digest"] == whole["digest"]
    assert shard_bytes(tmp_path / "stopped") == shard_bytes(tmp_path / "whole")
    assert not parts.exists()


def test_preparing_a_prepared_dir_again_changes_nothing_and_other_input_is_refused(jsonl, tmp_path):
    first = prepare(settings(jsonl, tmp_path / "out"))
    before = shard_bytes(tmp_path / "out")
    assert prepare(settings(jsonl, tmp_path / "out"))["digest"] == first["digest"]
    assert shard_bytes(tmp_path / "out") == before
    with pytest.raises(DataError, match="already holds a dataset prepared from other input"):
        prepare(settings(jsonl, tmp_path / "out", val_fraction=0.2))
    assert shard_bytes(tmp_path / "out") == before


def test_a_token_stream_reads_like_the_concatenated_shards(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 60000, n).astype(np.uint16) for n in (7, 1, 13, 5)]
    paths = []
    for i, ids in enumerate(parts):
        paths.append(tmp_path / f"s{i}.bin")
        ids.tofile(paths[-1])
    stream = TokenStream(paths, [len(p) for p in parts], "uint16")
    whole = np.concatenate(parts)
    assert len(stream) == len(whole) == 26
    index = rng.integers(0, 26, (5, 9))  # windows spanning shard boundaries
    assert np.array_equal(stream[index], whole[index])
    for step in range(5):  # the batches a run draws, shard boundaries or not
        for a, b in zip(get_batch(stream, 4, 3, 0, step), get_batch(whole, 4, 3, 0, step), strict=True):
            assert a.equal(b)


def test_ranks_draw_disjoint_windows_across_shards(tmp_path):
    ids = np.arange(1_000_000, dtype=np.uint32)  # a token is its own position
    paths = [tmp_path / f"s{i}.bin" for i in range(4)]
    for path, part in zip(paths, np.array_split(ids, 4), strict=True):
        part.tofile(path)
    stream = TokenStream(paths, [250_000] * 4, "uint32")
    for step in range(50):
        x0, _ = get_batch(stream, 64, 12, 7, step, rank=0, world_size=2)
        x1, _ = get_batch(stream, 64, 12, 7, step, rank=1, world_size=2)
        both, _ = get_batch(stream, 64, 24, 7, step)  # one process draws the global batch
        assert both.equal(torch.cat([x0, x1]))
        assert not set(x0[:, 0].tolist()) & set(x1[:, 0].tolist())  # no window on both ranks
        assert (x0.diff(dim=1) == 1).all()  # each window is consecutive, across shard ends


def prepared_cfg(make_cfg, out, *extra):
    return make_cfg("data=prepared", f"data.path={out}", "model.block_size=16", *extra)


def test_the_config_hash_holds_the_manifest_digest_not_the_path(jsonl, tmp_path, make_cfg):
    prepare(settings(jsonl, tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    prepare(settings(jsonl, tmp_path / "c", val_fraction=0.2))
    a, b, c = (config_hash(prepared_cfg(make_cfg, tmp_path / d)) for d in "abc")
    assert a == b != c  # the same content elsewhere: one run; other content: another


def test_training_data_comes_from_the_shards_and_a_changed_shard_is_refused(jsonl, tmp_path, make_cfg):
    manifest = prepare(settings(jsonl, tmp_path / "out"))
    dm = build_datamodule(prepared_cfg(make_cfg, tmp_path / "out"))
    assert len(dm.train_ids) == sum(s["tokens"] for s in manifest["shards"]["train"])
    assert dm.tokenizer.vocab_size == 300 and dm.val_text_bytes == manifest["bytes"]["val"]
    shard = tmp_path / "out" / manifest["shards"]["train"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{shard.name} does not match its SHA-256"):
        build_datamodule(prepared_cfg(make_cfg, tmp_path / "out"))
    build_datamodule(prepared_cfg(make_cfg, tmp_path / "out", "data.verify_shards=false"))


def test_a_fine_tune_refuses_a_dataset_of_another_tokenizer(jsonl, tmp_path, make_cfg, tiny_trained):
    prepare(settings(jsonl, tmp_path / "out"))
    cfg = prepared_cfg(make_cfg, tmp_path / "out", f"init_from={tiny_trained.ckpt}")
    _, tokenizer, _ = load_checkpoint(tiny_trained.ckpt)
    with pytest.raises(DataError, match="prepared with another tokenizer"):
        build_datamodule(cfg, fixed_tokenizer=tokenizer)


def test_a_full_disk_is_one_line_keeps_the_finished_chunks_and_a_rerun_finishes(jsonl, tmp_path,
                                                                                monkeypatch):
    import errno

    import lm.data.encode as encode_module  # its workers write the chunks' markers

    whole = prepare(settings(jsonl, tmp_path / "whole"))
    real, calls = encode_module.write_json, []

    def full_after_three_chunks(path, data):
        calls.append(path)
        if path.name[0].isdigit() and len([p for p in calls if p.name[0].isdigit()]) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(encode_module, "write_json", full_after_three_chunks)
    with pytest.raises(DataError, match=r"failed \(No space left on device\); free space .* "
                                        "finished chunks are kept"):
        prepare(settings(jsonl, tmp_path / "full"))
    assert len(list((tmp_path / "full" / PARTS).glob("[0-9]*.json"))) == 3
    monkeypatch.setattr(encode_module, "write_json", real)
    assert prepare(settings(jsonl, tmp_path / "full"))["digest"] == whole["digest"]
