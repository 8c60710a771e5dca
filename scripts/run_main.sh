#!/usr/bin/env bash
# The main job, end to end on the default model (SmolLM2-135M-Instruct):
# install what is missing, fetch the model, build, then show the model,
# generate from a prompt and measure WikiText-2 perplexity.
#   SQ_PPL_CHUNKS=0 scripts/run_main.sh    # all WikiText-2 windows (~20 min)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
SQ=build/specquant
echo "== info"
$SQ info -m "$MODEL"
echo "== generate (greedy)"
$SQ generate -m "$MODEL" -n 48 -p $'<|im_start|>user\nWhat is the tallest mountain in the world?<|im_end|>\n<|im_start|>assistant\n'
echo "== WikiText-2 perplexity, ctx 2048 (full precision = the GGUF's dequantized Q4_1 weights)"
$SQ ppl -m "$MODEL" -c 2048 --chunks "${SQ_PPL_CHUNKS:-8}"
