"""Words of a prompt -> positions of their tokens in the UNet's context.

ComfyUI's CLIP tokenizers (comfy/sd1_clip.py, tokenize_with_weights with
``return_word_ids=True``) give, per 77-token chunk, (token, weight, id) triples, the id
0 for start, end and padding (and > 0 per weighted SEGMENT of text, not per word). The
context the UNet sees concatenates the chunks, so chunk c's position p is key c * 77 + p.

A phrase is found by its own token ids (tokenized by the same tokenizer) as a run of
text tokens that starts a word. CLIP's BPE marks the last token of every word ("</w>"),
so a token starts a word when the one before it ends a word or is not text. Multi-token
words map to all their tokens, every repetition is found, "red" does not match the tail
of a word, and weights syntax such as "(red:1.2)" moves nothing (the tokenizer strips it).
"""
from __future__ import annotations

from typing import Container

Token = tuple  # (token id, weight, segment id; 0 = not text)


class WordNotInPrompt(ValueError):
    pass


def phrase_positions(prompt_chunks: list[list[Token]], phrase_ids: list[int], word_ends: Container[int],
                     phrase: str = "") -> list[int]:
    """Context positions of every occurrence of ``phrase_ids`` in the prompt's chunks;
    ``word_ends`` holds the ids of tokens that end a word."""
    if not phrase_ids:
        raise WordNotInPrompt(f"{phrase!r} has no tokens")
    positions: list[int] = []
    offset = 0
    n = len(phrase_ids)
    for chunk in prompt_chunks:
        ids = [t[0] for t in chunk]
        words = [t[2] for t in chunk]
        for start in range(len(chunk) - n + 1):
            starts_word = start == 0 or words[start - 1] == 0 or ids[start - 1] in word_ends
            if starts_word and ids[start:start + n] == phrase_ids and all(w > 0 for w in words[start:start + n]):
                positions.extend(range(offset + start, offset + start + n))
        offset += len(chunk)
    if not positions:
        raise WordNotInPrompt(f"{phrase!r} is not in the prompt")
    return positions


def word_tokens(phrase_chunks: list[list[Token]]) -> list[int]:
    """The token ids of a phrase tokenized alone: its word tokens, no start/end/padding."""
    return [t[0] for chunk in phrase_chunks for t in chunk if t[2] > 0]
