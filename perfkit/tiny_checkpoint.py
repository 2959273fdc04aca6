"""A tiny Llama checkpoint a real server can load: config, random safetensors weights and a tokenizer made
here with the `tokenizers` library (no hub), for the endpoint suite and `make serve-demo`.

Servers stop a request at the end-of-sequence token unless told otherwise, and not every engine can be
told (`transformers serve` refuses `ignore_eos`). So the weights are set such that greedy decoding can
never pick a special token: hidden dimension 0 carries a constant that no layer writes to (its rows of
every attention output and MLP down projection are zero), so after the final norm it is positive in
every position, and the output head gives each special token -1000 along it. With `eos_first` the head
gives end-of-sequence +1000 instead: the server stops at once, the case that must be refused as a short
answer. Words are one token each (a word-level vocabulary split on whitespace), so a text prompt of I
words is I tokens on any server.
"""

from __future__ import annotations

import json
import os

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2: unknown, beginning and end of sequence
VOCAB_WORDS = 509  # with the specials, a vocabulary of 512
CONTEXT = 2048


def vocabulary() -> list[str]:
    """The checkpoint's tokens in id order: the specials, then short made-up words (w0 ... w508)."""
    return list(SPECIAL_TOKENS) + [f"w{i}" for i in range(VOCAB_WORDS)]


def write_tokenizer(out_dir: str) -> None:
    """tokenizer.json (word level, whitespace split, words joined by spaces on decode) and its config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": CONTEXT,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        # A plain template (the messages' contents, one per line), so the chat API works too.
        "chat_template": "{% for m in messages %}{{ m['content'] }}\n{% endfor %}",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, f)


def write_checkpoint(out_dir: str, eos_first: bool = False, seed: int = 0) -> str:
    """Write the tiny checkpoint into `out_dir` (created); returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    config = LlamaConfig(
        vocab_size=len(vocabulary()), hidden_size=128, intermediate_size=352, num_hidden_layers=2,
        # head_dim 64: vLLM's CPU attention kernels refuse the smallest head sizes (16 is refused)
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=CONTEXT, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 8.0  # the constant dimension
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0  # nothing writes to it ...
            layer.mlp.down_proj.weight[0, :] = 0.0
        head = model.lm_head.weight
        head[:, 0] = 0.0  # ... and only the specials read it
        special = list(range(len(SPECIAL_TOKENS)))
        head[special, 0] = -1000.0
        if eos_first:
            head[config.eos_token_id, 0] = 1000.0
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.do_sample = False
    model.save_pretrained(out_dir, safe_serialization=True)
    write_tokenizer(out_dir)
    return out_dir
