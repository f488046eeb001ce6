"""Words of a prompt -> context positions, from the CLIP object's own tokenizer.

Positions are read from the very tokens that get encoded (``tokenize`` once, then
``encode_from_tokens`` and ``positions`` on the same tokens), so they cannot drift from
the conditioning. SDXL tokenizes the prompt twice (clip_l and clip_g, concatenated per
position): both must agree, or the prompt is refused.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

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


@dataclass(frozen=True)
class RegionPrompt:
    """A prompt as Region Prompt encoded it: the text, its tokens and the CLIP that made
    them, so words are looked up in exactly the tokens that made the conditioning."""
    text: str
    tokens: dict
    clip: object

    @property
    def context_tokens(self) -> int:
        """T of the conditioning: 77 per chunk."""
        return sum(len(chunk) for chunk in next(iter(self.tokens.values())))

    def positions(self, words: str) -> list[int]:
        """Positions of comma-separated words/phrases (all their occurrences)."""
        phrases = [p.strip() for p in words.split(",") if p.strip()]
        if not phrases:
            raise WordNotInPrompt("no words given: name the words of the prompt this region means")
        return sorted({p for phrase in phrases for p in positions(self.clip, self.tokens, phrase)})


def encode(clip, text: str) -> tuple[list, RegionPrompt]:
    """CONDITIONING (as CLIPTextEncode makes it) and the RegionPrompt of the same tokens."""
    tokens = tokenize(clip, text)
    return clip.encode_from_tokens_scheduled(tokens), RegionPrompt(text, tokens, clip)
