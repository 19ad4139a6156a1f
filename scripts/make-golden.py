#!/usr/bin/env python3
"""Write the llama.cpp reference goldens under tests/golden/<profile>/.

llama.cpp is the independent implementation the tests compare spillway against: token
ids (tokens.json), logits (logits.json) and perplexity (ppl.json) of a model. It is
built from the PyPI source distribution of llama-cpp-python, which vendors llama.cpp
(scripts/build-llama-cpp.sh does that and leaves the shared libraries in
.cache/llama.cpp/build/bin). This script drives it through the package's own Python
bindings (the llama_cpp directory of the unpacked sdist), loading those libraries.

Regenerate (from the repository root, after scripts/setup.sh and
scripts/build-llama-cpp.sh):

    # the default model, SmolLM2 (tests/golden/smollm2/*.json)
    python3 scripts/make-golden.py \
        --llama-lib .cache/llama.cpp/build/bin \
        --llama-py  .cache/llama.cpp/llama_cpp_python-0.3.36
    # Gemma 3 270M (tests/golden/gemma3/*.json)
    python3 scripts/make-golden.py --model models/gemma-3-270m-q4_k_m.gguf \
        --llama-lib .cache/llama.cpp/build/bin \
        --llama-py  .cache/llama.cpp/llama_cpp_python-0.3.36

The Python needs numpy plus the bindings' imports (typing-extensions, diskcache,
jinja2). Options: --model (default models/SmolLM2-135M-Instruct.Q4_1.gguf), --profile
(smollm2 or gemma3: the strings and prompts that fit the model's vocabulary and chat
format; default: gemma3 when the model's file name says gemma-3, else smollm2), --corpus
(default data/austen.txt), --out (default tests/golden/smollm2 for smollm2,
tests/golden/gemma3 for gemma3), --only tokens|logits|ppl (repeatable). Runs with
n_threads=2 in a minute or two; each profile's files stay well under 2 MB together.

Outputs (each records the llama-cpp-python version and the model's sha256):
  tokens.json  ids of varied strings, with special-token parsing on and off, and the
               first 4,000 ids of the corpus (no BOS) plus the count and checksums of
               all its ids
  logits.json  for a few prompts: ids, and at 8+ positions the top-64 ids with their
               logits and the log-sum-exp of the whole row
  ppl.json     perplexity of the corpus's first tokens in one 2,048-token context:
               PPL = exp(mean NLL of ids 1..2047 given their prefix), plus each NLL

The gemma3 tokens.json also records, per case, what llama.cpp's decoder gives for the ids
("decode_hex": BOS/EOS removed and control tokens hidden; "decode_special_hex": all
shown), and the same cases through a vocabulary-only copy of the model that says
tokenizer.ggml.add_space_prefix = true ("space_prefix_variant": the Llama 2 style path).

BOS: the smollm2 profile adds none anywhere (the model does not ask for one). The gemma3
profile follows the model (tokenizer.ggml.add_bos_token = true: Gemma expects BOS = 2
at position 0): the logit prompts start with BOS, and ppl.json's 2,048 ids are BOS
followed by the corpus's first 2,047 tokens. Its files say so ("add_bos", "bos_id",
"bos_prepended"), and each case in tokens.json records "add_special" when the model's
BOS choice applied. Cases whose text does not come back from decode (literal U+2581,
which the tokenizer reads as a space) carry "roundtrip": false.
"""

import argparse
import ctypes
import hashlib
import json
import math
import os
import struct
import sys
import tempfile
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

# Gemma 3: the generic strings (not those written for SmolLM2's special tokens), then
# strings around Gemma's own special, user-defined and byte tokens.
SMOLLM2_ONLY = {"special_off", "special_on", "chat_on", "endoftext_on", "endoftext_off",
                "adjacent_specials_on", "special_partial", "special_spaced_on",
                "repo_tokens_on"}
GEMMA_TURN = "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
GEMMA3_CASES = [c for c in CASES if c[0] not in SMOLLM2_ONLY] + [
    ("turn_off", "<start_of_turn>user\nhi<end_of_turn>", False),
    ("turn_on", "<start_of_turn>user\nhi<end_of_turn>", True),
    ("chat_off", GEMMA_TURN, False),
    ("chat_on", GEMMA_TURN, True),
    ("chat_two_turns_on", "<start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\nHi there.<end_of_turn>\n<start_of_turn>user\nTell me a joke.<end_of_turn>\n<start_of_turn>model\n", True),
    ("bos_eos_on", "<bos>text<eos>", True),
    ("bos_eos_off", "<bos>text<eos>", False),
    ("adjacent_specials_on", "<end_of_turn><start_of_turn><end_of_turn>", True),
    ("special_partial_on", "<start_of_turn user <end_of_turn", True),
    ("special_spaced_on", " <start_of_turn> x <end_of_turn> ", True),
    ("unused_on", "a<unused0>b <unused6241> <unused99>", True),
    ("unused_off", "a<unused0>b <unused6241> <unused99>", False),
    ("mask_multimodal_on", "<mask>[multimodal]<pad><unk>", True),
    ("mask_multimodal_off", "<mask>[multimodal]<pad><unk>", False),
    ("image_tokens", "<start_of_image>pixels<end_of_image>", False),
    ("html_tags", "<table><tr><td>cell</td></tr></table> <b>bold</b> <i>it</i> <code>x</code>", False),
    ("html_strike_off", "<s>strike</s> and </s>", False),
    ("html_strike_on", "<s>strike</s> and </s>", True),
    ("html_partial", "<tabl <tr <td> </td", False),
    ("byte_token_text", "<0x41> is not A, <0x0A> is not a newline", False),
    ("space_runs", "a  b   c    d     e", False),
    ("space_run_40", "x" + " " * 40 + "y", False),
    ("space_run_only", " " * 7, False),
    ("newline_run_35", "p" + "\n" * 35 + "q", False),
    ("tab_runs", "\t\t\tcode\t\t// c\t", False),
    ("mixed_ws_runs", " \n \n\n  \t \r\n  x", False),
    ("leading_single_space", " single", False),
    ("sentencepiece_mark", "\u2581mark \u2581\u2581 two", False),
    ("rare_chars", "\U0001d11e \U00013000 \U000e0001 \U0010fffd \u0000x", False),
    ("long_no_spaces", "supercalifragilisticexpialidocious" * 30, False),
    ("long_digits", "31415926535897932384626433832795028841971693993751" * 4, False),
    ("invalid_surrogate", b"\xed\xa0\x80 surrogate", False),
    ("invalid_lead_then_space", b"x\xe2 y\xc3", False),
    ("invalid_f8", b"\xf8\x88\x80\x80\x80 five", False),
]
GEMMA3_ADD_SPECIAL_CASES = [
    ("add_special_prose", "Hello world", False),
    ("add_special_empty", "", False),
    ("add_special_chat", GEMMA_TURN, True),
]
GEMMA3_LOGIT_PROMPTS = [
    LOGIT_PROMPTS[0],
    LOGIT_PROMPTS[1],
    ("chat", "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n", True),
]

# Per model: strings and prompts, where the files go, and whether BOS is added where the
# model asks for it (recorded in the files; the smollm2 files keep their original form).
PROFILES = {
    "smollm2": {
        "model": "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "out": "tests/golden/smollm2",
        "cases": CASES,
        "add_special_cases": ADD_SPECIAL_CASES,
        "logit_prompts": LOGIT_PROMPTS,
        "bos": False,
        "decodes": False,
    },
    "gemma3": {
        "model": "models/gemma-3-270m-q4_k_m.gguf",
        "out": "tests/golden/gemma3",
        "cases": GEMMA3_CASES,
        "add_special_cases": GEMMA3_ADD_SPECIAL_CASES,
        "logit_prompts": GEMMA3_LOGIT_PROMPTS,
        "bos": True,
        "decodes": True,
    },
}

SPACE_PREFIX_KEY = "tokenizer.ggml.add_space_prefix"
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
    if isinstance(text, str) and "\u2581" in text:
        e["roundtrip"] = False  # decode gives a space where the text had U+2581
    e["ids"] = ids
    return e


def logsumexp(row, np):
    m = float(np.max(row))
    return m + math.log(float(np.sum(np.exp(row.astype(np.float64) - m))))


def vocab_tokenize(llama_cpp, vocab, text, add_special, parse_special):
    """llama_tokenize on a bare vocabulary (llama.cpp's C API)."""
    n_max = len(text) + 16
    buf = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, n_max, add_special, parse_special)
    if n < 0:
        raise RuntimeError(f"make-golden: llama_tokenize failed ({n})")
    return list(buf[:n])


def vocab_detokenize(llama_cpp, vocab, ids, remove_special, unparse_special):
    """llama_detokenize: the bytes llama.cpp's decoder gives for the ids."""
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 64 * len(ids)
    while True:
        out = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), out, size, remove_special,
                                       unparse_special)
        if n >= 0:
            return out.raw[:n]
        size = -n + 1


def with_decodes(entry, llama_cpp, vocab):
    """Adds what llama.cpp decodes the case's ids to (hex, as the bytes need not be
    UTF-8): with BOS/EOS removal and control tokens hidden ("decode_hex", spillway's
    keep_control = false) and with every token shown ("decode_special_hex")."""
    ids = entry["ids"]
    entry["decode_hex"] = vocab_detokenize(llama_cpp, vocab, ids, True, False).hex()
    entry["decode_special_hex"] = vocab_detokenize(llama_cpp, vocab, ids, False, True).hex()
    return entry


def write_space_prefix_variant(llama_py, model, dst):
    """A vocabulary-only copy of the model (all metadata, no tensors) that says
    tokenizer.ggml.add_space_prefix = true, as Llama 2 style vocabularies do."""
    gguf_py = Path(llama_py).resolve() / "vendor/llama.cpp/gguf-py"
    sys.path.insert(0, str(gguf_py))
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(model)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", SPACE_PREFIX_KEY):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), vtype, sub)
    w.add_key_value(SPACE_PREFIX_KEY, True, GGUFValueType.BOOL)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def default_profile(model):
    return "gemma3" if "gemma-3" in Path(model).name.lower() else "smollm2"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-lib", default=str(ROOT / ".cache/llama.cpp/build/bin"),
                    help="directory holding libllama.so (and libggml*)")
    ap.add_argument("--llama-py", default=str(ROOT / ".cache/llama.cpp/llama_cpp_python-0.3.36"),
                    help="unpacked llama-cpp-python sdist (the directory holding llama_cpp/)")
    ap.add_argument("--model", help="GGUF model (default: the profile's, else SmolLM2)")
    ap.add_argument("--profile", choices=sorted(PROFILES),
                    help="strings and prompts for this model family (default: from the model name)")
    ap.add_argument("--corpus", default=str(ROOT / "data/austen.txt"))
    ap.add_argument("--out", help="output directory (default: the profile's)")
    ap.add_argument("--only", action="append", choices=["tokens", "logits", "ppl"])
    args = ap.parse_args()

    if args.model is None:
        args.model = str(ROOT / PROFILES[args.profile or "smollm2"]["model"])
    profile_name = args.profile or default_profile(args.model)
    prof = PROFILES[profile_name]
    if args.out is None:
        args.out = str(ROOT / prof["out"])
    use_bos = prof["bos"]

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
    bos_id = llm.token_bos()
    bos_fields = {}
    if use_bos:
        # The model asks for BOS (tokenizer.ggml.add_bos_token); say so in every file.
        if bos_id is None or bos_id < 0:
            sys.exit("make-golden: the profile adds BOS but the model has no BOS token")
        source["profile"] = profile_name
        bos_fields = {"add_bos": True, "bos_id": bos_id}

    if "tokens" in only:
        cases = []
        for name, text, special in prof["cases"]:
            raw = text if isinstance(text, bytes) else text.encode("utf-8")
            ids = llm.tokenize(raw, add_bos=False, special=special)
            cases.append(case_entry(name, text, special, ids, False))
        for name, text, special in prof["add_special_cases"]:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)
            cases.append(case_entry(name, text, special, ids, True))
        extra = {}
        if prof["decodes"]:
            vocab = llm._model.vocab  # the loaded model's llama_vocab pointer
            cases = [with_decodes(c, llama_cpp, vocab) for c in cases]
            # The same strings through the same vocabulary with add_space_prefix = true
            # (loaded vocabulary-only from a metadata copy), for the Llama 2 style path.
            with tempfile.TemporaryDirectory() as tmp:
                variant = Path(tmp) / "space-prefix-vocab.gguf"
                write_space_prefix_variant(args.llama_py, args.model, variant)
                params = llama_cpp.llama_model_default_params()
                params.vocab_only = True
                vmodel = llama_cpp.llama_model_load_from_file(str(variant).encode(), params)
                if not vmodel:
                    sys.exit("make-golden: llama.cpp could not load the space-prefix vocabulary")
                vvocab = llama_cpp.llama_model_get_vocab(vmodel)
                sp_cases = []
                for name, text, special in prof["cases"]:
                    raw = text if isinstance(text, bytes) else text.encode("utf-8")
                    ids = vocab_tokenize(llama_cpp, vvocab, raw, False, special)
                    sp_cases.append(with_decodes(case_entry(name, text, special, ids, False),
                                                 llama_cpp, vvocab))
                for name, text, special in prof["add_special_cases"]:
                    ids = vocab_tokenize(llama_cpp, vvocab, text.encode("utf-8"), True, special)
                    sp_cases.append(with_decodes(case_entry(name, text, special, ids, True),
                                                 llama_cpp, vvocab))
                llama_cpp.llama_model_free(vmodel)
            extra["space_prefix_variant"] = {
                "what": "the model's vocabulary with " + SPACE_PREFIX_KEY + " = true",
                "cases": sp_cases,
            }
        all_ids = llm.tokenize(corpus_bytes, add_bos=False, special=False)
        corpus = {
            "file": "data/austen.txt",
            "sha256": hashlib.sha256(corpus_bytes).hexdigest(),
            "special": False,
        }
        if use_bos:
            corpus["add_bos"] = False  # the corpus ids carry no BOS, whatever the model says
        corpus.update({
            "count": len(all_ids),
            "ids_sha256": ids_sha256(all_ids),
            "ids_fnv1a64": ids_fnv1a64(all_ids),
            "prefix_ids": all_ids[:CORPUS_PREFIX_TOKENS],
        })
        write_json(out / "tokens.json",
                   {**source, **bos_fields, "cases": cases, **extra, "corpus": corpus})

    if "logits" in only:
        prompts = []
        for name, text, special in prof["logit_prompts"]:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=use_bos, special=special)
            if use_bos and ids[:1] != [bos_id]:
                sys.exit(f"make-golden: prompt {name} does not start with BOS {bos_id}")
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
            entry = {"name": name, "text": text, "special": special}
            if use_bos:
                entry["add_bos"] = True  # ids[0] is BOS, not part of the text
            entry.update({"ids": ids, "positions": rows})
            prompts.append(entry)
        write_json(out / "logits.json", {**source, **bos_fields, "n_top": N_TOP, "prompts": prompts})

    if "ppl" in only:
        n_text = PPL_TOKENS - 1 if use_bos else PPL_TOKENS
        ids = llm.tokenize(corpus_bytes[: 64 * 1024], add_bos=False, special=False)[:n_text]
        if len(ids) != n_text:
            sys.exit(f"make-golden: corpus prefix gave {len(ids)} tokens, expected {n_text}")
        if use_bos:
            ids = [bos_id] + ids
        llm.reset()
        llm.eval(ids)
        nll = []
        for i in range(1, PPL_TOKENS):
            # One row at a time in float64 (a whole float64 copy of a 262k-entry
            # vocabulary's logits would take gigabytes).
            row = np.asarray(llm.scores[i - 1], dtype=np.float64)
            m = row.max()
            lse = m + math.log(np.exp(row - m).sum())
            nll.append(lse - row[ids[i]])
        mean_nll = sum(nll) / len(nll)
        ppl = {
            **source,
            "corpus": "data/austen.txt",
            "corpus_sha256": hashlib.sha256(corpus_bytes).hexdigest(),
            "n_ctx": PPL_TOKENS,
            "tokens": PPL_TOKENS,
        }
        if use_bos:
            ppl.update({**bos_fields, "bos_prepended": True, "corpus_tokens": n_text})
        ppl.update({
            "n_predicted": len(nll),
            "ids": ids,
            "mean_nll": round(mean_nll, 7),
            "ppl": round(math.exp(mean_nll), 6),
            "nll": [float(f"{x:.4g}") for x in nll],
        })
        write_json(out / "ppl.json", ppl)
        print(f"ppl over {len(nll)} predicted tokens: {math.exp(mean_nll):.4f}")


if __name__ == "__main__":
    main()
