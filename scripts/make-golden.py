#!/usr/bin/env python3
"""Write the llama.cpp reference goldens under tests/golden/.

llama.cpp is the independent implementation the tests compare spillway against: token
ids (tokens.json), logits (logits.json) and perplexity (ppl.json) of the default model.
It is built from the PyPI source distribution of llama-cpp-python, which vendors
llama.cpp (scripts/build-llama-cpp.sh does that and leaves the shared libraries in
.cache/llama.cpp/build/bin). This script drives it through the package's own Python
bindings (the llama_cpp directory of the unpacked sdist), loading those libraries.

Regenerate (from the repository root, after scripts/setup.sh and
scripts/build-llama-cpp.sh):

    python3 scripts/make-golden.py \
        --llama-lib .cache/llama.cpp/build/bin \
        --llama-py  .cache/llama.cpp/llama_cpp_python-0.3.36

The Python needs numpy plus the bindings' imports (typing-extensions, diskcache,
jinja2). Options: --model (default models/SmolLM2-135M-Instruct.Q4_1.gguf), --corpus
(default data/austen.txt), --out (default tests/golden), --only tokens|logits|ppl
(repeatable). Runs single-threaded-ish (n_threads=2) in about a minute; the files stay
well under 2 MB together.

Outputs (each records the llama-cpp-python version and the model's sha256):
  tokens.json  ids of varied strings, with special-token parsing on and off, and the
               first 4,000 ids of the corpus plus the count and a sha256 of all its ids
  logits.json  for a few prompts: ids, and at 8+ positions the top-64 ids with their
               logits and the log-sum-exp of the whole row
  ppl.json     perplexity of the corpus's first 2,048 tokens in one 2,048-token context:
               PPL = exp(mean NLL of tokens 1..2047 given their prefix), plus each NLL
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Strings for tokens.json: (name, text as str or bytes, parse_special). Bytes are for
# input that is not valid UTF-8.
CASES = [
    ("empty", "", False),
    ("single_space", " ", False),
    ("two_spaces", "  ", False),
    ("prose", "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.", False),
    ("prose_multiline", "Emma Woodhouse, handsome, clever, and rich,\nwith a comfortable home and happy disposition.\n", False),
    ("contractions", "don't I'll we've they're she'd you'm it's", False),
    ("contractions_upper", "DON'T I'LL WE'VE THEY'RE", False),
    ("contractions_spaced", "it ' s a ' ll 'tis", False),
    ("digits_8", "12345678", False),
    ("digits_mixed", "In 1811, 3.14159 and 1,000,000 and -42 and 0x1F and 007.", False),
    ("digits_long", "9876543210123456789", False),
    ("phone", "+1 (555) 010-9999", False),
    ("url", "https://example.com/path/to/page?query=1&x=y#frag", False),
    ("email", "first.last+tag@example.co.uk", False),
    ("accents", "café naïve résumé Ångström façade jalapeño", False),
    ("german", "Größenmaßstäbe für Straßenübergänge", False),
    ("greek", "Καλημέρα κόσμε", False),
    ("cyrillic", "Съешь же ещё этих мягких французских булок", False),
    ("cjk", "你好，世界！这是一个测试。", False),
    ("japanese", "日本語のテキストとカタカナ、ひらがな。", False),
    ("korean", "안녕하세요 세계", False),
    ("arabic", "مرحبا بالعالم", False),
    ("hindi", "नमस्ते दुनिया", False),
    ("emoji", "I 😀 love 🎉 emoji 👍🏽 and 👨‍👩‍👧", False),
    ("emoji_only", "🚀🚀🚀", False),
    ("symbols", "© ® ™ € £ ¥ § ¶ • … — – ± × ÷ ≠ ≤ ≥ ∞ √", False),
    ("math", "∀x∈ℝ: x² ≥ 0, ∑_{i=1}^{n} i = n(n+1)/2", False),
    ("whitespace_run", "a     b", False),
    ("whitespace_mixed", "a \t b\t\tc   \n  d", False),
    ("tabs", "\tindented\n\t\tdouble\n", False),
    ("newlines3", "\n\n\n", False),
    ("newlines_text", "line one\n\nline two\n\n\nline three", False),
    ("crlf", "windows\r\nline\r\n", False),
    ("leading_spaces", "   leading", False),
    ("trailing_spaces", "trailing   ", False),
    ("both_spaces", "  both  ", False),
    ("nbsp", "non\u00a0breaking\u2003em\u3000ideographic", False),
    ("nel", "next\u0085line", False),
    ("zero_width", "zero\u200bwidth\u200djoiner", False),
    ("code_python", "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n", False),
    ("code_cpp", "int main() {\n  std::vector<int> v{1, 2, 3};\n  for (auto& x : v) x *= 2;\n  return 0;\n}\n", False),
    ("code_js", "const add = (a, b) => a + b; // arrow\nconsole.log(`sum=${add(1,2)}`);", False),
    ("json", '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}', False),
    ("html", "<div class=\"x\"><p>Hello &amp; welcome</p></div>", False),
    ("punct_runs", "Wait... what?!? (yes) [no] {maybe} --- ***", False),
    ("quotes", "\u201cSmart quotes\u201d and \u2018single\u2019 and 'plain' and \"double\"", False),
    ("apostrophe_unicode", "don\u2019t won\u2019t", False),
    ("mixed_scripts", "English русский 中文 العربية 123 !", False),
    ("repeat_chars", "aaaaaaaaaaaaaaaaaaaaaaaa", False),
    ("repeat_words", "the the the the the the", False),
    ("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis", False),
    ("camel_case", "getElementById XMLHttpRequest snake_case_name kebab-case-name", False),
    ("underscores", "__init__ __name__ ___", False),
    ("special_off", "<|im_start|>user\nhi<|im_end|>", False),
    ("special_on", "<|im_start|>user\nhi<|im_end|>", True),
    ("chat_on", "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", True),
    ("endoftext_on", "before<|endoftext|>after", True),
    ("endoftext_off", "before<|endoftext|>after", False),
    ("adjacent_specials_on", "<|im_end|><|im_start|><|im_end|>", True),
    ("special_partial", "<|im_start|user <|im_end", True),
    ("special_spaced_on", " <|im_start|> x <|im_end|> ", True),
    ("repo_tokens_on", "<repo_name>spillway<file_sep>main.cpp<gh_stars>10", True),
    ("control_chars", "bell\x07 esc\x1b[0m del\x7f nul\x00end", False),
    ("latin1_range", "\u00a1\u00bf\u00c0\u00ff\u00ad soft\u00adhyphen", False),
    ("private_use", "\ue000\uf8ff", False),
    ("combining", "e\u0301 a\u0308 n\u0303", False),
    ("austen_dialogue", "\u201cMy dear Mr. Bennet,\u201d said his lady to him one day, \u201chave you heard that Netherfield Park is let at last?\u201d", False),
    ("invalid_lone_continuation", b"abc\x80def", False),
    ("invalid_truncated", b"caf\xc3", False),
    ("invalid_ff", b"\xff\xfe plain", False),
    ("invalid_overlong", b"over\xc0\xafslash", False),
    ("invalid_mixed", b"\xe2\x82 euro? \xf0\x9f\x98 grin?", False),
]

# Encodings with the model's own BOS/EOS choice (add_special=True).
ADD_SPECIAL_CASES = [
    ("add_special_prose", "Hello world", False),
    ("add_special_chat", "<|im_start|>user\nhi<|im_end|>", True),
]

LOGIT_PROMPTS = [
    ("prose", "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. However little known the feelings or views of such a man may be", False),
    ("code", "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nfor i in range(10):\n    print(", False),
    ("chat", "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", True),
]

N_TOP = 64
N_POSITIONS = 10
PPL_TOKENS = 2048
CORPUS_PREFIX_TOKENS = 4000


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ids_sha256(ids):
    return hashlib.sha256(struct.pack("<%di" % len(ids), *ids)).hexdigest()


def ids_fnv1a64(ids):
    """FNV-1a (64-bit) over the ids as little-endian int32: cheap to recompute in a test."""
    h = 0xCBF29CE484222325
    for b in struct.pack("<%di" % len(ids), *ids):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def write_json(path, obj):
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path} ({len(text.encode('utf-8'))} bytes)")


def case_entry(name, text, special, ids, add_special):
    e = {"name": name}
    if isinstance(text, bytes):
        e["hex"] = text.hex()
    else:
        e["text"] = text
    e["special"] = special
    if add_special:
        e["add_special"] = True
    e["ids"] = ids
    return e


def logsumexp(row, np):
    m = float(np.max(row))
    return m + math.log(float(np.sum(np.exp(row.astype(np.float64) - m))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-lib", default=str(ROOT / ".cache/llama.cpp/build/bin"),
                    help="directory holding libllama.so (and libggml*)")
    ap.add_argument("--llama-py", default=str(ROOT / ".cache/llama.cpp/llama_cpp_python-0.3.36"),
                    help="unpacked llama-cpp-python sdist (the directory holding llama_cpp/)")
    ap.add_argument("--model", default=str(ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--corpus", default=str(ROOT / "data/austen.txt"))
    ap.add_argument("--out", default=str(ROOT / "tests/golden"))
    ap.add_argument("--only", action="append", choices=["tokens", "logits", "ppl"])
    args = ap.parse_args()

    os.environ["LLAMA_CPP_LIB_PATH"] = str(Path(args.llama_lib).resolve())
    sys.path.insert(0, str(Path(args.llama_py).resolve()))
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama

    for p in (args.model, args.corpus):
        if not Path(p).is_file():
            sys.exit(f"make-golden: missing {p} (run scripts/setup.sh)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ["tokens", "logits", "ppl"])

    model_sha = sha256_file(args.model)
    corpus_bytes = Path(args.corpus).read_bytes()
    source = {
        "generator": "scripts/make-golden.py",
        "reference": "llama.cpp via llama-cpp-python",
        "llama_cpp_python_version": llama_cpp.__version__,
        "model": Path(args.model).name,
        "model_sha256": model_sha,
    }

    llm = Llama(model_path=args.model, logits_all=True, n_ctx=PPL_TOKENS, n_batch=512,
                n_threads=2, verbose=False)

    if "tokens" in only:
        cases = []
        for name, text, special in CASES:
            raw = text if isinstance(text, bytes) else text.encode("utf-8")
            ids = llm.tokenize(raw, add_bos=False, special=special)
            cases.append(case_entry(name, text, special, ids, False))
        for name, text, special in ADD_SPECIAL_CASES:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)
            cases.append(case_entry(name, text, special, ids, True))
        all_ids = llm.tokenize(corpus_bytes, add_bos=False, special=False)
        write_json(out / "tokens.json", {
            **source,
            "cases": cases,
            "corpus": {
                "file": "data/austen.txt",
                "sha256": hashlib.sha256(corpus_bytes).hexdigest(),
                "special": False,
                "count": len(all_ids),
                "ids_sha256": ids_sha256(all_ids),
                "ids_fnv1a64": ids_fnv1a64(all_ids),
                "prefix_ids": all_ids[:CORPUS_PREFIX_TOKENS],
            },
        })

    if "logits" in only:
        prompts = []
        for name, text, special in LOGIT_PROMPTS:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
            llm.reset()
            llm.eval(ids)
            scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
            n = len(ids)
            positions = sorted({round(i * (n - 1) / (N_POSITIONS - 1)) for i in range(N_POSITIONS)})
            rows = []
            for p in positions:
                row = scores[p]
                top = np.argsort(-row, kind="stable")[:N_TOP]
                rows.append({
                    "pos": int(p),
                    "top_ids": [int(t) for t in top],
                    "top_logits": [round(float(row[t]), 5) for t in top],
                    "logsumexp": round(logsumexp(row, np), 6),
                })
            prompts.append({"name": name, "text": text, "special": special, "ids": ids, "positions": rows})
        write_json(out / "logits.json", {**source, "n_top": N_TOP, "prompts": prompts})

    if "ppl" in only:
        ids = llm.tokenize(corpus_bytes[: 64 * 1024], add_bos=False, special=False)[:PPL_TOKENS]
        if len(ids) != PPL_TOKENS:
            sys.exit(f"make-golden: corpus prefix gave {len(ids)} tokens, expected {PPL_TOKENS}")
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[:PPL_TOKENS], dtype=np.float64)
        nll = []
        for i in range(1, PPL_TOKENS):
            row = scores[i - 1]
            m = row.max()
            lse = m + math.log(np.exp(row - m).sum())
            nll.append(lse - row[ids[i]])
        mean_nll = sum(nll) / len(nll)
        write_json(out / "ppl.json", {
            **source,
            "corpus": "data/austen.txt",
            "corpus_sha256": hashlib.sha256(corpus_bytes).hexdigest(),
            "n_ctx": PPL_TOKENS,
            "tokens": PPL_TOKENS,
            "n_predicted": len(nll),
            "ids": ids,
            "mean_nll": round(mean_nll, 7),
            "ppl": round(math.exp(mean_nll), 6),
            "nll": [float(f"{x:.4g}") for x in nll],
        })


if __name__ == "__main__":
    main()
