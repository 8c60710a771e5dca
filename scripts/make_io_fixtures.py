#!/usr/bin/env python3
"""Generates the small I/O test fixtures in tests/data/io/ (committed; < 200 KB).

    pip install gguf numpy && python3 scripts/make_io_fixtures.py

Everything here is written by the `gguf` Python package (llama.cpp's own
writer) or by plain numpy + json, i.e. independently of our C++ readers:

  quants.gguf      for each type T in F16 BF16 Q8_0 Q4_0 Q4_1 Q4_K Q5_K Q6_K:
                   tensor "T" (2 x 512 weights, stored as T) and "T.ref" (F32,
                   gguf.quants.dequantize of the same bytes). Q8_0/Q4_0/Q4_1
                   come from gguf.quants.quantize of random floats; the K-quants
                   are random bytes (with sane fp16 super-scales), which
                   exercises every bit of the layout.
  tiny_llama.gguf  arch llama, 1 layer, d 8, 2 heads, 1 kv head, hd 4, ff 12,
                   vocab 16, untied, SPM ("llama") tokenizer. q/k are written
                   permuted exactly as llama.cpp's convert_hf_to_gguf.py does;
                   HF-order values: q[r][c] = 100 r + c, k[r][c] = -(100 r + c) - 1.
  tiny_qwen2.gguf  arch qwen2, same sizes, tied (no output.weight), q/k/v biases,
                   gpt2 tokenizer; q/k NOT permuted (llama.cpp does not for qwen2).
  hf_tiny/         config.json + model.safetensors (llama, BF16 and F16 and F32
                   tensors, lm_head absent -> tied), written with numpy + json.
"""
import json
import os
import struct

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "io")
rng = np.random.default_rng(1234)

D, H, KV, HD, FF, V = 8, 2, 1, 4, 12, 16


def hf_q():
    r, c = np.meshgrid(np.arange(H * HD), np.arange(D), indexing="ij")
    return (100 * r + c).astype(np.float32)


def hf_k():
    r, c = np.meshgrid(np.arange(KV * HD), np.arange(D), indexing="ij")
    return (-(100 * r + c) - 1).astype(np.float32)


def llama_permute(w, n_head):
    # convert_hf_to_gguf.py LlamaModel.permute
    out, inp = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, inp).swapaxes(1, 2).reshape(out, inp)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def k_quant_bytes(qtype, n_blocks):
    """Random K-quant blocks with finite, moderate fp16 super-scales."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    scale = lambda: np.frombuffer(np.float16(rng.uniform(0.001, 0.05)).tobytes(), dtype=np.uint8)
    if qtype in (T.Q4_K, T.Q5_K):  # d, dmin lead the block
        for b in range(n_blocks):
            raw[b, 0:2] = scale()
            raw[b, 2:4] = scale()
    elif qtype == T.Q6_K:  # d ends the block
        for b in range(n_blocks):
            raw[b, block_bytes - 2:] = scale()
    return raw


def make_quants():
    rows, cols = 2, 512
    w = gguf.GGUFWriter(os.path.join(ROOT, "quants.gguf"), "llama")
    for name, qtype in [("F16", T.F16), ("BF16", T.BF16), ("Q8_0", T.Q8_0), ("Q4_0", T.Q4_0),
                        ("Q4_1", T.Q4_1), ("Q4_K", T.Q4_K), ("Q5_K", T.Q5_K), ("Q6_K", T.Q6_K)]:
        x = rand(rows, cols)
        if qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
            be, bb = gguf.GGML_QUANT_SIZES[qtype]
            raw = k_quant_bytes(qtype, rows * cols // be).reshape(rows, cols // be * bb)
        elif qtype == T.F16:
            raw = x.astype(np.float16).view(np.uint8).reshape(rows, -1)
        else:
            raw = quantize(x, qtype).view(np.uint8).reshape(rows, -1)
        ref = dequantize(raw, qtype).astype(np.float32).reshape(rows, cols)
        w.add_tensor(name, raw, raw_dtype=qtype)  # raw: uint8 [rows, row bytes]
        w.add_tensor(name + ".ref", ref)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def model_tensors(arch):
    t = {}
    t["token_embd.weight"] = rand(V, D)
    t["output_norm.weight"] = rand(D)
    if arch == "llama":
        t["output.weight"] = rand(V, D)
    p = "blk.0."
    t[p + "attn_norm.weight"] = rand(D)
    if arch == "llama":
        t[p + "attn_q.weight"] = llama_permute(hf_q(), H)
        t[p + "attn_k.weight"] = llama_permute(hf_k(), KV)
    else:
        t[p + "attn_q.weight"] = hf_q()
        t[p + "attn_k.weight"] = hf_k()
        t[p + "attn_q.bias"] = np.arange(H * HD, dtype=np.float32)
        t[p + "attn_k.bias"] = -np.arange(KV * HD, dtype=np.float32)
        t[p + "attn_v.bias"] = np.full(KV * HD, 0.5, dtype=np.float32)
    t[p + "attn_v.weight"] = rand(KV * HD, D)
    t[p + "attn_output.weight"] = rand(D, H * HD)
    t[p + "ffn_norm.weight"] = rand(D)
    t[p + "ffn_gate.weight"] = rand(FF, D)
    t[p + "ffn_up.weight"] = rand(FF, D)
    t[p + "ffn_down.weight"] = rand(D, FF)
    return t


def make_tiny(arch):
    w = gguf.GGUFWriter(os.path.join(ROOT, f"tiny_{arch}.gguf"), arch)
    w.add_name(f"tiny {arch}")
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FF)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(HD)
    tokens = [chr(ord("a") + i) for i in range(V)]
    if arch == "llama":
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([-float(i) for i in range(V)])
        w.add_token_types([2, 3, 3] + [1] * (V - 3))
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types([1] * V)
        w.add_token_merges(["a b", "c d", "ab cd"])
        w.add_eos_token_id(3)
        w.add_add_bos_token(False)
    for name, x in model_tensors(arch).items():
        w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_safetensors(path, tensors, metadata=None):
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    blobs, off = [], 0
    for name, (dtype, arr) in tensors.items():
        b = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def bf16(x):
    # round to nearest even, as torch does
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def make_hf_tiny():
    d = os.path.join(ROOT, "hf_tiny")
    os.makedirs(d, exist_ok=True)
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": D,
        "intermediate_size": FF, "num_attention_heads": H, "num_key_value_heads": KV,
        "num_hidden_layers": 1, "vocab_size": V, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    }
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    # Values chosen exactly representable in BF16 / F16 so the test can check
    # them with a formula: embed[r][c] = (r - c) / 4 (BF16), q = hf_q() (F32), k = hf_k() (F16).
    r, c = np.meshgrid(np.arange(V), np.arange(D), indexing="ij")
    embed = ((r - c) / 4).astype(np.float32)
    p = "model.layers.0."
    t = {
        "model.embed_tokens.weight": ("BF16", bf16(embed)),
        "model.norm.weight": ("F32", np.linspace(0.5, 1.5, D).astype(np.float32)),
        p + "input_layernorm.weight": ("F32", np.ones(D, np.float32)),
        p + "self_attn.q_proj.weight": ("F32", hf_q()),  # 301 etc. are not exact in BF16
        p + "self_attn.k_proj.weight": ("F16", hf_k().astype(np.float16)),
        p + "self_attn.v_proj.weight": ("F32", rand(KV * HD, D)),
        p + "self_attn.o_proj.weight": ("F32", rand(D, H * HD)),
        p + "post_attention_layernorm.weight": ("F32", np.ones(D, np.float32)),
        p + "mlp.gate_proj.weight": ("F16", rand(FF, D).astype(np.float16)),
        p + "mlp.up_proj.weight": ("F16", rand(FF, D).astype(np.float16)),
        p + "mlp.down_proj.weight": ("F16", rand(D, FF).astype(np.float16)),
        p + "self_attn.rotary_emb.inv_freq": ("F32", np.ones(HD // 2, np.float32)),  # ignored
    }
    write_safetensors(os.path.join(d, "model.safetensors"), t, metadata={"format": "pt"})


if __name__ == "__main__":
    os.makedirs(ROOT, exist_ok=True)
    make_quants()
    make_tiny("llama")
    make_tiny("qwen2")
    make_hf_tiny()
    total = 0
    for dp, _, fs in os.walk(ROOT):
        for f in fs:
            total += os.path.getsize(os.path.join(dp, f))
    print(f"wrote fixtures to {os.path.normpath(ROOT)} ({total} bytes)")
