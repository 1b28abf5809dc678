"""HEX: Hidden semi-autoregressive EXperts (arXiv 2510.05040), test-time scaling for masked diffusion LLMs.

A masked diffusion LLM (LLaDA-8B-Instruct) starts from an answer of [MASK] tokens and, over `steps`
denoising steps, commits the masked positions it is most sure of. Semi-autoregressive decoding cuts the
answer into blocks of `block_length` tokens, denoised left to right. Each block length is a hidden
"expert"; HEX decodes with several and takes a majority vote. In the order of the idea: 1. `Schedule`;
2. one denoising step; 3. `decode` (any schedules in one lockstep batch) and `generate`; 4. `hex_generate`;
5. `majority_vote`. Nothing after it is needed to use HEX: 6. `imh_generate`, the second paper's sampler
(arXiv 2604.00375) as this project reconstructs it; 7. `TinyMaskPredictor`; 8. `python hex.py [--shape
llada-8b]`: the one-batch benchmark; 9. intervals over questions; 10. `python hex.py --miniature`: a masked
diffusion model trained on this machine shows the paper's collapse and HEX's gain (`--dilemma`: the IMH's).
"""

from __future__ import annotations

import argparse
import math
import numbers
import operator
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

MASK_ID = 126336  # LLaDA-8B-Instruct's <|mdm_mask|>
REMASKING = ("low_confidence", "topk_margin", "random")
CHUNK_ELEMENTS = 2**21  # float64 scratch per chunk of positions (16 MiB): never a (N, V) float64


# 1. The schedule: which positions a step may commit, and how many ----------------------------------------


def _integer(name, value, minimum=1):
    """value as an int (numpy integers too), or a TypeError/ValueError that names the argument."""
    if not hasattr(type(value), "__index__"):
        raise TypeError(f"{name}={value!r} must be an int")
    if isinstance(value, bool) or operator.index(value) < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")
    return operator.index(value)


def _real(name, value, positive=False):
    """value as a finite float >= 0 (> 0 if positive), or a TypeError/ValueError that names the argument."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a real number {bound}")
    if not (0 < value < math.inf or value == 0 and not positive):
        raise ValueError(f"{name}={value!r} must be a finite number {bound}")
    return float(value)


@dataclass(frozen=True)
class Schedule:
    """How one candidate is decoded. HEX's experts are Schedule(b), b in 8..128 (the block length is the hidden
    expert); the paper's baselines Schedule(gen_length, r), r in "topk_margin", "low_confidence" (Top-K), "random"."""

    block_length: int
    remasking: str = "low_confidence"
    temperature: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "block_length", _integer("block_length", self.block_length))
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking={self.remasking!r} must be one of {REMASKING}")
        object.__setattr__(self, "temperature", _real("temperature", self.temperature))


def steps_per_block(gen_length: int, steps: int, block_length: int) -> int:
    """Every block gets the same share of the steps (LLaDA, and the authors' code)."""
    if gen_length % block_length:
        raise ValueError(f"block_length={block_length!r} must be a positive divisor of gen_length={gen_length}")
    if steps % (num_blocks := gen_length // block_length):
        raise ValueError(
            f"steps={steps} must be a multiple of the number of blocks "
            f"(gen_length / block_length = {gen_length}/{block_length} = {num_blocks})"
        )
    return steps // num_blocks


def num_transfer_tokens(block_length: int, steps: int) -> list[int]:
    """Tokens committed at each of a block's steps: block_length // steps, +1 in the first block_length % steps."""
    base, extra = divmod(block_length, steps)
    return [base + (i < extra) for i in range(steps)]


def semi_ar_plan(block_length: int, gen_length: int, steps: int) -> tuple[list[int], list[int]]:
    """Per step t: the open block's index and how many tokens t commits. LLaDA's generate loops
    `for num_block in range(num_blocks): for i in range(steps_per_block):`; this is that plan flattened
    over t = num_block * steps_per_block + i, so rows with different block lengths advance in lockstep."""
    spb = steps_per_block(gen_length, steps, block_length)
    num_blocks = gen_length // block_length
    return [b for b in range(num_blocks) for _ in range(spb)], num_transfer_tokens(block_length, spb) * num_blocks


# 2. One denoising step: predict x0, score it, commit the most confident ----------------------------------


def x0_and_confidence(
    logits: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    *,
    remasking: str,
    temperature: float,
    mask_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 at the N positions (rows, cols) of logits (R, T, V): the argmax at temperature 0, else a
    Gumbel-max sample of softmax(logits / temperature), never the mask token; and its confidence by
    `remasking`: "low_confidence" (the paper's Top-K) p(x0) under the untempered softmax, "topk_margin"
    p(top-1) - p(top-2), "random" uniform noise. Float64 as the authors, a chunk of positions at a time."""
    x0s = []
    confidences = []
    n = max(1, CHUNK_ELEMENTS // logits.shape[-1])  # positions per chunk
    for r, c in zip(rows.split(n), cols.split(n)):
        chunk = logits[r, c].double()  # (n, V)
        scores = chunk
        if temperature > 0:  # argmax(l - T log(-log u)) == argmax(exp(l) / (-log u)^T), the authors' form
            u = torch.rand(chunk.shape, generator=generator, device=chunk.device, dtype=torch.float64)
            scores = chunk - temperature * torch.log(-torch.log(u))
        no_mask = torch.tensor([mask_id], device=chunk.device)
        x0 = scores.index_fill(-1, no_mask, -math.inf).argmax(-1)  # a copy: chunk stays for the confidence
        if remasking == "random":
            conf = torch.rand(len(x0), generator=generator, device=chunk.device, dtype=torch.float64)
        elif remasking == "low_confidence":
            conf = chunk.softmax(-1).gather(-1, x0[:, None]).squeeze(-1)
        else:  # topk_margin
            top = chunk.softmax(-1).topk(2, dim=-1).values  # (n, 2)
            conf = top[:, 0] - top[:, 1]  # p(top-1) - p(top-2)
        x0s.append(x0)
        confidences.append(conf)
    return torch.cat(x0s), torch.cat(confidences)


def most_confident(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Boolean (R, G): the k[r] most confident positions of each row of confidence (R, G); equal
    confidences go to the leftmost position (a stable sort: torch.topk has no rule for ties)."""
    order = confidence.argsort(dim=-1, descending=True, stable=True)
    return order.argsort(dim=-1) < k[:, None]  # each position's rank in that order, below k


# 3. Decoding any set of schedules in one lockstep batch --------------------------------------------------


@dataclass
class HexOutput:
    sequences: torch.Tensor  # (B, K, L + gen_length): prompt and answer of every candidate
    scores: torch.Tensor  # (B, K) float64: mean log-prob of the answer under the first pass
    commit_steps: torch.Tensor  # (B, K, gen_length): the step that committed each answer position
    schedules: list[Schedule]  # (K,): candidate k of every prompt was decoded by schedules[k]


@torch.no_grad()
def decode(
    model: Callable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    schedules: Sequence[Schedule],
    gen_length: int = 256,
    steps: int = 128,
    mask_id: int = MASK_ID,
    generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
) -> HexOutput:
    """Decode every prompt with every schedule: B x K candidates advancing as one batch, in `steps` forward
    calls whatever K. model(x[, attention_mask=...]).logits is (B, T, V); input_ids (B, L) are left padded
    where attention_mask (B, L) is 0. At temperature 0 candidate k equals schedules[k] run alone; a schedule
    given its own `generator` (one stream, or one per schedule) draws what it draws alone at any temperature."""
    gen_length, steps, mask_id, schedules, generators = _check_args(
        model, input_ids, attention_mask, gen_length, steps, mask_id, schedules, generator
    )
    B = len(input_ids)
    K = len(schedules)
    x, attention_mask = _canvas(input_ids, attention_mask, gen_length, mask_id, copies=K)
    commit_step, first_logits = _denoise(
        model, x, attention_mask, schedules * B, generators * B, gen_length, steps, mask_id, K
    )
    sequences = x.view(B, K, -1)
    return HexOutput(
        sequences,
        answer_log_likelihood(first_logits, sequences[:, :, -gen_length:]),
        commit_step.view(B, K, -1),
        schedules,
    )


def _canvas(input_ids, attention_mask, gen_length, mask_id, copies):
    """Each prompt `copies` times, followed by gen_length masks: (B * copies, L + gen_length), and its mask."""
    x = F.pad(input_ids, (0, gen_length), value=mask_id).repeat_interleave(copies, dim=0)
    if attention_mask is not None:
        attention_mask = F.pad(attention_mask.to(x.device), (0, gen_length), value=1).repeat_interleave(copies, dim=0)
    return x, attention_mask


def _logits(model, x, attention_mask):
    return (model(x) if attention_mask is None else model(x, attention_mask=attention_mask)).logits


def _check_args(model, input_ids, attention_mask, gen_length, steps, mask_id, schedules, generator):
    """Every argument check of `decode`, before any forward pass; returns the arguments as used."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long or input_ids.dim() != 2:
        raise TypeError("input_ids must be a 2-D torch.long tensor of shape (batch, prompt_length)")
    if len(input_ids) == 0:
        raise ValueError("input_ids holds no prompts: its shape must be (batch >= 1, prompt_length)")
    if attention_mask is not None and getattr(attention_mask, "shape", None) != input_ids.shape:
        raise ValueError(f"attention_mask must be a tensor of input_ids' shape {tuple(input_ids.shape)}")
    gen_length = _integer("gen_length", gen_length)
    steps = _integer("steps", steps)
    mask_id = _integer("mask_id", mask_id, minimum=0)
    try:  # a model without an input embedding to ask is checked after its first forward pass
        vocab = model.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):
        vocab = math.inf
    if mask_id >= vocab:
        raise ValueError(f"mask_id={mask_id} is outside the model's vocabulary (size {vocab})")
    if (input_ids == mask_id).any():
        raise ValueError(f"input_ids contain mask_id={mask_id}: the prompt must be fully unmasked")
    schedules = list(schedules)
    if not schedules or not all(isinstance(s, Schedule) for s in schedules):
        raise TypeError(f"schedules={schedules!r} must be a non-empty sequence of hex.Schedule")
    for s in schedules:
        steps_per_block(gen_length, steps, s.block_length)
    generators = list(generator) if isinstance(generator, (list, tuple)) else [generator] * len(schedules)
    if len(generators) != len(schedules):
        raise ValueError(f"generator: {len(generators)} generators for {len(schedules)} schedules; pass one or K")
    if not all(g is None or isinstance(g, torch.Generator) for g in generators):
        raise TypeError(f"generator={generator!r} must be a torch.Generator, None, or a list of them")
    return gen_length, steps, mask_id, schedules, generators


def _denoise(model, x, attention_mask, schedules, generators, gen_length, steps, mask_id, rows_per_prompt):
    """Denoise canvas x (R, P + G) in place, row r by schedules[r]: per step one forward pass, candidates are the
    masked positions of a row's open block, committed tokens stay. Returns the commit steps (R, G), and the first
    pass's answer logits of one row per prompt (every row of a prompt sees the same first canvas)."""
    R = x.shape[0]
    P = x.shape[1] - gen_length
    plans = [semi_ar_plan(s.block_length, gen_length, steps) for s in schedules]
    open_index = torch.tensor([blocks for blocks, _ in plans], device=x.device)  # (R, steps): each step's open block
    k = torch.tensor([counts for _, counts in plans], device=x.device)  # (R, steps): tokens each step commits
    block_lengths = torch.tensor([s.block_length for s in schedules], device=x.device)
    block = torch.arange(gen_length, device=x.device) // block_lengths[:, None]  # (R, G): each position's block
    groups = {}  # rows scored together: by rule, temperature and the stream they draw from
    for r, (s, g) in enumerate(zip(schedules, generators)):  # (so a schedule with its own stream draws as alone)
        groups.setdefault((s.remasking, s.temperature, g), []).append(r)
    groups = {key: torch.tensor(rows, device=x.device) for key, rows in groups.items()}  # made once, not per step
    commit_step = torch.full((R, gen_length), -1, dtype=torch.long, device=x.device)
    for t in range(steps):
        logits = _logits(model, x, attention_mask)
        if t == 0:  # the first pass, shared by every schedule: the likelihood score's logits
            if not 0 <= mask_id < logits.shape[-1]:
                raise ValueError(f"mask_id={mask_id} is outside the model's vocabulary (size {logits.shape[-1]})")
            first_logits = logits[::rows_per_prompt, P:].clone()  # (R / K, gen_length, V)
        answer = x[:, P:]  # (R, gen_length) view
        candidate = (answer == mask_id) & (block == open_index[:, t, None])
        confidence = torch.full((R, gen_length), -math.inf, dtype=torch.float64, device=x.device)
        prediction = answer.clone()
        for (remasking, temperature, generator), group in groups.items():
            r, cols = candidate[group].nonzero(as_tuple=True)
            x0, conf = x0_and_confidence(
                logits,
                group[r],
                cols + P,
                remasking=remasking,
                temperature=temperature,
                mask_id=mask_id,
                generator=generator,
            )
            confidence[group[r], cols] = conf
            prediction[group[r], cols] = x0
        del logits  # never hold two steps' logits at once
        commit = most_confident(confidence, k[:, t])
        answer[commit] = prediction[commit]
        commit_step[commit] = t
    return commit_step, first_logits


def answer_log_likelihood(first_logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """The authors' likelihood score, used only by majority_vote(tie_break="likelihood"): the first pass's
    log-softmax (prompt + all masks) at each final answer token, averaged over all gen_length positions.
    (B, G, V), (B, K, G) -> (B, K) float64 (its (B, G, V) float64 scratch is smaller than one step's logits)."""
    log_probs = first_logits.double().log_softmax(-1)  # (B, G, V)
    return log_probs.gather(-1, answers.transpose(1, 2)).mean(1)  # (B, G, K) -> (B, K)


def generate(
    model: Callable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    block_length: int = 32,
    remasking: str = "low_confidence",
    temperature: float = 0.0,
    **kwargs,
) -> torch.Tensor:
    """LLaDA's semi-AR sampler, one schedule: (B, L + gen_length). kwargs go to `decode`: gen_length (256),
    steps (128), mask_id (LLaDA's), generator. The paper's one-block baselines: block_length=gen_length."""
    schedule = Schedule(block_length, remasking, temperature)
    return decode(model, input_ids, attention_mask, schedules=[schedule], **kwargs).sequences[:, 0]


# 4. HEX: every hidden expert in lockstep -----------------------------------------------------------------


def hex_generate(
    model: Callable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    block_lengths: Sequence[int] = (8, 16, 32, 64, 128),
    samples_per_block: int = 1,
    remasking: str = "low_confidence",
    temperature: float = 0.0,
    **kwargs,
) -> HexOutput:
    """The HEX ensemble: K = samples_per_block x len(block_lengths) candidates per prompt in `steps` forward
    calls; candidate s * len(block_lengths) + j is sample s of block_lengths[j] (at temperature 0, its generate).
    kwargs go to `decode`: gen_length (256), steps (128), mask_id (LLaDA's), generator."""
    if not hasattr(block_lengths, "__iter__"):
        raise TypeError(f"block_lengths={block_lengths!r} must be a sequence of ints, e.g. (8, 16, 32, 64, 128)")
    experts = [Schedule(_integer("block_lengths", b), remasking, temperature) for b in block_lengths]
    if not experts:
        raise ValueError("block_lengths must name at least one block length, e.g. (8, 16, 32, 64, 128)")
    samples = _integer("samples_per_block", samples_per_block)
    if samples > 1 and temperature == 0 and remasking != "random":
        raise ValueError(
            f"samples_per_block={samples} at temperature 0 decodes identical samples, not votes: "
            "pass temperature > 0, or samples_per_block=1"
        )
    return decode(model, input_ids, attention_mask, schedules=experts * samples, **kwargs)


# 5. The vote ---------------------------------------------------------------------------------------------


def majority_vote(
    answers: Sequence[Hashable | None], scores: Sequence[float] | None = None, tie_break: str = "first"
) -> tuple[Hashable | None, bool]:
    """HEX's answer: the most frequent non-None answer, and whether it tied with another (all None:
    (None, False)). tie_break="first" keeps the tied answer seen first (the authors' rule: block lengths
    ascend, so the smallest block wins); "likelihood" the one whose best candidate scores highest."""
    if tie_break not in ("first", "likelihood"):
        raise ValueError(f"tie_break={tie_break!r} must be 'first' or 'likelihood'")
    if tie_break == "likelihood" and (scores is None or len(scores) != len(answers)):
        raise ValueError("tie_break='likelihood' needs scores, one per answer")
    counts = Counter(a for a in answers if a is not None)  # keeps first-seen order
    if not counts:
        return None, False
    tied = [a for a, n in counts.items() if n == max(counts.values())]
    if tie_break == "first" or len(tied) == 1:
        return tied[0], len(tied) > 1
    best = {a: max(s for b, s in zip(answers, scores) if b == a) for a in tied}
    return max(tied, key=best.__getitem__), True


# HEX ends here: nothing below is needed to use it ==========================================================


# 6. The quality-exploration sampler: Independent Metropolis-Hastings toward p(x)^alpha (arXiv 2604.00375) ----
#
# The paper's text is not available here: what follows is this project's reconstruction from its abstract and
# figure (../shared/imh-notes.md). The paper's: one token committed per step; the target, the globally tempered
# p(x)^alpha; a mean-field estimate of the suffix mass; a single-position IMH over a batch of proposals. Ours:
# every formula below, the position rule (LLaDA's confidence), the lookahead over the whole masked answer, and
# one chain move per proposal.


def tempered_log_probs(logits: torch.Tensor, alpha: float, mask_id: int) -> torch.Tensor:
    """log q(v), q(v) = p(v)^alpha / sum_u p(u)^alpha with p the softmax of logits (..., V) over every token but
    the mask: the proposal. alpha = 1 is p itself; alpha = 2 is local temperature 0.5."""
    no_mask = torch.tensor([mask_id], device=logits.device)
    log_p = logits.double().index_fill(-1, no_mask, -math.inf).log_softmax(-1)
    return (alpha * log_p).log_softmax(-1)


def suffix_log_mass(logits: torch.Tensor, masked: torch.Tensor, alpha: float, mask_id: int) -> torch.Tensor:
    """The mean-field suffix mass of each canvas, log Z = sum over its masked positions j of log sum_u
    p_j(u)^alpha: (N, G, V) answer logits and (N, G) booleans -> (N,). It stands for the sum over every completion
    of p(completion)^alpha, which it equals where the marginals factorise."""
    no_mask = torch.tensor([mask_id], device=logits.device)
    log_p = logits.float().index_fill(-1, no_mask, -math.inf).log_softmax(-1)  # float32: (N, G, V) is large
    return ((alpha * log_p).logsumexp(-1) * masked).sum(-1)


def imh_chain(log_z: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The independent Metropolis-Hastings chain over each row's proposals, (R, K) log weights log Z_k and (R, K - 1)
    uniforms in [0, 1) -> (R,) the index of its final state. It starts at proposal 0 and at move k goes to proposal
    k with probability min(1, Z_k / Z_current): the weight of a proposal drawn from q toward q * Z."""
    state = torch.zeros(len(log_z), dtype=torch.long, device=log_z.device)
    for k in range(1, log_z.shape[1]):
        current = log_z.gather(1, state[:, None]).squeeze(1)
        state = torch.where(uniforms[:, k - 1].log() < log_z[:, k] - current, k, state)
    return state


def confident_position(logits: torch.Tensor, candidates: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(R,) each row's most confident candidate position by LLaDA's rule, p(x0) at temperature 0, the first of
    equal ones: answer logits (R, G, V) and candidates (R, G), at least one a row."""
    r, c = candidates.nonzero(as_tuple=True)
    _, conf = x0_and_confidence(logits, r, c, remasking="low_confidence", temperature=0.0, mask_id=mask_id)
    confidence = torch.full(candidates.shape, -math.inf, dtype=torch.float64, device=logits.device)
    confidence[r, c] = conf
    return confidence.argmax(-1)


@torch.no_grad()
def imh_generate(
    model: Callable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    gen_length: int = 256,
    alpha: float = 2.0,
    proposals: int = 8,
    samples: int = 1,
    block_length: int | None = None,
    mask_id: int = MASK_ID,
    generator: torch.Generator | None = None,
) -> HexOutput:
    """`samples` answers per prompt, sequences (B, samples, L + gen_length), one token committed per step. At each
    step: the position is the most confident masked one of the open block (LLaDA's rule; block_length=None: one
    block); `proposals` tokens are drawn from p_i^alpha; one forward pass over the canvases with each gives their
    marginals, hence their suffix masses Z; the IMH chain over them picks the token, and its canvas's forward pass
    is the next step's. Every prompt, sample and proposal advances in one batch: gen_length + 1 forward calls.
    alpha = 1 is plain sampling from p_i; a large alpha seeks the mode of p(x) (with one proposal: greedy)."""
    block_length = gen_length if block_length is None else block_length
    gen_length, _, mask_id, _, _ = _check_args(
        model, input_ids, attention_mask, gen_length, gen_length, mask_id, [Schedule(block_length)], generator
    )
    alpha = _real("alpha", alpha, positive=True)
    K = _integer("proposals", proposals)
    S = _integer("samples", samples)
    P = input_ids.shape[1]
    x, attention_mask = _canvas(input_ids, attention_mask, gen_length, mask_id, copies=S)  # (R, P + G), R = B * S
    proposed_mask = None if attention_mask is None else attention_mask.repeat_interleave(K, dim=0)
    logits = _logits(model, x, attention_mask)[:, P:]  # (R, G, V)
    first_logits = logits[::S].clone()
    rows = torch.arange(len(x), device=x.device)
    block = torch.arange(gen_length, device=x.device) // block_length
    commit_step = torch.full((len(x), gen_length), -1, dtype=torch.long, device=x.device)
    for t in range(gen_length):
        answer = x[:, P:]  # (R, G) view
        position = confident_position(logits, (answer == mask_id) & (block == t // block_length), mask_id)  # (R,)
        q = tempered_log_probs(logits[rows, position], alpha, mask_id).exp()  # (R, V)
        tokens = torch.multinomial(q, K, replacement=True, generator=generator)  # (R, K)
        proposed = x.repeat_interleave(K, dim=0)  # (R * K, P + G): x with each proposal committed
        proposed[torch.arange(len(proposed)), P + position.repeat_interleave(K)] = tokens.flatten()
        proposed_logits = _logits(model, proposed, proposed_mask)[:, P:]  # (R * K, G, V)
        log_z = suffix_log_mass(proposed_logits, proposed[:, P:] == mask_id, alpha, mask_id).view(-1, K)
        uniforms = torch.rand(len(x), K - 1, generator=generator, dtype=torch.float64, device=x.device)
        state = imh_chain(log_z, uniforms)  # (R,)
        answer[rows, position] = tokens[rows, state]
        commit_step[rows, position] = t
        logits = proposed_logits.unflatten(0, (-1, K))[rows, state]  # the chosen canvas's marginals
    sequences = x.view(len(input_ids), S, -1)
    return HexOutput(
        sequences,
        answer_log_likelihood(first_logits, sequences[:, :, P:]),
        commit_step.view(len(input_ids), S, -1),
        [Schedule(block_length, "low_confidence", 1 / alpha)] * S,  # the position rule and the local temperature
    )


# 7. A LLaDA-like mask predictor, randomly initialised ----------------------------------------------------


@dataclass
class MaskPredictorOutput:  # what a transformers model returns, as far as decoding needs
    logits: torch.Tensor  # (B, T, V)


class TinyBlock(nn.Module):
    """Pre-norm transformer block as in LLaDA: RMSNorm, rotary bidirectional attention, SwiGLU."""

    def __init__(self, d_model: int, n_heads: int, mlp_hidden: int, **factory):
        super().__init__()
        self.n_heads = n_heads
        self.attn_norm = nn.RMSNorm(d_model, **factory)
        self.mlp_norm = nn.RMSNorm(d_model, **factory)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False, **factory)
        self.proj = nn.Linear(d_model, d_model, bias=False, **factory)
        self.gate_up = nn.Linear(d_model, 2 * mlp_hidden, bias=False, **factory)  # SwiGLU
        self.down = nn.Linear(mlp_hidden, d_model, bias=False, **factory)

    def forward(self, h, cos, sin, key_mask):
        B, T, D = h.shape
        q, k, v = self.qkv(self.attn_norm(h)).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)

        def rotate(z):
            first, second = z.chunk(2, dim=-1)
            return torch.cat([-second, first], dim=-1)

        q = q * cos + rotate(q) * sin  # (B, H, T, D / H)
        k = k * cos + rotate(k) * sin
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # bidirectional
        h = h + self.proj(att.transpose(1, 2).reshape(B, T, D))
        gate, up = self.gate_up(self.mlp_norm(h)).chunk(2, dim=-1)
        return h + self.down(F.silu(gate) * up)


class TinyMaskPredictor(nn.Module):
    """A seeded random LLaDA-like mask predictor of any size (SHAPES): model(x, attention_mask).logits. Padding
    is hidden and rotary positions count real tokens, so a left-padded prompt gives its logits alone.
    max_positions adds what LLaDA lacks, a learned absolute position embedding (GPT-2's, std 0.02) on the token
    embedding: the miniature's small model needs it to learn where on its canvas a token stands."""

    def __init__(
        self,
        vocab_size: int = 1024,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        seed: int = 0,
        mlp_hidden: int | None = None,
        max_positions: int | None = None,
        **factory,
    ):  # factory: device=, dtype=
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(vocab_size, d_model, **factory)
            self.blocks = nn.ModuleList(
                TinyBlock(d_model, n_heads, mlp_hidden or 4 * d_model, **factory) for _ in range(n_layers)
            )
            self.norm = nn.RMSNorm(d_model, **factory)
            self.lm_head = nn.Linear(d_model, vocab_size, bias=False, **factory)  # untied, as LLaDA's
            self.position = None
            if max_positions is not None:
                self.position = nn.Embedding(max_positions, d_model, **factory)
                nn.init.normal_(self.position.weight, std=0.02)
        self.head_dim = d_model // n_heads

    def get_input_embeddings(self) -> nn.Embedding:  # as transformers models answer
        return self.embed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        h = self.embed(input_ids)
        real = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        key_mask = None if attention_mask is None else real.bool()[:, None, None, :]  # (B, 1, 1, T): True = attend
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)[..., None]  # (B, T, 1), counting real tokens
        if self.position is not None:
            h = h + self.position(positions[..., 0])
        half = torch.arange(0, self.head_dim, 2, device=h.device, dtype=torch.float32)
        angles = (positions * 10000.0 ** (-half / self.head_dim)).repeat(1, 1, 2)[:, None]  # (B, 1, T, D / H)
        for block in self.blocks:
            h = block(h, angles.cos().to(h.dtype), angles.sin().to(h.dtype), key_mask)
        return MaskPredictorOutput(self.lm_head(self.norm(h)))


SHAPES = {  # TinyMaskPredictor sizes; llada-8b: LLaDA-8B-Instruct's published shape, 8.02e9 parameters
    "tiny": {},  # the defaults: vocabulary 1024, d_model 64, 2 layers, 4 heads
    "llada-8b": dict(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, mlp_hidden=12288),
}


# 8. python hex.py: every method of a question in one batch, benchmarked ----------------------------------


def benchmark(shape: str = "tiny", repeats: int | None = None) -> list[str]:
    """Every method of B questions (5 HEX experts, 3 one-block baselines; gen_length 256, steps 128) on a random
    model of a SHAPES shape, in one lockstep batch, and at B = 1 the authors' way, one schedule after another; each
    way warmed up by a first, untimed run: forward calls, seconds per question (min-max of `repeats`, default 3, 1 for
    llada-8b), peak GPU memory. Every shape but tiny runs in bfloat16 (llada-8b: 16 GB), on CUDA."""
    cuda = torch.cuda.is_available()
    tiny = shape == "tiny"
    model = TinyMaskPredictor(
        **SHAPES[shape], device="cuda" if cuda else "cpu", dtype=None if tiny else torch.bfloat16
    )
    model.eval()
    prompt_length = 16 if tiny else 200
    repeats = repeats or (3 if tiny else 1)
    schedules = [Schedule(b) for b in (8, 16, 32, 64, 128)] + [Schedule(256, r) for r in REMASKING]
    mask_id = model.embed.num_embeddings - 1  # any id: the weights are random
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    where = torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} thread(s)"
    parameters = sum(p.numel() for p in model.parameters())
    lines = [
        f"Benchmark, shape {shape} ({parameters:.3g} parameters) on {where}, prompt {prompt_length} tokens, "
        f"gen_length 256, steps 128, {repeats} run(s) after a warm-up:",
        f"   {'way':<24}{'B':>3}{'forward calls':>15}{'s / question':>15}{'GPU':>10}",
    ]
    ways = [("one lockstep batch", B, [schedules]) for B in ([1] if tiny else [1, 2, 4, 8])]
    best = {}
    for way, B, groups in ways + [("each schedule in turn", 1, [[s] for s in schedules])]:
        prompt = (torch.arange(B * prompt_length).view(B, -1) % mask_id).to(model.embed.weight.device)
        seconds = []
        if cuda:  # the peak memory of this way alone
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats + 1):
            calls.clear()
            start = time.perf_counter()
            for group in groups:
                decode(model, prompt, schedules=group, gen_length=256, steps=128, mask_id=mask_id)
            if cuda:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        seconds = seconds[1:]  # the warm-up run is not timed
        best[way, B] = min(seconds)
        per_question = f"{min(seconds) / B:.2f}-{max(seconds) / B:.2f}"
        memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "-"
        lines.append(f"   {way:<24}{B:>3}{len(calls):>15}{per_question:>15}{memory:>10}")
    hook.remove()
    ratio = best["each schedule in turn", 1] / best["one lockstep batch", 1]
    return lines + [
        f"   at B = 1 one batch is {max(ratio, 1 / ratio):.2f}x {'faster' if ratio >= 1 else 'slower'} "
        f"than each schedule in turn (best of {repeats}): the same tokens and FLOPs in 8x fewer,\n"
        "   8x wider calls; a CPU is compute-bound (8 rows cost ~8x one), so it gains little there."
    ]


# 9. Intervals a reviewer would compute: over questions, honest at small n --------------------------------


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion of n questions, inside [0, 1]."""
    p = correct / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    low, high = (centre - half) / denominator, (centre + half) / denominator
    return max(0.0, min(p, low)), min(1.0, max(p, high))  # min, max: rounding never puts p outside at 0 or n


def paired_difference(first: Sequence[bool], second: Sequence[bool], z: float = 1.96) -> dict:
    """Accuracy of `first` minus `second` on the same n questions (fractions) and Agresti & Min's (2005) 95%
    interval: the paired Wald interval after adding 1/2 to each of the four cells, so it keeps its width when
    no question is discordant; clamped to [-1, 1]."""
    cells = Counter(zip(map(bool, first), map(bool, second)))
    n = len(first)
    b = cells[True, False]  # only first right
    c = cells[False, True]  # only second right
    centre = (b - c) / (n + 2)
    half = z * math.sqrt(b + c + 1 - (b - c) ** 2 / (n + 2)) / (n + 2)
    interval = (max(-1.0, centre - half), min(1.0, centre + half))
    return dict(difference=(b - c) / n, ci95=interval, only_first=b, only_second=c)


def cross_fitted(right: dict[Hashable, Sequence[bool]]) -> tuple[list[bool], list[Hashable]]:
    """The best of several methods without the winner's curse (two-fold cross-fitting): each question is scored
    by the method most often right on the questions of the other parity (ties to the first). The pooled
    verdicts, and the method chosen for the even and for the odd questions."""
    chosen = [max(right, key=lambda m: sum(right[m][1 - parity :: 2])) for parity in (0, 1)]
    n = len(right[chosen[0]])
    return [right[chosen[i % 2]][i] for i in range(n)], chosen


# 10. python hex.py --miniature: the paper on a masked diffusion model trained here ------------------------

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


@dataclass
class MiniRow:
    """One method's line of the miniature's table, as fractions of the held-out prompts."""

    accuracy: float
    ci95: tuple[float, float]  # Wilson, over prompts
    short: float  # accuracy on chains of k <= 8
    long: float  # on chains of k > 8
    eot_first: float | None = None  # end-of-text's share of the first 16 commits (a decoding rule's rows only)
    cut_short: float | None = None  # share of chains whose last written step S_j is below k


def miniature_figures(answers: torch.Tensor, commit_steps: torch.Tensor, lengths: torch.Tensor) -> dict:
    """The paper's table in miniature from decodes (N, K, G) by MINI_METHODS and the true lengths (N,): a MiniRow
    per method, HEX (the vote of the first MINI_EXPERTS) and the oracle (any of them right); HEX minus the block
    chosen on the other half of the prompts (cross-fitted), paired."""
    stated = chain_answer(answers)  # (N, K)
    right = stated == lengths[:, None]
    votes = [majority_vote([a or None for a in row[:MINI_EXPERTS]])[0] or 0 for row in stated.tolist()]
    hex_right = torch.tensor(votes) == lengths  # 0: no readable answer, never right
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
    return dict(rows=rows, hex_minus_chosen=paired_difference(hex_right.tolist(), chosen_right), chosen=chosen)


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


def miniature_table(figures: dict) -> str:
    """The figures as a Markdown table, in percent, and HEX against the cross-fitted block."""
    cells = {
        label: [
            percent(r.accuracy, r.ci95),
            percent(r.short),
            percent(r.long),
            percent(r.eot_first),
            percent(r.cut_short),
        ]
        for label, r in figures["rows"].items()
    }
    lines = markdown_table(["accuracy [95%]", "k <= 8", "k > 8", "EoT-first", "cut short"], cells)
    paired = figures["hex_minus_chosen"]
    low, high = paired["ci95"]
    lines.append(
        f"HEX minus the block chosen on the other half of the prompts (blocks {figures['chosen']}): "
        f"{100 * paired['difference']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}], paired (Agresti-Min); "
        f"only HEX right {paired['only_first']}, only the block {paired['only_second']}"
    )
    return "\n".join(lines)


def miniature_picture(figures: dict, answers: torch.Tensor, commit_steps: torch.Tensor, path: Path):
    """The table and the mechanism at a glance: accuracy per method with its interval, short and long chains
    apart; the order in which block 8 and one block commit one prompt's answer (answers and commit_steps (K, G)),
    end-of-text marked. Returns the matplotlib Figure saved to `path`, or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(10, 7.5), layout="tight")
    bars, order = figure.subplots(2, 1, height_ratios=(3, 1.3))
    rows = list(figures["rows"].values())
    x = torch.arange(len(rows)).numpy()
    below = [100 * (r.accuracy - r.ci95[0]) for r in rows]
    above = [100 * (r.ci95[1] - r.accuracy) for r in rows]
    accuracy = [100 * r.accuracy for r in rows]
    bars.bar(x - 0.27, accuracy, 0.27, yerr=[below, above], capsize=3, label="all prompts (95% Wilson)")
    bars.bar(x, [100 * r.short for r in rows], 0.27, label="short chains (k <= 8)")
    bars.bar(x + 0.27, [100 * r.long for r in rows], 0.27, label="long chains (k > 8)")
    bars.set(ylabel="accuracy, %", ylim=(0, 118))
    bars.set_xticks(x, [label.replace(", ", ",\n") for label in figures["rows"]], fontsize=8)
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


def miniature_file(seed: int, visible_length: bool, suffix: str) -> Path:
    """A run's file in MINI_CACHE: its weights (".pt", the training's last checkpoint) or its picture (".png")."""
    return MINI_CACHE / (f"seed{seed}-visible{suffix}" if visible_length else f"seed{seed}{suffix}")


def held_out_chains(visible_length: bool, questions: int = 300):
    """The held-out prompts no training sees, their responses and chain lengths."""
    return chain_examples(questions, torch.Generator().manual_seed(2510), visible_length)


def miniature(seed: int, visible_length: bool, steps: int = MINI_STEPS, questions: int = 300) -> dict:
    """python hex.py --miniature: train (resuming a killed training) or load the cached weights, decode the
    held-out prompts with every method of a prompt in one lockstep batch, print the table, draw the picture."""
    prompts, _, lengths = held_out_chains(visible_length, questions)
    checkpoint = miniature_file(seed, visible_length, ".pt")
    model = train_miniature(steps, seed, visible_length, held_out=prompts, checkpoint=checkpoint)
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


# 11. python hex.py --miniature --dilemma: the second paper's quality-exploration dilemma on the miniature ----


DILEMMA_K = (1, 2, 4, 8)  # pass@k's k


def pass_at_k(n: int, right: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which `right` are right (Chen et al., 2021)."""
    return 1 - math.comb(n - right, k) / math.comb(n, k)


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
    votes = [majority_vote([a or None for a in answers])[0] for answers in stated.tolist()]
    row["vote"] = mean([float(v == k) for v, k in zip(votes, lengths.tolist())])
    row["distinct"] = sum(len(set(answers) - {0}) for answers in stated.tolist()) / len(stated)
    return row


def dilemma(seed: int, steps: int = MINI_STEPS, questions: int = 64, samples: int = 8, proposals: int = 4) -> dict:
    """python hex.py --miniature --dilemma: pass@k, distinct answers and the vote of each method's samples on the
    first `questions` held-out prompts, with the miniature's weights (trained first if need be). The sizes keep it
    within 10 minutes on two cores: the IMH's forward passes carry samples x proposals rows a prompt."""
    prompts, _, lengths = held_out_chains(visible_length=False)
    checkpoint = miniature_file(seed, False, ".pt")
    model = train_miniature(steps, seed, False, held_out=prompts, checkpoint=checkpoint)
    prompts, lengths = prompts[:questions], lengths[:questions]
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


def _positive(kind):
    """An argparse type: a number of `kind` > 0, or argparse's one-line error."""

    def parse(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} is not a number > 0")
        return value

    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="hex.py", description="HEX's one-batch benchmark, or --miniature: the paper on a CPU."
    )
    add = parser.add_argument
    add("--shape", choices=list(SHAPES), default="tiny", help="llada-8b: LLaDA-8B's shape, bf16, CUDA")
    add("--repeats", type=_positive(int), help="timed runs per way (default 3; llada-8b 1)")
    add(
        "--miniature",
        action="store_true",
        help=f"train a tiny dLLM on a chain task, print the paper's table and "
        f"draw it; the weights (the training's checkpoint, resumed) and the picture go to ./{MINI_CACHE}/",
    )
    add("--visible-length", action="store_true", help="--miniature's control: the prompt shows k")
    add("--seed", type=int, help="--miniature's training seed (default 1)")
    add("--dilemma", action="store_true", help="--miniature: the IMH sampler's pass@k against confidence decoding")
    args = parser.parse_args(argv)
    seed = 1 if args.seed is None else args.seed
    if args.miniature and args.dilemma:
        if args.visible_length:
            parser.error("--dilemma runs on the miniature's own task: drop --visible-length")
        dilemma(seed)
        return
    if args.miniature:
        miniature(seed, args.visible_length)
        return
    if args.seed is not None or args.visible_length or args.dilemma:
        parser.error("--seed, --visible-length and --dilemma set up --miniature: add --miniature, or drop them")
    if args.shape != "tiny" and not torch.cuda.is_available():
        raise SystemExit(f"hex.py: error: --shape {args.shape} needs a CUDA GPU (16 GB in bfloat16); tiny runs here")
    print("\n".join(benchmark(args.shape, args.repeats)))


if __name__ == "__main__":
    main()
