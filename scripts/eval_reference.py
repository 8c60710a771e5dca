#!/usr/bin/env python3
"""Independent check of `specquant eval`: recompute, document by document, the
log-likelihoods that specquant wrote with --samples, using Hugging Face
transformers (PyTorch float32; it loads the GGUF itself, dequantizing with the
`gguf` package) and the transformers tokenizer built from the GGUF vocab.
Every request is scored from scratch (no KV sharing), so this also checks
specquant's shared-prefix branching, its tokenizer and its forward pass.

    pip install torch transformers gguf
    build/specquant eval -m models/SmolLM2-135M-Instruct.Q4_1.gguf --tasks quick \
        --json out/quick.json --samples out/quick_samples.jsonl
    python3 scripts/eval_reference.py --samples out/quick_samples.jsonl [--max-docs 50] \
        [--ppl-windows 2] [--ctx 2048]

Prints per task: documents compared, max and mean |delta ll| per request,
documents whose acc / acc_norm prediction or LAMBADA greedy flag differs, and
the metrics recomputed from the reference log-likelihoods. With --ppl-windows
it also prints the reference WikiText-2 perplexity of the first N windows.
Exit status 1 when a per-request |delta ll| exceeds --tol (default 0.02 nats).
The prompt rules below restate docs/eval.md; they are written here again on
purpose rather than read from the C++ code.
"""
import argparse
import collections
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FILES = {
    "arc_easy": "arc_easy.jsonl", "arc_challenge": "arc_challenge.jsonl", "boolq": "boolq.jsonl",
    "hellaswag": "hellaswag.jsonl", "lambada": "lambada_openai.jsonl", "openbookqa": "openbook_qa.jsonl",
    "piqa": "piqa.jsonl", "siqa": "siqa.jsonl", "winogrande": "winogrande.jsonl",
}
ACC_NORM = {"arc_easy", "arc_challenge", "hellaswag", "openbookqa", "piqa"}


def prompt(task, q):
    if task == "piqa":
        return q + "Answer:"
    if task in ("arc_easy", "arc_challenge"):
        return q + "\nAnswer:"
    if task == "boolq":
        return (q[len("Passage: "):] if q.startswith("Passage: ") else q) + "\nAnswer:"
    if task == "siqa":
        return "Q: " + q + "\nA:"
    return q  # openbookqa, hellaswag


def requests(task, doc):
    """[(context, continuation)], choice texts (for acc_norm), gold."""
    if task == "winogrande":
        cont = " " + doc["continuation"]
        return [(c, cont) for c in doc["context_options"]], None, doc["gold"]
    if task == "lambada":
        return [(doc["context"], " " + doc["continuation"])], None, 0
    p = prompt(task, doc["query"])
    return [(p, " " + c) for c in doc["choices"]], doc["choices"], doc["gold"]


def encode_pair(tok, context, continuation):
    """lm-eval's split: trailing context spaces move to the continuation,
    continuation tokens = encode(context + continuation)[len(encode(context)):]."""
    stripped = context.rstrip()
    n_spaces = len(context) - len(stripped)
    if n_spaces:
        continuation = context[len(stripped):] + continuation
        context = stripped
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def score(model, torch, ctx, cont, max_len):
    full = (ctx + cont)[-(max_len + 1):]
    inp = full[:-1]
    with torch.no_grad():
        logits = model(torch.tensor([inp])).logits[0].double()
    rows = logits[len(inp) - len(cont):]
    lp = torch.log_softmax(rows, dim=-1)
    target = torch.tensor(cont)
    ll = float(lp[torch.arange(len(cont)), target].sum())
    greedy = bool((rows.argmax(dim=-1) == target).all())
    return ll, greedy


def argmax(v):
    return max(range(len(v)), key=lambda i: (v[i], -i))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", required=True, help="specquant eval --samples output")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--max-docs", type=int, default=0, help="per task, 0 = all in the samples file")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--ppl-windows", type=int, default=0)
    ap.add_argument("--tol", type=float, default=0.02)
    args = ap.parse_args()

    import torch
    import transformers
    torch.set_grad_enabled(False)
    d, f = os.path.split(os.path.abspath(args.model))
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()

    lines = {}
    per_task = collections.defaultdict(list)
    with open(args.samples) as fh:
        for l in fh:
            s = json.loads(l)
            if args.max_docs and len(per_task[s["task"]]) >= args.max_docs:
                continue
            per_task[s["task"]].append(s)

    worst = 0.0
    for task, samples in per_task.items():
        if task not in lines:
            with open(os.path.join(args.data_dir, "tasks", FILES[task]), encoding="utf-8") as fh:
                lines[task] = fh.read().split("\n")
        deltas, pred_diff, hits, hits_norm, greedy_hits, greedy_diff, nll = [], 0, 0, 0, 0, 0, []
        for s in samples:
            doc = json.loads(lines[task][s["line"] - 1])
            reqs, choices, gold = requests(task, doc)
            ref = [score(model, torch, *encode_pair(tok, c, x), args.ctx) for c, x in reqs]
            ll = [r[0] for r in ref]
            deltas += [abs(a - b) for a, b in zip(ll, s["ll"])]
            if task == "lambada":
                greedy_hits += ref[0][1]
                greedy_diff += ref[0][1] != s["greedy"][0]
                nll.append(-ll[0])
                continue
            pred_diff += argmax(ll) != argmax(s["ll"])
            hits += argmax(ll) == gold
            if choices is not None and task in ACC_NORM:
                norm = [v / len(c.encode("utf-8")) for v, c in zip(ll, choices)]
                ours = [v / len(c.encode("utf-8")) for v, c in zip(s["ll"], choices)]
                pred_diff += argmax(norm) != argmax(ours)
                hits_norm += argmax(norm) == gold
        n = len(samples)
        worst = max(worst, max(deltas))
        line = f"{task:14s} n={n:5d} max|dll|={max(deltas):.2e} mean|dll|={sum(deltas) / len(deltas):.2e}"
        if task == "lambada":
            line += f" greedy_diff={greedy_diff} acc={greedy_hits / n:.4f} ppl={math.exp(sum(nll) / n):.4f}"
        else:
            line += f" pred_diff={pred_diff} acc={hits / n:.4f}"
            if task in ACC_NORM:
                line += f" acc_norm={hits_norm / n:.4f}"
        print(line, flush=True)

    if args.ppl_windows > 0:
        with open(os.path.join(args.data_dir, "wikitext2", "wiki.test.raw"), encoding="utf-8", newline="") as fh:
            rows = fh.read().replace("\r", "").split("\n")
        if rows and rows[-1] == "":  # the file ends with a newline
            rows.pop()
        text = "\n\n".join(rows)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        total, count = 0.0, 0
        for w in range(args.ppl_windows):
            win = ids[w * args.ctx:(w + 1) * args.ctx]
            logits = model(torch.tensor([win[:-1]])).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            total -= float(lp[torch.arange(len(win) - 1), torch.tensor(win[1:])].sum())
            count += len(win) - 1
        print(f"wikitext2      windows={args.ppl_windows} of {len(ids) // args.ctx} tokens={len(ids)} "
              f"ppl={math.exp(total / count):.4f}")

    if worst > args.tol:
        print(f"FAIL: max |delta ll| {worst:.3g} > tol {args.tol}")
        return 1
    print(f"OK: max |delta ll| {worst:.3g} <= tol {args.tol}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
