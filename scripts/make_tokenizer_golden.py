#!/usr/bin/env python3
"""Tokenizer fixtures and goldens for tests/test_tokenizer.cpp, made with
Hugging Face `tokenizers` (the reference our C++ tokenizer must match).

Run from the repository root (needs `pip install tokenizers gguf numpy` and the
default model in models/):

    python3 scripts/make_tokenizer_golden.py

Writes, under tests/data/tokenizer/:
  smollm2/tokenizer.json         SmolLM2 vocab + merges read from the GGUF, the
                                 HF SmolLM pre-tokenizer, 17 special tokens
  smollm2/tokenizer_config.json  bos/eos as the GGUF says (ids 1, 2; no add_bos)
  tiny_bpe/tokenizer.json        byte-level BPE, 512 tokens, GPT-2 regex
  tiny_bpe_llama3/tokenizer.json same vocab, LLaMA-3 Split regex, ignore_merges
  tiny_bpe_qwen2/tokenizer.json  same vocab, Qwen2 Split regex
  tiny_spm/tokenizer.json        LLaMA-2 style BPE with byte fallback, 512 tokens
  <name>/golden.jsonl            {"text", "ids", "ids_special", "decoded"} per string:
                                 ids = encode(add_special_tokens=False),
                                 ids_special = encode(add_special_tokens=True),
                                 decoded = decode(ids, skip_special_tokens=True)
  <name>/wiki_hash.json          token count and FNV-1a 64 of the ids of the whole
                                 ../shared/data/wikitext2/wiki.test.raw (if present)
"""
import json
import os
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "tokenizer")
GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
WIKI = os.path.join(ROOT, "..", "shared", "data", "wikitext2", "wiki.test.raw")

GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
                r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
               r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Strings chosen to hit every branch of the pre-tokenizer regexes, the digit
# splitter, special-token splitting, byte fallback and multi-byte UTF-8.
STRINGS = [
    "",
    "a",
    " ",
    "   ",
    "Hello world",
    " Hello world",
    "Hello world ",
    "   leading and trailing   ",
    "I'm, don't, WE'LL, she's, they've, you'd, I'D, it'S",
    "it's 'tis rock'n'roll, Mr. O'Neil's ''' triple '''",
    "'quoted' \"double\" `backtick`",
    "1234567",
    "3.14159 and 2,718,281 and 1e-10",
    "Price: $1,299.99 (20% off!)",
    "mixed 123abc456def 7 89",
    "2024-01-15T10:30:00Z",
    "0x1F 0b1010 0o777",
    "½ ¾ ² ³ Ⅻ ₀₁₂ ⁴⁵",
    "Arabic-Indic digits ١٢٣٤٥ and full-width ＡＢＣ１２３",
    "\n",
    "\n\n\n",
    "line one\nline two\n\nline four",
    "windows\r\nline\r\nendings\r\n",
    "\r\n\r\n",
    "tab\tseparated\t\tvalues",
    "\ttab start",
    "    four spaces of indent",
    "mixed \t \n whitespace \n\t ",
    "    \n    \n",
    "trailing newline\n",
    "café naïve résumé coöperate façade",
    "Ünïcödé ÀÉÎÕÜ",
    "e\u0301 a\u0300 combining marks: n\u0303o\u0308 \u0301alone",
    "日本語のテキストです。",
    "中文测试：你好，世界！",
    "한국어 텍스트",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "हिन्दी पाठ",
    "ไทย ภาษา",
    "emoji 😀😃😄 and 👍🏽",
    "family: 👨\u200d👩\u200d👧\u200d👦 and 🏳\ufe0f\u200d🌈 flag",
    "flags 🇺🇸🇯🇵",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙",
    "Ǆ ǅ ǆ ſ K İ ß",
    "non-breaking\u00a0space and\u2009thin space",
    "zero\u200bwidth\u200cjoiners\u200d",
    "ideographic\u3000space",
    "paragraph\u2029separator\u2028line\u0085nel",
    "ctrl\x01\x1f\x7fchars\x00nul",
    "replacement \ufffd char",
    "def foo(x):\n    return x ** 2  # square\n",
    "int main() { printf(\"%d\\n\", 42); return 0; }",
    "if (a && b || !c) { x += 1; } else { y -= 2; }",
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M?foo=bar&baz=1#frag",
    "email: someone@example.com",
    "JSON: {\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "ALL CAPS SHOUTING",
    "camelCaseIdentifier snake_case_identifier kebab-case",
    "!!!???...",
    "----====____",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<|endoftext|><|endoftext|>",
    " <|endoftext|> spaced ",
    "<|im_start|",
    "< |im_start| >",
    "<filename>main.py<file_sep>",
    "<s>Hello</s> <unk> <s",
    "The quick brown fox jumps over the lazy dog. It was the best of times, "
    "it was the worst of times; it was the age of wisdom.",
]

# Training text for the tiny tokenizers (written for this file).
TRAIN_TEXT = """
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun while the fox
runs through the forest. In the morning the farmer walks to the market with his
daughter, and they sell apples, pears, and bread. It was a cold day in winter, and the
river was frozen from one side to the other. Children played on the ice and laughed.
A model of language predicts the next word from the words that came before it. The
tokenizer splits the text into pieces, and each piece has a number. Numbers such as
12, 345, 2024 and 3.14 appear in many documents, as do dates like 1999-12-31.
She said: "I'm going home, don't wait for me." They'll be there at 10 o'clock.
We've seen this before; you'd think they would learn. Isn't it strange?
def main():
    for i in range(10):
        print(i * 2)
    return 0
The history of the city begins in the year 1200, when a small village stood near
the bridge. Over the centuries the village grew into a town, and the town into a
city with a cathedral, a university and a harbour. Today more than a million people
live there, and the old streets are full of shops, cafes and theatres.
Water boils at 100 degrees and freezes at 0 degrees. The sun rises in the east and
sets in the west. There are seven days in a week and twelve months in a year.
"""


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for i in ids:
        for b in int(i).to_bytes(4, "little", signed=True):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def write_goldens(tok, name, strings):
    d = os.path.join(OUT, name)
    with open(os.path.join(d, "golden.jsonl"), "w") as f:
        for s in strings:
            ids = tok.encode(s, add_special_tokens=False).ids
            ids_special = tok.encode(s, add_special_tokens=True).ids
            decoded = tok.decode(ids, skip_special_tokens=True)
            f.write(json.dumps({"text": s, "ids": ids, "ids_special": ids_special,
                                "decoded": decoded}, ensure_ascii=True) + "\n")
    if os.path.exists(WIKI):
        with open(WIKI, "rb") as f:
            text = f.read().decode("utf-8")
        ids = tok.encode(text, add_special_tokens=False).ids
        with open(os.path.join(d, "wiki_hash.json"), "w") as f:
            json.dump({"file": "wikitext2/wiki.test.raw", "count": len(ids),
                       "fnv1a64": "%016x" % fnv1a64(ids)}, f)
            f.write("\n")
    print(f"{name}: vocab {tok.get_vocab_size()}, {len(strings)} goldens")


def save(tok, name, config=None):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
    if config is not None:
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")


def make_smollm2():
    from gguf import GGUFReader
    r = GGUFReader(GGUF)
    f = r.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ")) for m in f["tokenizer.ggml.merges"].contents()]
    types = f["tokenizer.ggml.token_type"].contents()
    assert f["tokenizer.ggml.pre"].contents() == "smollm"
    bos = f["tokenizer.ggml.bos_token_id"].contents()
    eos = f["tokenizer.ggml.eos_token_id"].contents()
    special = [i for i, t in enumerate(types) if t == 3]  # CONTROL
    assert special == list(range(17)), special
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in special])
    for i in special:
        assert tok.token_to_id(tokens[i]) == i
    save(tok, "smollm2", {"bos_token": tokens[bos], "eos_token": tokens[eos],
                          "add_bos_token": bool(f["tokenizer.ggml.add_bos_token"].contents())})
    write_goldens(tok, "smollm2", STRINGS)


def train_tiny_bpe():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT.splitlines() * 4, trainer)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    assert tok.get_vocab_size() <= 512
    save(tok, "tiny_bpe")
    write_goldens(tok, "tiny_bpe", STRINGS)

    # Same vocabulary and merges under the LLaMA-3 and Qwen2 pre-tokenizers.
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    for name, regex, ignore_merges in [("tiny_bpe_llama3", LLAMA3_REGEX, True),
                                       ("tiny_bpe_qwen2", QWEN2_REGEX, False)]:
        t = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
        t.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        t.decoder = decoders.ByteLevel()
        t.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
        save(t, name)
        write_goldens(t, name, STRINGS)


def train_tiny_spm():
    # Learn merges inside words (as SentencePiece does), then lay the vocabulary
    # out as LLaMA-2 does: <unk> <s> </s>, 256 byte tokens, then pieces.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=512 - 3 - 256, limit_alphabet=60,
                                  show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT.splitlines() * 4, trainer)
    trained = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
              for m in trained["merges"]]
    pieces = sorted(trained["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for p, _ in pieces:
        if p not in vocab:
            vocab[p] = len(vocab)
    assert len(vocab) <= 512, len(vocab)

    t = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True,
                             byte_fallback=True))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                         normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    t.add_special_tokens([AddedToken(s, special=True, normalized=False)
                          for s in ["<unk>", "<s>", "</s>"]])
    t.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    save(t, "tiny_spm")
    write_goldens(t, "tiny_spm", STRINGS)


def main():
    os.makedirs(OUT, exist_ok=True)
    if not os.path.exists(GGUF):
        sys.exit(f"missing {GGUF}: run the project's setup to fetch the default model")
    make_smollm2()
    train_tiny_bpe()
    train_tiny_spm()


if __name__ == "__main__":
    main()
