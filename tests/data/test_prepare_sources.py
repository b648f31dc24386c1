"""lm/data/sources.py and ``lm prepare`` on bad input: every local format and the Hugging
Face code path (a hub-layout directory, offline) give the same documents; the shards of
``lm prepare`` are those documents encoded by hand; input a user gets wrong is one
``error:`` line, exit code 2 and nothing left behind; a changed dataset is refused by
``lm train`` in one line.
"""

import fcntl
import gzip
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lm.cli import main as lm
from lm.data import sources
from lm.data.corpus import DataError
from lm.data.prepare import PrepareSettings, prepare
from lm.data.shards import read_manifest
from lm.data.sources import Source
from lm.tokenizers import build_tokenizer
from tests.test_bad_input import one_line

DOCS = [  # non-ASCII, newlines, quotes, an empty document: all survive every format
    "First Citizen: Before we proceed any further, hear me speak.",
    "héllo wörld — 世界 🙂",
    "two\nlines\n",
    'a "quoted" {json-looking} line',
    "",
    "ROMEO: But soft, what light through yonder window breaks?",
    "tabs\tand  spaces  ",
    "x" * 150,
    "MENENIUS: Either you must confess yourselves wondrous malicious,",
    "the last one",
]


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def write_jsonl_gz(path, docs):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    return path


def write_parquet(path, docs, field="text"):
    pq.write_table(pa.table({"id": list(range(len(docs))), field: docs}), path)
    return path


def write_txt_dir(path, docs):
    path.mkdir()
    for i, doc in enumerate(docs):
        (path / f"doc_{i:02d}.txt").write_text(doc, encoding="utf-8")
    return path


def write_hub_layout(path, docs, shards=2):
    """A dataset directory as the hub lays one out: ``data/train-0000i-of-0000n.parquet``."""
    (path / "data").mkdir(parents=True)
    cut = np.array_split(np.arange(len(docs)), shards)
    for i, rows in enumerate(cut):
        write_parquet(path / "data" / f"train-{i:05d}-of-{shards:05d}.parquet",
                      [docs[r] for r in rows])
    return path


def tree(path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> bytes)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.fixture
def hub_offline(tmp_path, monkeypatch):
    """The hub unreachable at once (HF_HUB_OFFLINE=1; ``datasets`` and ``huggingface_hub``
    read it when imported, so their copies are set too) and ``datasets``' cache in tmp."""
    import datasets.config
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


# ---- 1. local formats -----------------------------------------------------------------


@pytest.mark.parametrize("write, name", [
    (write_jsonl, "docs.jsonl"),
    (write_jsonl_gz, "docs.jsonl.gz"),
    (write_parquet, "docs.parquet"),
    (write_txt_dir, "texts"),  # one document per file
])
def test_every_local_format_gives_the_same_documents_in_order(tmp_path, monkeypatch, write,
                                                               name):
    monkeypatch.setattr(sources, "PARQUET_BATCH", 3)  # rows cross batch boundaries
    source = Source(path=str(write(tmp_path / name, DOCS)))
    assert list(source.documents()) == DOCS
    assert source.replaced == 0
    assert list(source.documents()) == DOCS  # a second pass reads them again


def test_a_glob_reads_its_files_sorted_and_mixed(tmp_path):
    write_jsonl(tmp_path / "part-b.jsonl", DOCS[3:6])
    write_parquet(tmp_path / "part-a.parquet", DOCS[:3])
    write_jsonl_gz(tmp_path / "part-c.jsonl.gz", DOCS[6:])
    write_jsonl(tmp_path / "other.jsonl", ["not matched"])
    assert list(Source(path=str(tmp_path / "part-*")).documents()) == DOCS


def test_a_directory_is_searched_recursively_sorted_by_path(tmp_path):
    root = tmp_path / "corpus"
    (root / "b" / "deeper").mkdir(parents=True)
    write_parquet(root / "e.parquet", DOCS[7:])
    (root / "a.txt").write_text(DOCS[0])
    write_jsonl(root / "b" / "c.jsonl", DOCS[1:4])
    write_jsonl_gz(root / "b" / "deeper" / "d.jsonl.gz", DOCS[4:6])
    (root / "b" / "e.txt").write_text(DOCS[6])
    (root / "README.md").write_text("not a document: another suffix, skipped")
    source = Source(path=str(root))
    assert list(source.documents()) == DOCS
    assert [f["name"] for f in source.identity()["files"]] == \
        ["a.txt", "c.jsonl", "d.jsonl.gz", "e.txt", "e.parquet"]


@pytest.mark.parametrize("write", [write_jsonl, write_parquet])
def test_text_field_names_the_field_or_column(tmp_path, write):
    path = write(tmp_path / ("docs.jsonl" if write is write_jsonl else "docs.parquet"), DOCS,
                 field="content")
    assert list(Source(path=str(path), text_field="content").documents()) == DOCS


def test_bytes_that_are_not_utf8_are_replaced_and_counted_in_every_format(tmp_path):
    lines = [b'{"text": "ok"}\n', b'{"text": "bad \xff byte"}\n', b'{"text": "\xc3"}\n']
    (tmp_path / "a.jsonl").write_bytes(b"".join(lines))
    (tmp_path / "b.txt").write_bytes(b"caf\xe9")  # Latin-1
    column = pa.array([b"good", b"\xfe\xff"], pa.binary()).view(pa.string())  # unchecked
    pq.write_table(pa.table({"text": column}), tmp_path / "c.parquet")
    source = Source(path=str(tmp_path))
    expected = ["ok", "bad \ufffd byte", "\ufffd", "caf\ufffd", "good", "\ufffd\ufffd"]
    assert list(source.documents()) == expected
    assert source.replaced == 4


def test_max_document_bytes_counts_utf8_bytes_in_every_format(tmp_path, hub_offline):
    doc = "é" * 50  # 50 characters, 100 bytes
    write_jsonl(tmp_path / "a.jsonl", [doc])
    write_parquet(tmp_path / "a.parquet", [doc])
    (tmp_path / "a.txt").write_text(doc)
    write_hub_layout(tmp_path / "hub", [doc], shards=1)
    for where in [{"path": str(tmp_path / "a.txt")}, {"path": str(tmp_path / "a.parquet")},
                  {"dataset": str(tmp_path / "hub")}]:
        assert list(Source(**where, max_document_bytes=100).documents()) == [doc]
        with pytest.raises(DataError, match=r"is 100 bytes, above max_document_mb=9.9e-05 "
                                            r"\(99 bytes\)"):
            list(Source(**where, max_document_bytes=99).documents())
    line = len(json.dumps({"text": doc, "id": 0}))  # the record's line, without "\n"
    path = str(tmp_path / "a.jsonl")
    assert list(Source(path=path, max_document_bytes=line).documents()) == [doc]
    with pytest.raises(DataError, match=f"line 1 of .*a.jsonl is more than {line - 1} bytes"):
        list(Source(path=path, max_document_bytes=line - 1).documents())


# ---- 2. the Hugging Face code path, offline -------------------------------------------


def test_a_hub_layout_directory_reads_as_its_parquet_files(tmp_path, hub_offline):
    hub = write_hub_layout(tmp_path / "hub", DOCS)
    source = Source(dataset=str(hub))
    assert list(source.documents()) == DOCS
    files = sorted((hub / "data").glob("*.parquet"))
    assert list(Source(path=str(hub / "data")).documents()) == DOCS == \
        [d for f in files for d in pq.read_table(f)["text"].to_pylist()]
    (hub / "README.md").write_text("a dataset card")
    (hub / ".cache").mkdir()
    (hub / ".cache" / "download.metadata").write_text("changes; not the dataset")
    identity = source.identity()
    assert {k: v for k, v in identity.items() if k != "files"} == {
        "dataset": str(hub), "subset": None, "split": "train", "revision": None,
        "text_field": "text"}
    assert [f["name"] for f in identity["files"]] == ["README.md", *[f.name for f in files]]
    write_parquet(files[1], DOCS[:3])  # the directory's content changed: so did its identity
    assert Source(dataset=str(hub)).identity() != identity


def test_lm_prepare_of_a_hub_layout_directory_is_the_documents_encoded_by_hand(
        tmp_path, hub_offline, capsys):
    docs = [f"{d} ({i})" for i, d in enumerate(DOCS * 3)]  # 30 documents
    hub = write_hub_layout(tmp_path / "hub", docs, shards=3)
    out = tmp_path / "out"
    assert lm(["prepare", f"source.dataset={hub}", f"out={out}", "tokenizer.name=byte",
               "val_fraction=0.2", "num_workers=2", "shard_tokens=300", "chunk_mb=0.0002"]) == 0
    assert capsys.readouterr().out.endswith(f"train on it: lm train data=prepared "
                                            f"data.path={out}\n")
    manifest = read_manifest(out)
    tokenizer = build_tokenizer("byte", "")
    k = round(1 / 0.2)
    expected = {"train": [], "val": []}
    for i, doc in enumerate(docs):
        expected["val" if i % k == k - 1 else "train"] += [tokenizer.eos_id, *tokenizer.encode(doc)]
    for split in ("train", "val"):
        shards = manifest["shards"][split]
        ids = np.concatenate([np.fromfile(out / s["file"], dtype=manifest["dtype"])
                              for s in shards])
        assert ids.tolist() == expected[split]
        assert [s["tokens"] for s in shards[:-1]] == [300] * (len(shards) - 1)
        assert sum(s["tokens"] for s in shards) == len(expected[split])
    assert len(manifest["shards"]["train"]) > 1  # the cut across shards is tested
    assert manifest["documents"] == {"train": 24, "val": 6}
    assert manifest["bytes"]["val"] == sum(len(d.encode()) for i, d in enumerate(docs)
                                           if i % k == k - 1)
    assert manifest["replaced"] == 0 and manifest["source"]["dataset"] == str(hub)
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "manifest.json", "tokenizer.json", *[s["file"] for s in manifest["shards"]["train"]],
        *[s["file"] for s in manifest["shards"]["val"]]]


# ---- 3. bad input: one error line, exit code 2, nothing left behind ------------------


def write_bad_inputs(tmp):
    """The files BAD_INPUTS names, in ``tmp``."""
    write_jsonl(tmp / "docs.jsonl", DOCS)
    write_jsonl(tmp / "nofield.jsonl", DOCS, field="body")
    write_parquet(tmp / "nofield.parquet", DOCS, field="body")
    pq.write_table(pa.table({"text": list(range(10))}), tmp / "ints.parquet")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "emptydir").mkdir()
    (tmp / "docs.csv").write_text("text\nhello\n")
    (tmp / "notjson.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    (tmp / "broken.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:40])
    write_jsonl(tmp / "big.jsonl", ["short", "short", "short", "y" * 200, "short"])
    late = [json.dumps({"body" if i == 6 else "text": d}) + "\n" for i, d in enumerate(DOCS)]
    (tmp / "late.jsonl").write_text("".join(late))  # record 7 lacks "text"
    (tmp / "hub_nofield" / "data").mkdir(parents=True)
    write_parquet(tmp / "hub_nofield" / "data" / "train-00000-of-00001.parquet", DOCS, "body")
    write_hub_layout(tmp / "hub_corrupt", DOCS)
    (tmp / "hub_corrupt" / "data" / "train-00001-of-00002.parquet").write_bytes(b"PAR1" * 20)


DOCS_ARG = "source.path={tmp}/docs.jsonl"
BAD_INPUTS = {  # case -> (lm prepare arguments, what the error line says); {tmp}: tmp_path
    "no_field_jsonl": (["source.path={tmp}/nofield.jsonl"],
                       "line 1 of {tmp}/nofield.jsonl has no field 'text' (it has: body, id)"),
    "no_field_parquet": (["source.path={tmp}/nofield.parquet"],
                         "{tmp}/nofield.parquet has no column 'text' (it has: id, body)"),
    "not_text_parquet": (["source.path={tmp}/ints.parquet"], "column 'text' is int64, not text"),
    "empty_file": (["source.path={tmp}/empty.jsonl"], "holds no documents; the source is empty"),
    "empty_dir": (["source.path={tmp}/emptydir"],
                  ("the directory {tmp}/emptydir holds no .txt, .jsonl, .jsonl.gz, .parquet "
                   "files; the source is empty")),
    "missing": (["source.path={tmp}/nothere.jsonl"], "{tmp}/nothere.jsonl does not exist"),
    "csv": (["source.path={tmp}/docs.csv"],
            "docs.csv is not one of .txt, .jsonl, .jsonl.gz, .parquet"),
    "late_no_field": (["source.path={tmp}/late.jsonl", "tokenizer_sample_mb=0.00001"],
                      "line 7 of {tmp}/late.jsonl has no field 'text' (it has: body)"),
    "not_json": (["source.path={tmp}/notjson.jsonl"], "line 2 of {tmp}/notjson.jsonl is not JSON"),
    "broken_gzip": (["source.path={tmp}/broken.jsonl.gz"], "{tmp}/broken.jsonl.gz cannot be read"),
    "too_big": (["source.path={tmp}/big.jsonl", "max_document_mb=0.0001"],
                "line 4 of {tmp}/big.jsonl is more than"),
    "zero_limit": ([DOCS_ARG, "max_document_mb=0"], "max_document_mb=0 must be > 0"),
    "both": ([DOCS_ARG, "source.dataset={tmp}"], "set exactly one of source.path="),
    "neither": ([], "set exactly one of source.path="),
    "empty_path": (["source.path="], "set exactly one of source.path="),  # not the cwd
    "val_fraction": ([DOCS_ARG, "val_fraction=0.7"], "val_fraction=0.7 must be in (0, 0.5)"),
    "num_workers": ([DOCS_ARG, "num_workers=0"], "num_workers=0 must be >= 1"),
    "dataset_no_field": (["source.dataset={tmp}/hub_nofield"],
                         "row 0 of {tmp}/hub_nofield has no field 'text' (it has: id, body)"),
    "dataset_corrupt": (["source.dataset={tmp}/hub_corrupt"],
                        "source.dataset={tmp}/hub_corrupt: reading row 5 failed"),
    "dataset_split": (["source.dataset={tmp}/hub_corrupt", "source.split=test"],
                      "source.dataset={tmp}/hub_corrupt (subset=None, split=test): Bad split"),
    "unknown_dataset": (["source.dataset=no-such-owner/no-such-dataset"],
                        ("source.dataset=no-such-owner/no-such-dataset: the Hugging Face hub "
                         "cannot be reached")),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_no_output_dir(tmp_path, hub_offline, monkeypatch,
                                                        capsys, case):
    write_bad_inputs(tmp_path)
    monkeypatch.chdir(tmp_path / "emptydir")
    argv, message = BAD_INPUTS[case]
    out = tmp_path / "out"
    defaults = [f"out={out}", "tokenizer.name=byte", "val_fraction=0.25", "num_workers=1"]
    assert lm(["prepare", *defaults, *[a.format(tmp=tmp_path) for a in argv]]) == 2
    assert message.format(tmp=tmp_path) in one_line(capsys.readouterr().err)
    assert not out.exists()


def test_out_that_is_a_file_or_another_directory_is_refused_and_left_alone(tmp_path, capsys):
    docs = f"source.path={write_jsonl(tmp_path / 'docs.jsonl', DOCS)}"
    (tmp_path / "file").write_text("mine")
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "notes.md").write_text("my notes")
    (other / "sub" / "train_000000.bin").write_bytes(b"\x00\x01")
    before = tree(tmp_path)
    for out, message in [("file", "is a file; name a directory"),
                         ("other", "is a directory that holds other files; name a new one")]:
        assert lm(["prepare", docs, f"out={tmp_path / out}", "val_fraction=0.2",
                   "num_workers=1"]) == 2
        assert f"out={tmp_path / out} {message}" in one_line(capsys.readouterr().err)
    assert tree(tmp_path) == before


def test_bytes_that_are_not_utf8_are_one_warning_line_and_counted(tmp_path, capsys):
    lines = [json.dumps({"text": d}).encode() + b"\n" for d in DOCS]
    lines[2] = b'{"text": "caf\xe9"}\n'
    lines[8] = b'{"text": "\xff\xfe"}\n'
    (tmp_path / "docs.jsonl").write_bytes(b"".join(lines))
    out = tmp_path / "out"
    assert lm(["prepare", f"source.path={tmp_path / 'docs.jsonl'}", f"out={out}",
               "val_fraction=0.2", "num_workers=1"]) == 0
    line = one_line(capsys.readouterr().err, "warning: ")
    assert "2 document(s) held bytes that are not UTF-8" in line and "U+FFFD" in line
    manifest = read_manifest(out)
    assert manifest["replaced"] == 2 and manifest["documents"] == {"train": 8, "val": 2}
    assert manifest["bytes"]["train"] + manifest["bytes"]["val"] == \
        sum(len(d.encode()) for i, d in enumerate(DOCS) if i not in (2, 8)) + \
        len("caf\ufffd".encode()) + len("\ufffd\ufffd".encode())


# ---- 4. a directory another prepare holds ---------------------------------------------


def test_a_prepare_into_a_directory_another_holds_is_refused_and_deletes_nothing(tmp_path,
                                                                                capsys):
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "out"
    (out / ".parts").mkdir(parents=True)  # the holder's work so far
    (out / ".parts" / "plan.json").write_text("{}")
    (out / ".parts" / "000000.train.bin").write_bytes(b"\x01\x00" * 8)
    (out / "tokenizer.json").write_text('{"type": "byte"}')
    with open(out / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = tree(out)
        assert lm(["prepare", f"source.path={docs}", f"out={out}", "val_fraction=0.2",
                   "num_workers=1"]) == 2
        assert tree(out) == before
    line = one_line(capsys.readouterr().err)
    assert f"out={out} is being prepared by another process" in line


# ---- 5. lm train on a directory that is not, or no longer, what lm prepare wrote -------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small dataset written by lm prepare (byte tokenizer, 2 train shards)."""
    tmp = tmp_path_factory.mktemp("prepared")
    docs = write_jsonl(tmp / "docs.jsonl", [f"{d} ({i})" for i, d in enumerate(DOCS * 2)])
    prepare(PrepareSettings(source=Source(path=str(docs)), out=str(tmp / "out"),
                            val_fraction=0.2, num_workers=1, shard_tokens=400, progress=False))
    return tmp / "out"


def edit_manifest(path):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["documents"]["train"] += 1  # its digest left as it was
    (path / "manifest.json").write_text(json.dumps(manifest))


def flip_a_byte(path):
    shard = path / "train_000001.bin"
    data = bytearray(shard.read_bytes())
    data[3] ^= 1
    shard.write_bytes(bytes(data))


def truncate(path):
    shard = path / "val_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])


@pytest.mark.parametrize("change, message", [
    (lambda p: (p / "manifest.json").unlink(),
     "data.path={p} has no manifest.json: not a dataset written by lm prepare"),
    (edit_manifest, "{p}/manifest.json does not match its own digest"),
    (flip_a_byte, "{p}/train_000001.bin does not match its SHA-256 in manifest.json"),
    (truncate, "{p}/val_000000.bin is {n:,} bytes, manifest.json says {m:,}: the shard changed"),
], ids=["no_manifest", "edited_manifest", "flipped_byte", "truncated"])
def test_lm_train_refuses_a_dataset_not_as_prepared_in_one_line(prepared, tmp_path, monkeypatch,
                                                                capsys, change, message):
    path = tmp_path / "data"
    shutil.copytree(prepared, path)
    size = (path / "val_000000.bin").stat().st_size
    change(path)
    monkeypatch.chdir(tmp_path)
    code = lm(["train", "data=prepared", f"data.path={path}", "model=tiny",
               f"tracking.registry_dir={tmp_path / 'registry'}", "trainer.max_steps=1",
               "trainer.enable_progress_bar=false"])
    assert code == 2
    assert message.format(p=path, n=size - 2, m=size) in one_line(capsys.readouterr().err)
    assert not list((tmp_path / "registry").rglob("*.ckpt"))


# ---- 6. named datasets ------------------------------------------------------------------


def test_a_named_dataset_prepares_into_its_data_path_and_offline_says_so(tmp_path, hub_offline,
                                                                          capsys):
    assert lm(["prepare", "data=tinystories", f"paths.data_dir={tmp_path}"]) == 2
    assert "source.dataset=roneneldan/TinyStories: the Hugging Face hub cannot be reached" in \
        one_line(capsys.readouterr().err)
    assert not (tmp_path / "prepared" / "tinystories-bpe8192").exists()
    assert lm(["prepare", "data=shakespeare_char"]) == 2
    assert "has no prepare node" in one_line(capsys.readouterr().err)
