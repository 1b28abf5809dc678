"""HEX: Hidden semi-autoregressive EXperts (arXiv 2510.05040), test-time scaling for masked diffusion LLMs.

A masked diffusion LLM (LLaDA-8B-Instruct) starts from an answer of [MASK] tokens and, over `steps` denoising
steps, commits the masked positions it is most sure of. Semi-autoregressive decoding cuts the answer into blocks
of `block_length` tokens, denoised left to right. Each block length is a hidden "expert"; HEX decodes with
several and takes a majority vote. In the order of the idea: 1. `Schedule`; 2. one denoising step; 3. `decode`,
the denoising loop, any schedules in one lockstep batch, counting each candidate's forward passes;
4. `hex_generate`; 5. `majority_vote`, and the vote stopped once settled (`decode_in_waves`). Nothing after that is
needed to use HEX: 6. `imh_generate`, the second paper's sampler (arXiv 2604.00375) as reconstructed here;
7. `TinyMaskPredictor`, a random LLaDA-like model; 8. `python hex.py [--shape llada-8b]`, the one-batch
benchmark; 9. intervals over questions. Needs only torch.
"""

from __future__ import annotations

import argparse
import math
import numbers
import operator
import time
from collections import Counter
from dataclasses import dataclass
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
    expert); the paper's baselines Schedule(gen_length, r), r in "topk_margin", "low_confidence" (Top-K), "random".
    Ours, an option: a `threshold` replaces the fixed tokens a step with Fast-dLLM's rule (arXiv 2505.22618): each
    step commits every masked position of the open block whose confidence clears it, at least the most confident
    one, so the number of steps depends on the data and outputs change."""

    block_length: int
    remasking: str = "low_confidence"
    temperature: float = 0.0
    threshold: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "block_length", _integer("block_length", self.block_length))
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking={self.remasking!r} must be one of {REMASKING}")
        object.__setattr__(self, "temperature", _real("temperature", self.temperature))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", _real("threshold", self.threshold))
            if self.threshold > 1 or self.remasking == "random":
                raise ValueError(
                    f"threshold={self.threshold} with remasking={self.remasking!r}: a threshold is a confidence in "
                    "[0, 1] of 'low_confidence' or 'topk_margin' (random order has none)"
                )


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


# 3. The denoising loop: any set of schedules in one lockstep batch ---------------------------------------


@dataclass
class HexOutput:
    """Every prompt's candidates: candidate k of each prompt was decoded by schedules[k]."""

    sequences: torch.Tensor  # (B, K, L + gen_length): prompt and answer of every candidate
    commit_steps: torch.Tensor  # (B, K, gen_length): the step that committed each answer position
    schedules: list[Schedule]  # (K,)
    forward_passes: torch.Tensor  # (B, K): the forward passes each candidate took part in (NFE)
    forward_calls: int  # the model calls of the whole batch


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
    """Decode every prompt with every schedule: B x K candidates as one batch, in `steps` forward calls whatever K
    (a threshold's take what they need). model(x[, attention_mask=...]).logits is (B, T, V); input_ids (B, L) left
    padded where attention_mask (B, L) is 0. At temperature 0 candidate k equals schedules[k] run alone; a schedule
    given its own `generator` (a stream, or one per schedule) draws what it draws alone at any temperature."""
    gen_length, steps = _integer("gen_length", gen_length), _integer("steps", steps)
    mask_id = _integer("mask_id", mask_id, minimum=0)
    schedules, generators = _check_args(
        model, input_ids, attention_mask, gen_length, steps, mask_id, schedules, generator
    )
    B, P = input_ids.shape
    K = len(schedules)
    x, attention_mask = _canvas(input_ids, attention_mask, gen_length, mask_id, copies=K)  # (R, P + G), R = B * K
    plan = semi_ar_plan(schedules * B, gen_length, steps, x.device)
    groups = _scoring_groups(schedules * B, generators * B, x.device)
    commit_steps = torch.full((B * K, gen_length), -1, dtype=torch.long, device=x.device)
    for t in range(gen_length):
        answer = x[:, P:]  # (R, G), a view: a commit writes into x
        masked = answer == mask_id
        active = masked.any(-1).nonzero().squeeze(-1)  # (A,): a row whose answer is full leaves the batch
        if len(active) == 0:
            break
        logits = _logits(model, x[active], None if attention_mask is None else attention_mask[active])[:, P:]
        _check_vocabulary(mask_id, logits.shape[-1])  # logits (A, G, V): the active rows' answers
        open_block = plan.block.gather(1, masked.long().argmax(-1, keepdim=True))  # (R, 1): the leftmost mask's
        candidate = masked & (plan.block == open_block)  # masked, in the open block
        prediction = answer.clone()
        confidence = torch.full((B * K, gen_length), -math.inf, dtype=torch.float64, device=x.device)
        for (remasking, temperature, generator), rows in groups.items():  # rows that share a rule and a stream
            r, cols = candidate[rows].nonzero(as_tuple=True)
            x0, conf = x0_and_confidence(
                logits,
                torch.searchsorted(active, rows[r]),  # a row's place among the active rows
                cols,
                remasking=remasking,
                temperature=temperature,
                mask_id=mask_id,
                generator=generator,
            )
            prediction[rows[r], cols] = x0
            confidence[rows[r], cols] = conf
        del logits  # never hold two steps' logits at once
        clears = (confidence >= plan.threshold[:, None]).sum(-1).clamp(min=1)  # (R,): a threshold row's tokens
        tokens = torch.where(plan.threshold.isnan(), plan.tokens[:, t], clears)
        commit = most_confident(confidence, tokens) & candidate  # (R, G)
        answer[commit] = prediction[commit]
        commit_steps[commit] = t
    passes = commit_steps.view(B, K, -1).amax(-1) + 1  # (B, K): a row commits at every step until it is full
    return HexOutput(x.view(B, K, -1), commit_steps.view(B, K, -1), schedules, passes, int(passes.max()))


@dataclass
class LockstepPlan:
    """What every row of a lockstep batch commits at step t: LLaDA's two loops, `for num_block in
    range(num_blocks): for i in range(steps_per_block):`, flattened over t = num_block * steps_per_block + i, so
    rows of different block lengths advance together. The open block is the one holding the leftmost mask, since
    a block's steps fill it."""

    block: torch.Tensor  # (R, G): the block of each answer position
    tokens: torch.Tensor  # (R, G): how many tokens step t commits (0 once the row's steps are done)
    threshold: torch.Tensor  # (R,) float64: a row's confidence threshold, NaN where it follows `tokens`


def semi_ar_plan(schedules: Sequence[Schedule], gen_length: int, steps: int, device=None) -> LockstepPlan:
    """The lockstep plan of rows decoded by `schedules` (R,): every block gets steps / num_blocks steps."""
    tokens = []
    for s in schedules:
        spb = steps_per_block(gen_length, steps, s.block_length)
        tokens.append(num_transfer_tokens(s.block_length, spb) * (gen_length // s.block_length))
    block_lengths = torch.tensor([s.block_length for s in schedules], device=device)
    return LockstepPlan(
        block=torch.arange(gen_length, device=device) // block_lengths[:, None],
        tokens=F.pad(torch.tensor(tokens, device=device), (0, gen_length - steps)),
        threshold=torch.tensor(
            [math.nan if s.threshold is None else s.threshold for s in schedules], dtype=torch.float64, device=device
        ),
    )


def _scoring_groups(schedules, generators, device) -> dict:
    """Rows scored together, by rule, temperature and the stream they draw from (so that a schedule given its own
    stream draws what it draws alone): {(remasking, temperature, generator): row indices}."""
    groups = {}
    for r, (s, g) in enumerate(zip(schedules, generators)):
        groups.setdefault((s.remasking, s.temperature, g), []).append(r)
    return {key: torch.tensor(rows, device=device) for key, rows in groups.items()}


def _canvas(input_ids, attention_mask, gen_length, mask_id, copies):
    """Each prompt `copies` times, followed by gen_length masks: (B * copies, L + gen_length), and its mask."""
    x = F.pad(input_ids, (0, gen_length), value=mask_id).repeat_interleave(copies, dim=0)
    if attention_mask is not None:
        attention_mask = F.pad(attention_mask.to(x.device), (0, gen_length), value=1).repeat_interleave(copies, dim=0)
    return x, attention_mask


def _logits(model, x, attention_mask):
    """model(x[, attention_mask]).logits, or a TypeError that says what a model must return."""
    out = model(x) if attention_mask is None else model(x, attention_mask=attention_mask)
    if not isinstance(getattr(out, "logits", None), torch.Tensor):
        raise TypeError(
            f"the model returned {type(out).__name__}: it must return an object whose .logits is a (B, T, V) "
            "tensor, as transformers models do (wrap a bare tensor in hex.MaskPredictorOutput(logits))"
        )
    return out.logits


def _check_vocabulary(mask_id, vocab):
    if not 0 <= mask_id < vocab:
        raise ValueError(f"mask_id={mask_id} is outside the model's vocabulary (size {vocab})")


def _check_args(model, input_ids, attention_mask, gen_length, steps, mask_id, schedules, generator):
    """Every check of `decode`'s arguments (gen_length, steps and mask_id already ints), before any forward pass;
    returns the schedules and a generator for each."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long or input_ids.dim() != 2:
        raise TypeError("input_ids must be a 2-D torch.long tensor of shape (batch, prompt_length)")
    if len(input_ids) == 0:
        raise ValueError("input_ids holds no prompts: its shape must be (batch >= 1, prompt_length)")
    if attention_mask is not None and getattr(attention_mask, "shape", None) != input_ids.shape:
        raise ValueError(f"attention_mask must be a tensor of input_ids' shape {tuple(input_ids.shape)}")
    if steps > gen_length:
        raise ValueError(f"steps={steps} must be <= gen_length={gen_length}: a step must commit at least one token")
    try:  # a model without an input embedding to ask is checked after its first forward pass
        _check_vocabulary(mask_id, model.get_input_embeddings().num_embeddings)
    except (AttributeError, NotImplementedError):
        pass
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
    return schedules, generators


@torch.no_grad()
def answer_log_likelihood(
    model: Callable, input_ids: torch.Tensor, answers: torch.Tensor, attention_mask=None, mask_id: int = MASK_ID
) -> torch.Tensor:
    """The authors' likelihood score, for majority_vote(tie_break="likelihood") only: one forward pass over each
    prompt followed by gen_length masks (every schedule's first canvas), its log-softmax at each candidate's final
    answer tokens, averaged over the gen_length positions. answers (B, K, G) -> (B, K) float64."""
    x, attention_mask = _canvas(input_ids, attention_mask, answers.shape[-1], mask_id, copies=1)  # (B, P + G)
    log_probs = _logits(model, x, attention_mask)[:, input_ids.shape[1] :].double().log_softmax(-1)  # (B, G, V)
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


# 5. The vote, and an exact early stop: no more candidates than the vote needs ------------------------------


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


def vote_settled(answers: Sequence[Hashable | None], remaining: int, tie_break: str = "first") -> bool:
    """Whether `remaining` more answers, whatever they are, cannot change majority_vote(answers): the leader stays
    ahead even if every one of them goes to one rival, an answer seen or a new one. With tie_break="first" and the
    remaining answers seen after these, a rival seen after the leader may tie it; with "likelihood" none may."""
    leader, _ = majority_vote(answers)
    if leader is None or remaining == 0:
        return remaining == 0
    counts = Counter(a for a in answers if a is not None)  # first-seen order
    after = list(counts).index(leader)  # rivals past this index were seen after the leader
    first = tie_break == "first"
    rivals = [c + remaining < counts[leader] + (first and i > after) for i, c in enumerate(counts.values())]
    return all(rivals[:after] + rivals[after + 1 :]) and remaining < counts[leader] + first


@torch.no_grad()
def decode_in_waves(
    model: Callable,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    schedules: Sequence[Schedule],
    read_answer: Callable[[torch.Tensor], Hashable | None],
    tie_break: str = "first",
    mask_id: int = MASK_ID,
    **kwargs,
) -> HexOutput:
    """`decode` with an exact early stop (ours): each prompt's candidates are decoded in waves, in order, first the
    fewest that could settle a vote (half of K, rounded up), then one at a time, and a prompt leaves once
    `vote_settled` says its candidates left cannot change its majority vote. Its vote is the vote over all K (at
    temperature 0 the same candidates, above it the same in distribution). read_answer((G,) answer ids) is a
    candidate's answer, None if unreadable, or a list of its answers under several rules, and then a prompt leaves
    once every rule's vote is settled. A candidate never decoded keeps its masks, commit steps -1 and
    forward_passes 0. Fewer rows, more calls: a wave is a batch."""
    if tie_break not in ("first", "likelihood"):
        raise ValueError(f"tie_break={tie_break!r} must be 'first' or 'likelihood'")
    if not callable(read_answer):
        raise TypeError(f"read_answer={read_answer!r} must be a function of a candidate's (G,) answer ids")
    B, P = input_ids.shape
    K = len(schedules)
    voting = torch.arange(B, device=input_ids.device)  # the prompts whose vote is still open
    answers = [[] for _ in range(B)]  # per prompt: each decoded candidate's answers, a list of one per rule
    waves = []  # (prompts, candidates, HexOutput) of each wave
    done = 0  # candidates decoded
    while done == 0 or done < K and len(voting):  # the first wave is every prompt's, and checks the arguments
        part = slice(done, (K + 1) // 2 if done == 0 else done + 1)
        mask = None if attention_mask is None else attention_mask[voting]
        out = decode(model, input_ids[voting], mask, schedules=schedules[part], mask_id=mask_id, **kwargs)
        waves.append((voting, part, out))
        for q, candidates in zip(voting.tolist(), out.sequences[:, :, P:]):
            answers[q] += [a if isinstance(a := read_answer(c), list) else [a] for c in candidates]
        done = part.stop
        still_open = [
            not all(vote_settled(rule, K - done, tie_break) for rule in zip(*answers[q])) for q in voting.tolist()
        ]
        voting = voting[torch.tensor(still_open, dtype=torch.bool, device=voting.device)]
    G = waves[0][2].commit_steps.shape[-1]
    full = HexOutput(  # every candidate as never decoded, then each wave's
        _canvas(input_ids, None, G, mask_id, copies=K)[0].view(B, K, -1),
        torch.full((B, K, G), -1, device=input_ids.device),
        list(schedules),
        torch.zeros(B, K, dtype=torch.long, device=input_ids.device),
        sum(out.forward_calls for _, _, out in waves),
    )
    for prompts, part, out in waves:
        full.sequences[prompts, part] = out.sequences
        full.commit_steps[prompts, part] = out.commit_steps
        full.forward_passes[prompts, part] = out.forward_passes
    return full


# HEX ends here: nothing below is needed to use it ==========================================================


# 6. The quality-exploration sampler: Independent Metropolis-Hastings toward p(x)^alpha (arXiv 2604.00375) ----
#
# The paper's text is not available: this is our reconstruction from its abstract and its Figure 1, and no code
# of it is published. From the paper: one token committed per step; the target, the globally tempered p(x)^alpha;
# a mean-field estimate of the suffix mass (a sum over every completion); a single-position IMH over a batch of
# proposals. Assumed here, where the paper is unknown to us: the position rule (LLaDA's confidence, in the open
# block); the proposal q(v) ~ p_i(v)^alpha (alpha 2 = the paper's local temperature 0.5); the mean-field lookahead
# over every masked position of the answer, not the open block alone; one chain move per proposal; every formula
# below. What follows from it (tested): alpha 1 is plain sampling from p_i, a huge alpha with one proposal is
# greedy decoding, and Z is exact where the marginals factorise.


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
    gen_length, mask_id = _integer("gen_length", gen_length), _integer("mask_id", mask_id, 0)
    block_length = gen_length if block_length is None else block_length
    _check_args(model, input_ids, attention_mask, gen_length, gen_length, mask_id, [Schedule(block_length)], generator)
    alpha = _real("alpha", alpha, positive=True)
    K = _integer("proposals", proposals)
    S = _integer("samples", samples)
    P = input_ids.shape[1]
    x, attention_mask = _canvas(input_ids, attention_mask, gen_length, mask_id, copies=S)  # (R, P + G), R = B * S
    proposed_mask = None if attention_mask is None else attention_mask.repeat_interleave(K, dim=0)
    logits = _logits(model, x, attention_mask)[:, P:]  # (R, G, V)
    _check_vocabulary(mask_id, logits.shape[-1])
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
    return HexOutput(
        x.view(len(input_ids), S, -1),
        commit_step.view(len(input_ids), S, -1),
        [Schedule(block_length, "low_confidence", 1 / alpha)] * S,  # the position rule and the local temperature
        forward_passes=torch.full((len(input_ids), S), 1 + gen_length * K, device=x.device),  # K proposals a step
        forward_calls=gen_length + 1,
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
        mlp_hidden = 4 * d_model if mlp_hidden is None else mlp_hidden
        sizes = dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads, mlp_hidden=mlp_hidden)
        for name, value in sizes.items():
            _integer(name, value)
        if d_model % (2 * n_heads):
            raise ValueError(
                f"d_model={d_model} must be a multiple of 2 x n_heads={n_heads} (rotary halves each head)"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(vocab_size, d_model, **factory)
            self.blocks = nn.ModuleList(TinyBlock(d_model, n_heads, mlp_hidden, **factory) for _ in range(n_layers))
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
    device = "cuda" if cuda else "cpu"
    model = TinyMaskPredictor(**SHAPES[shape], device=device, dtype=None if tiny else torch.bfloat16).eval()
    prompt_length = 16 if tiny else 200
    repeats = repeats or (3 if tiny else 1)
    schedules = [Schedule(b) for b in (8, 16, 32, 64, 128)] + [Schedule(256, r) for r in REMASKING]
    mask_id = model.embed.num_embeddings - 1  # any id: the weights are random
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
        prompt = torch.arange(B * prompt_length, device=device).view(B, -1) % mask_id
        seconds = []
        if cuda:  # the peak memory of this way alone
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats + 1):  # the first run warms up, untimed
            start = time.perf_counter()
            outs = [decode(model, prompt, schedules=g, gen_length=256, steps=128, mask_id=mask_id) for g in groups]
            if cuda:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        best[way, B] = min(seconds[1:])
        per_question = f"{min(seconds[1:]) / B:.2f}-{max(seconds[1:]) / B:.2f}"
        memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "-"
        lines.append(f"   {way:<24}{B:>3}{sum(out.forward_calls for out in outs):>15}{per_question:>15}{memory:>10}")
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


@dataclass
class PairedDifference:
    """Accuracy of one method minus another's on the same questions, as fractions."""

    difference: float
    ci95: tuple[float, float]  # Agresti & Min's 95% interval
    only_first: int  # questions only the first got right
    only_second: int


def paired_difference(first: Sequence[bool], second: Sequence[bool], z: float = 1.96) -> PairedDifference:
    """Accuracy of `first` minus `second` on the same n questions (fractions) and Agresti & Min's (2005) 95%
    interval: the paired Wald interval after adding 1/2 to each of the four cells, so it keeps its width when
    no question is discordant; clamped to [-1, 1]."""
    if len(first) != len(second) or not first:
        raise ValueError(f"first and second must judge the same n >= 1 questions, got {len(first)} and {len(second)}")
    cells = Counter(zip(map(bool, first), map(bool, second)))
    n = len(first)
    b = cells[True, False]  # only first right
    c = cells[False, True]  # only second right
    centre = (b - c) / (n + 2)
    half = z * math.sqrt(b + c + 1 - (b - c) ** 2 / (n + 2)) / (n + 2)
    interval = (max(-1.0, centre - half), min(1.0, centre + half))
    return PairedDifference((b - c) / n, interval, only_first=b, only_second=c)


def cross_fitted(right: dict[Hashable, Sequence[bool]]) -> tuple[list[bool], list[Hashable]]:
    """The best of several methods without the winner's curse (two-fold cross-fitting): each question is scored
    by the method most often right on the questions of the other parity (ties to the first). The pooled
    verdicts, and the method chosen for the even and for the odd questions."""
    chosen = [max(right, key=lambda m: sum(right[m][1 - parity :: 2])) for parity in (0, 1)]
    n = len(right[chosen[0]])
    return [right[chosen[i % 2]][i] for i in range(n)], chosen


def pass_at_k(n: int, right: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which `right` are right (Chen et al., 2021)."""
    return 1 - math.comb(n - right, k) / math.comb(n, k)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="hex.py",
        description="HEX's one-batch benchmark: every method of a question in one lockstep batch against the "
        "authors' way, one schedule after another, on a random model. The paper on a CPU: miniature.py.",
    )
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny", help="llada-8b: LLaDA-8B's shape, bf16, CUDA")
    parser.add_argument("--repeats", type=int, help="timed runs per way (default 3; llada-8b 1)")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"argument --repeats: {args.repeats} is not a number > 0")
    if args.shape != "tiny" and not torch.cuda.is_available():
        raise SystemExit(f"hex.py: error: --shape {args.shape} needs a CUDA GPU (16 GB in bfloat16); tiny runs here")
    print("\n".join(benchmark(args.shape, args.repeats)))


if __name__ == "__main__":
    main()
