"""The paper in miniature: a masked diffusion LLM trained on this machine shows the paper's collapse and HEX's gain.

No real dLLM runs on a CPU, so this trains one (0.70M parameters, LLaDA's objective) on a task whose answer length
the prompt hides, then decodes held-out prompts with every block length, the one-block baselines and HEX, and prints
the paper's table. In order: 1. the chain task; 2. LLaDA's training loss; 3. the training, checkpointed and
resumed; 4. the table and the picture; 5. `miniature`; 6. `--dilemma`, the second paper's sampler (hex.imh_generate)
against confidence decoding on the same weights.

    python miniature.py [--seed N] [--visible-length] [--dilemma]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hex import (
    PairedDifference,
    Schedule,
    TinyMaskPredictor,
    cross_fitted,
    decode,
    decode_in_waves,
    imh_generate,
    majority_vote,
    paired_difference,
    pass_at_k,
    wilson,
)

# 1. The chain task: the answer's length is known only once its reasoning is written ---------------------------------


PAD = 0  # the chain task's vocabulary: four special tokens, digits, 100 filler words, step tokens S_1..S_14
MINI_MASK = 1
EOT = 2
ANS = 3
DIGIT = 4
FILLER = 14
STEP = 114  # S_j is STEP + j - 1
MINI_METHODS = (  # (label, schedule) on a 64-token canvas; a block of 64 is one block, the paper's Top-K baseline
    ("block 4", Schedule(4)),
    ("block 8", Schedule(8)),
    ("block 16", Schedule(16)),
    ("block 32", Schedule(32)),
    ("one block, Top-K", Schedule(64)),
    ("one block, Top-K margin", Schedule(64, "topk_margin")),
)
MINI_EXPERTS = 5  # HEX votes over the first five methods: blocks 4-64, ties to the smaller block
MINI_CACHE = Path("results", "miniature")  # relative to the working folder
MINI_STEPS = 3000  # training steps
CHECKPOINT_EVERY = 200  # training steps between checkpoints


def chain_examples(n: int, generator: torch.Generator, visible_length: bool = False):
    """n examples: prompts (n, 14), items x_j in 1..3 as digits; responses (n, 64); chain lengths k (n,),
    uniform over 4..14: k is the first j >= 4 whose running sum s_j = (s_{j-1} + x_j) mod 10 is 0. A response
    writes, for j = 1..k, S_j, one or two random filler words and s_j; then ANS, S_k; then end-of-text to the
    end. Every prompt lists 14 items, so k is known only once the chain is written, unless visible_length
    (the control): then the items after x_k are PAD."""
    lengths = torch.randint(4, 15, (n,), generator=generator)
    items = torch.zeros(n, 14, dtype=torch.long)
    todo = torch.arange(n)
    while len(todo):  # rejection: redraw until each chain stops at its k
        items[todo] = torch.randint(1, 4, (len(todo), 14), generator=generator)
        stops = (items[todo].cumsum(1) % 10 == 0) & (torch.arange(14) >= 3)
        k = stops.long().argmax(1) + 1  # 1 where no j stops it: never a length
        todo = todo[k != lengths[todo]]
    words = torch.randint(FILLER, STEP, (n, 14, 2), generator=generator).tolist()
    counts = torch.randint(1, 3, (n, 14), generator=generator).tolist()
    sums = (items.cumsum(1) % 10 + DIGIT).tolist()
    responses = torch.full((n, 64), EOT)
    for i, k in enumerate(lengths.tolist()):
        tokens = [ANS, STEP + k - 1]
        for j in reversed(range(k)):
            tokens = [STEP + j, *words[i][j][: counts[i][j]], sums[i][j], *tokens]
        responses[i, : len(tokens)] = torch.tensor(tokens)
    prompts = items + DIGIT
    if visible_length:
        prompts = prompts.masked_fill(torch.arange(14) >= lengths[:, None], PAD)
    return prompts, responses, lengths


def chain_answer(answers: torch.Tensor) -> torch.Tensor:
    """(..., G) answers -> (...) the chain length stated after the first ANS, or 0 where none is readable."""
    stated = F.pad(answers[..., 1:], (0, 1)) - STEP + 1  # what each position's successor states
    is_ans = answers == ANS
    value = stated.gather(-1, is_ans.long().argmax(-1, keepdim=True)).squeeze(-1)
    return torch.where(is_ans.any(-1) & (value >= 1) & (value <= 14), value, 0)


def voted(stated: torch.Tensor) -> torch.Tensor:
    """The majority vote of each prompt's stated answers, (N, K) -> (N,): 0 (none readable) never votes, and is
    the vote where no answer is readable; ties to the first candidate, as HEX's."""
    return torch.tensor([majority_vote([a or None for a in row])[0] or 0 for row in stated.tolist()])


# 2. LLaDA's training objective --------------------------------------------------------------------------------------


def masked_diffusion_loss(
    model: nn.Module, prompts: torch.Tensor, responses: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """LLaDA's training objective in its SFT form (the paper's models, Sec. 2): per example a t in (0, 1), each
    response token masked with probability t, the cross-entropy of the masked tokens weighted by 1 / t and
    averaged over the response (end-of-text padding included); the prompt is never masked. Ours: the batch's t
    are stratified, one in each 1/B of (0, 1) from one shared uniform (MDLM's low-discrepancy sampler): each t is
    still U(0, 1), so the loss is the same in expectation, with less variance than B independent draws."""
    B = len(responses)
    t = ((torch.rand(1, generator=generator) + torch.arange(B) / B) % 1).clamp(min=1e-3)[:, None]  # (B, 1)
    masked = torch.rand(responses.shape, generator=generator) < t  # (B, G)
    x = torch.cat([prompts, responses.masked_fill(masked, MINI_MASK)], dim=1)
    logits = model(x).logits[:, prompts.shape[1] :]  # (B, G, V)
    loss = F.cross_entropy(logits.transpose(1, 2), responses, reduction="none")  # (B, G)
    return (loss * masked / t).mean()


# 3. The training: checkpointed, resumed, bit for bit at one thread count --------------------------------------------


def miniature_model(seed: int) -> TinyMaskPredictor:
    """A 4-layer TinyMaskPredictor of 0.70M parameters over the chain task's 128 tokens and 78 positions. Its
    SwiGLU is 2 x d_model wide (LLaDA's is 3x): a quarter faster to train than 4x (README: what it cost)."""
    return TinyMaskPredictor(
        vocab_size=128, d_model=128, n_layers=4, n_heads=4, mlp_hidden=256, max_positions=78, seed=seed
    ).eval()


def learning_rate(step: int, steps: int) -> float:
    """AdamW's learning rate at a step: 2e-3 after 100 warm-up steps, then a cosine decay to 5% of it."""
    return 2e-3 * min((step + 1) / 100, 0.05 + 0.475 * (1 + math.cos(math.pi * step / steps)))


def train_miniature(
    steps: int, seed: int, visible_length: bool, held_out: torch.Tensor, checkpoint: Path | None = None
) -> TinyMaskPredictor:
    """AdamW with betas (0.9, 0.98), the gradient norm clipped at 1, batches of 64 fresh examples, never a
    held-out prompt. Every CHECKPOINT_EVERY steps and at the end, the whole state (weights, optimizer, random
    stream, step) goes to `checkpoint`, and a training given an existing one resumes from it (a finished training's
    is its cached weights): a killed training loses at most one interval and ends with the weights an uninterrupted
    one would have."""
    model = miniature_model(seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(seed)
    unseen = {tuple(p) for p in held_out.tolist()}
    progress = dict(step=0, steps=steps, loss=math.nan, seconds=0.0)
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint)
        if state.get("progress", {}).get("steps") != steps or _shapes(state["model"]) != _shapes(model.state_dict()):
            raise ValueError(f"{checkpoint} is another training's (steps or model shape): delete it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        progress = state["progress"]
        finished = progress["step"] == steps
        where = "the trained weights" if finished else f"resuming the training at step {progress['step']}"
        print(f"   {where} from {checkpoint}")
    start = time.perf_counter() - progress["seconds"]
    for step in range(progress["step"], steps):
        prompts, responses, _ = chain_examples(64, generator, visible_length)
        keep = torch.tensor([tuple(p) not in unseen for p in prompts.tolist()])
        loss = masked_diffusion_loss(model, prompts[keep], responses[keep], generator)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        optimizer.step()
        progress.update(step=step + 1, loss=loss.item(), seconds=time.perf_counter() - start)
        if checkpoint is not None and ((step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == steps):
            state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), generator=generator.get_state())
            _save_atomically(dict(state, progress=progress), checkpoint)
        _progress(progress)
    return model.eval()


def _shapes(state: dict) -> dict:
    """A state dict's tensor shapes by name: what tells weights of another model (an older recipe) apart."""
    return {name: tensor.shape for name, tensor in state.items()}


def _save_atomically(obj, path):
    """torch.save to a temporary file, then a rename: a kill never leaves half a file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    temporary.replace(path)


def _progress(progress):
    """A progress bar with the loss: redrawn in place on a terminal, a line per checkpoint interval in a file."""
    step, steps = progress["step"], progress["steps"]
    bar = "#" * (24 * step // steps)
    text = f"   training [{bar:<24}] step {step}/{steps}, loss {progress['loss']:.3f}, {progress['seconds']:.0f} s"
    if sys.stdout.isatty():
        print("\r" + text, end="\n" if step == steps else "", flush=True)
    elif step == steps or step % CHECKPOINT_EVERY == 0:
        print(text, flush=True)


# 4. The paper's table and a picture of the collapse -----------------------------------------------------------------


@dataclass
class MiniRow:
    """One method's line of the miniature's table, as fractions of the held-out prompts."""

    accuracy: float
    ci95: tuple[float, float]  # Wilson, over prompts
    short: float  # accuracy on chains of k <= 8
    long: float  # on chains of k > 8
    eot_first: float | None = None  # end-of-text's share of the first 16 commits (a decoding rule's rows only)
    cut_short: float | None = None  # share of chains whose last written step S_j is below k


@dataclass
class MiniFigures:
    """The miniature's table: a row per method, HEX and the oracle; HEX against the block chosen on other prompts."""

    rows: dict[str, MiniRow]
    hex_minus_chosen: PairedDifference
    chosen: list[int]  # the block chosen for the even prompts, and for the odd ones


def miniature_figures(answers: torch.Tensor, commit_steps: torch.Tensor, lengths: torch.Tensor) -> MiniFigures:
    """The paper's table in miniature from decodes (N, K, G) by MINI_METHODS and the true lengths (N,): a MiniRow
    per method, HEX (the vote of the first MINI_EXPERTS) and the oracle (any of them right); HEX minus the block
    chosen on the other half of the prompts (cross-fitted), paired."""
    stated = chain_answer(answers)  # (N, K)
    right = stated == lengths[:, None]
    hex_right = voted(stated[:, :MINI_EXPERTS]) == lengths  # 0: no readable answer, never right
    first = commit_steps.argsort(dim=-1, stable=True)[..., :16]  # (N, K, 16): the first 16 commits
    eot_first = (answers.gather(-1, first) == EOT).double().mean((0, 2))  # (K,)
    before_end = ((answers == EOT) | (answers == ANS)).cumsum(-1) == 0
    written = torch.where(before_end & (answers >= STEP), answers - STEP + 1, 0).amax(-1)  # (N, K)
    cut_short = (written < lengths[:, None]).double().mean(0)  # (K,)
    long = lengths > 8

    def row(verdicts, **rule):
        verdicts = verdicts.double()
        accuracy = verdicts.mean().item()
        interval = wilson(int(verdicts.sum()), len(verdicts))
        return MiniRow(accuracy, interval, verdicts[~long].mean().item(), verdicts[long].mean().item(), **rule)

    rows = {}
    for k, (label, _) in enumerate(MINI_METHODS):
        rows[label] = row(right[:, k], eot_first=eot_first[k].item(), cut_short=cut_short[k].item())
    rows["HEX"] = row(hex_right)
    rows["oracle"] = row(right[:, :MINI_EXPERTS].any(1))
    experts = {
        schedule.block_length: right[:, k].tolist() for k, (_, schedule) in enumerate(MINI_METHODS[:MINI_EXPERTS])
    }
    chosen_right, chosen = cross_fitted(experts)
    return MiniFigures(rows, paired_difference(hex_right.tolist(), chosen_right), chosen)


def percent(fraction: float | None, interval: tuple[float, float] | None = None) -> str:
    """A fraction in percent with one decimal, and its interval if given; "-" for None."""
    if fraction is None:
        return "-"
    text = f"{100 * fraction:.1f}"
    return text if interval is None else f"{text} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def markdown_table(columns: list[str], rows: dict[str, list[str]]) -> list[str]:
    """A Markdown table's lines: the method and `columns` as its header, then a line per labelled row of cells."""
    lines = [f"| method | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    return lines + [f"| {label} | {' | '.join(cells)} |" for label, cells in rows.items()]


def miniature_table(figures: MiniFigures) -> str:
    """The figures as a Markdown table, in percent, and HEX against the cross-fitted block."""
    cells = {
        label: [
            percent(r.accuracy, r.ci95),
            percent(r.short),
            percent(r.long),
            percent(r.eot_first),
            percent(r.cut_short),
        ]
        for label, r in figures.rows.items()
    }
    lines = markdown_table(["accuracy [95%]", "k <= 8", "k > 8", "EoT-first", "cut short"], cells)
    paired = figures.hex_minus_chosen
    low, high = paired.ci95
    lines.append(
        f"HEX minus the block chosen on the other half of the prompts (blocks {figures.chosen}): "
        f"{100 * paired.difference:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}], paired (Agresti-Min); "
        f"only HEX right {paired.only_first}, only the block {paired.only_second}"
    )
    return "\n".join(lines)


def miniature_picture(figures: MiniFigures, answers: torch.Tensor, commit_steps: torch.Tensor, path: Path):
    """The table and the mechanism at a glance: accuracy per method with its interval, short and long chains
    apart; the order in which block 8 and one block commit one prompt's answer (answers and commit_steps (K, G)),
    end-of-text marked. Returns the matplotlib Figure saved to `path`, or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(10, 7.5), layout="tight")
    bars, order = figure.subplots(2, 1, height_ratios=(3, 1.3))
    rows = list(figures.rows.values())
    x = torch.arange(len(rows)).numpy()
    below = [100 * (r.accuracy - r.ci95[0]) for r in rows]
    above = [100 * (r.ci95[1] - r.accuracy) for r in rows]
    accuracy = [100 * r.accuracy for r in rows]
    bars.bar(x - 0.27, accuracy, 0.27, yerr=[below, above], capsize=3, label="all prompts (95% Wilson)")
    bars.bar(x, [100 * r.short for r in rows], 0.27, label="short chains (k <= 8)")
    bars.bar(x + 0.27, [100 * r.long for r in rows], 0.27, label="long chains (k > 8)")
    bars.set(ylabel="accuracy, %", ylim=(0, 118))
    bars.set_xticks(x, [label.replace(", ", ",\n") for label in figures.rows], fontsize=8)
    bars.legend(ncol=3, loc="upper center")
    shown = [1, 4]  # block 8, one block Top-K
    order.imshow(commit_steps[shown].numpy(), aspect="auto")
    eot = (answers[shown] == EOT).nonzero().tolist()  # [row, position] of each end-of-text
    order.scatter([p for _, p in eot], [r for r, _ in eot], marker="x", color="red", label="end-of-text")
    order.set_yticks([0, 1], [MINI_METHODS[k][0] for k in shown])
    order.set(xlabel="answer position (colour: the step that committed it, dark = early)")
    order.legend(loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return figure


# 5. python miniature.py: train or load, decode every method in one lockstep batch, print, draw ----------------------


def miniature_file(seed: int, visible_length: bool, suffix: str) -> Path:
    """A run's file in MINI_CACHE: its weights (".pt", the training's last checkpoint) or its picture (".png")."""
    return MINI_CACHE / (f"seed{seed}-visible{suffix}" if visible_length else f"seed{seed}{suffix}")


def held_out_chains(visible_length: bool, questions: int = 300):
    """The held-out prompts no training sees, their responses and chain lengths."""
    return chain_examples(questions, torch.Generator().manual_seed(2510), visible_length)


def trained_and_held_out(seed: int, visible_length: bool, steps: int, questions: int):
    """The miniature's weights, trained first if need be (resuming a killed training) on prompts other than the 300
    held out, and the first `questions` held-out prompts (N, 14) with their chain lengths (N,)."""
    prompts, _, lengths = held_out_chains(visible_length)
    checkpoint = miniature_file(seed, visible_length, ".pt")
    model = train_miniature(steps, seed, visible_length, held_out=prompts, checkpoint=checkpoint)
    return model, prompts[:questions], lengths[:questions]


def miniature(seed: int, visible_length: bool, steps: int = MINI_STEPS, questions: int = 300) -> MiniFigures:
    """python miniature.py: train (resuming a killed training) or load the cached weights, decode the
    held-out prompts with every method of a prompt in one lockstep batch, print the table, draw the picture."""
    model, prompts, lengths = trained_and_held_out(seed, visible_length, steps, questions)
    start = time.perf_counter()
    schedules = [schedule for _, schedule in MINI_METHODS]
    outs = [  # 8 prompts x 6 methods = 48 rows a call: a CPU's caches hold them (44k tokens/s, 26k at 300 rows)
        decode(model, chunk, schedules=schedules, gen_length=64, steps=32, mask_id=MINI_MASK)
        for chunk in prompts.split(8)
    ]
    answers = torch.cat([out.sequences[..., -64:] for out in outs])  # (N, K, 64)
    commit_steps = torch.cat([out.commit_steps for out in outs])
    figures = miniature_figures(answers, commit_steps, lengths)
    print(f"   {len(prompts)} held-out prompts, gen_length 64, steps 32, temperature 0, decoded in ", end="")
    print(f"{time.perf_counter() - start:.0f} s\n{miniature_table(figures)}")
    example = int((lengths > 8).long().argmax())  # the first held-out prompt with a long chain
    picture = miniature_file(seed, visible_length, ".png")
    if miniature_picture(figures, answers[example], commit_steps[example], picture) is not None:
        print(f"   the picture: {picture} (its lower panel: held-out prompt {example}, k = {lengths[example]})")
    return figures


# 6. python miniature.py --dilemma: the second paper's quality-exploration dilemma on the miniature ---------


DILEMMA_K = (1, 2, 4, 8)  # pass@k's k


def dilemma_answers(model, prompts: torch.Tensor, samples: int, proposals: int, stream: torch.Generator) -> dict:
    """Each method's stated answers (N, n) (0: none readable), one token committed per step (the paper's setup),
    one block: greedy confidence (its n samples are one decode), confidence and random order at the paper's local
    temperature 0.5, HEX's five experts at temperature 0 as a set of candidates, and the IMH at alpha 2 = 1 / 0.5."""
    canvas = dict(gen_length=64, mask_id=MINI_MASK)
    schedules = {
        "confidence, greedy": [Schedule(64)],
        "confidence, temperature 0.5": [Schedule(64, temperature=0.5)] * samples,
        "random order, temperature 0.5": [Schedule(64, "random", 0.5)] * samples,
        "HEX's experts (blocks 4-64)": [schedule for _, schedule in MINI_METHODS[:MINI_EXPERTS]],
    }
    answers = {
        label: decode(model, prompts, schedules=group, steps=64, generator=stream, **canvas).sequences
        for label, group in schedules.items()
    }
    answers["confidence, greedy"] = answers["confidence, greedy"].expand(-1, samples, -1)
    imh = imh_generate(model, prompts, alpha=2.0, proposals=proposals, samples=samples, generator=stream, **canvas)
    answers[f"IMH, alpha 2, {proposals} proposals"] = imh.sequences
    return {label: chain_answer(sequences[..., -64:]) for label, sequences in answers.items()}


def dilemma_row(stated: torch.Tensor, lengths: torch.Tensor) -> dict:
    """One method's answers (N, n) (0: none readable) against the true lengths (N,): pass@k for each k <= n of
    DILEMMA_K and the majority vote's accuracy, each as (mean over prompts, 95% Wilson interval over prompts:
    conservative for a prompt's fractional pass@k), and the distinct readable answers per prompt."""
    n = stated.shape[1]
    right = (stated == lengths[:, None]).sum(1).tolist()

    def mean(values):
        return sum(values) / len(values), wilson(sum(values), len(values))

    row = {f"pass@{k}": mean([pass_at_k(n, c, k) for c in right]) for k in DILEMMA_K if k <= n}
    row["vote"] = mean((voted(stated) == lengths).double().tolist())
    row["distinct"] = sum(len(set(answers) - {0}) for answers in stated.tolist()) / len(stated)
    return row


def dilemma(seed: int, steps: int = MINI_STEPS, questions: int = 64, samples: int = 8, proposals: int = 4) -> dict:
    """python miniature.py --dilemma: pass@k, distinct answers and the vote of each method's samples on the
    first `questions` held-out prompts, with the miniature's weights (trained first if need be). The sizes keep it
    within 10 minutes on two cores: the IMH's forward passes carry samples x proposals rows a prompt."""
    model, prompts, lengths = trained_and_held_out(seed, False, steps, questions)
    start = time.perf_counter()
    stream = torch.Generator().manual_seed(seed)
    chunks = [  # 2 prompts at a time: the IMH's 2 x samples x proposals rows a call, the size a CPU runs fastest
        dilemma_answers(model, chunk, samples, proposals, stream) for chunk in prompts.split(2)
    ]
    rows = {label: dilemma_row(torch.cat([chunk[label] for chunk in chunks]), lengths) for label in chunks[0]}
    print(f"   {questions} held-out prompts, {samples} samples each, decoded in {time.perf_counter() - start:.0f} s")
    columns = [f"pass@{k}" for k in DILEMMA_K] + ["vote"]
    cells = {
        label: [percent(*row[c]) if c in row else "-" for c in columns] + [f"{row['distinct']:.2f}"]
        for label, row in rows.items()
    }
    print("\n".join(markdown_table(columns + ["distinct answers"], cells)))
    return rows


# 7. python miniature.py --cost: HEX at a fraction of its cost, accuracy against forward passes ------------------


COST_THRESHOLDS = (0.3, 0.5, 0.7, 0.9, 0.99)  # confidence thresholds of the experts (Fast-dLLM's rule)


@dataclass
class CostRow:
    """One method on the accuracy-per-compute frontier: its verdicts on the held-out prompts, and what it cost."""

    curve: str  # the line of the picture it is drawn on
    right: list[bool]  # per prompt
    passes: torch.Tensor  # (N, K): each of its candidates' forward passes (NFE), 0 where never decoded
    same_vote: int | None = None  # the early stop: prompts whose vote is the vote over every candidate

    def accuracy(self) -> tuple[float, tuple[float, float]]:  # and its Wilson interval, over prompts
        return sum(self.right) / len(self.right), wilson(sum(self.right), len(self.right))

    def cost(self) -> float:  # forward passes per prompt, every candidate's
        return self.passes.sum(1).double().mean().item()


def cost_frontier(model, prompts: torch.Tensor, lengths: torch.Tensor, seed: int) -> dict[str, CostRow]:
    """Each expert alone; HEX, and HEX with the early stop (`decode_in_waves`), at each threshold; self-consistency
    (block 32, temperature 0.7, as run_gsm8k) with 1 to 5 samples. 16 prompts a call."""

    def run(decoder, **options):  # the stated answers (N, K) (0: none readable) and forward passes (N, K)
        outs = [decoder(model, p, gen_length=64, steps=32, mask_id=MINI_MASK, **options) for p in prompts.split(16)]
        stated = torch.cat([chain_answer(out.sequences[..., -64:]) for out in outs])
        return stated, torch.cat([out.forward_passes for out in outs])

    experts = MINI_METHODS[:MINI_EXPERTS]
    early = functools.partial(decode_in_waves, read_answer=lambda answer: int(chain_answer(answer)) or None)
    rows = {}
    for threshold in (None, *COST_THRESHOLDS):
        label = "HEX" if threshold is None else f"HEX, threshold {threshold}"
        schedules = [dataclasses.replace(schedule, threshold=threshold) for _, schedule in experts]
        stated, passes = run(decode, schedules=schedules)
        every = voted(stated)
        if threshold is None:
            rows |= {
                e: CostRow("one expert", (stated[:, k] == lengths).tolist(), passes[:, k : k + 1])
                for k, (e, _) in enumerate(experts)
            }
        rows[label] = CostRow("HEX", (every == lengths).tolist(), passes)
        stated, passes = run(early, schedules=schedules)
        stopped = voted(stated)  # the experts it never decoded state 0: they do not vote
        same = (stopped == every).sum().item()
        rows[f"{label}, early stop"] = CostRow("HEX, early stop", (stopped == lengths).tolist(), passes, same)
    stream = torch.Generator().manual_seed(seed)
    stated, passes = run(decode, schedules=[Schedule(32, temperature=0.7)] * 5, generator=stream)
    for n in range(1, 6):
        rows[f"SC, {n} sample{'s' * (n > 1)}"] = CostRow(
            "self-consistency", (voted(stated[:, :n]) == lengths).tolist(), passes[:, :n]
        )
    return rows


def cost_table(rows: dict[str, CostRow]) -> str:
    """The frontier as a Markdown table: accuracy, forward passes per prompt, answer tokens a candidate commits per
    forward pass, the difference from HEX (paired, Agresti-Min) and, for the early stop, the votes kept."""
    cells = {}
    for label, row in rows.items():
        paired = paired_difference(row.right, rows["HEX"].right)
        cells[label] = [
            percent(*row.accuracy()),
            f"{row.cost():.1f}",
            f"{64 * (row.passes > 0).sum() / row.passes.sum():.2f}",
            "-" if label == "HEX" else percent(paired.difference, paired.ci95),
            "-" if row.same_vote is None else f"{row.same_vote}/{len(row.right)}",
        ]
    columns = ["accuracy [95%]", "forward passes", "tokens / pass", "minus HEX [95%]", "HEX's vote"]
    return "\n".join(markdown_table(columns, cells))


def cost_picture(rows: dict[str, CostRow], path: Path):
    """Accuracy (95% Wilson) against forward passes per prompt, a line per kind of method, each point named. Returns
    the matplotlib Figure saved to `path`, or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(10, 6), layout="tight")
    ax = figure.subplots()
    for curve in dict.fromkeys(row.curve for row in rows.values()):
        points = {label.removesuffix(", early stop"): row for label, row in rows.items() if row.curve == curve}
        points = dict(sorted(points.items(), key=lambda point: point[1].cost()))  # a line from cheap to dear
        accuracy = [row.accuracy() for row in points.values()]
        x = [row.cost() for row in points.values()]
        y = [100 * a for a, _ in accuracy]
        error = [
            [y_ - 100 * low for y_, (_, (low, _)) in zip(y, accuracy)],
            [100 * high - y_ for y_, (_, (_, high)) in zip(y, accuracy)],
        ]
        ax.errorbar(x, y, yerr=error, fmt="o" if curve == "one expert" else "o-", capsize=2, label=curve)
        for label, at in zip(points, zip(x, y)):
            ax.annotate(
                label.split(", ")[-1].replace("threshold ", "t "),
                at,
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set(
        xlabel="forward passes per prompt, every candidate's",
        ylabel="accuracy, % (95% Wilson interval over prompts)",
        title=f"The miniature: accuracy against compute, {len(rows['HEX'].right)} held-out prompts",
    )
    ax.legend(loc="lower right", title="t: the experts' confidence threshold")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return figure


def cost(seed: int, steps: int = MINI_STEPS, questions: int = 300) -> dict[str, CostRow]:
    """python miniature.py --cost: the frontier on the held-out prompts with the miniature's weights (trained first
    if need be), printed and drawn."""
    model, prompts, lengths = trained_and_held_out(seed, False, steps, questions)
    start = time.perf_counter()
    rows = cost_frontier(model, prompts, lengths, seed)
    print(f"   {questions} held-out prompts, gen_length 64, steps 32, decoded in {time.perf_counter() - start:.0f} s")
    print(cost_table(rows))
    picture = miniature_file(seed, False, "-cost.png")
    if cost_picture(rows, picture) is not None:
        print(f"   the picture: {picture}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="miniature.py",
        description="Train a tiny masked diffusion LLM on a chain task, print the paper's table and draw it; the "
        f"weights (the training's checkpoint, resumed) and the picture go to ./{MINI_CACHE}/",
    )
    parser.add_argument("--seed", type=int, default=1, help="the training's seed (default 1)")
    one = parser.add_mutually_exclusive_group()  # the control's task, or the miniature's own with another table
    one.add_argument("--visible-length", action="store_true", help="the control: the prompt shows the chain's length")
    one.add_argument("--dilemma", action="store_true", help="the IMH sampler's pass@k against confidence decoding")
    one.add_argument("--cost", action="store_true", help="accuracy against forward passes: thresholds, early stop")
    args = parser.parse_args(argv)
    if args.dilemma:
        dilemma(args.seed)
    elif args.cost:
        cost(args.seed)
    else:
        miniature(args.seed, args.visible_length)


if __name__ == "__main__":
    main()
