"""Regions of the image bound to words of a prompt: masks and boxes, the words'
positions among the UNet's context tokens, and masks resized to a site's token grid.

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

from dataclasses import dataclass
from typing import Container

import torch
from torch import nn

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


@dataclass(frozen=True)
class Region:
    """A part of the image bound to words of one prompt."""
    mask: torch.Tensor            # (B|1, H, W) in [0, 1], any size
    positions: tuple[int, ...]    # the words' positions in the prompt's context
    prompt_tokens: int            # T of that prompt (k * 77): positions index it
    words: str                    # as the user typed them, for messages
    strength: float = 1.0

    def positions_for(self, tokens: int) -> list[int]:
        """Positions in a context of ``tokens`` keys. The host repeats a shorter context
        to the longest one in a batch (cond_cat), so a prompt of T keys may arrive as
        k * T: the words are then at every repetition."""
        if tokens % self.prompt_tokens:
            raise ValueError(f"region {self.words!r} was bound to a prompt of {self.prompt_tokens} tokens, "
                             f"but the model is sampling with {tokens}: bind it to the positive prompt")
        return [p + r * self.prompt_tokens for r in range(tokens // self.prompt_tokens) for p in self.positions]


def check_mask(mask: torch.Tensor, words: str) -> torch.Tensor:
    """A MASK (B, H, W) or (H, W) -> (B, H, W) float; values outside 0..1 (or NaN) and an
    empty mask are errors, never clamped or ignored."""
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3 or mask.shape[-1] == 0 or mask.shape[-2] == 0:
        raise ValueError(f"the mask for {words!r} must be (B, H, W), got shape {tuple(mask.shape)}")
    mask = mask.float()
    if not torch.isfinite(mask).all():
        raise ValueError(f"the mask for {words!r} holds NaN or Inf values")
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError(f"the mask for {words!r} has values from {float(mask.min()):g} to {float(mask.max()):g}; "
                         f"a MASK holds 0..1 (an 8-bit image channel would need dividing by 255)")
    empty = [i for i in range(mask.shape[0]) if not mask[i].any()]
    if empty:
        raise ValueError(f"the mask for {words!r} is empty (all zero) in batch item(s) {empty}")
    return mask


def box_mask(x: int, y: int, width: int, height: int, image_width: int, image_height: int, words: str) -> torch.Tensor:
    """A box in image pixels -> a (1, image_height, image_width) mask."""
    if width <= 0 or height <= 0:
        raise ValueError(f"the box for {words!r} has no area ({width}x{height})")
    if x < 0 or y < 0 or x + width > image_width or y + height > image_height:
        raise ValueError(f"the box for {words!r} (x {x}, y {y}, {width}x{height}) is outside the "
                         f"{image_width}x{image_height} image")
    mask = torch.zeros(1, image_height, image_width)
    mask[:, y:y + height, x:x + width] = 1.0
    return mask


def mask_to_grid(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) mask of any size -> (B, h * w) by area (the fraction of each grid cell
    the mask covers), so masks of any resolution and aspect land on any site's grid."""
    if mask.dim() != 3:
        raise ValueError(f"mask must be (B, H, W), got shape {tuple(mask.shape)}")
    cells = nn.functional.adaptive_avg_pool2d(mask[:, None].float(), grid)   # (B, 1, h, w)
    return cells.flatten(1)
