"""Sequence-level distillation data for the speculative-decoding draft: SmolLM2's own greedy replies.

A draft is accepted as often as its greedy choices match the target's. Training it on what the
target itself writes for the kind of prompts it serves (Kim & Rush 2016, sequence-level KD; the
data recipe of Medusa/EAGLE-style drafts) aims straight at that. This script writes one text file per
sample under `--out` (prompt as the server tokenizes it, then SmolLM2's greedy continuation), ready
for `mlsys run lm_train corpus.roots=[<out>]`.

Prompts are disjoint from the decoding benchmark's (components/decoding/prompts.py): chat requests
built from templates x topics and one question per documented function of the installed Python
(stdlib, then site-packages), and code prompts made of such a function's signature and docstring
first line. Anything naming a benchmark prompt's subject is dropped. The pool is fixed by `--seed`;
`--skip`/`--count` take a slice of it, so workers on disjoint slices (or a later run continuing at
`--skip <samples written>`) never repeat a prompt or a file name. Generation is batched (left
padding) and each batch's files are written as it finishes, so the run can be stopped at any time;
`--minutes` stops it by itself.

    .venv/bin/python scripts/teacher_corpus.py --out data/teacher_corpus --minutes 45 --threads 1 --batch 48
"""

from __future__ import annotations

import argparse
import ast
import random
import sys
import sysconfig
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlsys.environment import apply_environment_defaults  # noqa: E402  (after sys.path)

apply_environment_defaults()  # noqa: E402  (environment defaults before torch loads)
import torch  # noqa: E402  (after the environment defaults)

from components.lm.smollm2 import load_model, load_tokenizer  # noqa: E402  (after the environment defaults)
from components.lm.teacher_prompts import (  # noqa: E402  (after the environment defaults)
    CHAT_TEMPLATES,
    TOPICS,
    held_out,
)
from components.serving.text import HFTextCodec  # noqa: E402  (after the environment defaults)


def source_roots() -> list[Path]:
    """Installed Python code: the stdlib, then site-packages (tens of thousands of documented functions)."""
    paths = sysconfig.get_paths()
    return [Path(paths["stdlib"]), Path(paths["purelib"])]


class Function(NamedTuple):
    module: str
    name: str
    args: str  # as written between the parentheses
    doc_line: str  # the docstring's first line


def documented_functions(roots: list[Path]) -> list[Function]:
    """Public, short, documented functions of the Python files under `roots`, in file order."""
    seen, out = set(), []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if (
                any(part.startswith(("test", "_")) or "-" in part for part in rel.parts[:-1])
                or rel.name.startswith("test")
                or (rel.name.startswith("_") and rel.name != "__init__.py")
            ):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
                continue
            module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.name in seen:
                    continue
                doc = (ast.get_docstring(node) or "").strip()
                if not doc or held_out(node.name):
                    continue
                args = ast.unparse(node.args)
                line = doc.splitlines()[0].strip()
                if len(args) > 60 or not 10 <= len(line) <= 90 or '"""' in line or held_out(line):
                    continue
                seen.add(node.name)
                out.append(Function(module, node.name, args, line))
    return out


def chat_prompts(functions: list[Function], seed: int) -> list[str]:
    """Everyday topics x templates first, then one question per documented function (shuffled by `seed`):
    the benchmark's chat prompts are of both kinds, and a short run should still cover the topics."""
    topical = [tpl.format(t=topic) for topic in TOPICS for tpl in CHAT_TEMPLATES]
    about_code = [f"What does the function `{f.name}` in Python's `{f.module}` module do?" for f in functions]
    random.Random(seed).shuffle(about_code)
    return [p for p in topical + about_code if not held_out(p)]


def code_prompts(functions: list[Function]) -> list[str]:
    """`def name(args):` + the docstring's first line: SmolLM2 writes the body."""
    return [f'def {f.name}({f.args}):\n    """{f.doc_line}"""\n' for f in functions]


def prompt_pool(chats: list[str], codes: list[str], seed: int) -> list[str]:
    """Chat prompts in their order and code prompts shuffled by `seed`, alternating for as long as both last."""
    codes = list(codes)
    random.Random(seed).shuffle(codes)
    n = min(len(chats), len(codes))
    return [p for pair in zip(chats, codes) for p in pair] + chats[n:] + codes[n:]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "data" / "teacher_corpus"))
    parser.add_argument("--minutes", type=float, default=40.0, help="stop starting batches after this long")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new", type=int, default=96, help="the benchmark decodes 48-64 tokens")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip",
        type=int,
        default=0,
        help="start at this pool index: workers on disjoint slices, or a run that continues one",
    )
    parser.add_argument("--count", type=int, default=None, help="at most this many prompts (default: the rest)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    tokenizer.padding_side = "left"
    model = load_model()
    functions = documented_functions(source_roots())
    chats = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in chat_prompts(functions, args.seed)
    ]
    pool = prompt_pool(chats, code_prompts(functions), args.seed)
    prompts = pool[args.skip : None if args.count is None else args.skip + args.count]
    print(f"{len(pool)} prompts in the pool; this run takes {len(prompts)} from index {args.skip}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = torch.tensor(HFTextCodec(tokenizer).eos_ids)  # what the server stops at: eos and <|im_end|>
    start, written, tokens = time.perf_counter(), 0, 0
    for b in range(0, len(prompts), args.batch):
        if time.perf_counter() - start > 60 * args.minutes:
            break
        batch = prompts[b : b + args.batch]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=args.max_new, do_sample=False, pad_token_id=pad)
        for i, prompt in enumerate(batch):
            reply_ids = gen[i, enc["input_ids"].shape[1] :]
            reply = tokenizer.decode(reply_ids, skip_special_tokens=True)
            # The end-of-turn marker only where SmolLM2 ended the reply itself: a reply cut at
            # --max-new must not teach the draft to end there.
            finished = bool(torch.isin(reply_ids, stop_ids).any())
            end = ("<|im_end|>\n" if prompt.startswith("<|im_start|>") else "\n") if finished else ""
            (out / f"sample_{args.skip + b + i:06d}.txt").write_text(prompt + reply + end, encoding="utf-8")
            tokens += int((reply_ids != pad).sum())
        written += len(batch)
        print(
            f"{written} samples, {tokens} generated tokens, {tokens / (time.perf_counter() - start):.0f} tok/s",
            flush=True,
        )
    print(f"wrote {written} samples to {out}")


if __name__ == "__main__":
    main()
