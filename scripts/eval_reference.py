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

Second mode, the committed reference of the C++ test EvalCrossCheck.*:

    python3 scripts/eval_reference.py --make-reference tests/data/smollm2/eval_reference.json \
        --tasks piqa,arc_easy --docs 200 --ppl-windows 8

scores the first N documents (file order) of each task and the first W
WikiText-2 windows of --ctx tokens from scratch and writes, per request, the
log-likelihood, the continuation length in tokens and the greedy flag, and
per window the summed NLL, with the accuracies recomputed here.

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


def wiki_windows(args, torch, tok, model):
    """Summed NLL and scored tokens of the first --ppl-windows windows (first
    token of each window unscored, no BOS), and the token count of the text."""
    with open(os.path.join(args.data_dir, "wikitext2", "wiki.test.raw"), encoding="utf-8", newline="") as fh:
        rows = fh.read().replace("\r", "").split("\n")
    if rows and rows[-1] == "":  # the file ends with a newline
        rows.pop()
    text = "\n\n".join(rows)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out = []
    for w in range(args.ppl_windows):
        win = ids[w * args.ctx:(w + 1) * args.ctx]
        logits = model(torch.tensor([win[:-1]])).logits[0].double()
        lp = torch.log_softmax(logits, dim=-1)
        nll = -float(lp[torch.arange(len(win) - 1), torch.tensor(win[1:])].sum())
        out.append({"window": w, "nll": nll, "tokens": len(win) - 1})
    return out, len(ids)


def make_reference(args, torch, transformers, tok, model):
    import hashlib
    import time
    with open(args.model, "rb") as fh:
        model_sha = hashlib.sha256(fh.read()).hexdigest()
    ref = {
        "generator": "scripts/eval_reference.py --make-reference (Hugging Face transformers, float32, "
                     "every request scored from scratch)",
        "model": os.path.basename(args.model), "model_sha256": model_sha,
        "tokenizer": os.path.relpath(args.tokenizer, ROOT) if args.tokenizer else "transformers from the GGUF",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d"), "ctx": args.ctx, "tasks": {},
    }
    for task in args.tasks.split(","):
        path = os.path.join(args.data_dir, "tasks", FILES[task])
        with open(path, "rb") as fh:
            raw = fh.read()
        rows = raw.decode("utf-8").split("\n")
        docs, hits, hits_norm = [], 0, 0
        for i in range(args.docs):
            doc = json.loads(rows[i])
            reqs, choices, gold = requests(task, doc)
            pairs = [encode_pair(tok, c, x) for c, x in reqs]
            sc = [score(model, torch, c, x, args.ctx) for c, x in pairs]
            ll = [r[0] for r in sc]
            docs.append({"line": i + 1, "gold": gold, "ll": ll, "tokens": [len(x) for _, x in pairs],
                         "greedy": [r[1] for r in sc]})
            hits += argmax(ll) == gold
            if task in ACC_NORM:
                hits_norm += argmax([v / len(c.encode("utf-8")) for v, c in zip(ll, choices)]) == gold
        entry = {"file": FILES[task], "file_sha256": hashlib.sha256(raw).hexdigest(), "docs": docs,
                 "acc": hits / args.docs}
        if task in ACC_NORM:
            entry["acc_norm"] = hits_norm / args.docs
        ref["tasks"][task] = entry
        print(f"{task:14s} docs={args.docs} acc={entry['acc']:.4f} acc_norm={entry.get('acc_norm', float('nan')):.4f}",
              flush=True)
    if args.ppl_windows > 0:
        wins, n_ids = wiki_windows(args, torch, tok, model)
        total = sum(w["nll"] for w in wins)
        count = sum(w["tokens"] for w in wins)
        ref["wikitext2"] = {"windows": wins, "ppl": math.exp(total / count), "text_tokens": n_ids}
        print(f"wikitext2      windows={len(wins)} ppl={math.exp(total / count):.4f}", flush=True)
    tmp = args.make_reference + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(ref, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, args.make_reference)
    print(f"wrote {args.make_reference}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", help="specquant eval --samples output")
    ap.add_argument("--make-reference", metavar="OUT", help="write the reference JSON of EvalCrossCheck")
    ap.add_argument("--tasks", default="piqa,arc_easy", help="with --make-reference")
    ap.add_argument("--docs", type=int, default=200, help="with --make-reference: first N documents per task")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "tests", "data", "tokenizer", "smollm2", "tokenizer.json"),
                    help="tokenizer.json for the model; '' = the one transformers builds from the GGUF (for "
                         "SmolLM2 that one lacks the Digits pre-tokenizer of the real SmolLM tokenizer and "
                         "differs on runs of spaces before digits)")
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
    if args.tokenizer:
        # HF `tokenizers` with SmolLM2's vocab and merges (from the GGUF) and
        # the real SmolLM pre-tokenizer (Digits + ByteLevel): scripts/make_tokenizer_golden.py
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=args.tokenizer)
    else:
        tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()

    if args.make_reference:
        return make_reference(args, torch, transformers, tok, model)
    if not args.samples:
        ap.error("one of --samples or --make-reference is required")

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
        wins, n_ids = wiki_windows(args, torch, tok, model)
        total = sum(w["nll"] for w in wins)
        count = sum(w["tokens"] for w in wins)
        print(f"wikitext2      windows={args.ppl_windows} of {n_ids // args.ctx} tokens={n_ids} "
              f"ppl={math.exp(total / count):.4f}")

    if worst > args.tol:
        print(f"FAIL: max |delta ll| {worst:.3g} > tol {args.tol}")
        return 1
    print(f"OK: max |delta ll| {worst:.3g} <= tol {args.tol}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
