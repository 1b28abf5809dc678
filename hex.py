"""HEX: Hidden semi-autoregressive EXperts, test-time scaling for masked diffusion LLMs.

Reference implementation of "Test-Time Scaling in Diffusion LLMs via Hidden Semi-Autoregressive
Experts" (arXiv 2510.05040). A masked diffusion LLM such as LLaDA-8B-Instruct starts from an answer
of [MASK] tokens and, over `steps` denoising steps, commits the masked positions it is most sure of.
Semi-autoregressive decoding cuts the answer into blocks of `block_length` tokens, denoised left to
right. Each block length is a hidden "expert"; HEX decodes with several and takes a majority vote.

Sections, in the order of the idea: 1. the semi-AR schedule and `Schedule`, how one candidate is
decoded; 2. one denoising step (predict x0, score it by `remasking`, commit the most confident);
3. `decode`, any set of schedules of each prompt in one lockstep batch, and `generate`, one schedule;
4. `hex_generate`, every block length; 5. `majority_vote`; 6. `TinyMaskPredictor`, a seeded random
model for tests; 7. `python hex.py`: commit order and the [AfterEoT] mechanism on a stand-in model,
a vote, and a benchmark of every method of a question in one batch, all on the tiny model.
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


# 1. The semi-autoregressive schedule -------------------------------------------------------------

def _integer(name: str, value, minimum: int = 1) -> int:
    """value as an int (numpy integers too), or a TypeError/ValueError that names the argument."""
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}={value!r} must be an int") from None
    if isinstance(value, bool) or number < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")
    return number


def steps_per_block(gen_length: int, steps: int, block_length: int) -> int:
    """Steps each block gets: the answer is cut into gen_length / block_length blocks, decoded left
    to right, and every block gets the same share of the steps (LLaDA, and the authors' code)."""
    block_length = _integer("block_length", block_length)
    if gen_length % block_length:
        raise ValueError(f"block_length={block_length!r} must be a positive divisor of "
                         f"gen_length={gen_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps={steps} must be a multiple of the number of blocks "
                         f"(gen_length / block_length = {gen_length}/{block_length} = {num_blocks})")
    return steps // num_blocks


def num_transfer_tokens(block_length: int, steps: int) -> list[int]:
    """Masked tokens committed at each of a block's `steps` steps: block_length // steps each, plus
    one more in the first block_length % steps steps (LLaDA's linear noise schedule)."""
    base, extra = divmod(block_length, steps)
    return [base + (i < extra) for i in range(steps)]


def _schedule(gen_length: int, steps: int, block_lengths: Sequence[int], device: torch.device):
    """Per row and step: where the open block starts (answer coordinates) and how many tokens the
    step commits. Two (R, steps) tensors; rows may use different block lengths."""
    starts, counts = [], []
    for b in block_lengths:
        spb = steps_per_block(gen_length, steps, b)
        starts.append([t // spb * b for t in range(steps)])
        counts.append(num_transfer_tokens(b, spb) * (gen_length // b))
    return torch.tensor(starts, device=device), torch.tensor(counts, device=device)


@dataclass(frozen=True)
class Schedule:
    """How one candidate is decoded: a block length (the paper's hidden expert), a remasking rule and
    a temperature. HEX's experts are Schedule(b) for b in 8..128; the paper's one-block baselines are
    Schedule(gen_length, "topk_margin"), Schedule(gen_length, "low_confidence") (Top-K) and
    Schedule(gen_length, "random")."""
    block_length: int
    remasking: str = "low_confidence"
    temperature: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "block_length", _integer("block_length", self.block_length))
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking={self.remasking!r} must be one of {REMASKING}")
        if not isinstance(self.temperature, numbers.Real) or isinstance(self.temperature, bool):
            raise TypeError(f"temperature={self.temperature!r} must be a real number >= 0")
        if not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature={self.temperature!r} must be a finite number >= 0")
        object.__setattr__(self, "temperature", float(self.temperature))


# 2. One denoising step ---------------------------------------------------------------------------

def _positions_per_chunk(vocab_size: int) -> int:
    """How many positions' float64 vocabulary rows fit in CHUNK_ELEMENTS (at least one)."""
    return max(1, CHUNK_ELEMENTS // vocab_size)


def x0_and_confidence(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, *,
                      remasking: str, temperature: float, mask_id: int,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict x0 at the N positions (rows, cols) of logits (R, T, V) and score each prediction.

    x0 is the argmax at temperature 0, else a Gumbel-max sample of softmax(logits / temperature);
    the mask token is never predicted. The confidence follows `remasking`:
    "low_confidence" (the paper's Top-K) is p(x0) under the untempered softmax, "topk_margin" is
    p(top-1) - p(top-2), "random" is uniform noise. Float64 like the authors, but computed a chunk of
    positions at a time: no float64 or softmax tensor the size of the batch's logits is ever built.
    Returns x0 (N,) and confidence (N,) float64.
    """
    out, n = [], _positions_per_chunk(logits.shape[-1])
    no_mask = torch.tensor([mask_id], device=logits.device)
    for r, c in zip(rows.split(n), cols.split(n)):
        chunk = logits[r, c].double()  # (n, V)
        scores = chunk
        if temperature > 0:  # argmax(l - T log(-log u)) == argmax(exp(l) / (-log u)^T), the authors' form
            u = torch.rand(chunk.shape, generator=generator, device=chunk.device, dtype=torch.float64)
            scores = chunk - temperature * torch.log(-torch.log(u))
        x0 = scores.index_fill(-1, no_mask, -math.inf).argmax(-1)
        if remasking == "random":
            conf = torch.rand(len(x0), generator=generator, device=chunk.device, dtype=torch.float64)
        elif remasking == "low_confidence":
            conf = chunk.softmax(-1).gather(-1, x0[:, None]).squeeze(-1)
        else:  # topk_margin
            top2 = chunk.softmax(-1).topk(2, dim=-1).values
            conf = top2[:, 0] - top2[:, 1]
        out.append((x0, conf))
    x0s, confs = zip(*out)
    return torch.cat(x0s), torch.cat(confs)


def most_confident(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Boolean (R, G): the k[r] most confident positions of each row of confidence (R, G).
    Exactly equal confidences go to the leftmost position (a stable sort; torch.topk has no rule)."""
    order = confidence.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(confidence.shape[-1], device=confidence.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks) < k[:, None]


def _stream_groups(schedules: list[Schedule], generators: list, device: torch.device):
    """Rows scored together: one group per remasking rule, temperature and random stream, in order of
    first appearance. Rows that draw nothing (temperature 0, not "random") ignore their generator, so a
    schedule with a generator of its own draws exactly what it would draw in a batch of its own."""
    groups: dict[tuple, list[int]] = {}
    for r, (s, g) in enumerate(zip(schedules, generators)):
        draws = s.temperature > 0 or s.remasking == "random"
        groups.setdefault((s.remasking, s.temperature, g if draws else None), []).append(r)
    return [(*key, torch.tensor(rows, device=device)) for key, rows in groups.items()]


def _denoise(model: Callable, x: torch.Tensor, attention_mask: torch.Tensor | None,
             schedules: list[Schedule], generators: list, gen_length: int, steps: int, mask_id: int,
             keep_first_logits_every: int):
    """Denoise the answers of canvas x (R, P + gen_length) in place, row r by schedules[r].

    Every step is one forward pass over all rows; only masked positions of each row's open block
    are candidates, and committed tokens are never changed. Returns the canvas, the step that
    committed each answer position (R, gen_length), and the first pass's answer logits of every
    `keep_first_logits_every`-th row (for the likelihood score).
    """
    R, P = x.shape[0], x.shape[1] - gen_length
    lengths = [s.block_length for s in schedules]
    block_start, k = _schedule(gen_length, steps, lengths, x.device)  # (R, steps); validates
    block_end = block_start + torch.tensor(lengths, device=x.device)[:, None]
    groups = _stream_groups(schedules, generators, x.device)
    pos = torch.arange(gen_length, device=x.device)
    commit_step = torch.full((R, gen_length), -1, dtype=torch.long, device=x.device)
    for t in range(steps):
        logits = (model(x) if attention_mask is None else model(x, attention_mask=attention_mask)).logits
        if t == 0:
            if not 0 <= mask_id < logits.shape[-1]:
                raise ValueError(f"mask_id={mask_id} is outside the model's vocabulary (size {logits.shape[-1]})")
            first_logits = logits[::keep_first_logits_every, P:].clone()  # (R / K, gen_length, V)
        answer = x[:, P:]  # (R, gen_length) view
        open_block = (pos >= block_start[:, t, None]) & (pos < block_end[:, t, None])
        candidate = (answer == mask_id) & open_block
        confidence = torch.full((R, gen_length), -math.inf, dtype=torch.float64, device=x.device)
        prediction = answer.clone()
        for remasking, temperature, generator, group in groups:
            r, cols = candidate[group].nonzero(as_tuple=True)
            rows = group[r]
            x0, conf = x0_and_confidence(logits, rows, cols + P, remasking=remasking,
                                         temperature=temperature, mask_id=mask_id, generator=generator)
            confidence[rows, cols], prediction[rows, cols] = conf, x0
        del logits  # never hold two steps' logits at once
        commit = most_confident(confidence, k[:, t])
        answer[commit] = prediction[commit]
        commit_step[commit] = t
    return x, commit_step, first_logits


# 3. Decoding any set of schedules in one lockstep batch ----------------------------------------

def _vocab_size(model: Callable) -> int | None:
    """The size of the model's input embedding, when it has one to ask (transformers models do)."""
    try:
        return model.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):  # no such method, or transformers' default that raises
        return None


def _check_args(model, input_ids, attention_mask, gen_length, steps, mask_id):
    """The arguments every decoder shares, as (gen_length, steps, mask_id)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long or input_ids.dim() != 2:
        raise TypeError("input_ids must be a 2-D torch.long tensor of shape (batch, prompt_length)")
    if len(input_ids) == 0:
        raise ValueError("input_ids holds no prompts: its shape must be (batch >= 1, prompt_length)")
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor)
                                       or attention_mask.shape != input_ids.shape):
        raise ValueError(f"attention_mask must be a tensor of the shape of input_ids "
                         f"{tuple(input_ids.shape)}, got {getattr(attention_mask, 'shape', attention_mask)}")
    gen_length, steps = _integer("gen_length", gen_length), _integer("steps", steps)
    mask_id = _integer("mask_id", mask_id, minimum=0)
    vocab = _vocab_size(model)
    if vocab is not None and mask_id >= vocab:
        raise ValueError(f"mask_id={mask_id} is outside the model's vocabulary (size {vocab})")
    if (input_ids == mask_id).any():
        raise ValueError(f"input_ids contain mask_id={mask_id}: the prompt must be fully unmasked")
    return gen_length, steps, mask_id


@dataclass
class HexOutput:
    sequences: torch.Tensor     # (B, K, L + gen_length): prompt and answer of every candidate
    scores: torch.Tensor        # (B, K) float64: mean log-prob of the answer under the first pass
    commit_steps: torch.Tensor  # (B, K, gen_length): the step that committed each answer position
    schedules: list[Schedule]   # (K,): candidate k of every prompt was decoded by schedules[k]

    @property
    def block_lengths(self) -> list[int]:
        return [s.block_length for s in self.schedules]


def answer_log_likelihood(first_logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """The authors' one-step likelihood: log-softmax of the first forward pass (prompt + all masks,
    shared by every schedule) at each final answer token, averaged over all gen_length positions.
    first_logits (B, G, V), answers (B, K, G) -> (B, K) float64, a chunk of positions at a time."""
    B, K, G = answers.shape
    n = _positions_per_chunk(first_logits.shape[-1])
    tokens = answers.transpose(1, 2).flatten(0, 1)  # (B * G, K)
    logp = [chunk.double().log_softmax(-1).gather(-1, t) for chunk, t in  # (n, K) each
            zip(first_logits.flatten(0, 1).split(n), tokens.split(n))]
    return torch.cat(logp).view(B, G, K).mean(1)


@torch.no_grad()
def decode(model: Callable, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
           schedules: Sequence[Schedule], gen_length: int = 256, steps: int = 128, mask_id: int = MASK_ID,
           generator: torch.Generator | Sequence[torch.Generator | None] | None = None) -> HexOutput:
    """Decode every prompt with every schedule: B x K candidates advancing as one batch.

    model(x[, attention_mask=...]).logits gives (B, T, V); input_ids (B, L) are left padded when
    attention_mask (B, L) is given. Every schedule takes exactly `steps` steps, so the whole set costs
    `steps` forward calls whatever K, and at temperature 0 candidate k equals schedules[k] run alone.
    `generator`: one stream, or one per schedule (a schedule with its own stream draws exactly what it
    draws alone, at any temperature)."""
    gen_length, steps, mask_id = _check_args(model, input_ids, attention_mask, gen_length, steps, mask_id)
    schedules = list(schedules)
    if not schedules or not all(isinstance(s, Schedule) for s in schedules):
        raise TypeError(f"schedules={schedules!r} must be a non-empty sequence of hex.Schedule")
    K = len(schedules)
    generators = list(generator) if isinstance(generator, (list, tuple)) else [generator] * K
    if len(generators) != K:
        raise ValueError(f"generator: {len(generators)} generators for {K} schedules; pass one, or one per schedule")
    if not all(g is None or isinstance(g, torch.Generator) for g in generators):
        raise TypeError(f"generator={generator!r} must be a torch.Generator, None, or a list of them")
    x = F.pad(input_ids, (0, gen_length), value=mask_id).repeat_interleave(K, dim=0)  # [prompt | masks]
    if attention_mask is not None:
        attention_mask = F.pad(attention_mask.to(x.device), (0, gen_length), value=1).repeat_interleave(K, dim=0)
    x, commit_step, first_logits = _denoise(model, x, attention_mask, schedules * len(input_ids),
                                            generators * len(input_ids), gen_length, steps, mask_id, K)
    sequences = x.view(len(input_ids), K, -1)
    scores = answer_log_likelihood(first_logits, sequences[:, :, -gen_length:])
    return HexOutput(sequences, scores, commit_step.view(len(input_ids), K, -1), schedules)


def generate(model: Callable, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             gen_length: int = 256, steps: int = 128, block_length: int = 32,
             remasking: str = "low_confidence", temperature: float = 0.0, mask_id: int = MASK_ID,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """LLaDA's semi-autoregressive sampler with one schedule; returns (B, L + gen_length). The authors'
    top-K-margin baseline is block_length=gen_length, remasking="topk_margin"."""
    schedule = Schedule(block_length, remasking, temperature)
    return decode(model, input_ids, attention_mask, schedules=[schedule], gen_length=gen_length, steps=steps,
                  mask_id=mask_id, generator=generator).sequences[:, 0]


# 4. HEX: every hidden expert in lockstep ---------------------------------------------------------

def hex_generate(model: Callable, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 *, block_lengths: Sequence[int] = (8, 16, 32, 64, 128), samples_per_block: int = 1,
                 gen_length: int = 256, steps: int = 128, remasking: str = "low_confidence",
                 temperature: float = 0.0, mask_id: int = MASK_ID,
                 generator: torch.Generator | None = None) -> HexOutput:
    """Decode K = samples_per_block x len(block_lengths) candidates per prompt: the HEX ensemble.

    All B x K rows advance together (`decode`): `steps` forward calls instead of K x steps.
    Candidate k = s * len(block_lengths) + j is sample s of block_lengths[j]; at temperature 0 it
    equals generate(..., block_length=block_lengths[j]) token for token.
    """
    try:
        block_lengths = [_integer("block_lengths", b) for b in block_lengths]
    except TypeError:
        raise TypeError(f"block_lengths={block_lengths!r} must be a sequence of ints, e.g. (8, 16, 32, 64, 128)"
                        ) from None
    if not block_lengths:
        raise ValueError("block_lengths must name at least one block length, e.g. (8, 16, 32, 64, 128)")
    experts = [Schedule(b, remasking, temperature) for b in block_lengths]
    samples = _integer("samples_per_block", samples_per_block)
    return decode(model, input_ids, attention_mask, schedules=experts * samples, gen_length=gen_length,
                  steps=steps, mask_id=mask_id, generator=generator)


# 5. The vote -------------------------------------------------------------------------------------

def majority_vote(answers: Sequence[Hashable | None], scores: Sequence[float] | None = None,
                  tie_break: str = "first") -> tuple[Hashable | None, bool]:
    """HEX's answer: the most frequent non-None answer, and whether it tied with another.

    tie_break="first" keeps the tied answer seen first (the authors' rule: block lengths ascend, so
    the smallest block wins); "likelihood" keeps the tied answer whose best candidate scores highest
    (remaining ties: seen first). All None gives (None, False).
    """
    if tie_break not in ("first", "likelihood"):
        raise ValueError(f"tie_break={tie_break!r} must be 'first' or 'likelihood'")
    if tie_break == "likelihood" and (scores is None or len(scores) != len(answers)):
        raise ValueError("tie_break='likelihood' needs scores, one per answer")
    counts = Counter(a for a in answers if a is not None)  # keeps first-seen order
    if not counts:
        return None, False
    top = max(counts.values())
    tied = [a for a, n in counts.items() if n == top]
    if tie_break == "first" or len(tied) == 1:
        return tied[0], len(tied) > 1
    best = {a: max(s for b, s in zip(answers, scores) if b == a) for a in tied}
    return max(tied, key=best.__getitem__), True


# 6. A tiny LLaDA-like mask predictor -------------------------------------------------------------

@dataclass
class MaskPredictorOutput:
    logits: torch.Tensor  # (B, T, V)


class TinyBlock(nn.Module):
    """Pre-norm transformer block as in LLaDA: RMSNorm, rotary bidirectional attention, SwiGLU."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.attn_norm, self.mlp_norm = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.gate_up = nn.Linear(d_model, 8 * d_model, bias=False)  # SwiGLU, hidden size 4 x d_model
        self.down = nn.Linear(4 * d_model, d_model, bias=False)

    def forward(self, h, cos, sin, key_mask):
        B, T, D = h.shape
        q, k, v = self.qkv(self.attn_norm(h)).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        rotate = lambda z: torch.cat([-z[..., z.shape[-1] // 2:], z[..., :z.shape[-1] // 2]], -1)
        q, k = q * cos + rotate(q) * sin, k * cos + rotate(k) * sin  # (B, H, T, D / H)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # bidirectional
        h = h + self.proj(att.transpose(1, 2).reshape(B, T, D))
        gate, up = self.gate_up(self.mlp_norm(h)).chunk(2, dim=-1)
        return h + self.down(F.silu(gate) * up)


class TinyMaskPredictor(nn.Module):
    """A seeded, randomly initialised LLaDA-like mask predictor: model(x, attention_mask).logits.

    Padding (attention_mask == 0) is hidden from attention and rotary positions count only real
    tokens, so a left-padded prompt gives the same logits as the prompt alone. Seeding does not
    touch the global random state.
    """

    def __init__(self, vocab_size: int = 1024, d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 4, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(vocab_size, d_model)
            self.blocks = nn.ModuleList(TinyBlock(d_model, n_heads) for _ in range(n_layers))
            self.norm = nn.RMSNorm(d_model)
            self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.head_dim = d_model // n_heads

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        h = self.embed(input_ids)  # (B, T, D)
        key_mask = None
        if attention_mask is None:
            positions = torch.arange(input_ids.shape[1], device=h.device).expand_as(input_ids)
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True = attend
        half = torch.arange(0, self.head_dim, 2, device=h.device, dtype=h.dtype)
        inv_freq = 10000.0 ** (-half / self.head_dim)
        angles = (positions[..., None].to(h.dtype) * inv_freq).repeat(1, 1, 2)[:, None]  # (B, 1, T, D/H)
        for block in self.blocks:
            h = block(h, angles.cos(), angles.sin(), key_mask)
        return MaskPredictorOutput(self.lm_head(self.norm(h)))


# 7. Sanity run and benchmark: python hex.py ------------------------------------------------------

STEP_GLYPHS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def commit_picture(commit_step: torch.Tensor, steps: int) -> str:
    """One glyph per answer position: the step that committed it (0 first; binned past 62 steps)."""
    bins = (commit_step * len(STEP_GLYPHS) // max(steps, len(STEP_GLYPHS))).tolist()
    return "".join(STEP_GLYPHS[i] for i in bins)


def benchmark(model: nn.Module, prompt: torch.Tensor, mask_id: int, repeats: int, device: torch.device) -> str:
    """Forward calls and seconds for every method of one question (HEX's five experts and the three
    one-block baselines, gen_length 256, steps 128): one lockstep batch; HEX in lockstep and then each
    baseline (the previous evaluation path); every schedule one by one (the authors' way)."""
    experts = [Schedule(b) for b in (8, 16, 32, 64, 128)]
    baselines = [Schedule(256, rule) for rule in ("topk_margin", "low_confidence", "random")]
    ways = {"decode, one batch of 8": [experts + baselines],
            "HEX, then each baseline": [experts] + [[s] for s in baselines],
            "8 schedules one by one": [[s] for s in experts + baselines]}
    calls, seconds = {}, {name: [] for name in ways}
    hook = model.register_forward_pre_hook(lambda *_: calls.update(now=calls["now"] + 1))  # counts forward calls
    for _ in range(repeats):
        for name, batches in ways.items():
            calls["now"], start = 0, time.perf_counter()
            for schedules in batches:
                decode(model, prompt, schedules=schedules, gen_length=256, steps=128, mask_id=mask_id,
                       generator=torch.Generator(device).manual_seed(0))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            calls[name] = calls["now"]
            seconds[name].append(time.perf_counter() - start)
    hook.remove()
    span = lambda xs, unit: f"{min(xs):.2f}-{max(xs):.2f}{unit}"
    one = seconds["decode, one batch of 8"]
    return "\n".join(f"   {name:<26} {calls[name]:5} forward calls  {span(s, ' s'):<12}"
                     + (f" one batch: {span([b / a for a, b in zip(one, s)], 'x')} faster" if s is not one else "")
                     for name, s in seconds.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="HEX on a tiny random model: commit order and the [AfterEoT] "
                                                 "mechanism, a vote, and a benchmark.")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the benchmark (default 3)")
    repeats = max(1, parser.parse_args(argv).repeats)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, mask_id, eot_id = TinyMaskPredictor(1024).to(device), 1023, 1000
    prompt = torch.randint(0, mask_id, (1, 16), generator=torch.Generator().manual_seed(0)).to(device)
    G, T, blocks, early = 64, 32, (4, 8, 16, 32), 8
    schedules = [Schedule(b) for b in blocks] + [Schedule(G), Schedule(G, "topk_margin")]
    labels = [f"HEX block_length {b}" for b in blocks] + [f"Top-K, 1 block of {G}", f"Top-K margin, 1 block of {G}"]

    def stand_in(module, args, out):  # a forward hook: end-of-text raised over the answer's second half
        out.logits[:, prompt.shape[1] + G // 2:, eot_id] += 8.0
    hook = model.register_forward_hook(stand_in)
    out = decode(model, prompt, schedules=schedules, gen_length=G, steps=T, mask_id=mask_id)
    hook.remove()
    print(f"1. Commit order and the [AfterEoT] mechanism: a demonstration, not a result. A tiny random model on "
          f"{device} as a stand-in\n   for an instruct model: its end-of-text logit (token {eot_id}) is raised by 8 "
          f"over the second half of the answer, as\n   an instruct model pads its tail. gen_length {G}, steps {T}; "
          f"HEX with block lengths {' '.join(map(str, blocks))}, and two one-block\n   baselines. One glyph per answer "
          f"position: the step that committed it, 0-9 then a-z ({STEP_GLYPHS[T - 1]} is step {T - 1});\n   under "
          f"it, '_' marks an end-of-text token. Semi-AR blocks fill left to right; one block commits the tail first.")
    for label, tokens, steps_ in zip(labels, out.sequences[0, :, -G:], out.commit_steps[0]):
        n_early = int(((steps_ < early) & (tokens == eot_id)).sum())
        print(f"   {label:<28} {commit_picture(steps_, T)}  steps 0-{early - 1} commit {n_early} end-of-text\n"
              f"   {'':<28} {''.join('_' if t == eot_id else '.' for t in tokens.tolist())}")

    plain = decode(model, prompt, schedules=schedules[:len(blocks)], gen_length=G, steps=T, mask_id=mask_id)
    answers = plain.sequences[0, :, -G:].T.tolist()  # (G, K): per position, each expert's token
    column = next((i for i, c in enumerate(answers) if 1 < len(set(c)) < len(c)), 0)
    vote, tie = majority_vote(answers[column], tie_break="first")
    ballot = ", ".join(f"block {b}: {a}" for b, a in zip(blocks, answers[column]))
    print(f"\n2. The vote, on the plain tiny model. Stand-in answers: each expert's token at answer position "
          f"{column}, where they disagree:\n   {ballot}\n"
          f"   majority_vote -> {vote}, tie: {tie} (a tie goes to the answer seen first, the authors' rule)")

    print(f"\n3. Benchmark on {device} ({torch.get_num_threads()} CPU thread(s)): every method of one question, "
          f"HEX's block lengths 8-128\n   and the three one-block baselines, gen_length 256, steps 128, "
          f"{repeats} run(s)\n" + benchmark(model, prompt, mask_id, repeats, device))


if __name__ == "__main__":
    main()
