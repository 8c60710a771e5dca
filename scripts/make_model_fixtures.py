#!/usr/bin/env python3
"""Tiny LLaMA-family fixtures + reference logits from Hugging Face transformers.

Writes tests/data/models/{tiny_llama,tiny_qwen2}/ with config.json,
model.safetensors (float32), tokenizer.json (copied from the tiny tokenizers
in tests/data/tokenizer/), ref_tokens.json and ref_logits.f32 (float32
little-endian, [len(tokens), vocab]), computed by transformers in float64
and rounded to float32.

    pip install torch transformers safetensors
    python3 scripts/make_model_fixtures.py
"""
import json
import os
import shutil
import sys

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "models")
TOK = os.path.join(ROOT, "tests", "data", "tokenizer")


def vocab_size(tok_json):
    with open(tok_json) as f:
        j = json.load(f)
    ids = list(j["model"]["vocab"].values()) + [t["id"] for t in j.get("added_tokens", [])]
    return max(ids) + 1


def build(name, cfg_cls, model_cls, tok_dir, classic_config=False, **cfg):
    tok_json = os.path.join(TOK, tok_dir, "tokenizer.json")
    vocab = vocab_size(tok_json)
    torch.manual_seed(1234 if name == "tiny_llama" else 4321)
    config = cfg_cls(vocab_size=vocab, torch_dtype="float32", **cfg)
    model = model_cls(config).double().eval()
    # Random init is tiny (std 0.02); widen norms and biases so every path matters.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (1.0 / p.shape[-1] ** 0.5))
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    model.float().save_pretrained(d, safe_serialization=True)
    model.double()
    shutil.copy(tok_json, os.path.join(d, "tokenizer.json"))
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, vocab, (29,), generator=g).tolist()
    with torch.no_grad():
        # Float32 weights (as saved) evaluated in float64: the reference our
        # float32 forward is compared against.
        ref = model_cls.from_pretrained(d, torch_dtype=torch.float32).double().eval()
        logits = ref(torch.tensor([tokens])).logits[0].float()
    with open(os.path.join(d, "ref_tokens.json"), "w") as f:
        json.dump({"tokens": tokens, "vocab": vocab, "transformers": transformers.__version__,
                   "torch": torch.__version__}, f)
    logits.numpy().astype("<f4").tofile(os.path.join(d, "ref_logits.f32"))
    if classic_config:
        # Checkpoints in the wild (LLaMA-3.x, Mistral, ...) carry rope_theta and
        # rope_scaling at the top level; transformers 5 writes rope_parameters.
        # Keep one fixture in the classic form so both parsers are exercised.
        cp = os.path.join(d, "config.json")
        with open(cp) as f:
            c = json.load(f)
        rp = c.pop("rope_parameters")
        c["rope_theta"] = rp.pop("rope_theta")
        if rp.get("rope_type", "default") != "default":
            c["rope_scaling"] = rp
        with open(cp, "w") as f:
            json.dump(c, f, indent=2)
    for junk in ("generation_config.json",):
        p = os.path.join(d, junk)
        if os.path.exists(p):
            os.remove(p)
    print(name, "vocab", vocab, "tokens", len(tokens), "logits", tuple(logits.shape),
          "bytes", sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d)))


def main():
    build("tiny_llama", transformers.LlamaConfig, transformers.LlamaForCausalLM, "tiny_bpe", classic_config=True,
          hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
          tie_word_embeddings=False, attention_bias=False)
    build("tiny_qwen2", transformers.Qwen2Config, transformers.Qwen2ForCausalLM, "tiny_bpe",
          hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
          num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1000000.0,
          tie_word_embeddings=True)
    build("tiny_llama_spm", transformers.LlamaConfig, transformers.LlamaForCausalLM, "tiny_spm",
          hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
          num_key_value_heads=1, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=10000.0,
          rope_scaling={"rope_type": "linear", "factor": 2.0}, tie_word_embeddings=False)


if __name__ == "__main__":
    sys.exit(main())
