"""Token ids for the analyses: prompts that fit the model, one-token targets, and the
repeated random sequences induction is measured on. Labels for figures and tables:
``lm.tokenizers.token_labels``."""

import torch

from lm.tokenizers import Tokenizer, token_labels


def encode_prompt(tokenizer: Tokenizer, text: str, block_size: int, key: str = "prompt") -> list[int]:
    """The token ids of ``text`` for one forward pass: at least 1 and at most ``block_size``.

    Raises:
        ValueError: one line naming ``key``: the text is empty, is longer than the
            model's block_size, or (a char tokenizer) holds characters it has no token for.
    """
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError(f"{key} is empty; give at least one token of text")
    if len(ids) > block_size:
        raise ValueError(f"{key} is {len(ids)} tokens, longer than the model's "
                         f"block_size={block_size}; shorten it")
    if tokenizer.unk_id is not None and tokenizer.unk_id in ids:
        unknown = sorted({c for c in text if tokenizer.encode(c) == [tokenizer.unk_id]})
        raise ValueError(f"{key} holds characters the tokenizer has no token for "
                         f"({', '.join(map(repr, unknown))}); use characters of its training text")
    return ids


def single_token(tokenizer: Tokenizer, text: str, key: str) -> int:
    """The id of ``text`` when it is exactly one token of ``tokenizer``.

    Raises:
        ValueError: one line naming ``key``: ``text`` encodes to zero or several tokens,
            or to the unknown token.
    """
    ids = tokenizer.encode(text)
    if len(ids) != 1 or ids[0] == tokenizer.unk_id:
        labels = token_labels(tokenizer, ids)
        raise ValueError(f"{key}={text!r} is {len(ids)} tokens {labels} of this tokenizer"
                         f"{' (unknown)' if ids == [tokenizer.unk_id] else ''}; "
                         "it must be exactly one token")
    return ids[0]


def repeated_random_tokens(vocab: list[int], length: int, seed: int) -> list[int]:
    """``length`` tokens drawn uniformly from ``vocab`` without replacement (so the first
    half holds no repeat), then the same tokens again: 2 * length ids.

    The sequence on which Olsson et al. (2022) measure induction (prefix-matching)
    scores: in the second half, the token after an earlier occurrence of the current
    token is the next token.

    Raises:
        ValueError: ``length`` is < 1 or larger than ``len(vocab)``.
    """
    if not 1 <= length <= len(vocab):
        raise ValueError(f"random_tokens={length} must be in [1, {len(vocab)}] "
                         "(distinct tokens of the vocabulary, specials left out)")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(vocab), generator=generator)[:length]
    first = [vocab[i] for i in order.tolist()]
    return first + first


def plain_vocab(tokenizer: Tokenizer) -> list[int]:
    """Every id of ``tokenizer`` but its special tokens and the tokens that are whitespace
    alone (a newline, a space), in order: what random sequences are drawn from. A newline
    inside a random sequence would end a "line" the model has learned to start afresh
    after, so a character model's heads would be measured on text unlike any it saw."""
    specials = set(tokenizer.special_tokens.values())
    return [i for i in range(tokenizer.vocab_size)
            if i not in specials and tokenizer.decode([i]).strip()]
