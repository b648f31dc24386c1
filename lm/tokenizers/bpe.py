"""GPT-2-style byte-level BPE: training and `BPETokenizer`.

Byte-pair encoding (BPE) starts from the bytes and repeatedly merges the most
frequent adjacent pair of tokens into a new token (Sennrich, Haddow and Birch,
2016, "Neural Machine Translation of Rare Words with Subword Units",
https://arxiv.org/abs/1508.07909, after Gage's 1994 compression algorithm).
GPT-2 (Radford et al., 2019, "Language Models are Unsupervised Multitask
Learners"; code: https://github.com/openai/gpt-2/blob/master/src/encoder.py)
made it byte-level and first splits the text with a regular expression into
pre-tokens ("chunks": words with their leading space, runs of digits, of
punctuation, of whitespace), so merges never cross a chunk boundary. Karpathy's
minbpe (https://github.com/karpathy/minbpe) is the reference design followed
here; OpenAI's tiktoken is the fast implementation we check against.

Special tokens, U+FFFD and decoding follow the byte-level rules of `byte.py`;
GPT-2's own files are read and written by `gpt2_files.py`.
"""

import heapq
import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import regex
import tiktoken

from lm.tokenizers.byte import (
    N_BYTES,
    ByteLevel,
    check_special_tokens,
    split_on_specials,
    to_valid_unicode,
)
from lm.tokenizers.gpt2_files import read_gpt2_files, write_gpt2_files

# GPT-2's pre-tokenisation pattern (encoder.py): contractions, letters with an
# optional leading space, digits likewise, other symbols likewise, whitespace not
# followed by a non-space (so " word" keeps its space), remaining whitespace.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def pretokenize(text: str, pattern: str = GPT2_PATTERN) -> list[str]:
    """Split `text` into the chunks BPE works inside: `regex.findall(pattern, text)`.

    The chunks concatenate back to `text` (the GPT-2 pattern matches every character).
    """
    return regex.findall(pattern, text)


# ---------------------------------------------------------------------------
# BPE training. A "word" is one distinct chunk as a list of token ids; a "pair"
# is two adjacent ids. Pair counts are over all adjacent positions (so "aaa"
# holds (a, a) twice) weighted by how often the chunk occurs in the corpus.


def merge_ids(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """`ids` with each occurrence of `pair`, scanned left to right without
    overlap, replaced by `new_id`: merge_ids([5, 5, 5], (5, 5), 9) == [9, 5]."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_word_with_deltas(
    word: list[int], pair: tuple[int, int], new_id: int
) -> tuple[list[int], list[tuple[tuple[int, int], int]]]:
    """`merge_ids(word, pair, new_id)` and the changes to the word's pair counts.

    Each merge at position i removes (left, a), (a, b), (b, right) and adds
    (left, new), (new, right), where `left` is the token already written to the
    output (it may be `new_id` from the merge just before) and `right` the next
    input token. Only the merged positions are touched: this is what makes
    training incremental (after HF tokenizers' `Word::merge`).
    """
    a, b = pair
    out, deltas, i = [], [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            deltas.append((pair, -1))
            if out:
                deltas += [((out[-1], a), -1), ((out[-1], new_id), +1)]
            if i + 2 < len(word):
                deltas += [((b, word[i + 2]), -1), ((new_id, word[i + 2]), +1)]
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out, deltas


def count_pairs(
    words: list[list[int]], freqs: list[int]
) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], set[int]]]:
    """Pair counts over all words, and for each pair the indices of words holding it."""
    counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in pairwise(word):
            counts[pair] += freq
            where[pair].add(w)
    return counts, where


def pop_best_pair(heap: list, counts: dict[tuple[int, int], int]) -> tuple[int, int] | None:
    """The most frequent pair, ties to the smallest (first id, second id); None if none.

    The heap holds (-count, pair) entries pushed whenever a count changed; an entry
    whose count is no longer the pair's current count is stale and skipped (lazy
    deletion), so no entry is ever searched for and removed.
    """
    while heap:
        neg_count, pair = heapq.heappop(heap)
        if counts.get(pair) == -neg_count:
            return pair
    return None


def learn_merges(chunk_counts: dict[str, int], n_merges: int) -> list[tuple[int, int]]:
    """Up to `n_merges` BPE merges learned from chunk frequencies; merge k makes id 256 + k.

    Each distinct chunk is counted once, weighted by its frequency. After a merge
    only the words that hold the pair (found through the pair -> words index) are
    rewritten, and only the counts around the merged positions change, so each
    step costs the size of those words, not of the corpus. The best pair comes
    from a max-heap with lazy deletion; ties go to the lexicographically smallest
    pair of ids, so training is deterministic. Stops early if no pair is left
    (every chunk is a single token).
    """
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    counts, where = count_pairs(words, freqs)
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges and (pair := pop_best_pair(heap, counts)) is not None:
        new_id = N_BYTES + len(merges)
        changed = set()
        for w in where.pop(pair):  # may hold words that lost the pair: they yield no deltas
            words[w], deltas = merge_word_with_deltas(words[w], pair, new_id)
            for p, d in deltas:
                counts[p] += d * freqs[w]
                changed.add(p)
                if d > 0:
                    where[p].add(w)
        assert counts[pair] == 0, f"pair {pair} still counted after its merge"
        for p in changed:
            if counts[p] > 0:
                heapq.heappush(heap, (-counts[p], p))
            else:
                del counts[p]
        merges.append(pair)
    return merges


class BPETokenizer(ByteLevel):
    """GPT-2-style byte-level BPE: pre-tokenise, then merge byte pairs by rank.

    Ids: 0-255 are single bytes (our training puts byte b at id b; a GPT-2 file
    may order them differently, see `byte_order`), id 256 + k is made by merge k
    (merges are listed in rank order, rank k = priority k), and the special
    tokens follow, so vocab_size = 256 + len(merges) + len(special_tokens).
    `decode` and the special ids come from `ByteLevel`.

    Args:
        merges: (left id, right id) pairs in rank order.
        special_tokens: their strings; ids follow the merges in this order.
        byte_order: the byte value of each of ids 0-255 (default: id b is byte b).
        pattern: the pre-tokenisation regex (`regex` syntax).
    Raises:
        ValueError: a merge names an id not yet defined, `byte_order` is not a
            permutation of 0-255, or `special_tokens` are not distinct non-empty.
    """

    CACHE_SIZE = 1 << 17  # chunks whose encoding is remembered

    def __init__(
        self,
        merges: Sequence[Sequence[int]],
        special_tokens: Sequence[str] = ("<eos>",),
        byte_order: Sequence[int] | None = None,
        pattern: str = GPT2_PATTERN,
    ):
        byte_order = list(range(N_BYTES) if byte_order is None else byte_order)
        if sorted(byte_order) != list(range(N_BYTES)):
            raise ValueError("byte_order must be a permutation of 0..255")
        specials = check_special_tokens(special_tokens)
        self.byte_order = byte_order
        self.pattern = pattern
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.vocab = self._build_vocab()  # id -> bytes, without the specials
        self.ranks = {pair: k for k, pair in enumerate(self.merges)}
        self.special_tokens = {s: len(self.vocab) + k for k, s in enumerate(specials)}
        self._byte_to_id = {b: i for i, b in enumerate(byte_order)}
        self._id_to_bytes = self.vocab + [s.encode("utf-8") for s in specials]
        self._cache: dict[str, list[int]] = {}
        self._tiktoken: tiktoken.Encoding | None = None

    def _build_vocab(self) -> list[bytes]:
        vocab = [bytes([b]) for b in self.byte_order]
        for k, (a, b) in enumerate(self.merges):
            if not (0 <= a < len(vocab) and 0 <= b < len(vocab)):
                raise ValueError(f"merge {k} = ({a}, {b}) names an id not in [0, {len(vocab)})")
            vocab.append(vocab[a] + vocab[b])
        return vocab

    # -- training -----------------------------------------------------------

    @classmethod
    def train(
        cls, text: str, vocab_size: int, special_tokens: Sequence[str] = ("<eos>",)
    ) -> "BPETokenizer":
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text`.

        Literal special tokens in `text` are cut out first (they teach no merges);
        the rest is pre-tokenised with GPT-2's pattern and handed to `learn_merges`.
        The result is smaller than `vocab_size` only if the text runs out of pairs.

        Raises:
            ValueError: `vocab_size` is below 256 + len(special_tokens).
        """
        specials = check_special_tokens(special_tokens)
        n_merges = vocab_size - N_BYTES - len(specials)
        if n_merges < 0:
            raise ValueError(
                f"vocab_size={vocab_size} must be at least 256 + {len(specials)} special tokens"
            )
        pieces = split_on_specials(to_valid_unicode(text), specials)[::2]
        chunk_counts = Counter(chunk for piece in pieces for chunk in pretokenize(piece))
        return cls(learn_merges(chunk_counts, n_merges), specials)

    @classmethod
    def from_text(
        cls, text: str, vocab_size: int | None = None, special_tokens: Sequence[str] = ("<eos>",),
        path: str | None = None,
    ) -> "BPETokenizer":
        """The `build_tokenizer` entry point: `train(text, vocab_size or 4096, special_tokens)`, or,
        with `path` (`conf/data/tokenizer/gpt2_files.yaml`), GPT-2's files read from that
        directory (`load_gpt2`; nothing is trained, so a checkpoint's token ids are kept:
        fine-tuning with `init_from`).

        Raises:
            ValueError: `path` given with a `vocab_size` the files do not have.
        """
        if path is None:
            return cls.train(text, vocab_size or 4096, special_tokens)
        tokenizer = cls.load_gpt2(path)
        if vocab_size is not None and vocab_size != tokenizer.vocab_size:
            raise ValueError(f"data.tokenizer.vocab_size={vocab_size} but the files in "
                             f"{path} have {tokenizer.vocab_size} tokens; leave it null")
        return tokenizer

    # -- the tokenizer interface ----------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, the readable reference path (GPT-2's `encode`).

        Literal special tokens become their ids; each stretch between them is
        pre-tokenised and every chunk is encoded by `encode_chunk`.
        """
        ids: list[int] = []
        text = to_valid_unicode(text)
        for k, piece in enumerate(split_on_specials(text, self.special_tokens)):
            if k % 2:
                ids.append(self.special_tokens[piece])
                continue
            for chunk in pretokenize(piece, self.pattern):
                ids.extend(self.encode_chunk(chunk))
        return ids

    def encode_chunk(self, chunk: str) -> list[int]:
        """BPE of one chunk, as GPT-2's `bpe()`: start from its bytes and merge
        the lowest-rank pair present until no pair has a rank. Cached per chunk."""
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        ids = [self._byte_to_id[b] for b in chunk.encode("utf-8")]
        while len(ids) >= 2:
            pair = min(pairwise(ids), key=lambda p: self.ranks.get(p, math.inf))
            if pair not in self.ranks:
                break
            ids = merge_ids(ids, pair, N_BYTES + self.ranks[pair])
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[chunk] = ids
        return ids

    def encode_array(self, text: str) -> np.ndarray:
        """`encode(text)` as an int64 array of shape (n_tokens,), through tiktoken.

        tiktoken's Rust encoder gives the same ids as `encode` (tested) at many
        times the speed; use it for corpora.
        """
        ids = self.to_tiktoken().encode_to_numpy(to_valid_unicode(text), allowed_special="all")
        return ids.astype(np.int64)

    def to_tiktoken(self) -> tiktoken.Encoding:
        """A `tiktoken.Encoding` with our ranks (token bytes -> id), pattern and specials.

        tiktoken merges the pair whose concatenated bytes have the lowest rank,
        which for a vocabulary learned by BPE is the same as GPT-2's merge order.
        Encode with `allowed_special="all"` to follow our special-token rule.
        """
        if self._tiktoken is None:
            self._tiktoken = tiktoken.Encoding(
                f"lm-bpe-{self.vocab_size}",
                pat_str=self.pattern,
                mergeable_ranks={tok: i for i, tok in enumerate(self.vocab)},
                special_tokens=dict(self.special_tokens),
            )
        return self._tiktoken

    # -- our JSON ---------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-able description (for checkpoints and token caches):
        `{"type": "bpe", "pattern", "byte_order", "merges": [[a, b], ...], "special_tokens"}`."""
        return {
            "type": "bpe",
            "pattern": self.pattern,
            "byte_order": list(self.byte_order),
            "merges": [list(pair) for pair in self.merges],
            "special_tokens": list(self.special_tokens),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        """Inverse of `to_dict`. Raises ValueError if `d["type"]` is not "bpe"."""
        if d.get("type") != "bpe":
            raise ValueError(f"tokenizer type={d.get('type')!r} must be 'bpe'")
        return cls(d["merges"], d["special_tokens"], d["byte_order"], d["pattern"])

    def save(self, path: str | Path) -> None:
        """Write `to_dict()` as JSON to `path`."""
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """Read a tokenizer written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    # -- GPT-2's files ------------------------------------------------------------

    def save_gpt2(self, directory: str | Path) -> None:
        """Write GPT-2's `encoder.json` and `vocab.bpe` into `directory` (`gpt2_files.py`).

        Raises:
            ValueError: a special token's string equals an ordinary token's.
        """
        write_gpt2_files(directory, self.vocab, self.merges, self.special_tokens)

    @classmethod
    def load_gpt2(cls, directory: str | Path, pattern: str = GPT2_PATTERN) -> "BPETokenizer":
        """The tokenizer in GPT-2's `encoder.json` + `vocab.bpe` (or Hugging Face's
        `vocab.json` + `merges.txt`) in `directory`, GPT-2's ids kept.

        Raises:
            FileNotFoundError, ValueError: as `gpt2_files.read_gpt2_files`.
        """
        files = read_gpt2_files(directory)
        return cls(files.merges, files.special_tokens, files.byte_order, pattern)
