"""Token-level masks, checked by hand. The byte-level tokenizer makes every ASCII character one token
and every special token one token, so expected masks can be read off the rendered text."""

import copy

import pytest
import torch

from rlhf.core.chat import pad_batch, render_conversation, render_prompt
from rlhf.core.errors import ConfigError

SINGLE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
MULTI = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "a"},
    {"role": "assistant", "content": "bc"},
    {"role": "user", "content": "d"},
    {"role": "assistant", "content": "ef"},
]


def tokens(tokenizer, ids):
    return [tokenizer.convert_ids_to_tokens(i) for i in ids.tolist()]


def targets(tokenizer, messages, mode):
    ids, attention, mask = render_conversation(tokenizer, messages, mode)
    assert attention.tolist() == [1] * len(ids)
    return [t for t, m in zip(tokens(tokenizer, ids), mask.tolist()) if m], mask.tolist()


def test_single_turn_tiny_template(tiny_tokenizer):
    ids, _, mask = render_conversation(tiny_tokenizer, SINGLE)
    # <|user|> \n H i <|end|> \n <|assistant|> \n Y o <|end|> \n
    assert tokens(tiny_tokenizer, ids) == ["<|user|>", "Ċ", "H", "i", "<|end|>", "Ċ", "<|assistant|>", "Ċ",
                                           "Y", "o", "<|end|>", "Ċ"]
    assert mask.tolist() == [False] * 8 + [True, True, True, False]


def test_multi_turn_all_vs_last_tiny_template(tiny_tokenizer):
    picked, mask = targets(tiny_tokenizer, MULTI, "all")
    assert picked == ["b", "c", "<|end|>", "e", "f", "<|end|>"]
    # <|system|>\nS<|end|>\n = 5, <|user|>\na<|end|>\n = 5, <|assistant|>\n = 2, then b c <|end|>
    assert mask[12:15] == [True, True, True] and not any(mask[:12])
    picked_last, mask_last = targets(tiny_tokenizer, MULTI, "last")
    assert picked_last == ["e", "f", "<|end|>"]
    assert not any(mask_last[:-4]) and mask_last[-4:] == [True, True, True, False]


def test_chatml_masks(chatml_tokenizer):
    picked, mask = targets(chatml_tokenizer, SINGLE, "all")
    assert picked == ["Y", "o", "<|im_end|>"]
    # <|im_start|> u s e r \n H i <|im_end|> \n <|im_start|> a s s i s t a n t \n Y o <|im_end|> \n
    assert mask == [False] * 21 + [True, True, True, False]
    picked, _ = targets(chatml_tokenizer, MULTI, "all")
    assert picked == ["b", "c", "<|im_end|>", "e", "f", "<|im_end|>"]
    picked, _ = targets(chatml_tokenizer, MULTI, "last")
    assert picked == ["e", "f", "<|im_end|>"]


def test_unknown_mode_and_unstable_template(tiny_tokenizer):
    with pytest.raises(ConfigError, match="loss_mode"):
        render_conversation(tiny_tokenizer, SINGLE, "first")
    tok = copy.deepcopy(tiny_tokenizer)
    # A template that renders earlier turns differently once more turns follow.
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}[{{ m['content'] }}]"
                         "{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
    with pytest.raises(ConfigError, match="prefix-stable"):
        render_conversation(tok, MULTI, "all")


def test_render_prompt_ends_with_generation_prompt(tiny_tokenizer):
    ids = render_prompt(tiny_tokenizer, SINGLE[:1])
    assert tokens(tiny_tokenizer, ids)[-2:] == ["<|assistant|>", "Ċ"]


def test_pad_batch_right_and_left():
    rows = [(torch.tensor([1, 2, 3]), torch.ones(3, dtype=torch.long), torch.tensor([False, True, True])),
            (torch.tensor([4]), torch.ones(1, dtype=torch.long), torch.tensor([True]))]
    ids, att, mask = pad_batch(rows, pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert att.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert mask.tolist() == [[False, True, True], [True, False, False]]
    ids, att, _ = pad_batch(rows, pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and att.tolist()[1] == [0, 0, 1]
    ids, att = pad_batch([torch.tensor([5, 6]), torch.tensor([7])], pad_id=9)  # bare ids: the mask is made
    assert ids.tolist() == [[5, 6], [7, 9]] and att.tolist() == [[1, 1], [1, 0]]
