"""Evaluate a masked diffusion LLM on the paper's benchmarks: one-block baselines, every block schedule, HEX.

    python run_gsm8k.py --model GSAI-ML/LLaDA-8B-Instruct [--task math500|arc-c|truthfulqa]
    python run_gsm8k.py --model Dream-org/Dream-v0-Instruct-7B                     # the Dream family
    python run_gsm8k.py --model GSAI-ML/LLaDA-8B-Instruct --methods hex sc         # HEX against self-consistency
    torchrun --nproc_per_node 8 run_gsm8k.py --model GSAI-ML/LLaDA-8B-Instruct      # several GPUs
    python run_gsm8k.py --model GSAI-ML/LLaDA-8B-Instruct --lm-eval gsm8k_cot       # an lm-eval task, with HEX

The authors' protocol (their HEX/eval code, built on d1): zero-shot, each task's system prompt and
`<reasoning>` prefix, gen_length 256, steps 128, block lengths 8..128. A question's path:

    question -> prompt -> one lockstep decode of every method (`steps` forward calls) -> a record per question,
    appended to the JSONL at once -> each method's vote -> verdicts by the authors' rule and a robust one ->
    summary, the readers' controls and the figure, all recomputed from the records alone

Part one is the evaluation, which needs no file, rank, clock or flag: 1. a task; 2. the authors' prompts and answer
rules; 3. robust rules; 4. the four tasks; 5. a batch of questions to records (`decode_batch`, `records_of`);
6. the vote and the verdicts; 7. records to a summary (`summarize`) and its tables. Part two is the harness that
calls only those: 8. data files; 9. model families; 10. the figure; 11. run files (resuming, one writer, growing
by a method); 12. the command line; 13. main; 14. every method as an lm-evaluation-harness model (`--lm-eval`).
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import glob
import hashlib
import inspect
import json
import logging
import math
import os
import random
import re
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import timedelta
from itertools import combinations
from pathlib import Path
from statistics import fmean
from typing import Any, Callable, NamedTuple, Sequence, TypedDict
from urllib.parse import urlparse

import torch
import torch.nn as nn
from tqdm import tqdm

from hex import (
    HexOutput,
    MaskPredictorOutput,
    PairedDifference,
    Schedule,
    answer_log_likelihood,
    cross_fitted,
    decode,
    decode_in_waves,
    majority_vote,
    paired_difference,
    pass_at_k,
    steps_per_block,
    wilson,
)

RULES = ("authors", "robust")
BASELINES = ("topk_margin", "low_confidence", "random")  # one block of gen_length; the name is the remasking
METHODS = ("hex", "sc", *BASELINES)  # sc: self-consistency, the control
OPT_IN = ("sc",)  # methods a run decodes only when asked (a finished run can grow by them)
SAMPLED = ("hex", "sc")  # methods with several candidates a question: a vote, pass@k
PAPER_NAMES = dict(
    hex="HEX",
    sc="Self-consistency",
    topk_margin="Top-K margin",
    low_confidence="Top-K",
    random="Random",
    imh="IMH (reconstructed)",  # a run made before 2026-12 may hold its samples: they are still summarized
)
SC_TEMPERATURE = 0.7  # self-consistency's temperature when --temperature is 0 (this project's choice)
END_TOKENS = ("<|endoftext|>", "<|eot_id|>", "<|im_end|>")  # end-of-text and end-of-turn (LLaDA, Qwen/Dream)
COLLAPSE_THRESHOLD = 0.5  # a collapsed candidate: no readable answer, and over half its answer end-of-text
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class UsageError(Exception):
    """A mistake in the command or its inputs: reported as one line on stderr, never a traceback."""


def plural(n: int, word: str) -> str:
    """ "1 question", "3 questions": a count and its noun (regular plurals only)."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# Part one, the evaluation: tasks, a batch of questions to records, records to a summary ==============================


# 1. A task: a prompt and a scoring rule over a row (simple-evals' shape) ---------------------------------------------


@dataclass(frozen=True)
class Task:
    """One benchmark: where its rows come from, how a row becomes a prompt and a reference, and each answer
    rule's extractor and comparator (`extract[rule](text)`, `equal[rule](answer, gold)`)."""

    title: str
    hub: tuple[str, str | None, str]  # datasets.load_dataset(path, config, split=split)
    fields: str  # the row format, for messages
    system_prompt: str
    question: Callable[[dict], str]
    gold: dict[str, Callable[[dict], Any]]
    extract: dict[str, Callable[[str], Any]]
    equal: dict[str, Callable[[Any, Any], bool]]
    order: Callable[[int], Sequence[int]] = range  # the authors' row order, when not the file's

    def build_prompt(self, tokenizer, row: dict) -> list[int]:
        """The authors' prompt: the task's system text, a blank line and the question as one user turn, in the
        chat template with the generation prompt, then `<reasoning>`. The template writes the BOS token."""
        chat = [{"role": "user", "content": self.system_prompt + "\n\n" + self.question(row)}]
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) + "<reasoning>"
        return tokenizer(text, add_special_tokens=False).input_ids

    def parse_gold(self, row: dict, rule: str = "authors") -> Any:
        """A row's reference answer as `rule` compares it."""
        return self.gold[_rule(rule)](row)

    def extract_answer(self, text: str, rule: str = "authors") -> Any:
        """The answer a decoded text gives under `rule` ("authors": their parser, quirks included; "robust": this
        project's reading); None when nothing can be read."""
        return self.extract[_rule(rule)](text)

    def answers(self, text: str) -> dict[str, Any]:
        """The answer each rule reads from a decoded text, as a candidate stores them."""
        return {rule: self.extract[rule](text) for rule in RULES}

    def is_correct(self, answer: Any, gold: Any, rule: str = "authors") -> bool:
        """Whether an extracted (or voted) answer matches the reference under `rule`."""
        return bool(self.equal[_rule(rule)](answer, gold))


def _rule(rule):
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} must be one of {', '.join(RULES)}")
    return rule


# 2. The authors' prompts and answer rules (verbatim from their code, quirks annotated) -------------------------------

FORMAT = (
    "Respond in the following format:\n"
    "<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>"
)
MATH_EXPERT = "You are a math expert. You will be given a question to solve. Solve it step by step. "
GSM8K_PROMPT = MATH_EXPERT + "Wrap the final answer in a \\boxed{}. \n" + FORMAT  # note the space after "\boxed{}."
MATH500_PROMPT = MATH_EXPERT + "Wrap the final answer in a \\boxed{}.\n" + FORMAT + '" \n'
# MATH500's quirks: no space after "\boxed{}.", and a stray `" ` line after </answer>
CHOICE_INSTRUCTIONS = """Think step by step, but output only ONE final choice.
Wrap ONLY the final choice letter in a \\boxed{}.

Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
\\boxed{...}
</answer>"""  # the part HEX's ARC-C and TruthfulQA prompts share, after their first line
ARC_C_PROMPT = (
    "You are a science and reasoning expert. You will be given a multiple-choice question with "
    "options labeled A, B, C, D (and sometimes E).\n" + CHOICE_INSTRUCTIONS
)
TRUTHFULQA_PROMPT = (
    "You are a careful, factual reasoning assistant. You will be given a multiple-choice "
    "question with options labeled A, B, C, D.\n" + CHOICE_INSTRUCTIONS
)


def multiple_choice(stem: str, labels: list, texts: list) -> str:
    """The authors' multiple-choice question: stem, the labelled options, and the instruction."""
    options = "\n".join(f"{str(label).strip()}. {str(text).strip()}" for label, text in zip(labels, texts))
    return f"{str(stem).strip()}\n\nOptions:\n{options}\n\nChoose ONE letter."


def _finite(x):
    return x if math.isfinite(x) else None


def _answer_tag(text):
    match = ANSWER_TAG.search(text)
    return match.group(1) if match else None


def gsm8k_answer_authors(text: str) -> float | None:
    """The authors' GSM8K rule: the first non-empty `\\boxed{...}` (non-greedy: `\\boxed{1,000}` reads 1.0)
    as a float, else its first number; failing that, `<answer>` as a float, else its last number."""
    for content in (c.strip() for c in re.findall(r"\\boxed{(.*?)}", text)):
        if content and not re.fullmatch(r"\.+", content):
            try:
                return _finite(float(content))
            except ValueError:
                numbers = re.findall(r"-?\d+\.?\d*", content)
                if numbers:
                    return _finite(float(numbers[0]))
    inner = (_answer_tag(text) or "").strip()
    if not inner:
        return None
    try:
        return _finite(float(inner))
    except ValueError:
        numbers = re.findall(r"-?\d+\.?\d*", inner)
        return _finite(float(numbers[-1])) if numbers else None


def gsm8k_gold_authors(row: dict) -> float | None:
    """d1's GSM8K reference: digits and commas after `####`; no minus sign, so a negative reference is None."""
    match = re.search(r"####\s*\$?([\d,]+(?:\.\d+)?)", row["answer"])
    return float(match.group(1).replace(",", "")) if match else None


def last_box_authors(text: str) -> str | None:
    """d1's `remove_boxed(last_boxed_only_string(text))`: a `\\boxed ` form reads to the next `$`; else the last
    `\\boxed`'s brace-balanced group without its wrapper (a `\\fbox{...}`, only when no `\\boxed` exists, keeps
    its); no box gives the whole text; an unclosed box None."""
    if "\\boxed " in text:
        return text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed") if "\\boxed" in text else text.rfind("\\fbox")
    if start < 0:
        return text
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if text[i] == "}" and depth == 0:
            box = text[start : i + 1]
            return box[len("\\boxed{") : -1] if box.startswith("\\boxed{") else box
    return None


def boxed_answer_authors(text: str) -> str | None:
    """The authors' `parse_math_answers` (MATH500, ARC-C, TruthfulQA): the last box; when it is empty or
    unclosed, the stripped `<answer>` text. Special tokens stay in."""
    answer = last_box_authors(text)
    inner = _answer_tag(text)
    return inner.strip() if not answer and inner is not None else answer


def _fix_fracs(s):
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        if part[0] == "{":
            out += "\\frac" + part
        elif len(part) < 2:  # an empty part raises, as theirs does, and is_equiv falls back
            return s
        elif part[1] == "{":
            out += "\\frac{" + part[0] + "}" + part[1:]
        else:
            out += "\\frac{" + part[0] + "}{" + part[1] + "}" + part[2:]
    return out


def _fix_sqrt(s):
    parts = s.split("\\sqrt")
    return parts[0] + "".join("\\sqrt" + (p if p[0] == "{" else "{" + p[0] + "}" + p[1:]) for p in parts[1:])


def _fix_a_slash_b(s):
    if len(s.split("/")) != 2:
        return s
    a, b = (int(x) for x in s.split("/"))  # a non-integer part raises, as theirs does
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def strip_string(s: str) -> str:
    """Hendrycks' MATH normalisation as in the authors' code, step for step (it may raise: their is_equiv
    then compares the raw strings)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    if "\\text{ " in s:  # units on the right
        units = s.split("\\text{ ")
        if len(units) != 2:
            raise ValueError("more than one unit")
        s = units[0]
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    s = "0" + s if s[0] == "." else s
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


# 3. Robust rules: this project's reading, beside the authors' --------------------------------------------------------


def _numbers(text):
    """Numbers in text, reading `1,000`, `$18`, `\\$18`, `-5`, `−5`, `.5`, `\\frac{1}{2}` and units."""
    text = text.replace("−", "-").replace("\\$", " ").replace("$", " ").replace("\\%", " ")
    text = re.sub(
        r"\\d?frac\{(-?[\d.]+)\}\{([\d.]+)\}", lambda m: str(float(m[1]) / float(m[2])) if float(m[2]) else m[0], text
    )
    return [float(n) for n in re.findall(r"-?(?:\d+(?:\.\d+)?|\.\d+)", re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text))]


def _boxed(text):
    """Contents of every `\\boxed{...}` or `\\fbox{...}`, braces balanced (an unclosed box runs to the end)."""
    contents = []
    for start in (m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)):
        depth = 1
        i = start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        contents.append(text[start : i - 1] if depth == 0 else text[start:])
    return contents


def _without_special_tokens(text):
    """Drop `<|...|>` tokens (end-of-text, end-of-turn...), which the decoded text keeps as the authors keep them."""
    return re.sub(r"<\|[^<>|]{1,64}\|>", " ", text)


def gsm8k_answer_robust(text: str) -> float | None:
    """The authors' order of evidence (first real `\\boxed{}`, then `<answer>`), read robustly, then a final
    "The answer is N" (or "#### N") line."""
    text = _without_special_tokens(text)
    for content in _boxed(text):
        numbers = _numbers(content) if content.strip().strip(".") else []
        if numbers:
            return _finite(numbers[0])
    numbers = _numbers(_answer_tag(text) or "")
    if numbers:
        return _finite(numbers[-1])
    lines = re.findall(r"(?:answer is|answer:|####)\s*:?\s*([^\n]*)", text, re.IGNORECASE)
    numbers = _numbers(lines[-1]) if lines else []
    return _finite(numbers[0]) if numbers else None


def gsm8k_gold_robust(row: dict) -> float:
    """GSM8K's reference: the number after `####`, commas removed, negatives kept."""
    if "####" not in row["answer"]:
        raise ValueError("the answer has no '#### N' line")
    return float(row["answer"].rsplit("####", 1)[1].strip().replace(",", "").replace("$", ""))


def same_answer(answer: Any, gold: Any) -> bool:
    return answer is not None and answer == gold


def normalize_math(s: str) -> str:
    """A LaTeX-safe normal form for voting: `\\dfrac` and `\\frac12` as `\\frac{1}{2}`; no `\\left`/`\\right`,
    spacing commands, degrees, `\\%`, `$`, trailing units or `x =` prefix; `\\text{}` unwrapped."""
    s = re.sub(r"\\[dt]frac", r"\\frac", s.strip().strip("$").strip())
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s))
    s = re.sub(r"\^\{?\\circ\}?|\\%|%|\\\$", "", re.sub(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\[!,;:]", "", s))
    s = re.sub(r"(?<=\d)\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]+\}\s*$", "", s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*(?=\S)", "", re.sub(r"\\(?:text|mbox|mathrm|textbf)\{([^{}]*)\}", r"\1", s))
    return re.sub(r"\s+", " ", s).strip().rstrip(".").strip()


def math_answer_robust(text: str) -> str | None:
    """The last non-empty box, else the `<answer>` content; never the whole text. Normalised."""
    text = _without_special_tokens(text)
    boxes = [b for b in _boxed(text) if b.strip().strip(".")]
    if boxes:
        return normalize_math(boxes[-1]) or None
    inner = _answer_tag(text)
    return None if inner is None else normalize_math(inner) or None


SYMBOLIC_LIMIT = 100  # characters: longer answers are compared as normal forms only
BEYOND_REACH = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\{?\s*-?\d{3,}|\d{2,}\s*!|\d{31,}")  # towers, big powers, n!, huge n
BASE_SUBSCRIPT = re.compile(r"(?<![\w\\])\d[0-9A-F]*_\{?(\d{1,2})\}?")  # 2516_8, 1A_{16}: another base


@functools.lru_cache(maxsize=65536)
def math_equal(answer: str | None, gold: str | None) -> bool:
    """Equal normal forms, or equal mathematics by math-verify (`0.5` = `\\frac12`, `x+1` = `1+x`). The same
    strings get the same verdict on any machine and load: math-verify's wall-clock timeouts (after which it
    says "not equal") are off, and what it is given is bounded by form instead (SYMBOLIC_LIMIT characters, no
    BEYOND_REACH: power towers, 3-digit exponents, n! of 2 digits, 31 digits); beyond, only equal normal
    forms count. A number in another base (`2516_8`) equals only itself."""
    if answer is None or gold is None:
        return False
    a, g = (re.sub(r"_\{(\d+)\}", r"_\1", s.replace(" ", "")) for s in (answer, gold))
    if a == g or BASE_SUBSCRIPT.search(a) or BASE_SUBSCRIPT.search(g):
        return a == g
    if any(len(s) > SYMBOLIC_LIMIT or BEYOND_REACH.search(s) for s in (a, g)):
        return False
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" notice: bounded above
    try:
        expected = parse(f"${gold}$", parsing_timeout=None)
        found = parse(f"${answer}$", parsing_timeout=None)
        return bool(expected and found and verify(expected, found, timeout_seconds=None))
    except Exception:  # noqa: BLE001 -- an answer math-verify cannot read is simply not equal
        return False


def _option(s):
    """The option label a short answer names: `B`, `(B)`, `B.`, `B) text`, `b`, `\\text{B}`, `Option B`."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s).strip().strip("$*").strip()
    s = re.sub(r"^(?:option|choice|answer)\s*:?\s*", "", s, flags=re.IGNORECASE)
    match = re.match(r"[(\[]?([A-E1-5])[)\].:]*(?:\s|$)", s) or re.match(r"[(\[]?([a-e])[)\].:]*$", s)
    return match.group(1).upper() if match else None


def choice_answer_robust(text: str) -> str | None:
    """The option in the last box naming one, else in `<answer>`, else after a final "answer is"."""
    text = _without_special_tokens(text)
    phrases = re.findall(r"answer is:?\s*([^\n]{1,20})", text, re.IGNORECASE)
    candidates = [*reversed(_boxed(text)), _answer_tag(text) or "", phrases[-1] if phrases else ""]
    labels = [_option(c) for c in candidates]
    return next((label for label in labels if label is not None), None)


# 4. The tasks: the paper's four benchmarks ---------------------------------------------------------------------------


def _arc_gold(row):
    if row["answerKey"].strip() not in [str(label).strip() for label in row["choices"]["label"]]:
        raise ValueError(f"answerKey {row['answerKey']!r} is not one of the labels {row['choices']['label']}")
    return row["answerKey"].strip()


def _truthfulqa_gold(row):
    if type(row["label"]) is not int or not 0 <= row["label"] < len(row["choices"]) <= 26:
        raise KeyError("label")
    return chr(65 + row["label"])


def _truthfulqa_order(n):
    """The authors iterate TruthfulQA in a numpy-seed-42 permutation (it matters only for slices)."""
    import numpy

    return numpy.random.RandomState(42).choice(n, n, replace=False).tolist()


CHOICE_RULES = dict(
    extract={"authors": boxed_answer_authors, "robust": choice_answer_robust},
    equal={"authors": is_equiv_authors, "robust": same_answer},
)  # ARC-C and TruthfulQA
TASKS: dict[str, Task] = {
    "gsm8k": Task(
        "GSM8K",
        ("openai/gsm8k", "main", "test"),
        "string fields 'question' and 'answer' (GSM8K's)",
        GSM8K_PROMPT,
        lambda row: row["question"],
        gold={"authors": gsm8k_gold_authors, "robust": gsm8k_gold_robust},
        extract={"authors": gsm8k_answer_authors, "robust": gsm8k_answer_robust},
        equal={"authors": same_answer, "robust": same_answer},
    ),
    "math500": Task(
        "MATH500",
        ("HuggingFaceH4/MATH-500", None, "test"),
        "string fields 'problem' and 'answer' (MATH-500's)",
        MATH500_PROMPT,
        lambda row: row["problem"],
        gold={"authors": lambda row: row["answer"], "robust": lambda row: normalize_math(row["answer"])},
        extract={"authors": boxed_answer_authors, "robust": math_answer_robust},
        equal={"authors": is_equiv_authors, "robust": math_equal},
    ),
    "arc-c": Task(
        "ARC-C",
        ("allenai/ai2_arc", "ARC-Challenge", "test"),
        "'question', 'answerKey' and 'choices' {'text': [...], 'label': [...]} (ai2_arc's)",
        ARC_C_PROMPT,
        lambda row: multiple_choice(row["question"], row["choices"]["label"], row["choices"]["text"]),
        gold={"authors": _arc_gold, "robust": lambda row: _arc_gold(row).upper()},
        **CHOICE_RULES,
    ),
    "truthfulqa": Task(
        "TruthfulQA",
        ("EleutherAI/truthful_qa_mc", "multiple_choice", "validation"),
        "'question', 'choices' (a list of options) and 'label' (the right option's index)",
        TRUTHFULQA_PROMPT,
        lambda row: multiple_choice(
            row["question"], [chr(65 + i) for i in range(len(row["choices"]))], row["choices"]
        ),
        gold={"authors": _truthfulqa_gold, "robust": _truthfulqa_gold},
        **CHOICE_RULES,
        order=_truthfulqa_order,
    ),
}


# 5. A question's records: every method decoded in one lockstep batch -------------------------------------------------


class Candidate(TypedDict):
    """One decoded answer of a question: an entry of a record's `candidates`."""

    method: str  # "hex", "sc" or a one-block baseline's remasking rule (METHODS)
    block_length: int
    sample: int  # HEX: the sample of its block length; SC: its sample; a baseline: 0
    text: str  # the decoded answer, special tokens kept (as the authors decode)
    answers: dict[str, Any]  # the answer each rule (RULES) reads from the text; None: nothing readable
    score: float  # mean log-prob under the first forward pass (the likelihood tie-break)
    forward_passes: int  # the forward passes its row took part in (NFE); 0: never decoded (--early-stop)
    end_of_text: str  # per answer position: "_" an end-of-text token, "." any other
    commit_order: list[int]  # per answer position: the step that committed it


class Record(TypedDict):
    """One finished question, a line of the results JSONL. Votes and verdicts are not stored: they are
    recomputed from the candidates (`method_answers`), so a summary never disagrees with its records."""

    id: int  # the row's index in the data
    question: str
    gold: dict[str, Any]  # the reference as each rule reads it
    candidates: list[Candidate]
    forward_calls: float  # the batch's forward calls per question (each candidate's: its forward_passes)
    seconds: float  # the batch's decoding seconds per question
    batch_size: int  # questions decoded together, left padded (numerics may shift slightly)
    batch: int  # the id of its batch's first question: the batch a grown run decodes new methods in


@dataclass(frozen=True)
class Declared:
    """What a setting is to a run, declared once beside its default (`setting`)."""

    compared: bool  # a rerun with another value is refused
    method: str | None  # the method it belongs to: compared only where both runs have that method; grown with it
    as_given: bool  # the settings file keeps it as its flag --name-with-dashes gave it


def setting(default, *, compared: bool = True, method: str | None = None, as_given: bool = True):
    """A field of Settings: its default (the authors' protocol on GSM8K) and what it is to a run (`Declared`)."""
    metadata = dict(declared=Declared(compared, method, as_given))
    if isinstance(default, (list, dict)):  # a fresh copy for each Settings
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def declared(f) -> Declared:
    return f.metadata["declared"]


@dataclass(frozen=True)
class Settings:
    """What a run decodes and how it votes, as its settings file keeps it (`asdict`): a rerun must match every
    compared setting, its methods may grow. Each field is declared once, with `setting`: the flags' defaults, the
    comparison on a rerun, growth by a method and lm-eval's identity of a question all read these declarations."""

    task: str = setting("gsm8k", as_given=False)
    data: dict = setting({}, as_given=False)  # the rows' identity: source, fingerprint, rows
    model: str = setting("GSAI-ML/LLaDA-8B-Instruct", as_given=False)  # a local folder: its absolute path
    mask_id: int | None = setting(None)  # None: from the tokenizer or config
    gen_length: int = setting(256)
    steps: int = setting(128)
    block_lengths: list[int] = setting([8, 16, 32, 64, 128], method="hex")  # HEX's experts
    samples_per_block: int = setting(1, method="hex")
    temperature: float = setting(0.0, method="hex")
    threshold: float | None = setting(None, method="hex")  # HEX's experts commit what clears it (ours: Fast-dLLM's)
    early_stop: bool = setting(False, method="hex")  # HEX in waves, a question stopped once its vote is settled
    sc_block_length: int = setting(32, method="sc")
    sc_samples: int = setting(5, method="sc")
    sc_temperature: float = setting(SC_TEMPERATURE, method="sc")
    tie_break: str = setting("first")  # the vote's, "first" or "likelihood"
    seed: int = setting(0)  # of every method's random stream
    methods: list[str] = setting([m for m in METHODS if m not in OPT_IN], compared=False, as_given=False)
    batch_size: int = setting(1, compared=False, as_given=False)
    dtype: str = setting("float32", as_given=False)
    environments: list[dict] = setting([], compared=False, as_given=False)  # each start's machine

    @classmethod
    def from_file(cls, stored: dict) -> Settings:
        """Settings as a settings file (or a summary) stores them; a key an older file lacks takes its default."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in stored.items() if key in known})


class Planned(NamedTuple):
    """One candidate of a question, before it is decoded."""

    method: str
    sample: int
    schedule: Schedule


def candidate_plan(settings: Settings) -> list[Planned]:
    """Every candidate of a question: HEX's experts (low-confidence remasking at --temperature),
    self-consistency's samples of one schedule, then each one-block baseline."""
    methods = settings.methods
    plan = [
        Planned("hex", sample, Schedule(block, "low_confidence", settings.temperature, settings.threshold))
        for sample in range(settings.samples_per_block)
        for block in settings.block_lengths
        if "hex" in methods
    ]
    sc = Schedule(settings.sc_block_length, "low_confidence", settings.sc_temperature)
    plan += [Planned("sc", sample, sc) for sample in range(settings.sc_samples) if "sc" in methods]
    plan += [Planned(rule, 0, Schedule(settings.gen_length, rule)) for rule in methods if rule in BASELINES]
    return plan


def left_pad(prompts: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Left-padded (B, L) ids, and an attention mask only when some prompt is actually padded (the mask hides the
    padding from every real token, so the pad id, 0, does not matter)."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, None if bool(mask.all()) else mask


def decode_batch(
    model,
    tokenizer,
    task: Task,
    batch: list[dict],
    settings: Settings,
    mask_id: int,
    device: torch.device,
    methods: list[str] | None = None,
) -> list[Record]:
    """Every candidate of `methods` (default: the run's) of a batch of questions (`decode_prompts`), a record per
    question with the batch's forward calls; what only the harness knows (seconds, batch) it adds itself."""
    prompts = [task.build_prompt(tokenizer, problem["row"]) for problem in batch]
    plan = [planned for planned in candidate_plan(settings) if planned.method in (methods or settings.methods)]

    def read_answer(answer):  # each rule's answer, for --early-stop
        return list(task.answers(tokenizer.decode(answer, skip_special_tokens=False)).values())

    ids, attention = left_pad(prompts, device)
    out = decode_prompts(model, ids, attention, plan, settings, mask_id, batch[0]["id"], read_answer)
    # every candidate's likelihood score (the likelihood tie-break's): one forward pass more
    scores = answer_log_likelihood(model, ids, out.sequences[:, :, ids.shape[1] :], attention, mask_id)  # (B, K)
    return records_of(tokenizer, task, batch, plan, out, scores)


def decode_prompts(
    model,
    ids: torch.Tensor,
    attention: torch.Tensor | None,
    plan: list[Planned],
    settings: Settings,
    mask_id: int,
    first_id: int,
    read_answer: Callable | None = None,
) -> HexOutput:
    """Every candidate of `plan` for a batch of prompts (`left_pad`'s ids and mask) in one lockstep decode (`steps`
    forward calls); with --early-stop HEX's first, in waves (`decode_in_waves`, `read_answer`: each rule's answer).
    Each method draws from its own stream, seeded by the batch's first question (`first_id`), so adding or dropping
    a method changes no other method's candidates. Returns the candidates in the plan's order, with their costs."""
    device = ids.device
    seeds = {planned.method: settings.seed + 10**6 * METHODS.index(planned.method) + first_id for planned in plan}
    streams = {method: torch.Generator(device).manual_seed(seed) for method, seed in seeds.items()}
    canvas = dict(gen_length=settings.gen_length, steps=settings.steps, mask_id=mask_id)
    waves = [planned for planned in plan if planned.method == "hex" and settings.early_stop]
    lockstep = [planned for planned in plan if planned not in waves]
    outs = []
    if waves:
        schedules = [planned.schedule for planned in waves]
        stop = dict(read_answer=read_answer, tie_break=settings.tie_break)
        outs.append(
            decode_in_waves(model, ids, attention, schedules=schedules, generator=streams["hex"], **stop, **canvas)
        )
    if lockstep:
        schedules = [planned.schedule for planned in lockstep]
        generators = [streams[planned.method] for planned in lockstep]
        outs.append(decode(model, ids, attention, schedules=schedules, generator=generators, **canvas))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return HexOutput(
        torch.cat([o.sequences for o in outs], dim=1),  # (B, K, L + gen_length): the plan's order
        torch.cat([o.commit_steps for o in outs], dim=1),
        [planned.schedule for planned in plan],
        torch.cat([o.forward_passes for o in outs], dim=1),
        sum(o.forward_calls for o in outs),
    )


def records_of(
    tokenizer, task: Task, batch: list[dict], plan: list[Planned], out: HexOutput, scores: torch.Tensor
) -> list[Record]:
    """A batch's decode as records: each candidate's text (special tokens kept, as the authors decode), both
    rules' answers, likelihood score, commit order and end-of-text map."""
    answers = out.sequences[:, :, -out.commit_steps.shape[-1] :]  # (B, K, G)
    is_end = torch.isin(answers, torch.tensor(end_of_text_ids(tokenizer), device=answers.device)).tolist()
    texts = [[tokenizer.decode(a, skip_special_tokens=False) for a in row] for row in answers.tolist()]
    records = []
    for q, problem in enumerate(batch):
        candidates = [
            Candidate(
                method=planned.method,
                block_length=planned.schedule.block_length,
                sample=planned.sample,
                text=texts[q][k],
                answers=task.answers(texts[q][k]) if out.forward_passes[q, k] else dict.fromkeys(RULES),
                score=float(scores[q, k]),
                forward_passes=int(out.forward_passes[q, k]),
                commit_order=out.commit_steps[q, k].tolist(),
                end_of_text="".join("_" if e else "." for e in is_end[q][k]),
            )
            for k, planned in enumerate(plan)
        ]
        records.append(
            Record(
                id=problem["id"],
                question=task.question(problem["row"]),
                gold={r: task.gold[r](problem["row"]) for r in RULES},
                candidates=candidates,
                forward_calls=out.forward_calls / len(batch),
            )
        )
    return records


def end_of_text_ids(tokenizer) -> list[int]:
    """The tokens that end or pad an answer: EOS, pad, and whichever of END_TOKENS the tokenizer has."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id} | {tokenizer.get_vocab().get(t) for t in END_TOKENS}
    return sorted(i for i in ids if i is not None)


# 6. The vote and the verdicts ----------------------------------------------------------------------------------------


def method_answers(candidates: list[Candidate], rule: str, tie_break: str) -> dict[str, tuple[Any, bool]]:
    """Each method's answer under `rule` and whether its vote tied: HEX and SC take the majority vote over their
    candidates (the authors' vote and tie rule); a one-block baseline's single candidate votes alone."""
    answers = {}  # per method: its candidates' answers and scores
    for c in candidates:
        answers.setdefault(c["method"], []).append((c["answers"][rule], c["score"]))
    return {m: majority_vote(*zip(*pairs), tie_break) for m, pairs in answers.items()}


class Vote(NamedTuple):
    answer: Any  # the method's answer (None: nothing readable)
    tie: bool  # whether another answer had as many votes
    right: bool


class Verdicts(NamedTuple):
    """One question judged under one rule."""

    methods: dict[str, Vote]  # per method: its vote
    candidates: list[bool]  # per candidate, in the record's order: whether its answer is right


def verdicts(task: Task, record: Record, rule: str, tie_break: str) -> Verdicts:
    """Under `rule`: each method's vote and whether it is right, and whether each candidate is right."""
    gold = record["gold"][rule]
    votes = method_answers(record["candidates"], rule, tie_break)
    return Verdicts(
        methods={
            method: Vote(answer, tie, task.is_correct(answer, gold, rule)) for method, (answer, tie) in votes.items()
        },
        candidates=[task.is_correct(c["answers"][rule], gold, rule) for c in record["candidates"]],
    )


# 7. The summary: the paper's figures and the readers' controls, from the records alone -------------------------------


def collapsed(candidate: Candidate) -> bool:
    """The paper's [AfterEoT] collapse: the robust rule reads no answer and over half of the answer region is
    end-of-text (a complete answer followed by padding is not a collapse)."""
    ends = candidate["end_of_text"]
    return candidate["answers"]["robust"] is None and ends.count("_") > COLLAPSE_THRESHOLD * len(ends)


def eot_first_share(candidate: Candidate) -> float:
    """The mechanism of the paper's Fig. 2: the share of end-of-text among the first quarter of the answer's
    tokens in commit order (ties by position)."""
    steps = candidate["commit_order"]
    first = sorted(range(len(steps)), key=lambda i: steps[i])[: max(1, len(steps) // 4)]  # stable: ties by position
    return sum(candidate["end_of_text"][i] == "_" for i in first) / len(first)


@dataclass
class Row:
    """A line of the summary's table, as fractions of questions: a method (its vote) or a HEX expert alone."""

    accuracy: float  # a method's: its vote's; an expert's: each question's share of right samples, averaged
    ci95: tuple[float, float]  # Wilson, over questions
    other_rule_accuracy: float
    oracle: float  # some candidate right
    distinct: float  # distinct readable answers a question
    collapse_rate: float  # the [AfterEoT] collapse, over candidates
    eot_first_share: float
    paper_name: str | None = None  # a method's only, from here on
    correct: int | None = None  # questions its vote got right
    tie_rate: float | None = None
    forward_passes: float | None = None  # its candidates' forward passes a question (records before 2026-12: none)


@dataclass
class VotesPoint:
    """A vote over k of a method's candidates drawn at random, averaged over questions."""

    votes: int  # k
    accuracy: float
    tie_rate: float
    pass_at_k: float


@dataclass
class Paired(PairedDifference):
    """HEX minus another method, question by question; the cross-fitted comparison says which blocks it chose."""

    chosen: list[int] | None = None  # the block chosen for the even questions, and for the odd ones


@dataclass
class Summary:
    """Every reported figure of a run under one answer rule, from its records alone: what the table, the controls
    and the figure print, and `summary.json` (its `asdict`)."""

    task: str
    questions: int
    answer_rule: str
    other_rule: str
    units: str
    methods: dict[str, Row]
    block_lengths: dict[int, Row]  # each HEX expert alone
    paired: dict[str, Paired]
    votes: dict[str, list[VotesPoint]]
    forward_calls_per_question: float
    seconds_per_question: float | None  # the harness's clock, where the records carry it
    settings: Settings

    @classmethod
    def from_file(cls, stored: dict) -> Summary:
        """A summary as `summary.json` stores it."""
        return cls(
            **stored
            | dict(
                methods={m: Row(**v) for m, v in stored["methods"].items()},
                block_lengths={int(b): Row(**v) for b, v in stored["block_lengths"].items()},
                paired={name: Paired(**v) for name, v in stored["paired"].items()},
                votes={m: [VotesPoint(**v) for v in curve] for m, curve in stored["votes"].items()},
                settings=Settings.from_file(stored["settings"]),
            )
        )


def candidate_figures(records: list[Record], judged: dict, rule: str, method: str, block: int | None = None) -> Row:
    """For the candidates of `method` (of one block length, if given), counted over questions (a question's
    samples are not independent): accuracy, each question's share of right ones averaged, with a Wilson interval
    on the number of questions, and the other rule's; the oracle (some candidate right); the distinct readable
    answers a question; collapse and EoT-first shares."""
    other = RULES[1 - RULES.index(rule)]
    picked = [  # per question: (candidate, right, right by the other rule) of the candidates counted
        [
            (c, right, other_right)
            for c, right, other_right in zip(r["candidates"], mine.candidates, theirs.candidates)
            if c["method"] == method and block in (None, c["block_length"])
        ]
        for r, mine, theirs in zip(records, judged[rule], judged[other])
    ]
    shares = [fmean(o for _, o, _ in question) for question in picked]
    flat = [c for question in picked for c, _, _ in question]
    return Row(
        accuracy=fmean(shares),
        ci95=wilson(sum(shares), len(shares)),
        other_rule_accuracy=fmean(fmean(p for _, _, p in question) for question in picked),
        oracle=fmean(any(o for _, o, _ in question) for question in picked),
        distinct=fmean(len({c["answers"][rule] for c, _, _ in question} - {None}) for question in picked),
        collapse_rate=fmean(map(collapsed, flat)),
        eot_first_share=fmean(map(eot_first_share, flat)),
    )


class Ballot(NamedTuple):  # one candidate in a vote
    answer: Any
    score: float  # the likelihood tie-break's
    right: bool


def votes_curve(
    records: list[Record], right: list[list[bool]], method: str, rule: str, tie_break: str
) -> list[VotesPoint]:
    """For k = 1..n of `method`'s n candidates per question: the expected accuracy and tie rate of a vote over
    k of them drawn at random (every k-subset where there are at most `subsets`, else `subsets` random ones
    from a fixed seed; a subset keeps the candidates' order, so ties fall as in the full vote), and pass@k,
    the unbiased chance that one of k is right, 1 - C(n - c, k) / C(n, k) (Chen et al. 2021); each averaged
    over questions. `right`: each candidate's verdict per question, which is also the verdict of a vote for its
    answer."""
    subsets = 50
    draw = random.Random(0)
    ballots = [  # per question: its candidates of `method`
        [
            Ballot(c["answers"][rule], c["score"], is_right)
            for c, is_right in zip(record["candidates"], question_right)
            if c["method"] == method
        ]
        for record, question_right in zip(records, right)
    ]
    n = len(ballots[0])
    curve = []
    for k in range(1, n + 1) if n > 1 else []:
        accuracy = []
        ties = []
        pass_at = []
        for question in ballots:
            answer_right = {ballot.answer: ballot.right for ballot in question}
            if math.comb(n, k) <= subsets:
                drawn = list(combinations(question, k))
            else:
                drawn = [[question[i] for i in sorted(draw.sample(range(n), k))] for _ in range(subsets)]
            votes = [majority_vote([b.answer for b in vote], [b.score for b in vote], tie_break) for vote in drawn]
            accuracy.append(fmean(answer_right.get(answer, False) for answer, _ in votes))
            ties.append(fmean(tie for _, tie in votes))
            pass_at.append(pass_at_k(n, sum(ballot.right for ballot in question), k))
        curve.append(VotesPoint(k, fmean(accuracy), tie_rate=fmean(ties), pass_at_k=fmean(pass_at)))
    return curve


CROSS_FITTED = "HEX - best block chosen on the other half"


def paired_comparisons(records: list[Record], judged: list, shown: list[str], early_stop: bool) -> dict[str, Paired]:
    """HEX minus SC; minus each block length alone (its sample 0; block 32 is the schedule LLaDA and d1 fix in
    advance); minus the best block length chosen on the other half of the questions (two-fold cross-fitting,
    never scored on the questions it was chosen on): the paper's claim and its controls, on the same questions,
    with Agresti-Min paired intervals. With --early-stop HEX minus SC only."""
    hex_right = [question.methods["hex"].right for question in judged]
    others = {"HEX - SC": [question.methods["sc"].right for question in judged]} if "sc" in shown else {}
    if early_stop:
        return {name: Paired(**asdict(paired_difference(hex_right, right))) for name, right in others.items()}
    alone = {}  # each expert's verdicts, question by question: an expert is a block length's sample 0
    for r, question in zip(records, judged):
        experts = [
            (c["block_length"], right)
            for c, right in zip(r["candidates"], question.candidates)
            if c["method"] == "hex" and c["sample"] == 0
        ]
        if len(dict(experts)) < len(experts):
            raise UsageError(f"question {r['id']} holds a HEX block length twice: its run repeated an expert")
        for block, right in experts:
            alone.setdefault(block, []).append(right)
    for b, right in alone.items():
        name = f"HEX - block {b} (fixed in advance)" if b == 32 else f"HEX - block {b}"
        others[name] = right
    chosen_right, chosen = cross_fitted(alone)
    others[CROSS_FITTED] = chosen_right
    paired = {name: Paired(**asdict(paired_difference(hex_right, right))) for name, right in others.items()}
    paired[CROSS_FITTED].chosen = chosen
    return paired


def summarize(records: list[Record], settings: Settings, rule: str, methods: list[str] | None = None) -> Summary:
    """Every reported figure under `rule` (the other rule's accuracy beside), from the records alone; only
    `methods` (default: the run's) in the methods table. Accuracies and differences are fractions."""
    task = TASKS[settings.task]
    other = RULES[1 - RULES.index(rule)]
    tie_break = settings.tie_break
    if settings.early_stop:  # the candidates decoded: every vote is the full vote, but not every expert ran
        records = [dict(r, candidates=[c for c in r["candidates"] if c["forward_passes"]]) for r in records]
    judged = {r: [verdicts(task, record, r, tie_break) for record in records] for r in RULES}
    shown = [m for m in settings.methods if m in (methods or settings.methods)]
    table = {}
    for method in shown:  # a method's verdict is its vote's
        right = [question.methods[method].right for question in judged[rule]]
        passes = [[c.get("forward_passes") for c in r["candidates"] if c["method"] == method] for r in records]
        table[method] = replace(
            candidate_figures(records, judged, rule, method),
            paper_name=PAPER_NAMES[method],
            accuracy=fmean(right),
            ci95=wilson(sum(right), len(right)),
            correct=sum(right),
            other_rule_accuracy=fmean(question.methods[method].right for question in judged[other]),
            tie_rate=fmean(question.methods[method].tie for question in judged[rule]),
            forward_passes=None if None in sum(passes, []) else fmean(map(sum, passes)),
        )
    experts = {}  # with --early-stop an expert alone is not given: a settled question never decoded some
    for b in settings.block_lengths if "hex" in shown and not settings.early_stop else []:
        experts[b] = candidate_figures(records, judged, rule, "hex", b)
    candidates_right = [question.candidates for question in judged[rule]]
    return Summary(
        task=settings.task,
        questions=len(records),
        answer_rule=rule,
        other_rule=other,
        units="accuracies, rates and differences are fractions of questions (printed as % and points)",
        methods=table,
        block_lengths=experts,
        paired=paired_comparisons(records, judged[rule], shown, settings.early_stop) if "hex" in shown else {},
        votes={
            m: votes_curve(records, candidates_right, m, rule, tie_break)
            for m in SAMPLED
            if m in shown and not (m == "hex" and settings.early_stop)
        },
        forward_calls_per_question=fmean(r["forward_calls"] for r in records),
        seconds_per_question=fmean(r["seconds"] for r in records) if all("seconds" in r for r in records) else None,
        settings=settings,
    )


def protocol(settings: Settings) -> str:
    """The run's protocol in one line, as the paper states it."""
    k = settings.samples_per_block
    text = f"gen_length {settings.gen_length}, steps {settings.steps}"
    if "hex" in settings.methods:
        ties = dict(first="the answer seen first (the authors' rule)", likelihood="the higher likelihood score")
        blocks = settings.block_lengths
        text += (
            f", HEX block lengths {' '.join(map(str, blocks))}, temperature {settings.temperature:g}, "
            f"{plural(k, 'sample')} per block length ({plural(k * len(blocks), 'vote')}), "
            f"ties to {ties[settings.tie_break]}"
        )
        text += "" if settings.threshold is None else f", confidence threshold {settings.threshold:g}"
        text += ", in waves stopped once the vote is settled" if settings.early_stop else ""
    if "sc" in settings.methods:
        text += (
            f"; SC block length {settings.sc_block_length}, temperature {settings.sc_temperature:g}, "
            f"{settings.sc_samples} samples"
        )
    return text


def summary_table(summary: Summary) -> str:
    """The summary as plain text, in the paper's words: accuracies in %, differences in points."""

    def pct(x):
        return "      -" if x is None else f"{100 * x:6.2f}%"

    settings = summary.settings
    lines = [
        f"{TASKS[summary.task].title}, {plural(summary.questions, 'question')}; "
        f"{protocol(replace(settings, methods=list(summary.methods)))}",  # the methods shown
        f"answers read by the {summary.answer_rule} rule ({summary.other_rule} rule beside); every interval "
        "is 95% over questions",
        f"{'method':<30}{'accuracy':>9}  {'95% interval':<18}{summary.other_rule:>9}{'tie rate':>10}{'oracle':>9}"
        f"{'collapse':>10}{'EoT-first':>10}{'passes':>8}",
    ]
    rows = [(f"{v.paper_name} ({m})", v) for m, v in summary.methods.items()]
    rows += [(f"  HEX expert, block {b}", v) for b, v in summary.block_lengths.items()]
    for label, v in rows:
        lines.append(
            f"{label:<30}{pct(v.accuracy):>9}  [{pct(v.ci95[0])}, {pct(v.ci95[1])}]"
            f"{pct(v.other_rule_accuracy):>9}{pct(v.tie_rate):>10}{pct(v.oracle):>9}"
            f"{pct(v.collapse_rate):>10}{pct(v.eot_first_share):>10}"
            + ("" if v.forward_passes is None else f"{v.forward_passes:>8.0f}")
        )
    lines += controls_table(summary, pct)
    lines.append(
        f"oracle: some candidate is right; collapse: no readable answer (robust rule) and over "
        f"{COLLAPSE_THRESHOLD:.0%} end-of-text (the [AfterEoT] collapse);\nEoT-first: end-of-text among the "
        "first quarter of committed answer tokens (Fig. 2); an expert's accuracy is over questions, each question's "
        "share of right samples; passes: its candidates' forward passes a question (NFE); no figure of SC is published"
        + (
            "\n--early-stop: a question stopped once HEX's vote was settled, so no HEX expert alone, HEX votes curve "
            "or HEX minus an expert, and HEX's oracle, collapse and distinct answers are over the experts decoded"
            if settings.early_stop
            else ""
        )
    )
    lines += [
        f"run on {e['device_name']} ({settings.dtype}, torch {e['torch']}, transformers {e['transformers']}, "
        f"{e['world_size']} process(es), mask id {e['mask_id']})"
        for e in settings.environments
    ]
    lines.append(
        f"{summary.forward_calls_per_question:.1f} forward calls"
        + ("" if summary.seconds_per_question is None else f" and {summary.seconds_per_question:.2f} s")
        + " per question"
    )
    return "\n".join(lines)


def controls_table(summary: Summary, pct: Callable) -> list[str]:
    """The readers' controls as text: votes curves and paired differences."""
    lines = []
    for m, curve in summary.votes.items():
        lines.append(
            f"{PAPER_NAMES[m]}, a vote over k random candidates (expected) -- k: accuracy / tie rate / pass@k "
            f"({summary.methods[m].distinct:.2f} distinct readable answers a question)"
        )
        cells = [
            f"{v.votes}: {100 * v.accuracy:.1f} / {100 * v.tie_rate:.1f} / {100 * v.pass_at_k:.1f}" for v in curve
        ]
        lines += ["  " + "   ".join(cells[i : i + 6]) for i in range(0, len(cells), 6)]
    for name, paired in summary.paired.items():
        chosen = "" if paired.chosen is None else f" (blocks {paired.chosen[0]} and {paired.chosen[1]})"
        low, high = paired.ci95
        lines.append(
            f"{name}{chosen}: {100 * paired.difference:+.2f} points [{100 * low:+.2f}, {100 * high:+.2f}] "
            f"(paired, Agresti-Min); only HEX right {paired.only_first}, only the other {paired.only_second}"
        )
    return lines


# Part two, the harness: data files, checkpoints, the figure, run files, the command line =============================


# 8. Data files: a task's rows, checked -------------------------------------------------------------------------------


def row_problem(task: Task, row: Any) -> str | None:
    """What is wrong with a data row for this task, or None: its question and both references must read."""
    try:
        if isinstance(task.question(row), str) and [rule(row) for rule in task.gold.values()]:
            return None
    except ValueError as error:
        return str(error)
    except (KeyError, TypeError, AttributeError, IndexError):
        pass
    return f"needs {task.fields}"


def _one_line(error, limit=300):
    """An error's message as one line (library messages span several), cut at a word to `limit` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 4].rsplit(" ", 1)[0] + " ..."


def load_rows(task: Task, path: str | None) -> tuple[list[dict], dict]:
    """The task's rows in the dataset's own format and the data's identity (source, fingerprint, rows): a local
    JSONL or parquet file, read by pyarrow, else the split through the `datasets` library."""
    if path is None:
        name, config, split = task.hub
        try:
            from datasets import load_dataset

            dataset = load_dataset(name, config, split=split)
        except Exception as error:  # noqa: BLE001 -- no datasets, no network, no cache: say how to go on
            raise UsageError(
                f"could not load {name} ({config or 'default'}, {split}) through `datasets` "
                f"({type(error).__name__}: {_one_line(error, 200)}). Pass a local copy with "
                f"--data FILE, a JSONL or parquet file of its rows, made where the hub is reachable with "
                f"load_dataset({name!r}, {config!r}, split={split!r}).to_json('{task.title.lower()}.jsonl')"
            ) from None
        rows = list(map(dict, dataset))
        source = {"source": f"hub:{name}/{config or 'default'}/{split}", "fingerprint": dataset._fingerprint}
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise UsageError(
                f"--data {path}: "
                + ("is a folder; pass the task's JSONL or parquet file" if file.is_dir() else "no such file")
            )
        import pyarrow.json
        import pyarrow.parquet

        data = file.read_bytes()  # read once: the rows and their fingerprint come from the same bytes
        try:
            read = pyarrow.parquet.read_table if file.suffix == ".parquet" else pyarrow.json.read_json
            rows = read(pyarrow.BufferReader(data)).to_pylist()
        except Exception as error:  # noqa: BLE001 -- a damaged or foreign file
            raise UsageError(
                f"--data {path}: not a JSONL file (one JSON object per line) or a parquet file ({_one_line(error)})"
            ) from None
        source = {
            "source": str(file.resolve()),
            "fingerprint": "sha256:" + hashlib.sha256(data).hexdigest(),
        }
    for number, row in enumerate(rows, start=1):
        if problem := row_problem(task, row):
            raise UsageError(f"--data {path or source['source']}, row {number}: {problem}")
    if not rows:
        raise UsageError(f"--data {path}: holds no rows")
    return rows, {**source, "rows": len(rows)}


# 9. Model families: each checkpoint's own model file, fitted to this transformers, as a mask predictor ---------------


def _transformers_version():
    import transformers

    return tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])


def fit_llada_code(model_class: type, config) -> type:
    """LLaDA's own model file predates transformers 5: under 5.x, a subclass with the three fixes it needs, each
    only where the class lacks it (post_init, tie_weights' arguments, config.use_cache); under 4.x, the class."""
    if _transformers_version() < (5, 0):
        return model_class
    if not hasattr(config, "use_cache"):
        config.use_cache = False  # 5.x no longer keeps use_cache on the config; LLaDA's forward reads it

    def __init__(self, *args, **kwargs):
        model_class.__init__(self, *args, **kwargs)
        if not hasattr(self, "all_tied_weights_keys"):  # 5.x needs post_init(); LLaDA's never calls it
            self.post_init()

    namespace = {"__init__": __init__}
    if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(model_class.tie_weights).parameters.values()):
        namespace["tie_weights"] = lambda self, *args, **kwargs: model_class.tie_weights(self)  # 5.x passes some
    return type(model_class.__name__, (model_class,), namespace)


def _default_rope(config, device=None, seq_len=None, **kwargs):
    """1 / theta^(2i / head_dim), no scaling: what transformers 4.x registered as ROPE_INIT_FUNCTIONS["default"]."""
    dim = int(config.hidden_size // config.num_attention_heads * getattr(config, "partial_rotary_factor", 1.0))
    return 1.0 / config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device, torch.float) / dim), 1.0


def fit_dream_code(model_class: type, config) -> type:
    """Dream's own model file, fitted where it fails: its `from_pretrained` override returns the model alone,
    losing `output_loading_info` (4.x and 5.x): PreTrainedModel's own is used; its rotary embedding asks
    ROPE_INIT_FUNCTIONS for "default", gone in 5.x: Dream's module (only) gets it. See also `refill_rotary`."""
    from transformers import PreTrainedModel

    module = sys.modules[model_class.__module__]
    rope = getattr(module, "ROPE_INIT_FUNCTIONS", None)
    if rope is not None and "default" not in rope:
        module.ROPE_INIT_FUNCTIONS = {**rope, "default": _default_rope}
    own = PreTrainedModel.from_pretrained.__func__
    return (
        model_class
        if model_class.from_pretrained.__func__ is own
        else type(model_class.__name__, (model_class,), {"from_pretrained": classmethod(own)})
    )


def refill_rotary(model: nn.Module) -> nn.Module:
    """Under 5.x a rotary embedding's non-persistent `inv_freq` buffer comes back unset from loading (no error,
    wrong logits): recompute it with the module's own rope function (under 4.x it is right already)."""
    for module in model.modules() if _transformers_version() >= (5, 0) else []:
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor) and hasattr(module, "rope_init_fn"):
            inv_freq, module.attention_scaling = module.rope_init_fn(
                module.config, module.inv_freq.device, **getattr(module, "rope_kwargs", {})
            )
            module.inv_freq = inv_freq.to(module.inv_freq.device)
            module.original_inv_freq = module.inv_freq
    return model


class DreamMaskPredictor(nn.Module):
    """A Dream-family model as hex.py's mask predictor. Dream is adapted from an autoregressive model (Qwen2.5):
    its logits at position i predict token i + 1, so they are shifted back one place, as Dream's sampler does.
    A padded batch gets Dream's 4-D mask (B, 1, T, T) and position ids of real tokens only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if attention_mask is None:
            logits = self.model(x).logits
        else:
            real = attention_mask.bool()  # (B, T)
            pairs = real[:, None, :, None] & real[:, None, None, :]  # (B, 1, T, T): both tokens real
            positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(~real, 1)
            logits = self.model(x, attention_mask=pairs, position_ids=positions).logits
        return MaskPredictorOutput(torch.cat([logits[:, :1], logits[:, :-1]], dim=1))


@dataclass(frozen=True)
class Family:
    name: str
    fit: Callable[[type, Any], type]  # the remote model class, fitted to this transformers
    wrap: Callable[[nn.Module], nn.Module]  # the loaded model, as hex.py's mask predictor
    checkpoints: str  # for messages


FAMILIES = {  # by the config's model_type, lower case
    "llada": Family("LLaDA", fit_llada_code, lambda model: model, "LLaDA-8B-Instruct, LLaDA-1.5"),
    "dream": Family(
        "Dream", fit_dream_code, lambda model: DreamMaskPredictor(refill_rotary(model)), "Dream-v0-Instruct-7B"
    ),
}


def model_family(config, name: str) -> Family:
    """The family of a checkpoint, from its config's model_type (never from its name)."""
    kind = str(getattr(config, "model_type", "") or "")
    if kind.lower() not in FAMILIES:
        known = ", ".join(f"{f.name} ({key!r}: {f.checkpoints})" for key, f in FAMILIES.items())
        raise UsageError(
            f"--model {name}: model_type {kind!r} is not a supported masked diffusion family; supported: {known}"
        )
    return FAMILIES[kind.lower()]


def load_tokenizer(name: str):
    """The checkpoint's tokenizer and config (seconds: checked before the weights load)."""
    from transformers import AutoConfig, AutoTokenizer

    if (path := Path(name).expanduser()).is_file():
        raise UsageError(
            f"--model {name}: is a file; pass the checkpoint's folder (config.json, tokenizer and weights) or a hub id"
        )
    if not path.is_dir() and (name.startswith((".", "/", "~")) or name.count("/") != 1):  # not a hub id either
        raise UsageError(f"--model {name}: no such folder (a hub id is owner/name)")
    missing = [f for f in ("config.json", "tokenizer_config.json") if path.is_dir() and not (path / f).is_file()]
    if missing:
        raise UsageError(f"--model {name}: the folder has no {' and no '.join(missing)}, so it holds no checkpoint")
    try:
        return (
            AutoTokenizer.from_pretrained(name, trust_remote_code=True),
            AutoConfig.from_pretrained(name, trust_remote_code=True),
        )
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {name}: cannot load its tokenizer or config ({_one_line(error)})") from None


def load_model(name: str, config, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The checkpoint as hex.py's mask predictor, through its own code fitted to this transformers; a weight
    the checkpoint lacks is refused (it would be random)."""
    from transformers import AutoModel
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    family = model_family(config, name)
    auto_map = getattr(config, "auto_map", None) or {}
    try:
        model_class = (
            family.fit(get_class_from_dynamic_module(auto_map["AutoModel"], name), config)
            if "AutoModel" in auto_map
            else AutoModel
        )
        dtype_key = "dtype" if _transformers_version() >= (4, 56) else "torch_dtype"  # renamed in 4.56
        model, info = model_class.from_pretrained(
            name, config=config, trust_remote_code=True, output_loading_info=True, **{dtype_key: dtype}
        )
    except (OSError, ValueError) as error:
        raise UsageError(f"--model {name}: cannot load its weights ({_one_line(error)})") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        named = ", ".join(missing[:5]) if len(missing) <= 5 else ", ".join(missing[:5]) + ", ..."
        raise UsageError(
            f"--model {name}: the checkpoint has no weights for {plural(len(missing), 'parameter')} ({named}); "
            "they would be random"
        )
    return family.wrap(model).to(device).eval()


def find_mask_id(tokenizer, config) -> int:
    """The [MASK] id: the tokenizer's mask token, LLaDA's `<|mdm_mask|>`, Dream's `<|mask|>`, or the config's."""
    vocab = tokenizer.get_vocab()
    found = [
        tokenizer.mask_token_id,
        vocab.get("<|mdm_mask|>"),
        vocab.get("<|mask|>"),
        getattr(config, "mask_token_id", None),
    ]
    mask_id = next((i for i in found if i is not None), None)
    if mask_id is None:
        raise UsageError("cannot tell the mask token id from the tokenizer or config: pass --mask-id")
    return mask_id


# 10. The figure ------------------------------------------------------------------------------------------------------


def write_figures(summary: Summary, records: list[Record], path: Path):
    """One PNG: accuracy per method and per HEX expert with 95% intervals over questions (the paper's bars);
    expected accuracy, tie rate and pass@k against votes for HEX and SC (its scaling plot); the step that committed
    each answer position of one question (its Fig. 2).
    Returns the matplotlib Figure."""
    from matplotlib.figure import Figure  # no pyplot: no window, no global state

    settings = summary.settings
    fig = Figure(figsize=(14, 9), layout="constrained")
    axes = fig.subplot_mosaic([["bars", "votes"], ["order", "order"]])
    sizes = [e["parameters"] for e in settings.environments if "parameters" in e]  # older files: none noted
    tiny = f" (a stand-in of {sizes[-1]:,} parameters, not a result)" if sizes and sizes[-1] < 10**8 else ""
    fig.suptitle(
        f"{settings.model}{tiny} on {TASKS[summary.task].title}, {plural(summary.questions, 'question')}, "
        f"{summary.answer_rule} rule (this run, not the paper's figures)\n{protocol(settings)}",
        fontsize=9,
        wrap=True,  # the protocol of a run with every method is wider than the figure
    )
    _accuracy_bars(axes["bars"], summary)
    _votes_plot(axes["votes"], summary)
    record = next((r for r in records if any(map(collapsed, r["candidates"]))), records[0])
    rows = [c for c in record["candidates"] if c["sample"] == 0 and c.get("forward_passes") != 0]  # decoded ones
    labels = [f"HEX block {c['block_length']}" if c["method"] == "hex" else PAPER_NAMES[c["method"]] for c in rows]
    order = axes["order"]
    commits = [[step / max(c["commit_order"]) for step in c["commit_order"]] for c in rows]  # a threshold varies
    image = order.imshow(commits, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0, vmax=1)
    order.set_yticks(range(len(rows)), labels, fontsize=8)
    order.set(
        xlabel="answer position",
        title=f"Commit order, question {record['id']}: when each answer position was committed, each candidate's "
        "first step dark, its last bright (red |: end-of-text)",
    )
    fig.colorbar(image, ax=order, label="share of the candidate's steps", fraction=0.03)
    ends = [(i, r) for r, c in enumerate(rows) for i, e in enumerate(c["end_of_text"]) if e == "_"]
    if ends:  # thin marks: at gen_length 256 a run of end-of-text is a red band
        positions = [i for i, _ in ends]
        candidate_rows = [r for _, r in ends]
        order.scatter(positions, candidate_rows, marker="|", s=60, linewidths=0.6, color="red")
    fig.savefig(path, dpi=100, format="png")
    return fig


def _accuracy_bars(ax, summary):
    methods = list(summary.methods.items())  # first, so a method's bar is its index here
    bars = [v for _, v in methods] + list(summary.block_lengths.values())
    heights = [100 * v.accuracy for v in bars]
    below = [100 * (v.accuracy - v.ci95[0]) for v in bars]
    above = [100 * (v.ci95[1] - v.accuracy) for v in bars]
    colours = [dict(hex="tab:blue", sc="tab:purple").get(m, "tab:gray") for m, _ in methods]
    colours += ["tab:cyan"] * len(summary.block_lengths)
    ax.bar(range(len(bars)), heights, color=colours, edgecolor="black", capsize=4, yerr=[below, above])
    for i, h in enumerate(heights):  # the edge and the label keep a 0% bar visible
        ax.annotate(f"{h:.1f}%", (i, h), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    labels = [v.paper_name for _, v in methods] + [f"block {b}" for b in summary.block_lengths]
    ax.set_xticks(range(len(bars)), labels, rotation=30, ha="right", fontsize=8)
    ax.set(
        ylabel="accuracy (%), 95% interval over questions",
        ylim=(0, 105),
        title="Accuracy: each method, each HEX expert",
    )


def _votes_plot(ax, summary: Summary):
    """A vote over k random candidates: a colour a method, a line style a measure, each named once in the legend."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    styles = dict(
        hex=dict(color="tab:blue", linewidth=4, alpha=0.45),
        sc=dict(color="tab:purple", linewidth=1.5),
    )
    measures = dict(accuracy=("o-", "expected accuracy"), tie_rate=("s--", "tie rate"), pass_at_k=("^:", "pass@k"))
    for m, curve in summary.votes.items():  # HEX broad and pale under SC: equal curves both stay visible
        for key, (line, what) in measures.items():
            y = [100 * getattr(v, key) for v in curve]
            ax.plot([v.votes for v in curve], y, line, label=f"{PAPER_NAMES[m]}, {what}", **styles[m])
    handles = [Line2D([], [], label=PAPER_NAMES[m], **styles[m]) for m in summary.votes]
    handles += [
        Line2D([], [], color="black", linestyle=line[1:], marker=line[0], label=what)
        for line, what in measures.values()
    ]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    title = "A vote over k random candidates" if ax.lines else "Votes: one candidate per method, no curve"
    ax.set(xlabel="votes k", ylabel="%, averaged over questions", ylim=(0, 105), title=title)
    if ax.lines:
        ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))


# 11. Run files: records, settings, one writer, resuming, growing -----------------------------------------------------


def declared_as(**what) -> tuple[str, ...]:
    """The names of the settings whose declaration says `what`, e.g. declared_as(compared=True)."""
    return tuple(f.name for f in fields(Settings) if all(getattr(declared(f), k) == v for k, v in what.items()))


def settings_conflict(old: Settings, new: Settings) -> list[str]:
    """What differs between stored settings and a new run's (the compared ones), key by key. The same data under
    another path is the same data; the methods may differ (a run grows), and a method's own settings count only
    where both runs have it."""
    changed = []
    for f in fields(old):
        key = f.name
        before = getattr(old, key)
        now = getattr(new, key)
        method = declared(f).method
        if not declared(f).compared or method is not None and (method not in old.methods or method not in new.methods):
            continue
        if key == "data":  # the data is its content
            if (before["fingerprint"], before["rows"]) == (now["fingerprint"], now["rows"]):
                continue
            before = f"{before['source']} ({before['fingerprint']}, {before['rows']} rows)"
            now = f"{now['source']} ({now['fingerprint']}, {now['rows']} rows)"
        if before != now:
            changed.append(f"{key}: {before} there, {now} now")
    return changed


def grown(old: Settings, new: Settings) -> Settings:
    """The stored settings with the methods a new run asks for that they lack, and those methods' own settings:
    the one way a run's settings change. Questions not yet decoded are decoded in batches of the new size."""
    added = [m for m in new.methods if m not in old.methods]
    own = {f.name: getattr(new, f.name) for f in fields(new) if declared(f).method in added}
    methods = [m for m in METHODS if m in old.methods or m in new.methods]
    return replace(old, **own, methods=methods, batch_size=new.batch_size)


def methods_of(record: Record) -> set[str]:
    return {c["method"] for c in record["candidates"]}


def merged(held: Record, new: Record, settings: Settings) -> Record:
    """A held record grown by a new decode's candidates, in the order of the run's candidate plan."""
    candidates = {(c["method"], c["sample"], c["block_length"]): c for c in held["candidates"] + new["candidates"]}
    order = [(planned.method, planned.sample, planned.schedule.block_length) for planned in candidate_plan(settings)]
    costs = dict(
        forward_calls=held["forward_calls"] + new["forward_calls"],
        seconds=held["seconds"] + new["seconds"],
    )
    return held | costs | dict(candidates=[candidates[key] for key in order])


def write_atomically(path: Path, content: str | Callable[[Path], None]) -> None:
    """Write path through a temporary file beside it, so no reader sees half of it: the text, or what a function
    writes to the temporary path it is given (a figure)."""
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    if isinstance(content, str):
        temporary.write_text(content, encoding="utf-8")
    else:
        content(temporary)
    temporary.replace(path)


class RunFiles:
    """The files of one run, named after --output: the records (JSONL), the settings, the summary, the figure, the
    lock and torchrun's part files. `open` makes the folders and takes the lock (an exclusive flock on
    `<output>.lock`, released by the OS if the holder dies); `close` releases it and removes the folders a failed
    start made, so a failed start leaves nothing. A folder that cannot be written is `read_only`."""

    def __init__(self, output: Path):
        self.output = output
        self.lock = output.with_name(output.name + ".lock")
        self.settings = output.with_suffix(".config.json")
        self.summary = output.with_suffix(".summary.json")
        self.figure = output.with_suffix(".png")
        self.fd = None  # the lock's file descriptor while this run holds it
        self.made = []  # the folders this run made
        self.read_only = None  # why the folder cannot be written, if it cannot
        self.superseded = 0  # lines of the record files that a later line of the same question replaces

    def open(self) -> None:
        self.made = [p for p in self.output.parents if not p.exists()][::-1]
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self.close()
            raise UsageError(
                f"--output {self.output}: cannot create the folder {self.output.parent} ({error.strerror})"
            ) from None
        while self.fd is None:
            try:
                fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:  # a read-only folder or file system
                self.read_only = f"{self.output.parent} cannot be written ({error.strerror})"
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UsageError(
                    f"{self.output} is being written by another run (it holds {self.lock}); wait for "
                    "it, or use another --output"
                ) from None
            try:  # the previous holder may have removed the file as we opened it: then try again
                held = os.stat(self.lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                held = False
            if held:
                self.fd = fd
            else:
                os.close(fd)

    def close(self) -> None:
        if self.fd is not None:
            self.lock.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None
        for folder in reversed(self.made):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def parts(self) -> list[Path]:
        """The torchrun ranks' files of this output, `<stem>.part<rank>.jsonl`."""
        return sorted(self.output.parent.glob(f"{glob.escape(self.output.stem)}.part[0-9]*.jsonl"))

    def records(self) -> dict[int, Record]:
        """Finished questions by id; a later line of a question (a grown record) replaces an earlier one. A torn
        last line (an interrupted write) is not a finished question."""
        done = {}
        lines = 0
        for path in [self.output, *self.parts()]:
            text = path.read_text(encoding="utf-8") if path.is_file() else ""
            for number, line in enumerate(text[: text.rfind("\n") + 1].splitlines(), start=1):
                lines += 1
                try:
                    record = json.loads(line)
                    done[record["id"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UsageError(
                        f"{path}, line {number}: not a record of this script; fix or remove it, or use --no-resume"
                    ) from None
        self.superseded = lines - len(done)
        return done

    def stored_settings(self) -> Settings:
        return Settings.from_file(json.loads(self.settings.read_text(encoding="utf-8")))

    def write_settings(self, settings: Settings) -> None:
        write_atomically(self.settings, json.dumps(asdict(settings), indent=1))

    def finished(self, settings: Settings, requested: set[int], resume: bool) -> tuple[bool, Settings]:
        """Whether every question asked for is done with every method of the run, and the run's settings: the
        stored ones grown by the methods asked for that they lack. Results made with other settings, or that
        cannot be checked, are refused; so is work to do in a folder that cannot be written."""
        complete = False
        if resume and self.settings.is_file():
            old = self.stored_settings()
            if changed := settings_conflict(old, settings):
                raise UsageError(
                    f"{self.output} holds results made with other settings:\n  "
                    + "\n  ".join(changed)
                    + "\nthe results are left untouched; use another --output, or --no-resume to start them over"
                )
            done = self.records()
            settings = grown(old, settings)  # once a run has grown by a method, it has it (a killed growth resumes)
            complete = all(q in done and set(settings.methods) <= methods_of(done[q]) for q in requested)
            settings = old if complete else settings
        elif resume and (self.output.exists() or self.parts()):
            raise UsageError(
                f"{self.output} exists but has no settings file ({self.settings.name}), so its records "
                "cannot be checked; use another --output, or --no-resume to start over"
            )
        if self.read_only and not complete:
            raise UsageError(f"--output {self.output}: {self.read_only}; use another --output")
        return complete, settings

    def start(self, settings: Settings, resume: bool, environment: dict) -> None:
        """Write the settings once every check has passed and the model has loaded (--no-resume deletes the old
        files only now), with this machine and what the model gave (mask id, end-of-text ids) appended."""
        if not resume:
            for path in (self.output, self.settings, self.summary, self.figure, *self.parts()):
                path.unlink(missing_ok=True)
        seen = settings.environments  # a resumed run's settings are the stored ones, grown
        environments = seen if environment in seen else seen + [environment]
        self.write_settings(replace(settings, environments=environments))

    def write_records(self, records: dict[int, Record]) -> None:
        """Replace the JSONL by these records, in id order, and drop torchrun's part files."""
        write_atomically(self.output, "".join(json.dumps(records[k]) + "\n" for k in sorted(records)))
        for path in self.parts():
            path.unlink()

    def merge_parts(self) -> dict[int, Record]:
        """Every finished record; torchrun's part files and grown records merged into the one JSONL, one line a
        question (where it can be written)."""
        records = self.records()
        if (self.parts() or self.superseded) and not self.read_only:
            self.write_records(records)
        return records


# 12. The command line ------------------------------------------------------------------------------------------------


def add_method_settings(add: Callable, default: Settings) -> None:
    """HEX's and self-consistency's flags (their settings' `method`), each read only when it runs;
    `default`: the settings' declared defaults."""
    add("--block-lengths", type=int, nargs="+", help="HEX's; default: gen_length/32 x (1 2 4 8 16)")
    add(
        "--samples-per-block",
        type=int,
        default=default.samples_per_block,
        help="HEX samples per block length (needs --temperature > 0) (default: %(default)s)",
    )
    add(
        "--temperature",
        type=float,
        default=default.temperature,
        help="HEX's sampling temperature (default: %(default)s)",
    )
    add("--threshold", type=float, help="HEX's experts commit every token whose confidence clears it (ours)")
    add("--early-stop", action="store_true", help="HEX's experts in waves, stopped once the vote is settled (exact)")
    add(
        "--sc-block-length",
        type=int,
        default=default.sc_block_length,
        help="self-consistency's one schedule (default: %(default)s)",
    )
    add("--sc-samples", type=int, help="default: HEX's votes (block lengths x samples): equal cost")
    add("--sc-temperature", type=float, help=f"default: --temperature if > 0, else {SC_TEMPERATURE}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    default = Settings()  # the defaults are the settings' declared ones
    add("--task", choices=list(TASKS), default=default.task, help="the benchmark (default: %(default)s)")
    add("--model", default=default.model, help="hub id or local folder (default: %(default)s)")
    add("--device", help="cpu, cuda or cuda:N (default: this rank's GPU, else cpu)")
    add(
        "--dtype",
        choices=["bfloat16", "float16", "float32", "float64"],
        help="default: bfloat16 on CUDA, else float32",
    )
    add("--data", help="local JSONL or parquet file of the task's rows (default: the hub's split)")
    add("--limit", type=int, help="evaluate at most this many questions")
    add("--offset", type=int, default=0, help="skip this many questions first (default: %(default)s)")
    add("--gen-length", type=int, default=default.gen_length, help="answer tokens (default: %(default)s)")
    add("--steps", type=int, help="default: gen_length / 2")
    add("--mask-id", type=int, help="default: from the tokenizer or config")
    add(
        "--methods",
        nargs="+",
        choices=METHODS,
        metavar="METHOD",
        help=f"any of {', '.join(METHODS)} (default: all but {' and '.join(OPT_IN)}, which a finished run can add; "
        "--lm-eval: hex)",
    )
    add_method_settings(parser.add_argument_group("the methods' own settings").add_argument, default)
    add(
        "--answer-rule",
        choices=RULES,
        default="authors",
        help="the rule the summary leads with; both are stored (default: %(default)s)",
    )
    add(
        "--tie-break",
        choices=["first", "likelihood"],
        default=default.tie_break,
        help="the vote's: first seen, as the authors (default: %(default)s)",
    )
    add("--batch-size", type=int, default=1, help="questions per call, left padded (default: %(default)s)")
    add("--seed", type=int, default=default.seed, help="of every method's random stream (default: %(default)s)")
    add("--output", help="JSONL path (default: results/TASK-MODEL-gGEN-sSTEPS-tTEMP-xSAMPLES.jsonl)")
    add(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep what --output holds (default); --no-resume starts over",
    )
    harness = parser.add_argument_group(f"lm-evaluation-harness (pip install lm-eval=={LM_EVAL_VERSION})")
    harness.add_argument(
        "--lm-eval", nargs="+", metavar="TASK", help="run lm-eval's generative tasks with --methods, scored by lm-eval"
    )
    harness.add_argument("--include-path", nargs="+", default=[], metavar="DIR", help="folders of more task YAMLs")
    harness.add_argument("--use-cache", metavar="DIR", help="lm-eval's cache: refused (it would merge the candidates)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with every setting checked and the defaults filled in; a mistake is a UsageError that
    names the flag (argparse's own errors exit at once with status 2)."""
    args = build_parser().parse_args(argv)
    if args.use_cache:
        raise UsageError(
            "--use-cache: lm-eval's cache keys on a request alone, so all K copies of a question would get one "
            "answer (HEX: one expert); --lm-eval keeps each question's candidates in --output and resumes from them"
        )
    if args.lm_eval and (args.data or args.offset):
        raise UsageError("--lm-eval reads lm-eval's own tasks and rows: drop --data and --offset")
    default = ["hex"] if args.lm_eval else [m for m in METHODS if m not in OPT_IN]
    args.methods = [m for m in METHODS if m in (args.methods or default)]
    numbers = ("limit", "batch_size", "samples_per_block", "gen_length", "steps", "sc_samples", "sc_block_length")
    for name in numbers:
        if (value := getattr(args, name)) is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.block_lengths is not None and min(args.block_lengths) < 1:
        raise UsageError(f"--block-lengths must each be >= 1, got {' '.join(map(str, args.block_lengths))}")
    if args.block_lengths is not None and len(set(args.block_lengths)) < len(args.block_lengths):
        raise UsageError(
            f"--block-lengths {' '.join(map(str, args.block_lengths))}: each block length is one expert, named "
            "once (more votes an expert: --samples-per-block with --temperature > 0)"
        )
    if args.offset < 0 or (args.mask_id is not None and args.mask_id < 0):
        raise UsageError(f"--offset and --mask-id must be >= 0, got {args.offset} and {args.mask_id}")
    for name in ("temperature", "sc_temperature"):
        if (value := getattr(args, name)) is not None and not 0 <= value < math.inf:
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"--threshold must be a confidence in [0, 1], got {args.threshold}")
    if args.lm_eval and args.early_stop:
        raise UsageError("--early-stop reads each candidate's answer by the task's rules: --lm-eval's filters read")
    if "hex" in args.methods and args.samples_per_block > 1 and args.temperature == 0:
        raise UsageError(
            f"--samples-per-block {args.samples_per_block} at --temperature 0: temperature 0 is "
            "deterministic, so every sample of a block length would be the same decode at "
            f"{args.samples_per_block}x the cost; pass --temperature > 0 to sample, or drop it"
        )
    if args.steps is None and args.gen_length % 2:
        raise UsageError(f"--gen-length {args.gen_length} is odd: pass --steps (the default is gen_length / 2)")
    args.steps = args.steps or args.gen_length // 2
    check_schedules(args)
    if args.lm_eval:
        args.output = args.output or f"results/lm-eval-{Path(args.model.rstrip('/')).name}"
        return args
    args.output = args.output or (
        f"results/{args.task}-{Path(args.model.rstrip('/')).name}-g{args.gen_length}-s"
        f"{args.steps}-t{args.temperature:g}-x{args.samples_per_block}.jsonl"
    )
    return args


def check_schedules(args: argparse.Namespace) -> None:
    """Fill in the authors' block lengths and SC's defaults, and check that every schedule divides gen_length and
    the steps, naming the flags the user passed."""
    given = args.block_lengths is not None
    if not given and args.gen_length % 32 and "hex" in args.methods:
        raise UsageError(
            f"--gen-length {args.gen_length} is not a multiple of 32, so the authors' block lengths "
            "(gen_length/32 x 1, 2, 4, 8, 16) do not apply: pass --block-lengths"
        )
    if not given:
        args.block_lengths = [args.gen_length // 32 * m for m in (1, 2, 4, 8, 16)] if args.gen_length % 32 == 0 else []
    args.sc_samples = args.sc_samples or (len(args.block_lengths) or 5) * args.samples_per_block
    if args.sc_temperature is None:
        args.sc_temperature = args.temperature if args.temperature > 0 else SC_TEMPERATURE
    if "sc" in args.methods and args.sc_samples > 1 and args.sc_temperature == 0:
        raise UsageError(
            f"--sc-samples {args.sc_samples} at --sc-temperature 0: every sample would be the same "
            "decode, and the vote a single answer; pass --sc-temperature > 0"
        )
    blocks = " ".join(map(str, args.block_lengths))
    flags = {}  # each block length to check, and the flag that set it
    if "hex" in args.methods:
        flag = (
            f"--block-lengths {blocks}"
            if given
            else f"the default block lengths {blocks} (gen_length/32 x 1, 2, 4, 8, 16)"
        )
        flags = dict.fromkeys(args.block_lengths, flag)
    if "sc" in args.methods:
        flags[args.sc_block_length] = f"--sc-block-length {args.sc_block_length}"
    for b, flag in flags.items():
        try:
            steps_per_block(args.gen_length, args.steps, b)
        except ValueError as error:
            raise UsageError(
                f"{flag} with --gen-length {args.gen_length} --steps {args.steps}: {error}; pass block "
                "lengths that divide --gen-length, or another --gen-length or --steps"
            ) from None


def resolve_device(requested: str | None) -> torch.device:
    """The device to run on; one this machine or this torch build lacks is a usage error, found before loading."""
    if requested is None:
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
        torch.empty(1, device=device).cpu()  # a bad name, CUDA without a GPU, cuda:9 of 8, mps, meta: all raise
    except Exception as error:  # noqa: BLE001 -- whatever the reason, the device is unusable
        reason = _one_line(error, 120) or type(error).__name__
        raise UsageError(f"--device {requested}: not a device this torch build can use here ({reason})") from None
    return device


def check_output(text: str) -> Path:
    """--output as a results file that can exist: not a folder (one under a file cannot be made: `RunFiles.open`)."""
    output = Path(text).expanduser()
    if output.is_dir():
        raise UsageError(f"--output {text}: is a folder; name a results file, e.g. --output {output / 'run.jsonl'}")
    return output


# 13. main: parse, data, settings, done already?, model, decode what is missing, report -------------------------------


def main(argv: list[str] | None = None) -> Summary | dict | None:
    """Run the evaluation (or --lm-eval); a usage error ends with one line on stderr and exit status 1."""
    args = None
    try:
        args = parse_args(argv)
        result = harness(args) if args.lm_eval else evaluate(args)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback when Python exits
        return result
    except UsageError as error:
        if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one line, not one per rank
            print(f"run_gsm8k.py: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt as stop:
        saved = stop.args[0] if stop.args else f"finished questions stay in {args and args.output}"
        print(f"\ninterrupted: {saved}; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # e.g. `| head`: the files are complete; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        print(
            "run_gsm8k.py: standard output was closed early (a broken pipe); the results files are complete",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


def evaluate(args: argparse.Namespace) -> Summary | None:
    """Check all that can be checked without the model, take the run's files, load the model, decode what is not
    done yet (each question appended at once), report. Under torchrun, rank 0 owns the files."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    device = resolve_device(args.device)
    task = TASKS[args.task]
    files = RunFiles(check_output(args.output))
    offline_unless_reachable(args)
    rows, data = load_rows(task, args.data)
    problems = [{"id": i, "row": rows[i]} for i in task.order(len(rows))]
    problems = problems[args.offset :][: args.limit]
    if not problems:
        raise UsageError(f"--offset {args.offset} is past the {len(rows)} rows of {data['source']}")
    settings = run_settings(args, data, device)
    requested = {problem["id"] for problem in problems}
    if world > 1:  # gloo only synchronises the ranks; no tensors are exchanged
        torch.distributed.init_process_group("gloo", timeout=timedelta(hours=48))

    def take_the_files() -> tuple[bool, dict]:
        files.open()
        return files.finished(settings, requested, args.resume)

    try:
        complete, settings = on_rank0(take_the_files, world, rank)
        if complete:
            if rank > 0:
                return None
            print(
                f"all {len(requested)} questions asked for are done in {files.output}: the summary, without the model"
            )
            return report(settings, files, requested, args)
        model, tokenizer, mask_id = load_checkpoint(args, settings, device)
        machine = environment(device, world, mask_id, tokenizer, model)
        on_rank0(lambda: files.start(settings, args.resume, machine), world, rank)
        decode_questions(model, tokenizer, task, problems, settings, mask_id, device, files, world, rank)
        return report(files.stored_settings(), files, requested, args) if rank == 0 else None
    finally:
        files.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class Checkpoint(NamedTuple):
    model: nn.Module
    tokenizer: Any
    mask_id: int


def load_checkpoint(args: argparse.Namespace, settings: Settings, device: torch.device) -> Checkpoint:
    """--model's tokenizer, its mask id (checked against the vocabulary) and its weights; a family this file does
    not know, and a tokenizer without a chat template, are refused before the weights load."""
    tokenizer, config = load_tokenizer(args.model)
    model_family(config, args.model)
    mask_id = args.mask_id if args.mask_id is not None else find_mask_id(tokenizer, config)
    vocab = getattr(config, "vocab_size", None) or len(tokenizer)
    if not 0 <= mask_id < vocab:
        raise UsageError(f"--mask-id {mask_id} is outside the model's vocabulary (size {vocab})")
    if tokenizer.chat_template is None:
        raise UsageError(f"--model {args.model}: its tokenizer has no chat template (instruct checkpoints have one)")
    return Checkpoint(load_model(args.model, config, device, getattr(torch, settings.dtype)), tokenizer, mask_id)


def environment(device: torch.device, world: int, mask_id: int, tokenizer, model: nn.Module) -> dict:
    """This machine and what the model gave, as the settings file keeps them per run."""
    return dict(
        parameters=sum(p.numel() for p in model.parameters()),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        transformers=__import__("transformers").__version__,
        world_size=world,
        mask_id=mask_id,
        end_of_text_ids=end_of_text_ids(tokenizer),
    )


def run_settings(args: argparse.Namespace, data: dict, device: torch.device) -> Settings:
    """What the user asked for, as the settings file keeps it (compared on a rerun, as declared)."""
    model = Path(args.model).expanduser()
    return Settings(
        task=args.task,
        data=data,
        model=str(model.resolve()) if model.is_dir() else args.model,
        **{k: getattr(args, k) for k in declared_as(as_given=True)},
        methods=args.methods,
        batch_size=args.batch_size,
        dtype=args.dtype or ("bfloat16" if device.type == "cuda" else "float32"),
    )


def offline_unless_reachable(args: argparse.Namespace) -> None:
    """When the data or the model is to come from the hub and the hub does not answer within 3 s, use
    huggingface_hub's offline mode (its local cache only): a missing file is then one line at once, not a minute
    of retries. Before `datasets` or `transformers` is imported, as they read it then."""
    if os.environ.get("HF_HUB_OFFLINE") or (args.data and Path(args.model).expanduser().is_dir()):
        return
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout=3).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"


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
    if result[0][0] == "error":
        raise UsageError(result[0][1])
    return result[0][1]


def growth_batches(mine: list[dict], done: dict[int, Record], settings: Settings) -> dict[tuple, list[dict]]:
    """The held questions that lack a method the run has grown by, grouped by (their batch's first question, the
    methods they lack): each group grows in the batch it was first decoded in, with the same streams."""
    grow = {}
    for problem in mine:
        held = done.get(problem["id"])
        missing = tuple(m for m in settings.methods if held and m not in methods_of(held))
        if missing:  # a record from before records named their batch grows alone
            grow.setdefault((held.get("batch", problem["id"]), missing), []).append(problem)
    return grow


def cut_torn_line(path: Path) -> None:
    """Cut a last line without its newline: what an interrupted write leaves."""
    text = path.read_bytes() if path.is_file() else b""
    if text and not text.endswith(b"\n"):
        path.write_bytes(text[: text.rfind(b"\n") + 1])


def decode_questions(
    model,
    tokenizer,
    task: Task,
    problems: list[dict],
    settings: Settings,
    mask_id: int,
    device: torch.device,
    files: RunFiles,
    world: int,
    rank: int,
) -> None:
    """This rank's share of the work (rank `rank` of `world`), each record appended to its file at once (a torn
    last line cut first): every method for the questions not done yet, in batches; for the questions done without
    a method the run has grown by, only its candidates, in the batches they were first decoded in (the same
    streams), each grown record a line that replaces the one before. The bar counts the finished questions too."""
    done = files.records()
    if world > 1:
        torch.distributed.barrier()  # every rank has read before any rank writes
    mine = problems[rank::world]
    fresh = [problem for problem in mine if problem["id"] not in done]
    size = settings.batch_size
    work = [(fresh[i : i + size], settings.methods) for i in range(0, len(fresh), size)]
    grow = growth_batches(mine, done, settings)
    work += [(batch, list(missing)) for (_, missing), batch in grow.items()]
    todo = sum(len(batch) for batch, _ in work)
    held = len(mine) - len(fresh)
    to_grow = todo - len(fresh)
    added = " ".join(sorted({m for _, missing in grow for m in missing}, key=METHODS.index))
    growth = f", {to_grow} of them to grow by {added} (only its candidates)" if grow else ""
    if rank == 0 and (held or grow):
        print(f"resuming {files.output}: {held} of {len(mine)} questions held{growth}, {len(fresh)} to decode")
    sink = files.output.with_suffix(f".part{rank}.jsonl") if world > 1 else files.output
    cut_torn_line(sink)
    desc = task.title if world == 1 else f"{task.title} rank {rank}"
    bar = tqdm(total=len(mine), initial=len(mine) - todo, desc=desc, disable=not todo)  # the finished count too
    decoded = grown = 0
    try:
        with sink.open("a", encoding="utf-8") as out:
            for batch, methods in work:
                start = time.perf_counter()
                records = decode_batch(model, tokenizer, task, batch, settings, mask_id, device, methods)
                seconds = round((time.perf_counter() - start) / len(batch), 3)
                for record in records:
                    record |= dict(seconds=seconds, batch_size=len(batch), batch=batch[0]["id"])
                    if record["id"] in done:
                        record = merged(done[record["id"]], record, settings)
                        grown += 1
                    else:
                        decoded += 1
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                    bar.update()
    except KeyboardInterrupt:
        growth = f" ({grown} of the {to_grow} to grow by {added} grown)" if grow else ""
        raise KeyboardInterrupt(f"{held + decoded} of {len(mine)} questions are saved in {sink}{growth}") from None
    finally:
        bar.close()
    if world > 1:
        torch.distributed.barrier()


def report(settings: Settings, files: RunFiles, requested: set[int], args: argparse.Namespace) -> Summary:
    """Print the summary of the questions and methods asked for; save the summary and the figure of every
    finished question and method (the whole run), unless the folder is read-only. The stored texts are read again
    by today's answer rules; the records are rewritten where one reads them otherwise than when they were decoded."""
    records = files.merge_parts()
    task = TASKS[settings.task]
    reread = 0  # candidates whose answers today's rules read otherwise
    for candidate in (c for r in records.values() for c in r["candidates"] if c.get("forward_passes") != 0):
        answers = task.answers(candidate["text"])  # a candidate an early stop spared has none
        reread += answers != candidate["answers"]
        candidate["answers"] = answers
    if reread and not files.read_only:
        files.write_records(records)
        print(f"today's answer rules read {plural(reread, 'stored candidate')} otherwise: the records are updated")
    ordered = [records[k] for k in sorted(records)]
    chosen = [r for r in ordered if r["id"] in requested]
    summary = summarize(chosen, settings, args.answer_rule, args.methods)
    fewer = summary.methods.keys() != set(settings.methods)
    if not files.read_only:
        whole = summarize(ordered, settings, args.answer_rule) if fewer or len(chosen) < len(ordered) else summary
        write_atomically(files.summary, json.dumps(asdict(whole), indent=1))
        write_atomically(files.figure, lambda path: write_figures(whole, ordered, path))
    print(summary_table(summary))
    if fewer:
        print(
            f"(the {len(chosen)} questions and methods asked for; the summary file and the figure cover all "
            f"{len(records)} finished questions and every method)"
        )
    elif len(chosen) < len(records):
        print(
            f"(the {len(chosen)} questions asked for; the summary file and the figure cover all {len(records)} "
            "finished questions)"
        )
    print(
        f"records: {files.output}\n"
        + (
            f"{files.read_only}: the summary and figure were not rewritten"
            if files.read_only
            else f"summary: {files.summary}\nfigure:  {files.figure}"
        )
    )
    return summary


# 14. lm-evaluation-harness: every method as an lm-eval model, on any generative task ---------------------------------
#
# lm-eval (optional: imported only here) brings its own tasks, prompts and scorers. For a task with `repeats: K` it
# sends the K copies of a request side by side, with no index; this model decodes them as the K candidates of one
# question (HEX's experts or SC's samples), and lm-eval's filters vote over them or take one alone.

LM_EVAL_VERSION = "0.4.13"  # the version this file is tested with
LM_EVAL_FALLBACK = "[invalid]"  # what lm-eval's regex filter returns for an answer it cannot read


class HexVote:
    """lm-eval's filter `hex_vote`: hex's `majority_vote` over each question's extracted answers, so an unreadable
    answer (the regex filter's fallback) never wins, and a tie goes to the candidate first in order (the authors')."""

    def apply(self, resps, docs):
        votes = [majority_vote([None if a == LM_EVAL_FALLBACK else a for a in answers])[0] for answers in resps]
        return [LM_EVAL_FALLBACK if vote is None else vote for vote in votes]


class HexPick:
    """lm-eval's filter `hex_pick`: each question's candidate `index` alone (one HEX expert), as a list of one that
    the task's own filters then read as they read all K."""

    def __init__(self, index: int):
        self.index = index

    def apply(self, resps, docs):
        return [[answers[self.index]] for answers in resps]


class Variant(NamedTuple):
    """A task as one method runs it: the method, and the task's full config as lm-eval takes it inline."""

    method: str
    config: dict


def harness_tasks(names: list[str], settings: Settings, manager) -> dict[str, Variant]:
    """Each named lm-eval task once a method of the run: its own config (YAML with its includes and functions, as
    lm-eval loads it) with `repeats` set to the method's K candidates and, past one candidate, its filters
    (`harness_filters`). Refused in one line: a name that is not a YAML task, a task scored by log-likelihoods,
    one that allows more than --gen-length tokens, a code task (its scorer runs each answer: nothing to vote over).
    `manager`: lm-eval's TaskManager with the --include-path folders."""
    from lm_eval.tasks._yaml_loader import load_yaml  # as lm-eval's own config loader does (0.4.13)

    index = manager.task_index
    variants = {}
    for name in names:
        entry = index.get(name)
        if entry is None or entry.kind.name != "TASK":
            raise UsageError(
                f"--lm-eval {name}: not a YAML task lm-eval knows (a group or tag: name its tasks; "
                "`lm-eval ls tasks` lists them, --include-path adds folders)"
            )
        config = entry.cfg
        output_type = config.get("output_type", "generate_until")
        if output_type != "generate_until":
            raise UsageError(
                f"--lm-eval {name}: a {output_type} task, scored by log-likelihoods, which this command does not "
                "estimate for a diffusion model; pick generate_until tasks"
            )
        allowed = (config.get("generation_kwargs") or {}).get("max_gen_toks", 0)
        if allowed > settings.gen_length:
            raise UsageError(
                f"--lm-eval {name}: it allows {allowed}-token answers (max_gen_toks) and --gen-length is "
                f"{settings.gen_length}: pass --gen-length {allowed} (and block lengths that divide it)"
            )
        if config.get("unsafe_code"):
            raise UsageError(
                f"--lm-eval {name}: a code task, whose scorer runs each answer: it extracts no answer for a vote; "
                "pick a task whose filters extract one"
            )
        config = load_yaml(entry.yaml_path, resolve_func=True)  # with its functions: the task's own module loads
        for method in settings.methods:
            plan = candidate_plan(replace(settings, methods=[method]))
            variant = dict(config, task=f"{name}_{method}", repeats=len(plan))
            if len(plan) > 1:
                variant["filter_list"] = harness_filters(name, config, plan)
            variants[variant["task"]] = Variant(method, variant)
    return variants


def harness_filters(name: str, config: dict, plan: list[Planned]) -> list[dict]:
    """A task's filters for K candidates, then each again on each HEX expert (its first sample) alone, named as
    "strict-match-block8". A filter that extracts an answer and takes the first gets the vote in place of
    take_first."""
    filters = []
    for pipeline in config.get("filter_list") or [dict(name="none", filter=[dict(function="take_first")])]:
        steps = pipeline["filter"]
        if [step["function"] for step in steps] == ["take_first"]:
            raise UsageError(
                f"--lm-eval {name}: its filter {pipeline['name']!r} hands its scorer one raw text (as minerva_math's):"
                " no extracted answer to vote over; pick a task whose filters extract one"
            )
        filters.append(dict(name=pipeline["name"], filter=[*steps[:-1], dict(function="hex_vote")]))
        for k, planned in enumerate(plan):
            if planned.method == "hex" and planned.sample == 0:
                pick = [dict(function="hex_pick", index=k), *steps]
                filters.append(dict(name=f"{pipeline['name']}-block{planned.schedule.block_length}", filter=pick))
    return filters


def harness_text(tokenizer, answer: list[int], gen_kwargs: dict, ends: set[int]) -> str:
    """An answer as lm-eval expects a continuation: up to its first end-of-text token and at most max_gen_toks
    tokens, decoded without special tokens, cut before the first of its `until` strings."""
    length = next((i for i, token in enumerate(answer) if token in ends), len(answer))
    length = min(length, gen_kwargs.get("max_gen_toks", length))
    text = tokenizer.decode(answer[:length], skip_special_tokens=True)
    until = gen_kwargs.get("until") or []
    for stop in [until] if isinstance(until, str) else until:
        text = text.split(stop)[0]
    return text


class HarnessModel:
    """Every method of hex as an lm-eval model (`harness_model` gives it lm-eval's LM as a base). The K copies of a
    request are the K candidates of its question, decoded by its task's method, a batch of questions in one decode
    call, returned in order. The candidates are kept in `folder` (candidates.rankN.jsonl, a question a line, keyed by
    the request and the settings): a killed run resumes without decoding a finished question again, and a rerun
    never collapses them into one answer as lm-eval's cache does. Under torchrun lm-eval splits the questions by
    rank and this model gathers (gloo)."""

    def __init__(self, checkpoint: Checkpoint, settings: Settings, methods: dict[str, str], folder: Path, device):
        super().__init__()  # lm-eval's LM
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        self._device = device
        self.checkpoint = checkpoint
        self.settings = settings
        self.methods = methods  # task name -> method
        compared = set(declared_as(compared=True)) - {"task", "data"}
        self.identity = {k: v for k, v in asdict(settings).items() if k in compared}
        self.ends = set(end_of_text_ids(checkpoint.tokenizer))
        folder.mkdir(parents=True, exist_ok=True)  # once the model has loaded: a failed start writes nothing
        self.sink = folder / f"candidates.rank{self._rank}.jsonl"
        cut_torn_line(self.sink)  # what a killed write leaves
        self.barrier()  # no rank reads a file another is still cutting
        self.done = {}  # a question's key -> its candidates' texts
        for part in sorted(folder.glob("candidates.rank*.jsonl")):
            for line in part.read_text(encoding="utf-8").splitlines():
                held = json.loads(line)
                self.done[held["key"]] = held["texts"]
        self.barrier()  # and none appends before all have read

    def key(self, request) -> str:
        """A question's identity: lm-eval's task, document, request index and arguments, and the run's settings."""
        identity = [request.task_name, request.doc_id, request.idx, request.args, self.identity]
        return hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()

    def generate_until(self, requests: list) -> list[str]:
        """One answer per request, in order: the j-th copy of a request is candidate j of its question."""
        keys = [self.key(request) for request in requests]
        questions = {}  # each question's first request
        for key, request in zip(keys, requests):
            questions.setdefault(key, request)
        todo = {}  # method -> the keys of its questions not yet decoded
        for key, request in questions.items():
            if key not in self.done:
                todo.setdefault(self.methods[request.task_name], []).append(key)
        finished = len(questions) - sum(map(len, todo.values()))
        bar = tqdm(total=len(questions), initial=finished, desc=f"hex on lm-eval, rank {self.rank}")
        with self.sink.open("a", encoding="utf-8") as out:
            for method, mine in todo.items():
                for start in range(0, len(mine), self.settings.batch_size):
                    batch = mine[start : start + self.settings.batch_size]
                    for key, (texts, passes) in zip(batch, self.decode([questions[key] for key in batch], method)):
                        self.done[key] = texts
                        out.write(json.dumps(dict(key=key, texts=texts, forward_passes=passes)) + "\n")
                        out.flush()
                        bar.update()
        bar.close()
        answers = []
        taken = Counter()
        for key in keys:  # lm-eval pads a rank's share by repeating a request's copies: they cycle
            answers.append(self.done[key][taken[key] % len(self.done[key])])
            taken[key] += 1
        return answers

    def decode(self, requests: list, method: str) -> list[tuple[list[str], list[int]]]:
        """The candidates' texts and forward passes of a batch of questions (a request each) by `method`, in one
        decode call: `steps` forward calls, the method's stream seeded by the batch's
        first document."""
        model, tokenizer, mask_id = self.checkpoint
        prompts = [tokenizer(request.args[0], add_special_tokens=False).input_ids for request in requests]
        plan = candidate_plan(replace(self.settings, methods=[method]))
        out = decode_prompts(model, *left_pad(prompts, self.device), plan, self.settings, mask_id, requests[0].doc_id)
        answers = out.sequences[:, :, -self.settings.gen_length :].tolist()  # (B, K, gen_length)
        passes = out.forward_passes.tolist()
        return [
            ([harness_text(tokenizer, a, r.args[1], self.ends) for a in row], p)
            for r, row, p in zip(requests, answers, passes)
        ]

    def loglikelihood(self, requests: list):
        raise UsageError(f"lm-eval task {requests[0].task_name}: log-likelihood requests, which hex does not score")

    loglikelihood_rolling = loglikelihood

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt in the checkpoint's chat template; it writes the BOS token (the context is tokenized without)."""
        tokenizer = self.checkpoint.tokenizer
        return tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

    def chat_template(self, chat_template: bool | str = False) -> str:
        return self.checkpoint.tokenizer.chat_template

    @property
    def tokenizer_name(self) -> str:
        return self.checkpoint.tokenizer.name_or_path.replace("/", "__")

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's tensor, stacked: lm-eval gathers the ranks' request counts to pad the shorter shares."""
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor)
        return torch.stack(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list | None:
        parts = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj, parts, dst=dst)
        return parts

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


@functools.cache
def harness_model() -> type:
    """HarnessModel as an lm-eval LM, registered as lm-eval's model "hex", and the two filters: made once, on first
    use, so that nothing imports lm-eval unless asked."""
    from lm_eval.api.filter import Filter
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_filter, register_model

    register_filter("hex_vote")(type("HexVoteFilter", (HexVote, Filter), {}))
    register_filter("hex_pick")(type("HexPickFilter", (HexPick, Filter), {}))
    return register_model("hex")(type("HexLM", (HarnessModel, LM), {}))


def harness(args: argparse.Namespace) -> dict | None:
    """--lm-eval: each named task once a method, decoded here and scored by lm-eval: its results and samples go to
    the --output folder, its table (each method's vote, each HEX expert alone) to standard output. Its tasks and
    their data load before the model, so a task whose data is out of reach is one line, leaving nothing."""
    offline_unless_reachable(args)  # before lm-eval imports `datasets`, which reads the offline switch then
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table
    except ImportError:
        raise UsageError(f"--lm-eval needs lm-evaluation-harness: pip install lm-eval=={LM_EVAL_VERSION}") from None
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(args.device)
    folder = Path(args.output).expanduser()
    if folder.is_file():
        raise UsageError(f"--output {args.output}: a file; --lm-eval writes a folder")
    settings = replace(run_settings(args, {}, device), task="lm-eval")
    manager = TaskManager(include_path=args.include_path or None)  # indexes every task's YAML: made once
    variants = harness_tasks(args.lm_eval, settings, manager)
    harness_lm = harness_model()  # registers the filters the tasks name
    try:  # each task's data, from the hub or the local cache: out of reach offline unless cached
        tasks = manager.load([v.config for v in variants.values()])
    except OSError as error:  # datasets' ConnectionError, DatasetNotFoundError and FileNotFoundError among them
        raise UsageError(
            f"--lm-eval {' '.join(args.lm_eval)}: its data cannot be loaded ({_one_line(error, 160)}); offline, "
            "give a task local rows with --include-path (README: lm-eval offline)"
        ) from None
    if world > 1:
        torch.distributed.init_process_group("gloo", timeout=timedelta(hours=48))
    try:
        checkpoint = load_checkpoint(args, settings, device)
        methods = {name: variant.method for name, variant in variants.items()}
        model = harness_lm(checkpoint, settings, methods, folder, device)
        results = lm_eval.simple_evaluate(
            model=model,
            tasks=list(tasks["tasks"].values()),
            limit=args.limit,
            log_samples=True,
            apply_chat_template=True,
        )
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if results is None:  # not the first rank
        return None
    samples = results.pop("samples")
    for name, logged in samples.items():
        write_atomically(folder / f"samples_{name}.jsonl", "".join(json.dumps(s, default=str) + "\n" for s in logged))
    write_atomically(folder / "results.json", json.dumps(results, indent=1, default=str))
    print(make_table(results))
    print(f"lm-eval's results and samples, and each question's candidates: {folder}")
    return results


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler's kill or `timeout`: as Ctrl-C
    main()
