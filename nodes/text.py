"""Words of a prompt -> context positions, from the CLIP object's own tokenizer.

Positions are read from the very tokens that get encoded (``tokenize`` once, then
``encode_from_tokens`` and ``positions`` on the same tokens), so they cannot drift from
the conditioning. SDXL tokenizes the prompt twice (clip_l and clip_g, concatenated per
position): both must agree, or the prompt is refused.
"""
from __future__ import annotations

import weakref

from ..maskattn_ops.regions import WordNotInPrompt, phrase_positions, word_tokens

_WORD_ENDS: "weakref.WeakKeyDictionary[object, frozenset[int]]" = weakref.WeakKeyDictionary()


def tokenize(clip, prompt: str) -> dict:
    """The prompt's tokens for every encoder, with ids (encode_from_tokens ignores them)."""
    return clip.tokenize(prompt, return_word_ids=True)


def _encoder_tokenizer(clip, key: str):
    tokenizer = getattr(clip.tokenizer, f"clip_{key}", None)
    if tokenizer is None or not hasattr(tokenizer, "inv_vocab"):
        raise TypeError(f"MaskAttn needs a CLIP-style tokenizer; encoder {key!r} of this CLIP has none")
    return tokenizer


def _word_ends(tokenizer) -> frozenset[int]:
    """Ids of BPE tokens that end a word (CLIP marks them with "</w>"), cached."""
    if tokenizer not in _WORD_ENDS:
        _WORD_ENDS[tokenizer] = frozenset(i for i, text in tokenizer.inv_vocab.items() if text.endswith("</w>"))
    return _WORD_ENDS[tokenizer]


def positions(clip, tokens: dict, phrase: str) -> list[int]:
    """Context positions of every occurrence of ``phrase`` in ``tokens`` (from tokenize)."""
    phrase_tokens = tokenize(clip, phrase)
    found = {}
    for key, chunks in tokens.items():
        tokenizer = _encoder_tokenizer(clip, key)
        found[key] = phrase_positions(chunks, word_tokens(phrase_tokens[key]), _word_ends(tokenizer), phrase)
    if len(set(map(tuple, found.values()))) != 1:
        raise WordNotInPrompt(f"the text encoders disagree on where {phrase!r} is: {found}")
    return next(iter(found.values()))
