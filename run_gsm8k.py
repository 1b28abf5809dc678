"""Evaluate a masked diffusion LLM on GSM8K: the one-block baselines, every block schedule and HEX.

    python run_gsm8k.py --model GSAI-ML/LLaDA-8B-Instruct                      # one GPU (or CPU)
    torchrun --nproc_per_node 8 run_gsm8k.py --model GSAI-ML/LLaDA-8B-Instruct  # several GPUs

Protocol (the authors', from the d1 evaluation code): zero-shot GSM8K test split, their system
prompt and `<reasoning>` prefix, gen_length 256, steps 128. Every finished question is appended to
a JSONL file at once; rerunning with the same --output resumes. A summary table is printed and saved
as JSON next to the JSONL. See README.md, "Reproduce the paper on GSM8K".
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import torch
from tqdm import tqdm

from hex import CountCalls, generate, hex_generate, majority_vote

SYSTEM_PROMPT = """You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer in a \\boxed{}. 
Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
\\boxed{...}
</answer>"""  # d1's GSM8K system prompt, verbatim (note the space after "\boxed{}.")
BASELINES = ("topk_margin", "low_confidence", "random")  # one block of gen_length; the name is the remasking
METHODS = ("hex", *BASELINES)
COLLAPSE_THRESHOLD = 0.5  # a candidate "collapses" when over half its answer is end-of-text tokens


# Prompts and answers -----------------------------------------------------------------------------

def build_prompt(tokenizer, question: str) -> list[int]:
    """d1's prompt: system text, blank line, question as one user turn; the chat template with the
    generation prompt; then `<reasoning>`. The template already writes the BOS token, so the text is
    tokenized without adding special tokens again."""
    chat = [{"role": "user", "content": SYSTEM_PROMPT + "\n\n" + question}]
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) + "<reasoning>"
    return tokenizer(text, add_special_tokens=False).input_ids


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def extract_answer_authors(text: str) -> float | None:
    """The authors' rule, quirks included: the first non-empty `\\boxed{...}` (non-greedy, so
    `\\boxed{1,000}` reads 1.0) as a float, else its first number; failing that, the last number
    inside `<answer>...</answer>`."""
    for content in re.findall(r"\\boxed{(.*?)}", text):
        content = content.strip()
        if not content or re.fullmatch(r"\.+", content):
            continue
        try:
            return _finite(float(content))
        except ValueError:
            numbers = re.findall(r"-?\d+\.?\d*", content)
            if numbers:
                return _finite(float(numbers[0]))
    match = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if match and match.group(1).strip():
        inner = match.group(1).strip()
        try:
            return _finite(float(inner))
        except ValueError:
            numbers = re.findall(r"-?\d+\.?\d*", inner)
            return _finite(float(numbers[-1])) if numbers else None
    return None


def _numbers(text: str) -> list[float]:
    """Numbers in text, reading `1,000`, `$18`, `\\$18`, `-5`, `−5`, `.5`, `\\frac{1}{2}` and units."""
    text = text.replace("−", "-").replace("\\$", " ").replace("$", " ").replace("\\%", " ")
    text = re.sub(r"\\d?frac\{(-?[\d.]+)\}\{([\d.]+)\}",
                  lambda m: str(float(m[1]) / float(m[2])) if float(m[2]) else m[0], text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    return [float(n) for n in re.findall(r"-?(?:\d+(?:\.\d+)?|\.\d+)", text)]


def _boxed(text: str) -> list[str]:
    """Contents of every `\\boxed{...}`, with nested braces balanced."""
    contents = []
    for start in (m.end() for m in re.finditer(r"\\boxed\s*\{", text)):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        contents.append(text[start:i - 1] if depth == 0 else text[start:])
    return contents


def extract_answer_robust(text: str) -> float | None:
    """The authors' order of evidence (first real `\\boxed{}`, then `<answer>`), read robustly, then a
    final "The answer is N" (or "#### N") line."""
    for content in _boxed(text):
        if content.strip().strip(".") and (numbers := _numbers(content)):
            return _finite(numbers[0])
    match = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if match and (numbers := _numbers(match.group(1))):
        return _finite(numbers[-1])
    lines = re.findall(r"(?:answer is|answer:|####)\s*:?\s*([^\n]*)", text, re.IGNORECASE)
    if lines and (numbers := _numbers(lines[-1])):
        return _finite(numbers[0])
    return None


EXTRACTORS = {"authors": extract_answer_authors, "robust": extract_answer_robust}


def parse_gold(answer: str) -> float:
    """GSM8K's reference: the number after `####`, commas removed (negatives allowed)."""
    if "####" not in answer:
        raise ValueError("the answer has no '#### N' line")
    return float(answer.rsplit("####", 1)[1].strip().replace(",", "").replace("$", ""))


# Data --------------------------------------------------------------------------------------------

def load_problems(path: str | None) -> list[dict]:
    """GSM8K problems as {"question", "answer"}: a local JSONL or parquet file, else the test split
    through the `datasets` library."""
    if path is None:
        try:
            from datasets import load_dataset
            rows = load_dataset("openai/gsm8k", "main", split="test")
        except Exception as error:  # no datasets, no network, no cache: say how to go on
            sys.exit(f"Could not load GSM8K through `datasets` ({type(error).__name__}: {error}).\n"
                     "Pass a local copy: --data gsm8k_test.jsonl (one JSON object per line with "
                     "'question' and 'answer' ending in '#### N'), or a parquet file.")
        return [{"question": r["question"], "answer": r["answer"]} for r in rows]
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--data {path}: no such file")
    if file.suffix == ".parquet":
        import pandas
        rows = pandas.read_parquet(file).to_dict("records")
        lines = [(i + 2, r) for i, r in enumerate(rows)]  # row 1 is the header
    else:
        lines = []
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    lines.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
    problems = []
    for number, row in lines:
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) \
                or not isinstance(row.get("answer"), str):
            raise ValueError(f"{path}, line {number}: needs string fields 'question' and 'answer'")
        try:
            parse_gold(row["answer"])
        except ValueError as error:
            raise ValueError(f"{path}, line {number}: {error}") from None
        problems.append({"question": row["question"], "answer": row["answer"]})
    return problems


# Model -------------------------------------------------------------------------------------------

def load_model(name: str, device: torch.device, dtype: torch.dtype):
    """The checkpoint and its tokenizer through transformers, with the checkpoint's own code."""
    from transformers import AutoModel, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=True)
    model = AutoModel.from_pretrained(name, trust_remote_code=True, torch_dtype=dtype)
    return model.to(device).eval(), tokenizer


def find_mask_id(tokenizer, model) -> int:
    """The [MASK] id: the tokenizer's mask token, LLaDA's `<|mdm_mask|>`, or the config's."""
    if tokenizer.mask_token_id is not None:
        return tokenizer.mask_token_id
    if "<|mdm_mask|>" in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids("<|mdm_mask|>")
    if getattr(model.config, "mask_token_id", None) is not None:
        return model.config.mask_token_id
    raise ValueError("cannot tell the mask token id: pass --mask-id")


# One batch of questions --------------------------------------------------------------------------

def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Left-padded (B, L) ids, and an attention mask only when some prompt is actually padded."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    if all(len(p) == width for p in prompts):
        return ids, None
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def decode_batch(model, tokenizer, batch: list[dict], args, mask_id: int, device) -> list[dict]:
    """Decode every method for a batch of questions; one record per question."""
    counted = CountCalls(model)
    prompts = [build_prompt(tokenizer, p["question"]) for p in batch]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, attention = left_pad(prompts, pad_id if pad_id is not None else 0, device)
    # each method draws from its own stream, seeded by the batch's first question, so that adding
    # or dropping a method changes no other method's samples
    first = batch[0]["id"]
    seeded = lambda m: torch.Generator(device).manual_seed(args.seed + 10**6 * METHODS.index(m) + first)
    kw = dict(gen_length=args.gen_length, steps=args.steps, mask_id=mask_id)
    start = time.perf_counter()
    candidates = [[] for _ in batch]  # per question: (method, block_length, sample, answer ids, score)
    if "hex" in args.methods:
        out = hex_generate(counted, ids, attention, block_lengths=args.block_lengths,
                           samples_per_block=args.samples_per_block, temperature=args.temperature,
                           generator=seeded("hex"), **kw)
        for q in range(len(batch)):
            for k, b in enumerate(out.block_lengths):
                candidates[q].append(("hex", b, k // len(args.block_lengths),
                                      out.sequences[q, k, -args.gen_length:], float(out.scores[q, k])))
    for method in (m for m in args.methods if m in BASELINES):
        seqs = generate(counted, ids, attention, block_length=args.gen_length,
                        remasking=method, generator=seeded(method), **kw)
        for q in range(len(batch)):
            candidates[q].append((method, args.gen_length, 0, seqs[q, -args.gen_length:], None))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / len(batch)
    extract = EXTRACTORS[args.answer_rule]
    records = []
    for problem, cands in zip(batch, candidates):
        gold = parse_gold(problem["answer"])
        rows = []
        for method, b, sample, tokens, score in cands:
            text = tokenizer.decode(tokens.tolist(), skip_special_tokens=True)
            eos = (tokens == tokenizer.eos_token_id).float().mean().item()
            rows.append(dict(method=method, block_length=b, sample=sample, text=text,
                             answer=extract(text), score=score, eos_fraction=round(eos, 4)))
        record = dict(id=problem["id"], question=problem["question"], gold=gold, candidates=rows,
                      forward_calls=counted.calls / len(batch), seconds=round(seconds, 3))
        record["votes"] = votes(rows, args.tie_break)
        record["correct"] = {m: is_correct(v["answer"], gold) for m, v in record["votes"].items()}
        records.append(record)
    return records


def is_correct(answer: float | None, gold: float) -> bool:
    return answer is not None and answer == gold


def votes(rows: list[dict], tie_break: str, samples: int | None = None) -> dict:
    """Each method's answer: HEX votes over its candidates (the first `samples` samples of each
    block length when given); a baseline's answer is its single candidate's."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method and (samples is None or r["sample"] < samples)]
        if method == "hex":
            scores = [r["score"] for r in mine]
            answer, tie = majority_vote([r["answer"] for r in mine], scores, tie_break)
        else:
            answer, tie = mine[0]["answer"], False
        out[method] = {"answer": answer, "tie": tie}
    return out


# The summary -------------------------------------------------------------------------------------

def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n))


def collapse_rate(candidates: list[dict]) -> float:
    """Share of candidates whose answer region is mostly end-of-text tokens ([AfterEoT] collapse)."""
    return sum(c["eos_fraction"] > COLLAPSE_THRESHOLD for c in candidates) / len(candidates)


def summarize(records: list[dict], config: dict, environment: dict) -> dict:
    """Every reported metric, recomputed from the JSONL records alone."""
    n = len(records)
    methods = {}
    for method in dict.fromkeys(m for r in records for m in r["correct"]):
        correct = sum(r["correct"][method] for r in records)
        rows = [c for r in records for c in r["candidates"] if c["method"] == method]
        methods[method] = dict(accuracy=correct / n, ci95=wilson(correct, n), correct=correct,
                               tie_rate=sum(r["votes"][method]["tie"] for r in records) / n,
                               collapse_rate=collapse_rate(rows))
    block_lengths = {}
    for b in sorted({c["block_length"] for r in records for c in r["candidates"] if c["method"] == "hex"}):
        rows = [(c, r["gold"]) for r in records for c in r["candidates"]
                if c["method"] == "hex" and c["block_length"] == b]
        hits = sum(is_correct(c["answer"], gold) for c, gold in rows)
        block_lengths[b] = dict(accuracy=hits / len(rows), candidates=len(rows),
                                collapse_rate=collapse_rate([c for c, _ in rows]))
    scaling = []
    for s in range(1, config["samples_per_block"] + 1) if "hex" in config["methods"] else ():
        voted = [votes(r["candidates"], config["tie_break"], samples=s)["hex"] for r in records]
        hits = sum(is_correct(v["answer"], r["gold"]) for v, r in zip(voted, records))
        scaling.append(dict(votes=s * len(config["block_lengths"]), accuracy=hits / n,
                            tie_rate=sum(v["tie"] for v in voted) / n))
    return dict(questions=n, methods=methods, block_lengths=block_lengths, hex_vs_votes=scaling,
                forward_calls_per_question=sum(r["forward_calls"] for r in records) / n,
                seconds_per_question=sum(r["seconds"] for r in records) / n,
                config=config, environment=environment)


def summary_table(summary: dict) -> str:
    """The summary as a plain-text table."""
    pct = lambda x: f"{100 * x:6.2f}"
    lines = [f"GSM8K, {summary['questions']} questions",
             f"{'method':<16}{'accuracy':>9}  {'95% interval':<17}{'tie rate':>9}{'collapse':>10}"]
    for m, v in summary["methods"].items():
        lo, hi = v["ci95"]
        lines.append(f"{m:<16}{pct(v['accuracy']):>9}  [{pct(lo)}, {pct(hi)}]  {pct(v['tie_rate']):>8}"
                     f"{pct(v['collapse_rate']):>10}")
    for b, v in summary["block_lengths"].items():
        lines.append(f"{'  block ' + str(b):<16}{pct(v['accuracy']):>9}  {'':<17}{'':>9}"
                     f"{pct(v['collapse_rate']):>10}")
    for v in summary["hex_vs_votes"]:
        lines.append(f"HEX with {v['votes']:>3} votes: accuracy {pct(v['accuracy'])}, "
                     f"tie rate {pct(v['tie_rate'])}")
    env = summary["environment"]
    lines.append(f"{summary['forward_calls_per_question']:.1f} forward calls and "
                 f"{summary['seconds_per_question']:.2f} s per question on {env['device_name']} "
                 f"({env['dtype']}, torch {env['torch']}, transformers {env['transformers']})")
    return "\n".join(lines)


# Files and resuming ------------------------------------------------------------------------------

def read_records(paths: list[Path]) -> dict[int, dict]:
    """Finished questions by id. A torn last line (an interrupted write) is not a finished question."""
    done = {}
    for path in paths:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        complete = text[:text.rfind("\n") + 1]
        for number, line in enumerate(complete.splitlines(), start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                sys.exit(f"{path}, line {number}: not a JSON record; fix or remove it, or use --no-resume")
            done[record["id"]] = record
    return done


def drop_torn_tail(path: Path) -> None:
    """Cut an interrupted last line off a JSONL file before appending to it."""
    if path.is_file() and (data := path.read_bytes()) and not data.endswith(b"\n"):
        path.write_bytes(data[:data.rfind(b"\n") + 1])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="GSAI-ML/LLaDA-8B-Instruct", help="hub id or local directory")
    parser.add_argument("--device", default=None, help="default: cuda (this rank's GPU), else cpu")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--data", default=None, help="local GSM8K JSONL or parquet file")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many questions")
    parser.add_argument("--offset", type=int, default=0, help="skip this many questions first")
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="default: gen_length / 2")
    parser.add_argument("--mask-id", type=int, default=None, help="default: from the tokenizer or config")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD",
                        help=f"any of {', '.join(METHODS)} (default: all)")
    parser.add_argument("--block-lengths", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--samples-per-block", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0, help="HEX sampling temperature")
    parser.add_argument("--answer-rule", choices=sorted(EXTRACTORS), default="robust")
    parser.add_argument("--tie-break", choices=["first", "likelihood"], default="first")
    parser.add_argument("--batch-size", type=int, default=1, help="questions per forward call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSONL path; default under results/")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="skip questions already in --output (default); --no-resume starts over")
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    args.methods = [m for m in METHODS if m in args.methods]
    args.steps = args.steps or args.gen_length // 2
    for name in ("limit", "batch_size", "samples_per_block", "gen_length", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.offset < 0:
        parser.error(f"--offset must be >= 0, got {args.offset}")
    if args.output is None:
        tag = Path(args.model.rstrip("/")).name
        args.output = (f"results/gsm8k-{tag}-g{args.gen_length}-s{args.steps}-t{args.temperature:g}"
                       f"-x{args.samples_per_block}.jsonl")
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if world > 1:  # torchrun: gloo only synchronises the ranks; no tensors are exchanged
        torch.distributed.init_process_group("gloo", timeout=timedelta(hours=48))
    cuda = torch.cuda.is_available() and args.device in (None, "cuda")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else args.device or "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))

    problems = load_problems(args.data)
    for i, p in enumerate(problems):
        p["id"] = i  # the question's index in the file or split
    total, problems = len(problems), problems[args.offset:][:args.limit]
    if not problems:
        sys.exit(f"no questions to evaluate: --offset {args.offset} is past the {total} problems")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    config_path, summary_path = output.with_suffix(".config.json"), output.with_suffix(".summary.json")
    parts = lambda: sorted(output.parent.glob(output.stem + ".part*.jsonl"))  # this run's and earlier runs'
    config = {k: getattr(args, k) for k in ("model", "gen_length", "steps", "methods", "block_lengths",
                                            "samples_per_block", "temperature", "answer_rule",
                                            "tie_break", "seed", "dtype")}
    config["dtype"] = str(dtype).removeprefix("torch.")
    if rank == 0 and not args.resume:
        for path in (output, config_path, summary_path, *parts()):
            path.unlink(missing_ok=True)
    if world > 1:
        torch.distributed.barrier()
    if config_path.is_file() and json.loads(config_path.read_text()) != config:
        sys.exit(f"{output} was made with other settings ({config_path}); "
                 "use another --output, or --no-resume to start over")
    if rank == 0:
        config_path.write_text(json.dumps(config, indent=1))

    done = read_records([output, *parts()])
    todo = [p for p in problems[rank::world] if p["id"] not in done]
    if world > 1:
        torch.distributed.barrier()  # every rank has read before any rank writes
    model, tokenizer = load_model(args.model, device, dtype)
    mask_id = args.mask_id if args.mask_id is not None else find_mask_id(tokenizer, model)
    mine = output.with_suffix(f".part{rank}.jsonl") if world > 1 else output
    drop_torn_tail(mine)
    correct, finished = defaultdict(int), 0
    bar = tqdm(total=len(todo), desc=f"GSM8K rank {rank}" if world > 1 else "GSM8K", disable=not todo)
    with mine.open("a", encoding="utf-8") as sink:
        for i in range(0, len(todo), args.batch_size):
            for record in decode_batch(model, tokenizer, todo[i:i + args.batch_size], args, mask_id, device):
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                finished += 1
                for m, ok in record["correct"].items():
                    correct[m] += ok
                bar.update()
                bar.set_postfix({m: f"{100 * c / finished:.1f}%" for m, c in correct.items()})
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        torch.distributed.destroy_process_group()
        return None
    records = read_records([output, *parts()])
    ids = {p["id"] for p in problems}
    if parts():  # merge the ranks' parts into the one JSONL, atomically, then drop the parts
        merged = output.with_suffix(".merging")
        merged.write_text("".join(json.dumps(records[k]) + "\n" for k in sorted(records)), encoding="utf-8")
        merged.replace(output)
        for path in parts():
            path.unlink()
    if world > 1:
        torch.distributed.destroy_process_group()
    environment = dict(device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       dtype=config["dtype"], torch=torch.__version__,
                       transformers=__import__("transformers").__version__, world_size=world)
    summary = summarize([records[k] for k in sorted(records) if k in ids], config, environment)
    summary_path.write_text(json.dumps(summary, indent=1))
    print(summary_table(summary))
    print(f"records: {output}\nsummary: {summary_path}")
    return summary


if __name__ == "__main__":
    main()
