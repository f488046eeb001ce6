"""Words -> token positions with each family's real tokenizers: SDXL (clip_l and clip_g,
which must agree), SD1.x (clip_l), SD2.x (clip_h, padded with token 0, not the end token)."""
import pytest

from comfyui_maskattn.maskattn_ops.regions import WordNotInPrompt

from helpers import every_family


@pytest.fixture(scope="module")
def text(host):
    from comfyui_maskattn.nodes import text
    return text


@pytest.fixture(scope="module")
def clip(tiny_models):
    return tiny_models[1]


def find(text, clip, prompt, phrase):
    return text.positions(clip, text.tokenize(clip, prompt), phrase)


@every_family
def test_single_multi_token_and_repeated_words(text, clip):
    assert find(text, clip, "a red circle", "red") == [2]
    assert find(text, clip, "a red circle and a red square", "red") == [2, 6]
    assert find(text, clip, "a red circle", "red circle") == [2, 3]
    tokens = text.tokenize(clip, "a tyrannosaurus")
    positions = text.positions(clip, tokens, "tyrannosaurus")
    assert len(positions) > 1 and positions == list(range(2, 2 + len(positions)))   # one word, several BPE tokens


@every_family
def test_case_weights_and_punctuation_do_not_move_positions(text, clip):
    assert find(text, clip, "a (red:1.3) circle", "red") == [2]
    assert find(text, clip, "A RED circle, a blue square", "red") == [2]
    assert find(text, clip, "a red circle, a blue square", "square") == [7]   # start, a, red, circle, ",", a, blue


@every_family
def test_word_boundaries(text, clip):
    with pytest.raises(WordNotInPrompt, match="'red' is not in the prompt"):
        find(text, clip, "a reddish circle", "red")


@every_family
def test_long_prompt_second_chunk(text, clip):
    prompt = " ".join(["a small grey pebble"] * 25) + " and a red circle"   # > 75 tokens
    tokens = text.tokenize(clip, prompt)
    chunks = {len(encoder_chunks) for encoder_chunks in tokens.values()}     # every encoder alike
    assert len(chunks) == 1 and chunks.pop() >= 2
    positions = text.positions(clip, tokens, "circle")
    assert positions and all(p > 77 for p in positions)
    cond, _ = clip.encode_from_tokens(tokens, return_pooled=True)
    assert cond.shape[1] == 77 * len(next(iter(tokens.values()))) and max(positions) < cond.shape[1]


@every_family
def test_missing_word_is_named(text, clip):
    with pytest.raises(WordNotInPrompt, match="'giraffe' is not in the prompt"):
        find(text, clip, "a red circle", "giraffe")
