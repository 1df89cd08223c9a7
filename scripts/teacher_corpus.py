"""Sequence-level distillation data for the speculative-decoding draft: SmolLM2's own greedy replies.

A draft is accepted as often as its greedy choices match the target's. Training it on what the
target itself writes for the kind of prompts it serves (Kim & Rush 2016, sequence-level KD; the
data recipe of Medusa/EAGLE-style drafts) aims straight at that. This script writes one text file per
sample under `--out` (prompt as the server tokenizes it, then SmolLM2's greedy continuation), ready
for `mlsys run lm_train corpus.roots=[<out>]`.

Prompts are disjoint from the decoding benchmark's (components/decoding/prompts.py): chat requests
built from templates x topics, and code prompts made of a real stdlib function's signature and
docstring first line. Anything naming a benchmark prompt's subject is dropped. Generation is
batched (left padding) and each batch's files are written as it finishes, so the run can be
stopped at any time; `--minutes` stops it by itself.

    .venv/bin/python scripts/teacher_corpus.py --out data/teacher_corpus --minutes 40 --threads 1
"""
from __future__ import annotations

import argparse
import ast
import random
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402,F401  (environment defaults before torch loads)

CHAT_TEMPLATES = [
    "Explain {t} in two sentences.", "What is {t}?", "Give three facts about {t}.",
    "Describe {t} to a beginner.", "Write a short poem about {t}.", "Why does {t} matter? Answer briefly.",
    "Summarize {t} in one paragraph.", "List some common uses of {t}.",
]
TOPICS = [
    "photosynthesis", "the water cycle", "volcanoes", "the Roman Empire", "democracy", "gravity", "electricity",
    "the human heart", "vaccines", "climate change", "the internet", "recycling", "honey bees", "the moon",
    "rainbows", "earthquakes", "the printing press", "coffee", "chess", "music theory", "the Olympic Games",
    "rain forests", "deserts", "glaciers", "the stock market", "inflation", "renewable energy", "batteries",
    "magnets", "DNA", "evolution", "dinosaurs", "the immune system", "sleep", "exercise", "nutrition",
    "friendship", "time management", "public speaking", "learning a language", "cooking pasta", "gardening",
    "bicycles", "trains", "airplanes", "bridges", "skyscrapers", "lighthouses", "maps", "calendars",
    "recursion", "sorting algorithms", "databases", "unit tests", "version control", "operating systems",
    "encryption", "computer networks", "cloud computing", "machine learning", "neural networks",
    "regular expressions", "JSON", "HTTP", "spreadsheets", "open source software", "the command line",
    "debugging", "code reviews", "linked lists", "binary trees", "graphs", "queues", "caching",
    "multithreading", "memory management", "garbage collection", "floating point numbers", "prime numbers",
    "fractions", "probability", "statistics", "geometry", "the Pythagorean theorem", "algebra", "calculus",
    "the ocean", "whales", "penguins", "elephants", "forests", "mountains", "rivers", "the Sahara",
    "the Amazon river", "ancient Egypt", "the Renaissance", "the Industrial Revolution", "libraries",
    "museums", "newspapers", "photography", "painting", "poetry", "theater", "football", "tennis",
]
# subjects of the benchmark's own prompts (components/decoding/prompts.py): never trained on
HELD_OUT = ("hash table", "readable", "tuple", "compiler", "haiku", "sky", "planet", "fibonacci", "load_config",
            "stack", "is_prime", "binary_search", "word_count")


def chat_prompts() -> list[str]:
    out = [tpl.format(t=topic) for topic in TOPICS for tpl in CHAT_TEMPLATES]
    return [p for p in out if not any(h in p.lower() for h in HELD_OUT)]


def code_prompts(limit: int, seed: int) -> list[str]:
    """`def name(args):` + the docstring's first line, from real stdlib functions (public, short)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen, out = set(), []
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if "test" in path.parts or path.name.startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.name in seen:
                continue
            doc = ast.get_docstring(node)
            if not doc or any(h in node.name.lower() for h in HELD_OUT):
                continue
            args = ast.unparse(node.args)
            line = doc.strip().splitlines()[0].strip()
            if len(args) > 60 or not 10 <= len(line) <= 90 or '"""' in line:
                continue
            seen.add(node.name)
            out.append(f'def {node.name}({args}):\n    """{line}"""\n')
    random.Random(seed).shuffle(out)
    return out[:limit]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "data" / "teacher_corpus"))
    parser.add_argument("--minutes", type=float, default=40.0, help="stop starting batches after this long")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new", type=int, default=96, help="the benchmark decodes 48-64 tokens")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from components.lm.smollm2 import load_model, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    tokenizer.padding_side = "left"
    model = load_model()
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in chat_prompts()]
    codes = code_prompts(4 * len(chats), args.seed)
    prompts = [p for pair in zip(chats, codes) for p in pair] + codes[len(chats):]  # both kinds in every early batch
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start, written, tokens = time.perf_counter(), 0, 0
    for b in range(0, len(prompts), args.batch):
        if time.perf_counter() - start > 60 * args.minutes:
            break
        batch = prompts[b: b + args.batch]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=args.max_new, do_sample=False, pad_token_id=pad)
        for i, prompt in enumerate(batch):
            reply = tokenizer.decode(gen[i, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            end = "<|im_end|>\n" if prompt.startswith("<|im_start|>") else "\n"
            (out / f"sample_{b + i:05d}.txt").write_text(prompt + reply + end, encoding="utf-8")
            tokens += int((gen[i, enc["input_ids"].shape[1]:] != pad).sum())
        written += len(batch)
        print(f"{written} samples, {tokens} generated tokens, {tokens / (time.perf_counter() - start):.0f} tok/s",
              flush=True)
    print(f"wrote {written} samples to {out}")


if __name__ == "__main__":
    main()
