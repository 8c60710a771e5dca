#!/usr/bin/env python3
"""Golden greedy tokens for the default model from an independent
implementation: Hugging Face transformers (PyTorch, float32), which loads the
GGUF itself (dequantizes Q4_1/Q8_0 with the `gguf` package and undoes
llama.cpp's q/k permutation) and builds its own tokenizer from the GGUF vocab.

    pip install torch transformers gguf
    python3 scripts/make_smollm2_golden.py   # writes tests/data/smollm2/greedy_golden.json
"""
import json
import os

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is the tallest mountain in the world?<|im_end|>\n<|im_start|>assistant\n",
]
N_NEW = 32


def main():
    torch.manual_seed(0)
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(ROOT, "models"), gguf_file=GGUF)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(ROOT, "models"), gguf_file=GGUF, torch_dtype=torch.float32).eval()
    cases = []
    for p in PROMPTS:
        ids = tok(p, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
            # Plain argmax loop (no generate(): its logits processors, e.g.
            # min_new_tokens suppressing EOS, would change the sequence).
            seq = list(ids)
            for _ in range(N_NEW):
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        new = seq[len(ids):]
        top = torch.topk(logits, 5)
        cases.append({"prompt": p, "prompt_ids": ids, "greedy_ids": new,
                      "greedy_text": tok.decode(new),
                      "last_logits_top5": {"ids": top.indices.tolist(), "values": top.values.tolist()}})
        print(repr(p), "->", repr(tok.decode(new)))
    doc = {"model": GGUF, "implementation": f"transformers {transformers.__version__}, torch {torch.__version__}, float32",
           "n_new": N_NEW, "cases": cases}
    path = os.path.join(ROOT, "tests", "data", "smollm2", "greedy_golden.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
    print("wrote", path)


if __name__ == "__main__":
    main()
