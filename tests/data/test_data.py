"""lm/data/tokens.py and datamodule.py: the split, batches drawn from (seed, step), the
token cache, <unk> shares and the validation batches' own seed."""

import hashlib
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lm.data import datamodule as dm_module
from lm.data import tokens as data
from lm.data.corpus import DataError
from lm.data.datamodule import LMDataModule
from lm.data.tokens import get_batch, load_tokens, prepare_tokens, split_text
from lm.tokenizers.byte import ByteTokenizer
from lm.tokenizers.char import CharTokenizer
from tests.conftest import ROOT

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


# ---- <unk> tokens: characters the tokenizer lacks ---------------------------------------

ASCII = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .\n")  # a base model's tokenizer
# 1,000 characters: the first 900 (train at val_fraction 0.1) hold 9 'é', the last 100
# (val) 1 'é' and 2 'ü', all other characters ASCII's: by hand, 9 / 900 = 1% of the
# train tokens and 3 / 100 = 3% of val are <unk>.
ACCENTED = ("caf\u00e9 au lait. " * 9).ljust(900, "x") + ("caf\u00e9 " + "\u00fct " * 2).ljust(100, "x")


def unk_datamodule(tmp_path, **kwargs):
    args = {"block_size": 8, "batch_size": 2, "fixed_tokenizer": ASCII, **kwargs}
    dm = datamodule(tmp_path, ACCENTED, **args)
    dm.setup()
    return dm


def test_unknown_chars_against_a_plain_count():
    train, val = split_text(ACCENTED, 0.1)
    assert (len(train), len(val)) == (900, 100)
    for part in (train, val):
        reference = Counter(c for c in part if c not in ASCII.chars)
        assert data.unknown_chars(part, ASCII.encode_array(part), ASCII) == reference
    assert data.unknown_chars(val, ASCII.encode_array(val), ASCII) == {"\u00e9": 1, "\u00fc": 2}
    byte = ByteTokenizer()
    assert data.unknown_chars(val, byte.encode_array(val), byte) == {}


def test_unk_share_is_printed_and_recorded(tmp_path, capsys):
    dm = unk_datamodule(tmp_path, max_unk_fraction=0.05)
    assert dm.meta["unk_fraction"] == {"train": 9 / 900, "val": 3 / 100}
    assert capsys.readouterr().err == (
        "warning: <unk> is 1% of the train tokens (9 of 900) and 3% of the val tokens "
        "(3 of 100): init_from's tokenizer lacks '\u00e9' (10), '\u00fc' (2); they train as "
        "<unk> (data.max_unk_fraction=0.05)\n"
    )


def test_unk_share_above_the_threshold_is_refused_in_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        unk_datamodule(tmp_path, max_unk_fraction=0.01)  # < 3%
    message = str(err.value)
    assert message == (
        "<unk> is 1% of the train tokens (9 of 900) and 3% of the val tokens (3 of 100), "
        "above data.max_unk_fraction=0.01: init_from's tokenizer lacks '\u00e9' (10), "
        "'\u00fc' (2); fine-tune a base model whose tokenizer covers this text, or raise "
        "data.max_unk_fraction"
    )
    with pytest.raises(DataError, match="data.max_unk_fraction=0.02"):
        unk_datamodule(tmp_path, max_unk_fraction=0.02)
    with pytest.raises(DataError, match=r"data.max_unk_fraction=1.5 must be in \[0, 1\]"):
        LMDataModule(max_unk_fraction=1.5)


def test_a_trained_tokenizer_lacks_only_what_the_train_split_lacks(tmp_path):
    """Trained on the train split, the char tokenizer knows 'é'; 'ü' is val's alone."""
    with pytest.raises(DataError) as err:
        unk_datamodule(tmp_path, fixed_tokenizer=None, max_unk_fraction=0.01)
    assert str(err.value).startswith(
        "<unk> is 0% of the train tokens (0 of 900) and 2% of the val tokens (2 of 100), "
        "above data.max_unk_fraction=0.01: the tokenizer (trained on the train split) "
        "lacks '\u00fc' (2); use a tokenizer that covers any text (data/tokenizer=byte)")


def test_byte_tokenizers_have_no_unknowns(tmp_path, capsys):
    dm = unk_datamodule(tmp_path, fixed_tokenizer=None, tokenizer="byte", max_unk_fraction=0)
    assert dm.meta["unk_fraction"] == {"train": 0, "val": 0}
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not (ROOT / "data" / "shakespeare" / "input.txt").is_file(),
                    reason="the default corpus is not downloaded")
def test_the_default_corpus_has_no_unknowns_and_says_nothing(capsys):
    dm = LMDataModule(data_dir=str(ROOT / "data"))
    dm.setup()
    assert dm.meta["unk_fraction"] == {"train": 0, "val": 0}
    assert "<unk>" not in "".join(capsys.readouterr())


# ---- validation batches: their own seed -----------------------------------------------


def val_and_train_batches(dm, rank=0, world_size=1):
    dm.trainer = SimpleNamespace(global_step=0, global_rank=rank, world_size=world_size)
    val = [x for x, _ in dm.val_dataloader()]
    train = next(iter(dm.train_dataloader()))[0]
    return val, train


def test_validation_batches_do_not_depend_on_the_training_seed(tmp_path):
    runs = [datamodule(tmp_path, TEXT, block_size=8, batch_size=4, eval_iters=3, seed=seed)
            for seed in (1, 2)]
    for dm in runs:
        dm.setup()
    (val_1, train_1), (val_2, train_2) = (val_and_train_batches(dm) for dm in runs)
    assert not torch.equal(train_1, train_2)
    assert len(val_1) == 3 and all(torch.equal(a, b) for a, b in zip(val_1, val_2, strict=True))
    # eval_seed 1337 draws what the default run (seed 1337) drew before data.eval_seed
    before = [get_batch(runs[0].val_ids, 8, 4, 1337, i, data.VAL_STREAM)[0] for i in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(val_1, before, strict=True))
    other = datamodule(tmp_path, TEXT, block_size=8, batch_size=4, eval_iters=3, eval_seed=7)
    other.setup()
    assert not torch.equal(val_and_train_batches(other)[0][0], val_1[0])


def test_ranks_share_the_validation_batches_of_every_seed(tmp_path):
    """Two ranks take batches 0, 2, 4 and 1, 3: the five of one process at seed 1, at
    any seed."""
    one = datamodule(tmp_path, TEXT, block_size=8, batch_size=4, eval_iters=5, seed=1)
    one.setup()
    whole = val_and_train_batches(one)[0]
    for seed in (1, 2):
        dm = datamodule(tmp_path, TEXT, block_size=8, batch_size=4, eval_iters=5, seed=seed)
        dm.setup()
        shares = [val_and_train_batches(dm, rank, 2)[0] for rank in (0, 1)]
        merged = [shares[i % 2][i // 2] for i in range(5)]
        assert all(torch.equal(a, b) for a, b in zip(merged, whole, strict=True))


def test_a_config_before_eval_seed_draws_validation_from_seed(tmp_path):
    """build_datamodule: data.eval_seed if set, else `seed`, as the code before it."""
    (tmp_path / "corpus.txt").write_text(TEXT)
    cfg = OmegaConf.create({
        "seed": 5, "model": {"block_size": 8}, "paths": {"data_dir": str(tmp_path)},
        "data": {"source": "text_file", "path": str(tmp_path / "corpus.txt"),
                 "tokenizer": {"name": "char"}, "val_fraction": 0.1, "batch_size": 4,
                 "eval_iters": 2},
    })
    assert dm_module.build_datamodule(cfg).eval_seed == 5
    cfg.data.eval_seed = 1337
    assert dm_module.build_datamodule(cfg).eval_seed == 1337
    with pytest.raises(DataError, match="data.eval_seed=-1 must be an integer >= 0"):
        LMDataModule(eval_seed=-1)
