#!/usr/bin/env python3
"""Document-by-document comparison of two `specquant eval --samples` files.

Two runs over the same task files (two engines, kernels or builds on one model,
e.g. CPU and GPU) are matched by (task, line). Per task it prints how many
documents each has, how many both have, in how many the argmax of the summed
log-likelihoods differs (the `acc` decision; acc_norm also needs the choices'
byte lengths, not in the samples), in how many a greedy flag differs, and the
mean and largest |d ll| per request. A float-exact pair (the FP32 model on both
engines) shows 0 differing decisions; a W4A4 model shows how many documents a
4-bit code flip reaches.

    scripts/compare_samples.py cpu.jsonl gpu.jsonl
"""
import json
import sys


def load(path):
    docs = {}
    try:
        f = open(path)
    except OSError as e:
        sys.exit(f"{path}: cannot open ({e.strerror})")
    with f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                j = json.loads(line)
                key = (j["task"], int(j["line"]))
                docs[key] = (list(map(float, j["ll"])), list(map(bool, j["greedy"])))
            except (ValueError, KeyError, TypeError) as e:
                sys.exit(f"{path}:{n}: not a samples line ({e})")
    if not docs:
        sys.exit(f"{path}: no samples")
    return docs


def argmax(xs):
    return max(range(len(xs)), key=lambda i: (xs[i], -i))  # ties: the first, as the harness


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare_samples.py A.jsonl B.jsonl")
    a, b = load(sys.argv[1]), load(sys.argv[2])
    tasks = sorted({k[0] for k in a} | {k[0] for k in b})
    print(f"A = {sys.argv[1]}\nB = {sys.argv[2]}")
    print("| task | docs A | docs B | both | argmax differs | greedy differs | mean abs d ll | max abs d ll |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in tasks:
        ka = {k for k in a if k[0] == t}
        kb = {k for k in b if k[0] == t}
        both = sorted(ka & kb)
        am = gd = reqs = 0
        dsum = dmax = 0.0
        for k in both:
            (la, ga), (lb, gb) = a[k], b[k]
            if len(la) != len(lb):
                sys.exit(f"{t} line {k[1]}: {len(la)} requests in A, {len(lb)} in B")
            am += len(la) > 1 and argmax(la) != argmax(lb)
            gd += ga != gb
            for x, y in zip(la, lb):
                d = abs(x - y)
                dsum += d
                dmax = max(dmax, d)
                reqs += 1
        n = max(1, len(both))
        print(f"| {t} | {len(ka)} | {len(kb)} | {len(both)} | {am} ({100.0 * am / n:.1f}%) | {gd} ({100.0 * gd / n:.1f}%) "
              f"| {dsum / max(1, reqs):.2e} | {dmax:.2e} |")


if __name__ == "__main__":
    main()
