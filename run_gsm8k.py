"""Evaluate a masked diffusion LLM on the paper's benchmarks: one-block baselines, every block schedule, HEX.

    python run_gsm8k.py --model GSAI-ML/LLaDA-8B-Instruct                          # GSM8K, one GPU
    python run_gsm8k.py --model GSAI-ML/LLaDA-8B-Instruct --task math500           # or arc-c, truthfulqa
    python run_gsm8k.py --model Dream-org/Dream-v0-Instruct-7B --task gsm8k        # the Dream family
    torchrun --nproc_per_node 8 run_gsm8k.py --model GSAI-ML/LLaDA-8B-Instruct      # several GPUs
    python run_gsm8k.py --model GSAI-ML/LLaDA-8B-Instruct --rescore                # re-read, no model

Protocol (the authors', from their HEX/eval code built on d1): zero-shot, each task's own system
prompt and `<reasoning>` prefix, gen_length 256, steps 128, block lengths 8..128. Every method of a
question (HEX's experts and the one-block baselines) is decoded in one lockstep batch: `steps` forward
calls. Answers are read by the authors' rules (default) and by a robust reading, both stored for every
candidate. Every finished question is appended to a JSONL file at once; rerunning the same command
resumes. Beside it: the settings, the summary and a PNG of the paper's figures. See README.md.

The file follows the work: 1. tasks (data, prompt, gold, answer rules); 2. decoding; 3. scoring, the
summary and the figures; 4. the model families, files, settings and resuming; 5. the command line;
6. a run, step by step.
"""
from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from hex import MaskPredictorOutput, Schedule, decode, majority_vote, steps_per_block

RULES = ("authors", "robust")
BASELINES = ("topk_margin", "low_confidence", "random")  # one block of gen_length; the name is the remasking
METHODS = ("hex", *BASELINES)
PAPER_NAMES = {"hex": "HEX", "topk_margin": "Top-K margin", "low_confidence": "Top-K", "random": "Random"}
END_TOKENS = ("<|endoftext|>", "<|eot_id|>", "<|im_end|>")  # end-of-text and end-of-turn (LLaDA, Qwen/Dream)
COLLAPSE_THRESHOLD = 0.5  # a collapsed candidate: no readable answer, and over half its answer end-of-text


class UsageError(Exception):
    """A mistake in the command or its inputs: reported as one line on stderr, never a traceback."""


# 1. Tasks ----------------------------------------------------------------------------------------
# System prompts verbatim from the authors' code (d1's GSM8K and MATH500, HEX's ARC-C and TruthfulQA).

GSM8K_PROMPT = """You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer in a \\boxed{}. 
Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
\\boxed{...}
</answer>"""  # note the space after "\boxed{}."
MATH500_PROMPT = """You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer in a \\boxed{}.
Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
\\boxed{...}
</answer>" 
"""  # their quirks: no space after "\boxed{}.", and a stray `" ` line after </answer>
CHOICE_INSTRUCTIONS = """Think step by step, but output only ONE final choice.
Wrap ONLY the final choice letter in a \\boxed{}.

Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
\\boxed{...}
</answer>"""  # the part HEX's ARC-C and TruthfulQA prompts share, after their first line
ARC_C_PROMPT = ("You are a science and reasoning expert. You will be given a multiple-choice question with "
                "options labeled A, B, C, D (and sometimes E).\n" + CHOICE_INSTRUCTIONS)
TRUTHFULQA_PROMPT = ("You are a careful, factual reasoning assistant. You will be given a multiple-choice "
                     "question with options labeled A, B, C, D.\n" + CHOICE_INSTRUCTIONS)


def multiple_choice(stem: str, labels: list, texts: list) -> str:
    """The authors' multiple-choice question: stem, the labelled options, and the instruction."""
    options = "\n".join(f"{str(label).strip()}. {str(text).strip()}" for label, text in zip(labels, texts))
    return f"{str(stem).strip()}\n\nOptions:\n{options}\n\nChoose ONE letter."


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# GSM8K, the authors' rule: numbers --------------------------------------------------------------

def gsm8k_answer_authors(text: str) -> float | None:
    """The authors' GSM8K rule, quirks included: the first non-empty `\\boxed{...}` (non-greedy, so
    `\\boxed{1,000}` reads 1.0) as a float, else its first number; failing that, the number in
    `<answer>...</answer>` (the whole content as a float, else its last number)."""
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


def gsm8k_gold_authors(row: dict) -> float | None:
    """d1's GSM8K reference: digits and commas after `####`. It has no minus sign, so a negative
    reference reads as None and that question can never be scored right (two test questions)."""
    match = re.search(r"####\s*\$?([\d,]+(?:\.\d+)?)", row["answer"])
    return float(match.group(1).replace(",", "")) if match else None


# GSM8K, the robust rule ---------------------------------------------------------------------------

def _numbers(text: str) -> list[float]:
    """Numbers in text, reading `1,000`, `$18`, `\\$18`, `-5`, `−5`, `.5`, `\\frac{1}{2}` and units."""
    text = text.replace("−", "-").replace("\\$", " ").replace("$", " ").replace("\\%", " ")
    text = re.sub(r"\\d?frac\{(-?[\d.]+)\}\{([\d.]+)\}",
                  lambda m: str(float(m[1]) / float(m[2])) if float(m[2]) else m[0], text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    return [float(n) for n in re.findall(r"-?(?:\d+(?:\.\d+)?|\.\d+)", text)]


def _boxed(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` or `\\fbox{...}`, nested braces balanced (an unclosed box
    runs to the end of the text)."""
    contents = []
    for start in (m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        contents.append(text[start:i - 1] if depth == 0 else text[start:])
    return contents


def _without_special_tokens(text: str) -> str:
    """Drop `<|...|>` tokens (LLaDA's end-of-text, end-of-turn...), kept in the decoded text as the authors keep them."""
    return re.sub(r"<\|[^<>|]{1,64}\|>", " ", text)


def gsm8k_answer_robust(text: str) -> float | None:
    """The authors' order of evidence (first real `\\boxed{}`, then `<answer>`), read robustly, then a
    final "The answer is N" (or "#### N") line."""
    text = _without_special_tokens(text)
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


def gsm8k_gold_robust(row: dict) -> float:
    """GSM8K's reference: the number after `####`, commas removed, negatives kept."""
    if "####" not in row["answer"]:
        raise ValueError("the answer has no '#### N' line")
    return float(row["answer"].rsplit("####", 1)[1].strip().replace(",", "").replace("$", ""))


def same_number(answer: float | None, gold: float | None) -> bool:
    return answer is not None and gold is not None and answer == gold


# MATH500, ARC-C, TruthfulQA, the authors' rule: the last box, Hendrycks' is_equiv ---------------

def last_box_authors(text: str) -> str | None:
    """The authors' (d1's) `remove_boxed(last_boxed_only_string(text))`, quirks included: a
    `\\boxed ` form reads up to the next `$`; otherwise the last `\\boxed`'s brace-balanced group
    without its `\\boxed{` wrapper; a `\\fbox{...}` (only when no `\\boxed` exists) keeps its wrapper;
    no box at all gives the whole text; an unclosed box gives None."""
    if "\\boxed " in text:
        return text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return text
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                box = text[start:i + 1]
                return box[len("\\boxed{"):-1] if box.startswith("\\boxed{") else box
    return None


def boxed_answer_authors(text: str) -> str | None:
    """The authors' `parse_math_answers` (MATH500, ARC-C and TruthfulQA alike): the last box; when it
    is empty or unclosed, the stripped text inside `<answer>...</answer>`. Special tokens stay in."""
    answer = last_box_authors(text)
    if not answer:
        match = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
        if match:
            answer = match.group(1).strip()
    return answer


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part[0] == "{":  # an empty part raises, as theirs does, and is_equiv falls back
            out += part
        elif len(part) < 2:
            return s
        elif part[1] != "{":
            out += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
        else:
            out += "{" + part[0] + "}" + part[1:]
    return out


def _fix_sqrt(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    parts = s.split("\\sqrt")
    return parts[0] + "".join("\\sqrt" + (p if p[0] == "{" else "{" + p[0] + "}" + p[1:]) for p in parts[1:])


def _fix_a_slash_b(s: str) -> str:
    if len(s.split("/")) != 2:
        return s
    a, b = (int(x) for x in s.split("/"))  # a non-integer part raises, as theirs does
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def strip_string(s: str) -> str:
    """Hendrycks' MATH normalisation as in the authors' code, step for step (it may raise; their
    is_equiv then compares the raw strings)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:  # units on the right
        units = s.split("\\text{ ")
        if len(units) != 2:
            raise ValueError("more than one unit")
        s = units[0]
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = _fix_fracs(_fix_sqrt(s).replace(" ", ""))
    return _fix_a_slash_b("\\frac{1}{2}" if s == "0.5" else s)


def is_equiv_authors(answer: Any, gold: Any) -> bool:
    """The authors' `is_equiv(voted, gold)`: equal after strip_string, else (if that raises) raw equality."""
    if type(answer) is float or type(gold) is float:
        try:
            return abs(float(answer) - float(gold)) < 1e-6
        except (TypeError, ValueError):
            return False
    if answer is None or gold is None:
        return answer is None and gold is None
    try:
        return strip_string(answer) == strip_string(gold)
    except Exception:  # noqa: BLE001 -- theirs catches everything
        return answer == gold


# MATH500, the robust rule: a normalised last box, equivalence by math-verify --------------------

def normalize_math(s: str) -> str:
    """A LaTeX-safe normal form for voting: `\\dfrac` and `\\frac12` as `\\frac{1}{2}`; no
    `\\left`/`\\right`, spacing commands, degrees, `\\%`, `$`, trailing units or `x =` prefix;
    `\\text{}` unwrapped."""
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s))
    s = re.sub(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\[!,;:]", "", s)
    s = re.sub(r"\^\{?\\circ\}?|\\%|%|\\\$", "", s)
    s = re.sub(r"(?<=\d)\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]+\}\s*$", "", s)
    s = re.sub(r"\\(?:text|mbox|mathrm|textbf)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*(?=\S)", "", s)
    return re.sub(r"\s+", " ", s).strip().rstrip(".").strip()


def math_answer_robust(text: str) -> str | None:
    """The last non-empty box, else the `<answer>` content; never the whole text. Normalised."""
    text = _without_special_tokens(text)
    boxes = [b for b in _boxed(text) if b.strip().strip(".")]
    if boxes:
        return normalize_math(boxes[-1]) or None
    match = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return (normalize_math(match.group(1)) or None) if match else None


SYMBOLIC_LIMIT = 100  # characters: longer answers are compared as normal forms only
BEYOND_REACH = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\{?\s*-?\d{3,}|\d{2,}\s*!|\d{31,}")  # towers, big powers, n!, huge n
BASE_SUBSCRIPT = re.compile(r"(?<![\w\\])\d[0-9A-F]*_\{?(\d{1,2})\}?")  # 2516_8, 1A_{16}: another base


@functools.lru_cache(maxsize=65536)
def math_equal(answer: str | None, gold: str | None) -> bool:
    """Equal normal forms, or equal mathematics by math-verify (`0.5` = `\\frac12`, `x+1` = `1+x`).

    Deterministic: the same two strings get the same verdict on any machine and load. math-verify's
    wall-clock timeouts (5 s by default, after which it says "not equal") are turned off; instead
    what it is given is bounded by its form: at most SYMBOLIC_LIMIT characters, and no power tower,
    three-digit exponent, factorial of a two-digit number or 31-digit number (BEYOND_REACH). Beyond
    that, only equal normal forms count. A number written in another base (`2516_8`) equals only the
    same number in the same base."""
    if answer is None or gold is None:
        return False
    a, g = (re.sub(r"_\{(\d+)\}", r"_\1", s.replace(" ", "")) for s in (answer, gold))
    if a == g:
        return True
    if BASE_SUBSCRIPT.search(a) or BASE_SUBSCRIPT.search(g):
        return False
    if any(len(s) > SYMBOLIC_LIMIT or BEYOND_REACH.search(s) for s in (a, g)):
        return False
    from math_verify import parse, verify
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" notice: bounded above
    try:
        expected, found = parse(f"${gold}$", parsing_timeout=None), parse(f"${answer}$", parsing_timeout=None)
        return bool(expected and found and verify(expected, found, timeout_seconds=None))
    except Exception:  # noqa: BLE001 -- an answer math-verify cannot read is simply not equal
        return False


# ARC-C and TruthfulQA, the robust rule: one option label ---------------------------------------

def _option(s: str) -> str | None:
    """The option label a short answer names: `B`, `(B)`, `B.`, `B) text`, `b`, `\\text{B}`, `Option B`."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s).strip().strip("$*").strip()
    s = re.sub(r"^(?:option|choice|answer)\s*:?\s*", "", s, flags=re.IGNORECASE)
    match = re.match(r"[(\[]?([A-E1-5])[)\].:]*(?:\s|$)", s) or re.match(r"[(\[]?([a-e])[)\].:]*$", s)
    return match.group(1).upper() if match else None


def choice_answer_robust(text: str) -> str | None:
    """The option in the last box, else in `<answer>`, else after a final "answer is"."""
    text = _without_special_tokens(text)
    for content in reversed(_boxed(text)):
        if (label := _option(content)) is not None:
            return label
    match = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if match and (label := _option(match.group(1))) is not None:
        return label
    phrases = re.findall(r"answer is:?\s*([^\n]{1,20})", text, re.IGNORECASE)
    return _option(phrases[-1]) if phrases else None


def same_label(answer: str | None, gold: str | None) -> bool:
    return answer is not None and answer == gold


# The four tasks, as data ------------------------------------------------------------------------

def _check_gsm8k(row: dict) -> str | None:
    if not (isinstance(row.get("question"), str) and isinstance(row.get("answer"), str)):
        return "needs string fields 'question' and 'answer' (GSM8K's row format)"
    try:
        gsm8k_gold_robust(row)
    except ValueError as error:
        return str(error)
    return None


def _check_math(row: dict) -> str | None:
    if not (isinstance(row.get("problem"), str) and isinstance(row.get("answer"), str)):
        return "needs string fields 'problem' and 'answer' (MATH-500's row format)"
    return None


def _check_arc(row: dict) -> str | None:
    choices = row.get("choices")
    if not (isinstance(row.get("question"), str) and isinstance(row.get("answerKey"), str)
            and isinstance(choices, dict) and isinstance(choices.get("text"), list)
            and isinstance(choices.get("label"), list) and len(choices["text"]) == len(choices["label"]) >= 2):
        return ("needs 'question', 'answerKey' and 'choices' {'text': [...], 'label': [...]} "
                "(ai2_arc's row format)")
    if row["answerKey"].strip() not in [str(label).strip() for label in choices["label"]]:
        return f"answerKey {row['answerKey']!r} is not one of the labels {choices['label']}"
    return None


def _check_truthfulqa(row: dict) -> str | None:
    choices, label = row.get("choices"), row.get("label")
    if not (isinstance(row.get("question"), str) and isinstance(choices, list) and 2 <= len(choices) <= 26
            and isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(choices)):
        return "needs 'question', 'choices' (a list of options) and 'label' (the right option's index)"
    return None


def _truthfulqa_order(n: int) -> list[int]:
    """The authors iterate TruthfulQA in a numpy-seed-42 permutation (it matters only for slices)."""
    import numpy
    return numpy.random.RandomState(42).choice(n, n, replace=False).tolist()


@dataclass(frozen=True)
class Task:
    """One benchmark: where its rows come from, how a row becomes a prompt and a reference, and
    each answer rule's extractor and comparator (`extract[rule](text)`, `equal[rule](answer, gold)`)."""
    name: str
    title: str
    hub: tuple[str, str | None, str]    # datasets.load_dataset(path, config, split=split)
    check: Callable[[dict], str | None]  # what is wrong with a row, or None
    system_prompt: str
    question: Callable[[dict], str]
    gold: dict[str, Callable[[dict], Any]]
    extract: dict[str, Callable[[str], Any]]
    equal: dict[str, Callable[[Any, Any], bool]]
    order: Callable[[int], list[int]] | None = None  # the authors' row order, when not the file's


TASKS: dict[str, Task] = {
    "gsm8k": Task(
        "gsm8k", "GSM8K", ("openai/gsm8k", "main", "test"), _check_gsm8k, GSM8K_PROMPT,
        question=lambda row: row["question"],
        gold={"authors": gsm8k_gold_authors, "robust": gsm8k_gold_robust},
        extract={"authors": gsm8k_answer_authors, "robust": gsm8k_answer_robust},
        equal={"authors": same_number, "robust": same_number}),
    "math500": Task(
        "math500", "MATH500", ("HuggingFaceH4/MATH-500", None, "test"), _check_math, MATH500_PROMPT,
        question=lambda row: row["problem"],
        gold={"authors": lambda row: row["answer"], "robust": lambda row: normalize_math(row["answer"])},
        extract={"authors": boxed_answer_authors, "robust": math_answer_robust},
        equal={"authors": is_equiv_authors, "robust": math_equal}),
    "arc-c": Task(
        "arc-c", "ARC-C", ("allenai/ai2_arc", "ARC-Challenge", "test"), _check_arc, ARC_C_PROMPT,
        question=lambda row: multiple_choice(row["question"], row["choices"]["label"], row["choices"]["text"]),
        gold={"authors": lambda row: row["answerKey"].strip(), "robust": lambda row: row["answerKey"].strip().upper()},
        extract={"authors": boxed_answer_authors, "robust": choice_answer_robust},
        equal={"authors": is_equiv_authors, "robust": same_label}),
    "truthfulqa": Task(
        "truthfulqa", "TruthfulQA", ("EleutherAI/truthful_qa_mc", "multiple_choice", "validation"),
        _check_truthfulqa, TRUTHFULQA_PROMPT,
        question=lambda row: multiple_choice(row["question"], [chr(65 + i) for i in range(len(row["choices"]))],
                                             row["choices"]),
        gold={"authors": lambda row: chr(65 + row["label"]), "robust": lambda row: chr(65 + row["label"])},
        extract={"authors": boxed_answer_authors, "robust": choice_answer_robust},
        equal={"authors": is_equiv_authors, "robust": same_label},
        order=_truthfulqa_order),
}


def _task(task: str | Task) -> Task:
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"task={task!r} must be one of {', '.join(TASKS)}")
    return TASKS[task]


def _rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} must be one of {', '.join(RULES)}")
    return rule


def build_prompt(tokenizer, task: str | Task, row: dict) -> list[int]:
    """The authors' prompt: the task's system text, a blank line and the question as one user turn;
    the chat template with the generation prompt; then `<reasoning>`. The template already writes the
    BOS token, so the text is tokenized without adding special tokens again."""
    task = _task(task)
    chat = [{"role": "user", "content": task.system_prompt + "\n\n" + task.question(row)}]
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) + "<reasoning>"
    return tokenizer(text, add_special_tokens=False).input_ids


def parse_gold(task: str | Task, row: dict, rule: str = "authors") -> Any:
    """A row's reference answer as `rule` compares it."""
    return _task(task).gold[_rule(rule)](row)


def extract_answer(task: str | Task, text: str, rule: str = "authors") -> Any:
    """The answer a decoded text gives under `rule` ("authors": their parser, quirks included;
    "robust": this project's reading). None when nothing can be read."""
    return _task(task).extract[_rule(rule)](text)


def is_correct(task: str | Task, answer: Any, gold: Any, rule: str = "authors") -> bool:
    """Whether an extracted (or voted) answer matches the reference under `rule`."""
    return bool(_task(task).equal[_rule(rule)](answer, gold))


# Data --------------------------------------------------------------------------------------------

def load_rows(task: Task, path: str | None) -> tuple[list[dict], dict]:
    """The task's rows in the dataset's own format, and the data's identity (source and fingerprint):
    a local JSONL or parquet file, else the split through the `datasets` library."""
    if path is None:
        numbered, source, where = _hub_rows(task)
    else:
        file = Path(path).expanduser()
        if file.is_dir():
            raise UsageError(f"--data {path}: is a folder; pass the task's JSONL or parquet file")
        if not file.is_file():
            raise UsageError(f"--data {path}: no such file")
        data = file.read_bytes()
        source = {"source": str(file.resolve()), "fingerprint": "sha256:" + hashlib.sha256(data).hexdigest()}
        if file.suffix == ".parquet":
            try:
                import pyarrow.parquet
                rows = pyarrow.parquet.read_table(file).to_pylist()
            except Exception as error:  # noqa: BLE001 -- a damaged or foreign file
                raise UsageError(f"--data {path}: not a readable parquet file ({error})") from None
            numbered, where = list(enumerate(rows, start=1)), "row"
        else:
            numbered, where = _jsonl_rows(path, data), "line"
    for number, row in numbered:
        problem = task.check(row) if isinstance(row, dict) else "is not a JSON object (JSONL: one object per line)"
        if problem:
            raise UsageError(f"--data {path or source['source']}, {where} {number}: {problem}")
    rows = [row for _, row in numbered]
    if not rows:
        raise UsageError(f"--data {path}: holds no rows")
    return rows, {**source, "rows": len(rows)}


def _hub_rows(task: Task) -> tuple[list[tuple[int, dict]], dict, str]:
    name, config, split = task.hub
    try:
        from datasets import load_dataset
        dataset = load_dataset(name, config, split=split)
    except Exception as error:  # noqa: BLE001 -- no datasets, no network, no cache: say how to go on
        raise UsageError(
            f"could not load {name} ({config or 'default'}, {split}) through `datasets` "
            f"({type(error).__name__}: {str(error)[:200]}). Pass a local copy with --data FILE: a JSONL "
            "or parquet file of the split's rows, e.g. made where the hub is reachable with "
            f"load_dataset({name!r}, {config!r}, split={split!r}).to_json('{task.name}.jsonl')") from None
    source = {"source": f"hub:{name}/{config or 'default'}/{split}", "fingerprint": dataset._fingerprint}
    return list(enumerate((dict(r) for r in dataset), start=1)), source, "row"


def _jsonl_rows(path: str, data: bytes) -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line of a JSONL file."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"--data {path}: not a UTF-8 text file (JSONL) or a .parquet file") from None
    if data.lstrip().startswith(b"["):
        raise UsageError(f"--data {path}: holds a JSON array; --data takes JSONL, one JSON object per line "
                         "(e.g. `jq -c '.[]' FILE > rows.jsonl`), or a parquet file")
    numbered = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise UsageError(f"--data {path}, line {number}: not valid JSON ({error.msg}); --data takes "
                                 "JSONL, one JSON object per line") from None
    return numbered


# 2. Decoding -------------------------------------------------------------------------------------

def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Left-padded (B, L) ids, and an attention mask only when some prompt is actually padded."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    if all(len(p) == width for p in prompts):
        return ids, None
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def candidate_plan(args) -> list[tuple[str, int, Schedule]]:
    """Every candidate of a question as (method, sample, schedule): HEX's experts (low-confidence
    remasking at --temperature), then each one-block baseline (its remasking rule at temperature 0)."""
    plan = []
    if "hex" in args.methods:
        plan += [("hex", s, Schedule(b, "low_confidence", args.temperature))
                 for s in range(args.samples_per_block) for b in args.block_lengths]
    return plan + [(m, 0, Schedule(args.gen_length, m)) for m in args.methods if m in BASELINES]


def end_of_text_ids(tokenizer) -> list[int]:
    """The tokens that end or pad an answer: the tokenizer's EOS and pad tokens and whichever of the
    end-of-text/end-of-turn tokens it has (LLaDA: <|endoftext|>, <|eot_id|>)."""
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id} | {vocab.get(t) for t in END_TOKENS}
    return sorted(i for i in ids if i is not None)


def encode_commit_order(commit_steps: torch.Tensor, steps: int) -> str:
    """The step that committed each answer position, as fixed-width hex digits (2 per position up to
    256 steps): 256 positions take 512 characters. `commit_order` reads it back."""
    width = 2 if steps <= 256 else 4
    return "".join(f"{s:0{width}x}" for s in commit_steps.tolist())


def commit_order(candidate: dict) -> list[int] | None:
    """A stored candidate's commit step per answer position (None for records made before it was kept)."""
    code = candidate.get("commit_order")
    if not code:
        return None
    width = len(code) // len(candidate["end_of_text"])
    return [int(code[i:i + width], 16) for i in range(0, len(code), width)]


def decode_batch(model, tokenizer, task: Task, batch: list[dict], args, mask_id: int, device) -> list[dict]:
    """Decode every candidate of every method for a batch of questions as one lockstep batch (`steps`
    forward calls in all); one record per question, both rules scored."""
    prompts = [build_prompt(tokenizer, task, p["row"]) for p in batch]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, attention = left_pad(prompts, pad_id if pad_id is not None else 0, device)
    # each method draws from its own stream, seeded by the batch's first question, so that adding
    # or dropping a method changes no other method's samples
    streams = {m: torch.Generator(device).manual_seed(args.seed + 10**6 * METHODS.index(m) + batch[0]["id"])
               for m in args.methods}
    plan = candidate_plan(args)
    start = time.perf_counter()
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))  # counts forward calls
    try:
        out = decode(model, ids, attention, schedules=[s for _, _, s in plan], gen_length=args.gen_length,
                     steps=args.steps, mask_id=mask_id, generator=[streams[m] for m, _, _ in plan])
    finally:
        hook.remove()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / len(batch)
    answers = out.sequences[:, :, -args.gen_length:]  # (B, K, G)
    is_end = torch.isin(answers, torch.tensor(end_of_text_ids(tokenizer), device=answers.device))
    records = []
    for q, problem in enumerate(batch):
        rows = []
        for k, (method, sample, schedule) in enumerate(plan):
            text = tokenizer.decode(answers[q, k].tolist(), skip_special_tokens=False)  # as the authors decode
            rows.append(dict(method=method, block_length=schedule.block_length, sample=sample, text=text,
                             answers={r: task.extract[r](text) for r in RULES}, score=float(out.scores[q, k]),
                             eos_fraction=round(is_end[q, k].float().mean().item(), 4),
                             end_of_text="".join("_" if e else "." for e in is_end[q, k].tolist()),
                             commit_order=encode_commit_order(out.commit_steps[q, k], args.steps)))
        record = dict(id=problem["id"], question=task.question(problem["row"]),
                      gold={r: task.gold[r](problem["row"]) for r in RULES}, candidates=rows,
                      forward_calls=len(calls) / len(batch), seconds=round(seconds, 3))
        records.append(score_record(task, record, args.tie_break))
    return records


# 3. Scoring and the summary ----------------------------------------------------------------------

def votes(rows: list[dict], rule: str, tie_break: str, samples: int | None = None) -> dict:
    """Each method's answer under `rule`: HEX votes over its candidates (the first `samples` samples
    of each block length when given); a baseline's answer is its single candidate's."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method and (samples is None or r["sample"] < samples)]
        if method == "hex":
            answer, tie = majority_vote([r["answers"][rule] for r in mine], [r["score"] for r in mine],
                                        tie_break)
        else:
            answer, tie = mine[0]["answers"][rule], False
        out[method] = {"answer": answer, "tie": tie}
    return out


def score_record(task: Task, record: dict, tie_break: str) -> dict:
    """Add each rule's votes and correctness to a record (recomputed from its candidates alone)."""
    record["votes"] = {r: votes(record["candidates"], r, tie_break) for r in RULES}
    record["correct"] = {r: {m: is_correct(task, v["answer"], record["gold"][r], r)
                             for m, v in record["votes"][r].items()} for r in RULES}
    return record


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion, clamped to [0, 1]."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n)))


def collapsed(candidate: dict) -> bool:
    """The paper's [AfterEoT] collapse: end-of-text committed so early that the reasoning is cut off.
    A candidate collapses when the robust rule reads no answer from it and over half of its answer
    region is end-of-text tokens; a complete answer followed by padding is not a collapse."""
    return candidate["answers"]["robust"] is None and candidate["eos_fraction"] > COLLAPSE_THRESHOLD


def eot_first_share(candidate: dict) -> float | None:
    """The mechanism of the paper's Fig. 2: the share of end-of-text tokens among the first quarter of
    the answer's tokens in commit order (ties by position). None for records without a commit order."""
    steps = commit_order(candidate)
    if steps is None:
        return None
    first = sorted(range(len(steps)), key=lambda i: (steps[i], i))[:max(1, len(steps) // 4)]
    return sum(candidate["end_of_text"][i] == "_" for i in first) / len(first)


def eot_figures(candidates: list[dict]) -> dict:
    """Collapse rate and mean EoT-first share of some candidates."""
    shares = [s for c in candidates if (s := eot_first_share(c)) is not None]
    return dict(collapse_rate=sum(map(collapsed, candidates)) / len(candidates),
                eot_first_share=sum(shares) / len(shares) if shares else None)


def summarize(records: list[dict], settings: dict, rule: str) -> dict:
    """Every reported metric under `rule`, with the other rule's accuracy beside, from the records alone."""
    task, other, n = TASKS[settings["task"]], RULES[1 - RULES.index(rule)], len(records)
    for record in records:
        score_record(task, record, settings["tie_break"])
    methods = {}
    for method in dict.fromkeys(m for r in records for m in r["correct"][rule]):
        correct = sum(r["correct"][rule][method] for r in records)
        rows = [c for r in records for c in r["candidates"] if c["method"] == method]
        methods[method] = dict(paper_name=PAPER_NAMES[method], accuracy=correct / n, ci95=wilson(correct, n),
                               correct=correct,
                               other_rule_accuracy=sum(r["correct"][other][method] for r in records) / n,
                               tie_rate=sum(r["votes"][rule][method]["tie"] for r in records) / n,
                               **eot_figures(rows))
    block_lengths = {}
    for b in sorted({c["block_length"] for r in records for c in r["candidates"] if c["method"] == "hex"}):
        rows = [(c, r["gold"]) for r in records for c in r["candidates"]
                if c["method"] == "hex" and c["block_length"] == b]
        hits = {x: sum(is_correct(task, c["answers"][x], gold[x], x) for c, gold in rows) for x in RULES}
        block_lengths[b] = dict(accuracy=hits[rule] / len(rows), ci95=wilson(hits[rule], len(rows)),
                                other_rule_accuracy=hits[other] / len(rows), candidates=len(rows),
                                **eot_figures([c for c, _ in rows]))
    scaling = []
    if "hex" in settings["methods"] and settings["samples_per_block"] > 1:
        for s in range(1, settings["samples_per_block"] + 1):
            voted = [votes(r["candidates"], rule, settings["tie_break"], samples=s)["hex"] for r in records]
            hits = sum(is_correct(task, v["answer"], r["gold"][rule], rule) for v, r in zip(voted, records))
            scaling.append(dict(votes=s * len(settings["block_lengths"]), accuracy=hits / n,
                                tie_rate=sum(v["tie"] for v in voted) / n))
    return dict(task=settings["task"], questions=n, answer_rule=rule, other_rule=other, methods=methods,
                block_lengths=block_lengths, hex_vs_votes=scaling,
                forward_calls_per_question=sum(r["forward_calls"] for r in records) / n,
                seconds_per_question=sum(r["seconds"] for r in records) / n, settings=settings)


def protocol(settings: dict) -> str:
    """The run's protocol in one line, as the paper states it."""
    k, steps = settings["samples_per_block"], f"gen_length {settings['gen_length']}, steps {settings['steps']}"
    if "hex" not in settings["methods"]:
        return f"{steps}, one-block baselines only"
    ties = {"first": "ties to the answer seen first (the authors' rule)",
            "likelihood": "ties to the higher likelihood score"}[settings["tie_break"]]
    return (f"{steps}, HEX block lengths {' '.join(map(str, settings['block_lengths']))}, temperature "
            f"{settings['temperature']:g}, {k} sample{'s' * (k > 1)} per block length "
            f"({k * len(settings['block_lengths'])} votes), {ties}")


def summary_table(summary: dict) -> str:
    """The summary as a plain-text table, in the paper's words."""
    pct = lambda x: "      -" if x is None else f"{100 * x:6.2f}%"
    rule, other, settings = summary["answer_rule"], summary["other_rule"], summary["settings"]
    lines = [f"{TASKS[summary['task']].title}, {summary['questions']} questions; {protocol(settings)}",
             f"answers read by the {rule} rule ({other} rule beside)",
             f"{'method':<27}{'accuracy':>9}  {'95% interval':<18}{other:>9}{'tie rate':>10}{'collapse':>10}"
             f"{'EoT-first':>10}"]
    for m, v in summary["methods"].items():
        lo, hi = v["ci95"]
        lines.append(f"{v['paper_name'] + ' (' + m + ')':<27}{pct(v['accuracy']):>9}  [{pct(lo)}, {pct(hi)}]"
                     f"{pct(v['other_rule_accuracy']):>9}{pct(v['tie_rate']) if m == 'hex' else '':>10}"
                     f"{pct(v['collapse_rate']):>10}{pct(v['eot_first_share']):>10}")
    for b, v in summary["block_lengths"].items():
        lo, hi = v["ci95"]
        lines.append(f"{'  HEX expert, block ' + str(b):<27}{pct(v['accuracy']):>9}  [{pct(lo)}, {pct(hi)}]"
                     f"{pct(v['other_rule_accuracy']):>9}{'':>10}{pct(v['collapse_rate']):>10}"
                     f"{pct(v['eot_first_share']):>10}")
    for v in summary["hex_vs_votes"]:
        lines.append(f"HEX with {v['votes']:>3} votes: accuracy {pct(v['accuracy'])}, tie rate {pct(v['tie_rate'])}")
    lines.append("collapse: the share of candidates from which no answer can be read (robust rule) and whose "
                 f"answer is over {COLLAPSE_THRESHOLD:.0%} end-of-text\n(the paper's [AfterEoT] collapse); "
                 "EoT-first: the share of end-of-text among the first quarter of committed answer tokens, mean "
                 "over candidates (Fig. 2)")
    for env in settings.get("environments", []):
        lines.append(f"run on {env['device_name']} ({settings['dtype']}, torch {env['torch']}, "
                     f"transformers {env['transformers']}, {env['world_size']} process(es))")
    for r in settings.get("rescored", []):
        lines.append(f"rescored without the model on {r['at']} (answers re-read by the rules of that time)")
    lines.append(f"{summary['forward_calls_per_question']:.1f} forward calls and "
                 f"{summary['seconds_per_question']:.2f} s per question")
    return "\n".join(lines)


# The paper's figures, drawn from the records alone ----------------------------------------------

PAPER_ACCURACY = {  # LLaDA-8B-Instruct, gen_length 256, steps 128 (the paper's table; HEX: 5 votes at
    # temperature 0 on GSM8K, the released protocol; elsewhere the best reported)
    "gsm8k": dict(hex=82.18, topk_margin=24.72, low_confidence=22.52, random=50.87),
    "math500": dict(hex=40.00, topk_margin=16.40, low_confidence=16.60, random=16.80),
    "arc-c": dict(hex=87.80, topk_margin=54.18, low_confidence=47.87, random=70.05),
    "truthfulqa": dict(hex=57.46, topk_margin=28.36, low_confidence=29.82, random=42.40),
}
PAPER_GSM8K_VOTES = [(5, 82.18, 4.1), (10, 85.75, 4.3), (15, 87.19, 2.4), (20, 87.79, 2.5), (25, 88.10, 1.35),
                     (30, 88.10, 1.05)]  # (votes, accuracy %, tie rate %), read off the paper's plot


def paper_protocol(settings: dict) -> bool:
    """Whether a run follows the protocol behind the paper's figures (gen 256, steps 128, blocks 8..128)."""
    return (settings["gen_length"], settings["steps"], settings["block_lengths"]) == (256, 128, [8, 16, 32, 64, 128])


def write_figures(summary: dict, records: list[dict], path: Path) -> None:
    """One PNG: accuracy per method and per block length with 95% intervals (the paper's bar chart);
    HEX accuracy and tie rate against the number of votes when there are several samples (its scaling
    plot); and which step committed each answer position of one question, per method (its Fig. 2)."""
    from matplotlib.figure import Figure  # no pyplot: no window, no global state
    settings, scaling = summary["settings"], summary["hex_vs_votes"]
    title = f"{TASKS[summary['task']].title}, {summary['questions']} questions, {summary['answer_rule']} rule"
    fig = Figure(figsize=(14, 9), layout="constrained")
    grid = fig.add_gridspec(2, 2 if scaling else 1)
    fig.suptitle(f"{title}\n{protocol(settings)}", fontsize=10)
    _accuracy_bars(fig.add_subplot(grid[0, 0]), summary, paper_protocol(settings))
    if scaling:
        _votes_plot(fig.add_subplot(grid[0, 1]), scaling, summary["task"] == "gsm8k" and paper_protocol(settings))
    _commit_map(fig, fig.add_subplot(grid[1, :]), records, settings["steps"])
    fig.savefig(path, dpi=100, format="png")


def _accuracy_bars(ax, summary: dict, paper: bool) -> None:
    bars = [(f"{v['paper_name']}", v["accuracy"], v["ci95"], "tab:blue" if m == "hex" else "tab:gray", m)
            for m, v in summary["methods"].items()]
    bars += [(f"block {b}", v["accuracy"], v["ci95"], "tab:cyan", None) for b, v in summary["block_lengths"].items()]
    x = range(len(bars))
    heights = [100 * a for _, a, _, _, _ in bars]
    errors = [[100 * (a - lo) for _, a, (lo, _), _, _ in bars], [100 * (hi - a) for _, a, (_, hi), _, _ in bars]]
    ax.bar(x, heights, yerr=errors, color=[c for *_, c, _ in bars], capsize=4)
    for i, h in zip(x, heights):
        ax.annotate(f"{h:.1f}%", (i, h), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    if paper:
        reported = [(i, PAPER_ACCURACY[summary["task"]][m]) for i, (*_, m) in zip(x, bars) if m]
        label = "the paper's figure" + ("" if summary["task"] == "gsm8k" else " (HEX: its best, another protocol)")
        ax.scatter(*zip(*reported), marker="_", s=600, color="tab:red", zorder=3, label=label)
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(list(x), [label for label, *_ in bars], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%), 95% interval")
    ax.set_ylim(0, 105)
    ax.set_title("Methods (HEX, one-block baselines) and each HEX expert alone", fontsize=10)


def _votes_plot(ax, scaling: list[dict], paper: bool) -> None:
    votes = [v["votes"] for v in scaling]
    ax.plot(votes, [100 * v["accuracy"] for v in scaling], "o-", color="tab:blue", label="HEX accuracy, this run")
    ax.plot(votes, [100 * v["tie_rate"] for v in scaling], "s--", color="tab:orange", label="tie rate, this run")
    if paper:
        n, acc, tie = zip(*PAPER_GSM8K_VOTES)
        ax.plot(n, acc, "o:", color="tab:blue", alpha=0.4, label="HEX accuracy, paper")
        ax.plot(n, tie, "s:", color="tab:orange", alpha=0.4, label="tie rate, paper")
    ax.set_xlabel("votes (samples per block length x block lengths)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("HEX against the number of votes", fontsize=10)


def _commit_map(fig, ax, records: list[dict], steps: int) -> None:
    """Rows: one candidate per method (HEX: sample 0 of each block length) of the first question with a
    collapsed candidate, else the first question; colour: the step that committed each position."""
    drawable = [r for r in records if all(commit_order(c) for c in r["candidates"])]
    if not drawable:
        ax.set_axis_off()
        ax.set_title("no commit order stored in these records", fontsize=10)
        return
    record = next((r for r in drawable if any(map(collapsed, r["candidates"]))), drawable[0])
    rows = [c for c in record["candidates"] if c["sample"] == 0]
    labels = [(f"HEX block {c['block_length']}" if c["method"] == "hex" else PAPER_NAMES[c["method"]]) for c in rows]
    image = ax.imshow([commit_order(c) for c in rows], aspect="auto", cmap="viridis", vmin=0, vmax=steps - 1,
                      interpolation="nearest")
    ends = [(i, r) for r, c in enumerate(rows) for i, e in enumerate(c["end_of_text"]) if e == "_"]
    if ends:
        ax.scatter(*zip(*ends), marker="x", s=12, linewidths=1, color="red")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlabel("answer position")
    ax.set_title(f"Commit order, question {record['id']}: the step that committed each answer position "
                 "(red x: an end-of-text token)", fontsize=10)
    fig.colorbar(image, ax=ax, label="step", fraction=0.03)


# 4. The model, files, settings and resuming ------------------------------------------------------

def _transformers_version() -> tuple[int, int]:
    import transformers
    return tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])


# The model families. hex.py needs a mask predictor: model(x[, attention_mask=(B, T)]).logits (B, T, V),
# position i's logits predicting token i. Each family's own model file (trust_remote_code) is fitted
# to the installed transformers at load time, and wrapped where its conventions differ.

def fit_llada_code(model_class: type, config) -> type:
    """LLaDA's own model file predates transformers 5. Under 5.x, return a subclass with the three
    fixes it needs, each only where the class lacks it; under 4.x, the class."""
    if _transformers_version() < (5, 0):
        return model_class
    if not hasattr(config, "use_cache"):
        config.use_cache = False  # 5.x no longer keeps use_cache on the config; LLaDA's forward reads it
    def __init__(self, *args, **kwargs):
        model_class.__init__(self, *args, **kwargs)
        if not hasattr(self, "all_tied_weights_keys"):  # 5.x needs post_init(); LLaDA's never calls it
            self.post_init()
    namespace = {"__init__": __init__}
    parameters = inspect.signature(model_class.tie_weights).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        def tie_weights(self, *args, **kwargs):  # 5.x passes missing_keys= and recompute_mapping=
            return model_class.tie_weights(self)
        namespace["tie_weights"] = tie_weights
    return type(model_class.__name__, (model_class,), namespace)


def _default_rope(config, device=None, seq_len=None, **kwargs) -> tuple[torch.Tensor, float]:
    """The plain rotary inverse frequencies 1 / theta^(2i / head_dim) and no scaling: what
    transformers 4.x registered as ROPE_INIT_FUNCTIONS["default"]."""
    dim = int(config.hidden_size // config.num_attention_heads * getattr(config, "partial_rotary_factor", 1.0))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    return 1.0 / config.rope_theta ** exponents, 1.0


def fit_dream_code(model_class: type, config) -> type:
    """Dream's own model file, fitted where it fails (each fix only where its cause is present):
    - its `from_pretrained` override reloads the generation config and returns the model alone, so
      `output_loading_info` (the check that every weight loaded) is lost, on 4.x and 5.x alike: the
      fitted class uses PreTrainedModel's own `from_pretrained`;
    - its rotary embedding asks ROPE_INIT_FUNCTIONS for "default", which 5.x no longer has
      (`KeyError: 'default'`): Dream's module gets the plain frequencies under that name.
    The rotary buffer that 5.x leaves unset is refilled after loading (`refill_rotary`)."""
    from transformers import PreTrainedModel
    module = sys.modules[model_class.__module__]
    rope = getattr(module, "ROPE_INIT_FUNCTIONS", None)
    if rope is not None and "default" not in rope:
        module.ROPE_INIT_FUNCTIONS = {**rope, "default": _default_rope}  # Dream's module only
    if model_class.from_pretrained.__func__ is PreTrainedModel.from_pretrained.__func__:
        return model_class  # no override
    return type(model_class.__name__, (model_class,),
                {"from_pretrained": classmethod(PreTrainedModel.from_pretrained.__func__)})


def refill_rotary(model: nn.Module) -> nn.Module:
    """Under 5.x, models are built on the meta device and a rotary embedding's non-persistent
    `inv_freq` buffer, filled by the module's own __init__, comes back unset: no error, wrong logits.
    Recompute it with the module's own rope function (under 4.x it was right already)."""
    if _transformers_version() >= (5, 0):
        for module in model.modules():
            if isinstance(getattr(module, "inv_freq", None), torch.Tensor) and hasattr(module, "rope_init_fn"):
                inv_freq, module.attention_scaling = module.rope_init_fn(module.config, module.inv_freq.device,
                                                                         **getattr(module, "rope_kwargs", {}))
                module.inv_freq = inv_freq.to(module.inv_freq.device)
                module.original_inv_freq = module.inv_freq
    return model


class DreamMaskPredictor(nn.Module):
    """A Dream-family model as the mask predictor hex.py expects. Dream is adapted from an
    autoregressive model (Qwen2.5): its logits at position i predict token i + 1, so they are shifted
    back one place, as Dream's own sampler does (position 0 keeps its own). A left-padded batch gets
    Dream's 4-D boolean attention mask (B, 1, T, T) and position ids counting real tokens only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if attention_mask is None:
            logits = self.model(x).logits
        else:
            real = attention_mask.bool()  # (B, T)
            positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(~real, 1)
            pairs = real[:, None, :, None] & real[:, None, None, :]  # (B, 1, T, T): both tokens real
            logits = self.model(x, attention_mask=pairs, position_ids=positions).logits
        return MaskPredictorOutput(torch.cat([logits[:, :1], logits[:, :-1]], dim=1))


@dataclass(frozen=True)
class Family:
    name: str
    fit: Callable[[type, Any], type]             # the remote model class, fitted to this transformers
    wrap: Callable[[nn.Module], nn.Module]       # the loaded model, as hex.py's mask predictor
    checkpoints: str                             # for messages and README


FAMILIES = {  # by the config's model_type (lower case)
    "llada": Family("LLaDA", fit_llada_code, lambda model: model, "LLaDA-8B-Instruct, LLaDA-1.5"),
    "dream": Family("Dream", fit_dream_code, lambda model: DreamMaskPredictor(refill_rotary(model)),
                    "Dream-v0-Instruct-7B"),
}


def model_family(config, name: str) -> Family:
    """The family of a checkpoint, from its config's model_type (never from its name)."""
    kind = str(getattr(config, "model_type", "") or "")
    if kind.lower() not in FAMILIES:
        known = ", ".join(f"{f.name} ({key!r}: {f.checkpoints})" for key, f in FAMILIES.items())
        raise UsageError(f"--model {name}: model_type {kind!r} is not a supported masked diffusion family; "
                         f"supported: {known}")
    return FAMILIES[kind.lower()]


def load_tokenizer(name: str):
    """The checkpoint's tokenizer and config (seconds, not minutes: checked before the weights load)."""
    from transformers import AutoConfig, AutoTokenizer
    path = Path(name).expanduser()
    if path.is_file():
        raise UsageError(f"--model {name}: is a file; pass the checkpoint's folder (config.json, tokenizer and "
                         "weights) or a hub id")
    if name.startswith((".", "/", "~")) and not path.is_dir():
        raise UsageError(f"--model {name}: no such folder")
    try:
        return (AutoTokenizer.from_pretrained(name, trust_remote_code=True),
                AutoConfig.from_pretrained(name, trust_remote_code=True))
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {name}: cannot load its tokenizer or config ({str(error)[:300]})") from None


def load_model(name: str, config, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The checkpoint as hex.py's mask predictor: its weights through its own code, fitted to the
    installed transformers and wrapped as its family needs, with every weight accounted for."""
    from transformers import AutoModel
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    family = model_family(config, name)
    auto_map = getattr(config, "auto_map", None) or {}
    try:
        if "AutoModel" in auto_map:
            model_class = family.fit(get_class_from_dynamic_module(auto_map["AutoModel"], name), config)
        else:
            model_class = AutoModel
        dtype_key = "dtype" if _transformers_version() >= (4, 56) else "torch_dtype"
        model, info = model_class.from_pretrained(name, config=config, trust_remote_code=True,
                                                  output_loading_info=True, **{dtype_key: dtype})
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {name}: cannot load its weights ({str(error)[:300]})") from None
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise UsageError(f"--model {name}: the checkpoint has no weights for {len(missing)} parameter(s) "
                         f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); they would be random")
    return family.wrap(model).to(device).eval()


def find_mask_id(tokenizer, config) -> int:
    """The [MASK] id: the tokenizer's mask token, LLaDA's `<|mdm_mask|>` or Dream's `<|mask|>`, or the
    config's `mask_token_id`."""
    if tokenizer.mask_token_id is not None:
        return tokenizer.mask_token_id
    for token in ("<|mdm_mask|>", "<|mask|>"):
        if token in tokenizer.get_vocab():
            return tokenizer.convert_tokens_to_ids(token)
    if getattr(config, "mask_token_id", None) is not None:
        return config.mask_token_id
    raise UsageError("cannot tell the mask token id from the tokenizer or config: pass --mask-id")


class ResultsLock:
    """One writer per results file: an exclusive flock on `<output>.lock`, released by the OS if the
    holder dies. The lock file is removed on release (checked by inode, so a removal never lets two in)."""

    def __init__(self, output: Path):
        self.path = output.with_name(output.name + ".lock")
        while True:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self.fd)
                raise UsageError(f"{output} is being written by another run (it holds {self.path}); "
                                 "wait for it, or use another --output") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    return
            except FileNotFoundError:
                pass
            os.close(self.fd)  # the holder before us removed the file as we opened it: try again

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


def read_records(paths: list[Path]) -> dict[int, dict]:
    """Finished questions by id. A torn last line (an interrupted write) is not a finished question."""
    done = {}
    for path in paths:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        complete = text[:text.rfind("\n") + 1]
        for number, line in enumerate(complete.splitlines(), start=1):
            try:
                record = json.loads(line)
                done[record["id"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UsageError(f"{path}, line {number}: not a record of this script; fix or remove it, "
                                 "or use --no-resume") from None
    return done


def drop_torn_tail(path: Path) -> None:
    """Cut an interrupted last line off a JSONL file before appending to it."""
    if path.is_file() and (data := path.read_bytes()) and not data.endswith(b"\n"):
        path.write_bytes(data[:data.rfind(b"\n") + 1])


def part_files(output: Path) -> list[Path]:
    """The torchrun ranks' files of this output, exactly `<stem>.part<rank>.jsonl`."""
    pattern = re.compile(re.escape(output.stem) + r"\.part\d+\.jsonl")
    return sorted(p for p in output.parent.glob(output.stem + ".part*.jsonl") if pattern.fullmatch(p.name))


def write_atomically(path: Path, content: str | Callable[[Path], None]) -> None:
    """Write path through a temporary file beside it, so no reader sees half of it: the text, or
    what a function writes to the temporary path it is given (a figure)."""
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    if isinstance(content, str):
        temporary.write_text(content, encoding="utf-8")
    else:
        content(temporary)
    temporary.replace(path)


COMPARED = ("task", "data", "model", "mask_id", "gen_length", "steps", "methods", "block_lengths",
            "samples_per_block", "temperature", "tie_break", "seed", "dtype", "batch_size")


def settings_conflict(old: dict, new: dict, output: Path) -> str | None:
    """Why records made with `old` settings cannot be mixed with a run under `new` ones, or None."""
    changed = []
    for key in COMPARED:
        before, now = old.get(key), new.get(key)
        if key == "data" and before and now:  # the same content under another path is the same data
            before, now = ({k: d.get(k) for k in ("fingerprint", "rows")} for d in (before, now))
        if key == "mask_id" and now is None:
            continue
        if before != now:
            describe = lambda d: (f"{d.get('source')} ({d.get('fingerprint')})" if key == "data" and d else d)
            changed.append(f"{key}: {describe(old.get(key))} there, {describe(new.get(key))} now")
    if not changed:
        return None
    return (f"{output} holds results made with other settings:\n  " + "\n  ".join(changed) +
            "\nthe results file is left untouched; use another --output, or --no-resume to start it over")


class RunFiles:
    """The files of one run, all named after --output: the records (JSONL), the settings, the summary,
    the figure, the lock and torchrun's part files. `open` makes the folders and takes the lock;
    `close` releases it and removes the folders a failed start made, so a failed start leaves nothing."""

    def __init__(self, output: Path):
        self.output, self.settings = output, output.with_suffix(".config.json")
        self.summary, self.figure = output.with_suffix(".summary.json"), output.with_suffix(".png")
        self.made: list[Path] = []       # folders this run created, outermost first
        self.lock: ResultsLock | None = None
        self.read_only: str | None = None  # why the folder cannot be written, if it cannot

    def open(self) -> None:
        """Create the missing folders and take the one-writer lock; a folder that cannot be written is
        noted (a finished run can still be summarised from a read-only archive)."""
        self.made = [p for p in self.output.parents if not p.exists()][::-1]
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self.close()
            raise UsageError(f"--output {self.output}: cannot create the folder {self.output.parent} "
                             f"({error.strerror})") from None
        try:
            self.lock = ResultsLock(self.output)
        except OSError as error:  # read-only folder or file system
            self.read_only = f"{self.output.parent} cannot be written ({error.strerror})"

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        for folder in reversed(self.made):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def records(self) -> dict[int, dict]:
        return read_records([self.output, *part_files(self.output)])

    def stored_settings(self) -> dict:
        return json.loads(self.settings.read_text(encoding="utf-8"))

    def finished(self, settings: dict, requested: set[int], resume: bool) -> dict | None:
        """The stored settings when every question asked for is already done, else None; results made
        with other settings, or that cannot be checked, are refused."""
        if resume and self.settings.is_file():
            old = self.stored_settings()
            if conflict := settings_conflict(old, settings, self.output):
                raise UsageError(conflict)
            if requested <= self.records().keys():
                return old
        elif resume and (self.output.exists() or part_files(self.output)):
            raise UsageError(f"{self.output} exists but has no settings file ({self.settings.name}), so its "
                             "records cannot be checked; use another --output, or --no-resume to start over")
        if self.read_only:
            raise UsageError(f"--output {self.output}: {self.read_only}; use another --output")
        return None

    def start(self, settings: dict, resume: bool, environment: dict) -> None:
        """Write the settings (once every check has passed and the model has loaded); --no-resume
        deletes the old files only now."""
        if not resume:
            for path in (self.output, self.settings, self.summary, self.figure, *part_files(self.output)):
                path.unlink(missing_ok=True)
        old = self.stored_settings() if self.settings.is_file() else {}
        if conflict := settings_conflict(old, settings, self.output) if old else None:
            raise UsageError(conflict)
        environments = old.get("environments", [])
        write_atomically(self.settings, json.dumps(
            {**settings, "environments": environments + [environment] * (environment not in environments),
             **{k: old[k] for k in ("rescored",) if k in old}}, indent=1))

    def write_records(self, records: dict[int, dict]) -> None:
        """Replace the JSONL by these records, in id order, and drop torchrun's part files."""
        write_atomically(self.output, "".join(json.dumps(records[k]) + "\n" for k in sorted(records)))
        for path in part_files(self.output):
            path.unlink()

    def merge_parts(self) -> dict[int, dict]:
        """Every finished record, torchrun's part files merged into the one JSONL (where it can be written)."""
        records = self.records()
        if part_files(self.output) and not self.read_only:
            self.write_records(records)
        return records


# 5. The command line -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(TASKS), default="gsm8k")
    parser.add_argument("--model", default="GSAI-ML/LLaDA-8B-Instruct", help="hub id or local directory")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: this rank's GPU, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--data", default=None, help="local JSONL or parquet file of the task's rows")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many questions")
    parser.add_argument("--offset", type=int, default=0, help="skip this many questions first")
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="default: gen_length / 2")
    parser.add_argument("--mask-id", type=int, default=None, help="default: from the tokenizer or config")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD",
                        help=f"any of {', '.join(METHODS)} (default: all)")
    parser.add_argument("--block-lengths", type=int, nargs="+", default=None,
                        help="default: gen_length/32 x (1 2 4 8 16), i.e. 8 16 32 64 128 at 256")
    parser.add_argument("--samples-per-block", type=int, default=1, help="HEX samples per block length "
                        "(needs --temperature > 0: at 0 every sample is the same decode)")
    parser.add_argument("--temperature", type=float, default=0.0, help="HEX sampling temperature")
    parser.add_argument("--answer-rule", choices=RULES, default="authors",
                        help="the rule the summary leads with; both are stored and shown")
    parser.add_argument("--tie-break", choices=["first", "likelihood"], default="first")
    parser.add_argument("--batch-size", type=int, default=1, help="questions per forward call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSONL path; default under results/")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="skip questions already in --output (default); --no-resume starts over")
    parser.add_argument("--rescore", action="store_true",
                        help="re-read the stored texts of --output by the current answer rules and rewrite its "
                             "votes, summary and figure, without the model")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The command line with every setting checked and the defaults filled in; a mistake is a
    UsageError that names the flag (argparse's own errors exit at once with status 2)."""
    args = build_parser().parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise UsageError(f"--methods: unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    args.methods = [m for m in METHODS if m in args.methods]
    for name in ("limit", "batch_size", "samples_per_block", "gen_length", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.offset < 0 or (args.mask_id is not None and args.mask_id < 0):
        raise UsageError(f"--offset and --mask-id must be >= 0, got {args.offset} and {args.mask_id}")
    if not args.temperature >= 0 or not math.isfinite(args.temperature):
        raise UsageError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if "hex" in args.methods and args.samples_per_block > 1 and args.temperature == 0:
        raise UsageError(f"--samples-per-block {args.samples_per_block} at --temperature 0: temperature 0 is "
                         "deterministic, so every sample of a block length would be the same decode at "
                         f"{args.samples_per_block}x the cost; pass --temperature > 0 to sample, or drop it")
    if args.steps is None:
        if args.gen_length % 2:
            raise UsageError(f"--gen-length {args.gen_length} is odd: pass --steps (the default is gen_length / 2)")
        args.steps = args.gen_length // 2
    check_schedule(args)
    if args.output is None:
        tag = Path(args.model.rstrip("/")).name
        args.output = (f"results/{args.task}-{tag}-g{args.gen_length}-s{args.steps}-t{args.temperature:g}"
                       f"-x{args.samples_per_block}.jsonl")
    return args


def check_schedule(args: argparse.Namespace) -> None:
    """Fill in the authors' block lengths, and check that every HEX schedule divides gen_length and
    the steps, naming the flags the user actually passed."""
    given = args.block_lengths is not None
    if not given and "hex" not in args.methods and args.gen_length % 32:
        args.block_lengths = []  # only the one-block baselines: no HEX schedule to default
    elif not given:
        if args.gen_length % 32:
            raise UsageError(f"--gen-length {args.gen_length} is not a multiple of 32, so the authors' block "
                             "lengths (gen_length/32 x 1, 2, 4, 8, 16) do not apply: pass --block-lengths")
        args.block_lengths = [args.gen_length // 32 * m for m in (1, 2, 4, 8, 16)]
    for b in args.block_lengths if "hex" in args.methods else []:  # one block of gen_length always fits
        try:
            steps_per_block(args.gen_length, args.steps, b)
        except ValueError as error:
            blocks = " ".join(map(str, args.block_lengths))
            what = (f"--block-lengths {blocks}" if given
                    else f"the default block lengths {blocks} (gen_length/32 x 1, 2, 4, 8, 16)")
            raise UsageError(f"{what} with --gen-length {args.gen_length} --steps {args.steps}: {error}; pass "
                             "other --block-lengths or --steps") from None


def resolve_device(requested: str | None) -> torch.device:
    """The device to run on; a device this machine or this torch build lacks is a usage error,
    found before any loading."""
    if requested is None:
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(f"--device {requested}: not a device name (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {requested}: this torch build has no usable CUDA GPU")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s) here")
    try:
        if device.type == "meta":
            raise ValueError("meta tensors hold no data")
        torch.empty(1, device=device)
    except Exception as error:  # noqa: BLE001 -- e.g. mps on a torch built without it: any failure means unusable
        reason = (str(error).strip() or type(error).__name__).splitlines()[0][:120]
        raise UsageError(f"--device {requested}: not available in this torch build ({reason})") from None
    return device


def check_output(text: str) -> Path:
    """--output as a results file that can exist: not a folder, under no file."""
    output = Path(text).expanduser()
    if output.is_dir():
        raise UsageError(f"--output {text}: is a folder; name a results file, e.g. --output {output / 'run.jsonl'}")
    nearest = next(p for p in output.parents if p.exists())
    if not nearest.is_dir():
        raise UsageError(f"--output {text}: {nearest} is a file, not a folder")
    return output


# 6. A run, step by step --------------------------------------------------------------------------

def main(argv=None) -> dict | None:
    """Run the evaluation; a usage error ends with one line on stderr and exit status 1."""
    args = None
    try:
        args = parse_args(argv)
        result = rescore(args) if args.rescore else evaluate(args)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback when Python exits
        return result
    except UsageError as error:
        print(f"run_gsm8k.py: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished questions stay in {args and args.output}; rerun the same command to resume",
              file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # e.g. `| head`: the files are complete; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        print("run_gsm8k.py: standard output was closed early (a broken pipe); the results files are complete",
              file=sys.stderr)
        raise SystemExit(1) from None


def evaluate(args: argparse.Namespace) -> dict | None:
    """Check everything that can be checked without the model, take the results files, load the
    model, decode what is not done yet (appending each question at once), then report."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    task = TASKS[args.task]
    problems, data = select_problems(task, args)
    requested = {p["id"] for p in problems}
    files = RunFiles(check_output(args.output))
    settings = run_settings(args, data, dtype)
    if world > 1:  # torchrun: gloo only synchronises the ranks; no tensors are exchanged
        torch.distributed.init_process_group("gloo", timeout=timedelta(hours=48))
    try:
        def open_files():
            files.open()
            return files.finished(settings, requested, args.resume)
        finished = on_rank0(open_files, world, rank)
        if finished is not None:  # everything asked for is done: the summary, without the model
            return report(task, finished, files, requested, args.answer_rule) if rank == 0 else None
        model, tokenizer = load_checkpoint(args, task, problems[0]["row"], settings, device, dtype)
        on_rank0(lambda: files.start(settings, args.resume, machine(device, world)), world, rank)
        decode_my_share(model, tokenizer, task, problems, args, settings["mask_id"], device, files, rank, world)
        return report(task, files.stored_settings(), files, requested, args.answer_rule) if rank == 0 else None
    finally:
        files.close()
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def select_problems(task: Task, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The questions asked for (--offset, --limit, in the authors' order) and the data's identity."""
    rows, data = load_rows(task, args.data)
    order = task.order(len(rows)) if task.order else range(len(rows))
    problems = [{"id": i, "row": rows[i]} for i in order][args.offset:][:args.limit]
    if not problems:
        raise UsageError(f"--offset {args.offset} is past the {len(rows)} rows of {data['source']}")
    return problems, data


def run_settings(args: argparse.Namespace, data: dict, dtype: torch.dtype) -> dict:
    """What makes records comparable (COMPARED), as stored in the settings file."""
    model_path = Path(args.model).expanduser()
    return dict(task=args.task, data=data, model=str(model_path.resolve()) if model_path.is_dir() else args.model,
                mask_id=args.mask_id, gen_length=args.gen_length, steps=args.steps, methods=args.methods,
                block_lengths=args.block_lengths, samples_per_block=args.samples_per_block,
                temperature=args.temperature, tie_break=args.tie_break, seed=args.seed,
                dtype=str(dtype).removeprefix("torch."), batch_size=args.batch_size)


def machine(device: torch.device, world: int) -> dict:
    return dict(device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                torch=torch.__version__, transformers=__import__("transformers").__version__, world_size=world)


def load_checkpoint(args, task: Task, row: dict, settings: dict, device, dtype):
    """The tokenizer (checked first: seconds, not minutes) and the model; fills in the mask id and the
    end-of-text ids of the settings."""
    tokenizer, config = load_tokenizer(args.model)
    model_family(config, args.model)  # an unknown family is refused before anything else
    settings["mask_id"] = args.mask_id if args.mask_id is not None else find_mask_id(tokenizer, config)
    settings["end_of_text_ids"] = end_of_text_ids(tokenizer)
    vocab = getattr(config, "vocab_size", None) or len(tokenizer)
    if not 0 <= settings["mask_id"] < vocab:
        raise UsageError(f"--mask-id {settings['mask_id']} is outside the model's vocabulary (size {vocab})")
    if tokenizer.chat_template is None:
        raise UsageError(f"--model {args.model}: its tokenizer has no chat template (an instruct checkpoint has one)")
    build_prompt(tokenizer, task, row)
    return load_model(args.model, config, device, dtype), tokenizer


def decode_my_share(model, tokenizer, task: Task, problems: list[dict], args, mask_id: int, device,
                    files: RunFiles, rank: int, world: int) -> None:
    """This rank's questions that are not done yet; each rank appends to its own file."""
    done = files.records()
    if world > 1:
        torch.distributed.barrier()  # every rank has read before any rank writes
    mine = problems[rank::world]
    todo = [p for p in mine if p["id"] not in done]
    sink = files.output.with_suffix(f".part{rank}.jsonl") if world > 1 else files.output
    decode_all(model, tokenizer, task, todo, [done[p["id"]] for p in mine if p["id"] in done],
               len(mine), args, mask_id, device, sink, rank, world)
    if world > 1:
        torch.distributed.barrier()


def on_rank0(fn: Callable[[], Any], world: int, rank: int) -> Any:
    """Run fn on rank 0 only and hand its result, or its UsageError, to every rank."""
    result = [None]
    if rank == 0:
        try:
            result = [("ok", fn())]
        except UsageError as error:
            result = [("error", str(error))]
    if world > 1:
        torch.distributed.broadcast_object_list(result, src=0)
    kind, value = result[0]
    if kind == "error":
        raise UsageError(value)
    return value


def decode_all(model, tokenizer, task: Task, todo: list[dict], finished: list[dict], total: int, args,
               mask_id: int, device, sink_path: Path, rank: int, world: int) -> None:
    """Decode the questions still to do, appending each record to sink_path as soon as it is done.
    The progress bar counts the finished ones too, and so does its running accuracy."""
    rule = args.answer_rule
    correct = defaultdict(int)
    for record in finished:
        for m, ok in score_record(task, record, args.tie_break)["correct"][rule].items():
            correct[m] += ok
    count = len(finished)
    bar = tqdm(total=total, initial=count, desc=f"{task.title} rank {rank}" if world > 1 else task.title,
               disable=not todo)
    drop_torn_tail(sink_path)
    try:
        with sink_path.open("a", encoding="utf-8") as sink:
            for i in range(0, len(todo), args.batch_size):
                for record in decode_batch(model, tokenizer, task, todo[i:i + args.batch_size], args, mask_id, device):
                    sink.write(json.dumps(record) + "\n")
                    sink.flush()
                    count += 1
                    for m, ok in record["correct"][rule].items():
                        correct[m] += ok
                    bar.update()
                    bar.set_postfix({m: f"{100 * c / count:.1f}%" for m, c in correct.items()})
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted: {count} of {total} questions are saved in {sink_path}; "
              "rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    bar.close()


def report(task: Task, settings: dict, files: RunFiles, requested: set[int], rule: str) -> dict:
    """Print the summary of the questions asked for; save the summary and the figure of every
    finished question (the whole run), unless the folder is read-only."""
    records = files.merge_parts()
    ordered = [records[k] for k in sorted(records)]
    chosen = [r for r in ordered if r["id"] in requested]
    summary = summarize(chosen, settings, rule)
    if not files.read_only:
        whole = summary if len(chosen) == len(ordered) else summarize(ordered, settings, rule)
        write_atomically(files.summary, json.dumps(whole, indent=1))
        write_atomically(files.figure, lambda path: write_figures(whole, ordered, path))
    print(summary_table(summary))
    if len(chosen) < len(records):
        print(f"(the {len(chosen)} questions asked for; the summary file and the figure cover all "
              f"{len(records)} finished questions)")
    where = (f"{files.read_only}: the summary and figure were not rewritten" if files.read_only
             else f"summary: {files.summary}\nfigure:  {files.figure}")
    print(f"records: {files.output}\n{where}")
    return summary


def rescore(args: argparse.Namespace) -> dict:
    """--rescore: re-read every stored candidate's text by the current answer rules, vote again, and
    rewrite the records, the summary and the figure, without the model. The settings keep the run's
    own and note when it was rescored."""
    files = RunFiles(check_output(args.output))
    if not files.settings.is_file():
        raise UsageError(f"--rescore: {files.output} has no settings file ({files.settings.name}): nothing to rescore")
    try:
        files.open()
        if files.read_only:
            raise UsageError(f"--rescore: {files.read_only}")
        settings, records = files.stored_settings(), files.merge_parts()
        if not records:
            raise UsageError(f"--rescore: {files.output} holds no finished question")
        task, changed = TASKS[settings["task"]], 0
        for record in records.values():
            for candidate in record["candidates"]:
                answers = {r: task.extract[r](candidate["text"]) for r in RULES}
                changed += answers != candidate["answers"]
                candidate["answers"] = answers
            score_record(task, record, settings["tie_break"])
        files.write_records(records)
        settings["rescored"] = settings.get("rescored", []) + [
            dict(at=time.strftime("%Y-%m-%d %H:%M:%S %Z"), questions=len(records), answers_changed=changed)]
        write_atomically(files.settings, json.dumps(settings, indent=1))
        print(f"rescored {len(records)} questions without the model: {changed} candidate answer(s) changed")
        return report(task, settings, files, set(records), args.answer_rule)
    finally:
        files.close()


if __name__ == "__main__":
    main()
