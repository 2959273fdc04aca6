"""Text prompts of an exact token count, for servers and APIs that take no token ids (the chat API,
`transformers serve`).

The seeded ids are decoded with the server's tokenizer (special tokens left out: they do not survive a
round trip through text), encoded again, and cut or topped up until the text is exactly the asked number
of tokens. The server's own count (usage.prompt_tokens) is still checked for every request.
"""

from __future__ import annotations

from perfkit.errors import UsageError

MAX_ROUNDS = 16


def _special_ids(tokenizer) -> set[int]:
    return {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}


def text_of(tokenizer, ids: list[int], n: int) -> str:
    """A text that `tokenizer` encodes to exactly `n` tokens (no special tokens added), from `ids`."""
    special = _special_ids(tokenizer)
    vocab = tokenizer.get_vocab_size()
    plain = [i for i in range(vocab) if i not in special]
    if not plain:
        raise UsageError("the tokenizer has only special tokens, expected a vocabulary to write prompts with")
    # a special id is replaced by a plain one, deterministically (the same prompt every time)
    # (so is an id beyond this tokenizer's vocabulary: a registry model's ids with a smaller tokenizer)
    pool = [i if i < vocab and i not in special else plain[i % len(plain)] for i in ids] or plain[:1]
    want = list(pool[:n])
    for _ in range(MAX_ROUNDS):
        text = tokenizer.decode(want, skip_special_tokens=True)
        got = tokenizer.encode(text, add_special_tokens=False).ids
        if len(got) == n:
            return text
        if len(got) > n:
            want = got[:n]
        else:
            top = (pool * (n // len(pool) + 1))[: n - len(got)]
            want = got + top
    raise UsageError(f"no text of exactly {n} tokens found with this tokenizer in {MAX_ROUNDS} rounds, expected a "
                     "tokenizer whose decoded text encodes back (or prompt: token_ids on the completions API)")
