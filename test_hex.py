"""Tests for hex.py, miniature.py and run_gsm8k.py, grouped by file: CPU only, offline. The fast loop: python -m pytest
-m "not slow"; everything, as CI: python -m pytest -q. Run as a script: the offline demo of run_gsm8k.py."""

import contextlib
import dataclasses
import functools
import math
import os
import re
import shlex
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hex as H
import miniature as M

VOCAB, MASK = 64, 63


@pytest.fixture(scope="module")
def model():
    return H.TinyMaskPredictor(VOCAB, d_model=32, n_layers=2, n_heads=4, seed=0).double().eval()


def prompts(batch=2, length=6, seed=0):
    return torch.randint(0, MASK, (batch, length), generator=torch.Generator().manual_seed(seed))


class Recorder(nn.Module):
    """Records the canvas the model sees at every forward call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x, attention_mask=None):
        self.seen.append(x.clone())
        return self.model(x, attention_mask=attention_mask)


class FixedLogits(nn.Module):
    """A model that returns the same logits (V,) or per answer position (G, V) at every call."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x, attention_mask=None):
        out = torch.zeros(*x.shape, self.logits.shape[-1], dtype=torch.float64)
        if self.logits.dim() == 1:
            out[:] = self.logits
        else:
            out[:, -self.logits.shape[0] :] = self.logits  # the last G positions: the answer
        return H.MaskPredictorOutput(out)


def reference_generate(model, prompt, gen_length, steps, block_length, remasking, mask_id=MASK):
    """The authors' sampler written out plainly (notes, section 1): one block at a time, a full
    float64 softmax over the canvas, per-row topk over the open block's masked positions."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id)], dim=1)
    num_blocks = gen_length // block_length
    spb = steps // num_blocks
    for nb in range(num_blocks):
        block_end = P + (nb + 1) * block_length
        n = (x[:, P + nb * block_length : block_end] == mask_id).sum(1)
        for i in range(spb):
            mask_index = x == mask_id
            logits = model(x).logits
            p = F.softmax(logits.to(torch.float64), dim=-1)
            logits[..., mask_id] = -math.inf
            x0 = logits.argmax(-1)
            if remasking == "low_confidence":
                x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            else:
                top2 = p.topk(2, dim=-1).values
                x0_p = top2[..., 0] - top2[..., 1]
            x0_p[:, block_end:] = -math.inf
            confidence = torch.where(mask_index, x0_p, torch.tensor(-math.inf, dtype=torch.float64))
            for r in range(B):
                k = int(n[r]) // spb + (i < int(n[r]) % spb)
                idx = torch.topk(confidence[r], k).indices
                x[r, idx] = x0[r, idx]
    return x


def check_trajectory(seen, final, prompt_len, gen_length, steps, block_lengths):
    """Invariants over the canvases of all forward calls plus the final one."""
    states = seen + [final]
    assert len(seen) == steps
    for s in states:
        assert torch.equal(s[:, :prompt_len], seen[0][:, :prompt_len]), "the prompt changed"
    assert (seen[0][:, prompt_len:] == MASK).all() and not (final == MASK).any()
    for t in range(steps):
        before, after = states[t][:, prompt_len:], states[t + 1][:, prompt_len:]
        committed = before != MASK
        assert torch.equal(after[committed], before[committed]), "a committed token changed"
        new = committed.logical_not() & (after != MASK)
        for r, b in enumerate(block_lengths):
            spb = H.steps_per_block(gen_length, steps, b)
            start = t // spb * b
            cols = new[r].nonzero().flatten()
            assert len(cols) == H.num_transfer_tokens(b, spb)[t % spb], f"row {r} step {t}"
            assert ((cols >= start) & (cols < start + b)).all(), "committed outside the open block"


# ============================================================ hex.py =================================================


# The schedule -------------------------------------------------------------------------------------


def test_num_transfer_tokens_spreads_remainder_over_first_steps():
    assert H.num_transfer_tokens(10, 4) == [3, 3, 2, 2]
    assert H.num_transfer_tokens(8, 4) == [2, 2, 2, 2]
    assert H.num_transfer_tokens(3, 5) == [1, 1, 1, 0, 0]


def test_paper_schedules_commit_two_tokens_per_step():
    for b in (8, 16, 32, 64, 128, 256):
        spb = H.steps_per_block(256, 128, b)
        assert H.num_transfer_tokens(b, spb) == [2] * spb and spb * (256 // b) == 128


# The sampler --------------------------------------------------------------------------------------


@pytest.mark.parametrize("remasking", ["low_confidence", "topk_margin"])
@pytest.mark.parametrize("block_length,steps", [(4, 18), (8, 12), (24, 8)])
def test_generate_matches_authors_sampler(model, remasking, block_length, steps):
    prompt = prompts()
    ours = H.generate(
        model, prompt, gen_length=24, steps=steps, block_length=block_length, remasking=remasking, mask_id=MASK
    )
    with torch.no_grad():
        theirs = reference_generate(model, prompt, 24, steps, block_length, remasking)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    "remasking,temperature", [("low_confidence", 0.0), ("topk_margin", 0.0), ("random", 0.0), ("low_confidence", 0.8)]
)
@pytest.mark.parametrize("block_length,steps", [(4, 12), (4, 24), (12, 6), (24, 5)])
def test_generate_trajectory_invariants(model, remasking, temperature, block_length, steps):
    recorder, prompt = Recorder(model), prompts()
    out = H.generate(
        recorder,
        prompt,
        gen_length=24,
        steps=steps,
        block_length=block_length,
        remasking=remasking,
        temperature=temperature,
        mask_id=MASK,
        generator=torch.Generator().manual_seed(1),
    )
    check_trajectory(recorder.seen, out, prompt.shape[1], 24, steps, [block_length] * len(prompt))


def test_leftmost_position_wins_equal_confidences():
    logits = torch.zeros(VOCAB, dtype=torch.float64)
    logits[5] = 3.0  # every position predicts token 5 with the same confidence
    out = H.hex_generate(FixedLogits(logits), prompts(1), block_lengths=(8,), gen_length=8, steps=8, mask_id=MASK)
    assert out.commit_steps[0, 0].tolist() == list(range(8))
    assert (out.sequences[0, 0, -8:] == 5).all()


def test_topk_margin_ranks_by_p1_minus_p2_not_p1():
    # position 0: p = (0.50, 0.45, ...) high p1, small margin; position 1: p = (0.40, 0.10, ...)
    probs = torch.full((2, VOCAB), 1e-6, dtype=torch.float64)
    probs[0, :2] = torch.tensor([0.50, 0.45])
    probs[1, :6] = torch.tensor([0.40, 0.10, 0.10, 0.10, 0.10, 0.10])
    model = FixedLogits(probs.log())
    order = {}
    for remasking in ("low_confidence", "topk_margin"):
        out = H.hex_generate(
            model, prompts(1), block_lengths=(2,), gen_length=2, steps=2, remasking=remasking, mask_id=MASK
        )
        order[remasking] = out.commit_steps[0, 0].tolist()
    assert order == {"low_confidence": [0, 1], "topk_margin": [1, 0]}
    _, conf = H.x0_and_confidence(
        model(torch.zeros(1, 2, dtype=torch.long)).logits,
        torch.tensor([0, 0]),
        torch.tensor([0, 1]),
        remasking="topk_margin",
        temperature=0.0,
        mask_id=MASK,
    )
    p = probs / probs.sum(-1, keepdim=True)
    assert torch.allclose(conf, p[:, 0] - p.topk(2).values[:, 1])


def test_sampled_x0_is_scored_by_the_untempered_softmax():
    logits = torch.randn(1, 40, VOCAB, generator=torch.Generator().manual_seed(0))
    rows, cols = torch.zeros(40, dtype=torch.long), torch.arange(40)
    x0, conf = H.x0_and_confidence(
        logits,
        rows,
        cols,
        remasking="low_confidence",
        temperature=2.0,
        mask_id=MASK,
        generator=torch.Generator().manual_seed(0),
    )
    greedy, _ = H.x0_and_confidence(logits, rows, cols, remasking="low_confidence", temperature=0.0, mask_id=MASK)
    assert not torch.equal(x0, greedy)  # sampled, not argmax
    assert torch.allclose(conf, logits[0].double().softmax(-1).gather(-1, x0[:, None]).squeeze(-1))


def test_mask_token_is_never_predicted():
    logits = torch.zeros(VOCAB, dtype=torch.float64)
    logits[MASK], logits[7] = 10.0, 1.0  # the model's favourite is the mask itself
    out = H.generate(FixedLogits(logits), prompts(1), gen_length=8, steps=4, block_length=4, mask_id=MASK)
    assert (out[0, -8:] == 7).all()


def test_left_padding_with_attention_mask_changes_nothing(model):
    short, long = prompts(1, 4, seed=1), prompts(1, 7, seed=2)
    batch = torch.cat([F.pad(short, (3, 0), value=0), long])
    attention = torch.ones_like(batch)
    attention[0, :3] = 0
    kw = dict(gen_length=16, steps=8, block_length=4, mask_id=MASK)
    padded = H.generate(model, batch, attention, **kw)
    assert torch.equal(padded[0, 3:], H.generate(model, short, **kw)[0])
    assert torch.equal(padded[1], H.generate(model, long, **kw)[0])
    kw = dict(block_lengths=(4, 16), gen_length=16, steps=8, mask_id=MASK)
    hexed = H.hex_generate(model, batch, attention, **kw)
    alone = H.hex_generate(model, short, **kw)
    assert torch.equal(hexed.sequences[0, :, 3:], alone.sequences[0])
    scores = H.answer_log_likelihood(model, batch, hexed.sequences[:, :, 9:], attention, mask_id=MASK)
    assert torch.allclose(scores[0], H.answer_log_likelihood(model, short, alone.sequences[:, :, 6:], mask_id=MASK)[0])


# HEX in lockstep ----------------------------------------------------------------------------------


@pytest.mark.parametrize("remasking", ["low_confidence", "topk_margin"])
def test_hex_rows_equal_generate_per_schedule(model, remasking):
    prompt, blocks = prompts(2), (4, 8, 16, 32)
    kw = dict(gen_length=32, steps=16, remasking=remasking, mask_id=MASK)
    out = H.hex_generate(model, prompt, block_lengths=blocks, **kw)
    assert out.sequences.shape == (2, 4, 6 + 32) and [s.block_length for s in out.schedules] == list(blocks)
    for k, b in enumerate(s.block_length for s in out.schedules):
        assert torch.equal(out.sequences[:, k], H.generate(model, prompt, block_length=b, **kw)), b


def every_method(gen_length, temperature=0.0, blocks=(4, 8, 16)):
    """HEX's experts and the paper's three one-block baselines, as run_gsm8k decodes a question."""
    return [H.Schedule(b, temperature=temperature) for b in blocks] + [
        H.Schedule(gen_length, rule) for rule in ("topk_margin", "low_confidence", "random")
    ]


def streams(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_decode_every_method_in_one_batch_equals_each_run_alone(model):
    recorder, prompt, schedules = Recorder(model), prompts(2), every_method(16)
    kw = dict(gen_length=16, steps=8, mask_id=MASK)
    out = H.decode(recorder, prompt, schedules=schedules, generator=streams(len(schedules)), **kw)
    assert len(recorder.seen) == 8, "steps forward calls for every method together"
    assert out.sequences.shape == (2, 6, 6 + 16) and out.schedules == schedules
    check_trajectory(recorder.seen, out.sequences.flatten(0, 1), 6, 16, 8, [s.block_length for s in schedules] * 2)
    assert (out.commit_steps >= 0).all() and (out.commit_steps < 8).all(), "every position committed at a step"
    for k, (s, g) in enumerate(zip(schedules, streams(len(schedules)))):
        alone = H.generate(
            model,
            prompt,
            gen_length=16,
            steps=8,
            block_length=s.block_length,
            remasking=s.remasking,
            mask_id=MASK,
            generator=g,
        )
        assert torch.equal(out.sequences[:, k], alone), s
    lone = H.decode(model, prompt, schedules=schedules[4:5], **kw)
    assert torch.equal(out.commit_steps[:, 4:5], lone.commit_steps)
    assert out.forward_calls == 8 and (out.forward_passes == 8).all(), "each candidate took part in every call"


def test_decode_a_schedule_with_its_own_stream_draws_what_it_draws_alone(model):
    """At temperature > 0 too: HEX's sampled experts share one stream, each baseline has its own,
    so adding or dropping a baseline changes no HEX sample."""
    kw = dict(gen_length=16, steps=8, mask_id=MASK)
    hex_stream, *baseline_streams = streams(4)
    schedules = every_method(16, temperature=0.8)
    out = H.decode(model, prompts(2), schedules=schedules, generator=[hex_stream] * 3 + baseline_streams, **kw)
    hex_alone = H.hex_generate(
        model, prompts(2), block_lengths=(4, 8, 16), temperature=0.8, generator=streams(1)[0], **kw
    )
    assert torch.equal(out.sequences[:, :3], hex_alone.sequences)
    random_alone = H.generate(model, prompts(2), block_length=16, remasking="random", generator=streams(4)[3], **kw)
    assert torch.equal(out.sequences[:, 5], random_alone)
    fewer = H.decode(model, prompts(2), schedules=schedules[:4], generator=streams(4)[:1] * 3 + streams(4)[1:2], **kw)
    assert torch.equal(fewer.sequences, out.sequences[:, :4])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(schedules=[]), TypeError, "must be a non-empty sequence of hex.Schedule"),
        (dict(schedules=[8, 16]), TypeError, "must be a non-empty sequence of hex.Schedule"),
        (dict(generator=streams(3)), ValueError, "generator: 3 generators for 2 schedules"),
        (dict(generator=[0, 1]), TypeError, "generator=[0, 1] must be a torch.Generator, None, or a list of them"),
        (dict(steps=32), ValueError, "steps=32 must be <= gen_length=16: a step must commit at least one token"),
    ],
)
def test_decode_names_bad_arguments(model, kwargs, error, match):
    kw = dict(schedules=[H.Schedule(4), H.Schedule(16, "random")], gen_length=16, steps=8, mask_id=MASK) | kwargs
    with pytest.raises(error, match=re.escape(match)):
        H.decode(model, prompts(1), **kw)


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((0,), ValueError, "block_length=0 must be an int >= 1"),
        ((8, "greedy"), ValueError, "remasking='greedy' must be one of"),
        ((8, "random", -1), ValueError, "temperature=-1 must be a finite number >= 0"),
        ((8, "random", None), TypeError, "temperature=None must be a real number"),
        ((8, "random", 0, 0.9), ValueError, "remasking='random': a threshold is a confidence in [0, 1]"),
        ((8, "low_confidence", 0, 1.5), ValueError, "threshold=1.5 with remasking='low_confidence'"),
        ((8, "low_confidence", 0, "0.9"), TypeError, "threshold='0.9' must be a real number"),
    ],
)
def test_schedule_names_bad_fields(args, error, match):
    with pytest.raises(error, match=re.escape(match)):
        H.Schedule(*args)


def test_generate_makes_exactly_steps_forward_calls(model):
    recorder = Recorder(model)
    H.generate(recorder, prompts(3), gen_length=16, steps=8, block_length=4, mask_id=MASK)
    assert len(recorder.seen) == 8


def test_sampling_is_reproducible_and_varies_across_samples(model):
    kw = dict(block_lengths=(8,), samples_per_block=4, gen_length=16, steps=8, temperature=1.0, mask_id=MASK)
    a = H.hex_generate(model, prompts(1), generator=torch.Generator().manual_seed(3), **kw).sequences
    b = H.hex_generate(model, prompts(1), generator=torch.Generator().manual_seed(3), **kw).sequences
    c = H.hex_generate(model, prompts(1), generator=torch.Generator().manual_seed(4), **kw).sequences
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(s.tolist()) for s in a[0]}) > 1, "samples of one schedule should differ"


def test_scores_are_mean_first_pass_log_prob_of_final_answer(model):
    prompt = prompts(2)
    out = H.hex_generate(model, prompt, block_lengths=(4, 16), gen_length=16, steps=8, mask_id=MASK)
    scores = H.answer_log_likelihood(model, prompt, out.sequences[:, :, 6:], mask_id=MASK)
    with torch.no_grad():
        first = model(F.pad(prompt, (0, 16), value=MASK)).logits[:, -16:].log_softmax(-1)  # (B, G, V)
    for k in range(2):
        answer = out.sequences[:, k, -16:]
        expected = first.gather(-1, answer[..., None]).squeeze(-1).mean(-1)
        assert torch.allclose(scores[:, k], expected)


# Bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_length=5), "block_length"),
        (dict(steps=6), "steps"),
        (dict(steps=2), "steps"),
        (dict(attention_mask=torch.ones(2, 3, dtype=torch.long)), "attention_mask"),
    ],
)
def test_generate_rejects_bad_input(model, kwargs, match):
    kw = dict(gen_length=16, steps=8, block_length=4, mask_id=MASK) | kwargs
    with pytest.raises(ValueError, match=match):
        H.generate(model, prompts(2), **kw)


def test_mask_id_outside_the_embedding_is_rejected_before_the_first_forward(model):
    recorder = Recorder(model)
    recorder.get_input_embeddings = model.get_input_embeddings
    with pytest.raises(ValueError, match="mask_id=126336 is outside the model's vocabulary"):
        H.generate(recorder, prompts(1), gen_length=8, steps=4, block_length=4)
    with pytest.raises(ValueError, match="mask_id=126336"):
        H.hex_generate(model, prompts(1), gen_length=8, steps=4)
    assert recorder.seen == []


def test_models_without_an_embedding_to_ask_are_checked_after_the_first_forward():
    class NoEmbedding(FixedLogits):
        def get_input_embeddings(self):
            raise NotImplementedError  # what transformers' default does for custom models

    model = NoEmbedding(torch.zeros(VOCAB))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        H.generate(model, prompts(1), gen_length=8, steps=4, block_length=4, mask_id=VOCAB + 10)


def test_a_model_that_returns_a_bare_tensor_is_told_what_to_return(model):
    with pytest.raises(
        TypeError, match=re.escape("the model returned Tensor: it must return an object whose .logits")
    ):
        H.generate(lambda x: model(x).logits, prompts(1), gen_length=8, steps=4, block_length=4, mask_id=MASK)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(vocab_size=0), ValueError, "vocab_size=0 must be an int >= 1"),
        (dict(vocab_size=8.0), TypeError, "vocab_size=8.0 must be an int"),
        (dict(n_layers=0), ValueError, "n_layers=0 must be an int >= 1"),
        (dict(d_model=30, n_heads=4), ValueError, "d_model=30 must be a multiple of 2 x n_heads=4"),
        (dict(mlp_hidden=0), ValueError, "mlp_hidden=0 must be an int >= 1"),
    ],
)
def test_tiny_model_names_bad_sizes(kwargs, error, match):
    with pytest.raises(error, match=re.escape(match)):
        H.TinyMaskPredictor(**kwargs)


def test_numpy_numbers_are_accepted(model):
    kw = dict(gen_length=16, steps=8, mask_id=MASK, generator=torch.Generator().manual_seed(0))
    a = H.generate(model, prompts(1), block_length=np.int64(4), temperature=np.float32(0.5), **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    b = H.generate(model, prompts(1), block_length=4, temperature=0.5, **kw)
    assert torch.equal(a, b)
    out = H.hex_generate(
        model,
        prompts(1),
        block_lengths=np.array([4, 8]),
        gen_length=np.int32(16),
        steps=np.int64(8),
        mask_id=np.int64(MASK),
    )
    assert [s.block_length for s in out.schedules] == [4, 8]
    assert all(type(s.block_length) is int for s in out.schedules)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(block_lengths=4), TypeError, "block_lengths=4 must be a sequence of ints"),
        (dict(block_lengths=()), ValueError, "block_lengths must name at least one block length"),
        (dict(block_lengths=(4, 6)), ValueError, "block_length=6 must be a positive divisor of gen_length=16"),
        (dict(input_ids=torch.zeros(0, 5, dtype=torch.long)), ValueError, "input_ids holds no prompts"),
        (dict(temperature="hot"), TypeError, "temperature='hot' must be a real number"),
        (dict(temperature=math.inf), ValueError, "temperature=inf must be a finite number"),
        (dict(gen_length=16.0), TypeError, "gen_length=16.0 must be an int"),
        (dict(steps=True), ValueError, "steps=True must be an int >= 1"),
        (dict(samples_per_block=0), ValueError, "samples_per_block=0 must be an int >= 1"),
        (dict(samples_per_block=2), ValueError, "samples_per_block=2 at temperature 0 decodes identical samples"),
        (dict(mask_id=-1), ValueError, "mask_id=-1 must be an int >= 0"),
    ],
)
def test_hex_generate_names_bad_arguments(model, kwargs, error, match):
    kw = dict(input_ids=prompts(1), block_lengths=(4,), gen_length=16, steps=8, mask_id=MASK) | kwargs
    with pytest.raises(error, match=re.escape(match)):
        H.hex_generate(model, **kw)


def test_prompt_containing_mask_and_wrong_types_are_rejected(model):
    with pytest.raises(ValueError, match="mask_id"):
        H.generate(model, torch.tensor([[1, MASK]]), gen_length=8, steps=4, block_length=4, mask_id=MASK)
    with pytest.raises(TypeError, match="input_ids"):
        H.generate(model, [[1, 2]], gen_length=8, steps=4, block_length=4, mask_id=MASK)


# The vote -----------------------------------------------------------------------------------------


def test_majority_vote():
    assert H.majority_vote([3, 4, 4, None, 3, 4]) == (4, False)
    assert H.majority_vote([None, 2, None]) == (2, False)
    assert H.majority_vote([None, None]) == (None, False)
    assert H.majority_vote([]) == (None, False)
    assert H.majority_vote([7, 5, 5, 7, None]) == (7, True)  # tie: first seen wins
    scores = [-3.0, -1.0, -2.0, -4.0, 0.0]
    assert H.majority_vote([7, 5, 5, 7, None], scores, tie_break="likelihood") == (5, True)
    assert H.majority_vote([7, 5], [-1.0, -1.0], tie_break="likelihood") == (7, True)
    assert H.majority_vote(["18", "18", "20"], [-9.0, -9.0, 0.0], tie_break="likelihood") == ("18", False)
    with pytest.raises(ValueError, match="tie_break"):
        H.majority_vote([1], tie_break="nll")
    with pytest.raises(ValueError, match="scores"):
        H.majority_vote([1, 2], tie_break="likelihood")


# The IMH sampler (arXiv 2604.00375, as reconstructed) ---------------------------------------------


def imh(model, prompt, **kwargs):
    return H.imh_generate(model, prompt, **(dict(gen_length=8, mask_id=MASK) | kwargs))


# HEX at a fraction of its cost: the exact early stop, the threshold, forward passes counted ----------------


def brute_force_settled(answers, remaining, tie_break, alphabet=("a", "b", "c", None)):
    """Whether every way the remaining answers could go (and, for the likelihood rule, any scores) keeps the vote."""
    if remaining == 0:
        return True
    vote = H.majority_vote(answers)[0]
    for rest in __import__("itertools").product(alphabet + ("new",), repeat=remaining):
        everything = list(answers) + list(rest)
        answer, tied = H.majority_vote(everything)
        if answer != vote or (tie_break == "likelihood" and tied):  # a tie the scores could break either way
            return False
    return True


@pytest.mark.parametrize(
    "answers, remaining, tie_break, settled",
    [
        (["a", "a", "a"], 2, "first", True),  # three of five agree: nothing can catch up
        (["a", "a", "a"], 3, "first", True),  # a new answer can only tie, and it is seen later
        (["a", "a", "a"], 3, "likelihood", False),  # ... a tie the likelihood rule could break for it
        (["a", "a", "b"], 1, "first", True),  # b can reach 2 and tie a, but a was seen first
        (["a", "a", "b"], 1, "likelihood", False),
        (["b", "a", "a"], 1, "first", False),  # b can reach 2 and was seen first: it would win the tie
        (["a", None, None], 2, "first", False),
        ([None, None], 0, "first", True),  # nothing readable and nothing left: the vote is None
        ([None], 1, "first", False),
        (["a", "b"], 0, "likelihood", True),  # nothing left: the vote is what it is
    ],
)
def test_vote_settled_on_crafted_answers_ties_included(answers, remaining, tie_break, settled):
    assert H.vote_settled(answers, remaining, tie_break) is settled
    assert brute_force_settled(answers, remaining, tie_break) is settled


def test_vote_settled_never_stops_a_vote_that_could_change_and_stops_as_soon_as_it_cannot():
    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(1, 8))
        answers = [["a", "b", "c", None][i] for i in rng.integers(0, 4, n)]
        for seen in range(n + 1):
            for tie_break in ("first", "likelihood"):
                settled = H.vote_settled(answers[:seen], n - seen, tie_break)
                assert settled == brute_force_settled(answers[:seen], n - seen, tie_break), (answers, seen)


def test_decode_in_waves_gives_the_full_vote_with_fewer_forward_passes(model):
    prompt, schedules = prompts(6), [H.Schedule(b) for b in (2, 4, 8, 16, 16)]
    kw = dict(gen_length=16, steps=8, mask_id=MASK)
    full = H.decode(model, prompt, schedules=schedules, **kw)

    def read(answer):  # a coarse answer, so that votes agree often and tie sometimes
        return None if answer[0] % 5 == 0 else int(answer[0] % 3)

    recorder = Recorder(model)
    waves = H.decode_in_waves(recorder, prompt, schedules=schedules, read_answer=read, **kw)
    decoded = waves.forward_passes > 0
    assert decoded[:, :3].all() and not decoded.all(), "the first wave, 3 of 5, is everyone's; some are spared"
    rows = [len(x) for x in recorder.seen]
    assert rows[:8] == [18] * 8 and max(rows[8:]) <= 6 and len(rows) in (16, 24), "waves of 3, then 1, then 1"
    assert torch.equal(waves.sequences[decoded], full.sequences[decoded])
    assert (waves.sequences[~decoded][:, 6:] == MASK).all() and (waves.commit_steps[~decoded] == -1).all()
    assert waves.forward_calls == len(recorder.seen) and waves.forward_passes.sum() == sum(
        len(x) for x in recorder.seen
    )
    for q in range(6):
        every = [read(a) for a in full.sequences[q, :, 6:]]
        spared = [read(a) for a, d in zip(waves.sequences[q, :, 6:], decoded[q]) if d]
        assert H.majority_vote(spared)[0] == H.majority_vote(every)[0], q


def test_decode_in_waves_with_two_answer_rules_settles_both(model):
    prompt, schedules = prompts(6), [H.Schedule(b) for b in (2, 4, 8, 16, 16)]
    kw = dict(gen_length=16, steps=8, mask_id=MASK)
    full = H.decode(model, prompt, schedules=schedules, **kw)

    def read(answer):  # two rules that often disagree
        return [int(answer[0] % 2), int(answer[1] % 3)]

    one = H.decode_in_waves(model, prompt, schedules=schedules, read_answer=lambda a: read(a)[0], **kw)
    both = H.decode_in_waves(model, prompt, schedules=schedules, read_answer=read, **kw)
    assert (both.forward_passes >= one.forward_passes).all() and both.forward_passes.sum() > one.forward_passes.sum()
    for q in range(6):
        spared = [read(a) for a, d in zip(both.sequences[q, :, 6:], both.forward_passes[q]) if d]
        every = [read(a) for a in full.sequences[q, :, 6:]]
        for rule in range(2):
            assert H.majority_vote([a[rule] for a in spared])[0] == H.majority_vote([a[rule] for a in every])[0]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tie_break="last"), ValueError, "tie_break='last' must be 'first' or 'likelihood'"),
        (dict(read_answer=7), TypeError, "read_answer=7 must be a function of a candidate's (G,) answer ids"),
        (dict(schedules=[]), TypeError, "schedules=[] must be a non-empty sequence of hex.Schedule"),
        (dict(input_ids=torch.zeros(0, 4, dtype=torch.long)), ValueError, "input_ids holds no prompts"),
    ],
)
def test_decode_in_waves_names_bad_arguments(model, kwargs, error, match):
    kw = dict(input_ids=prompts(1), schedules=[H.Schedule(4)], read_answer=int, gen_length=8, steps=4, mask_id=MASK)
    with pytest.raises(error, match=re.escape(match)):
        H.decode_in_waves(model, **(kw | kwargs))


def test_threshold_one_commits_a_token_a_step_and_zero_a_block_a_step(model):
    prompt = prompts(2)
    kw = dict(gen_length=16, steps=8, mask_id=MASK)
    schedules = [H.Schedule(4, threshold=1 - 1e-12), H.Schedule(4, "topk_margin", threshold=0.0), H.Schedule(4)]
    recorder = Recorder(model)
    out = H.decode(recorder, prompt, schedules=schedules, **kw)
    assert torch.equal(out.commit_steps[:, 0].sort(-1).values, torch.arange(16).expand(2, -1)), "one a step"
    assert torch.equal(out.commit_steps[:, 1], torch.arange(16).div(4, rounding_mode="floor").expand(2, -1))
    assert out.forward_passes.tolist() == [[16, 4, 8]] * 2 and out.forward_calls == 16
    rows = [len(x) for x in recorder.seen]
    assert rows == [6] * 4 + [4] * 4 + [2] * 8, "a candidate whose answer is full leaves the batch"
    assert torch.equal(out.sequences[:, 2], H.generate(model, prompt, block_length=4, **kw)), "the default is kept"


def test_threshold_commits_every_open_block_position_that_clears_it_at_least_one():
    logits = torch.full((8, 4), -5.0, dtype=torch.float64)
    logits[:, 0] = torch.tensor([9.0, 9.0, 0.0, 9.0, 9.0, 0.0, 0.0, 0.0])  # p > 0.99 at 0, 1, 3, 4
    logits[:, 1] = torch.tensor([-5.0, -5.0, 0.0, -5.0, -5.0, 0.0, 0.0, 0.0])  # p < 0.5 elsewhere
    out = H.decode(
        FixedLogits(logits), prompts(1), schedules=[H.Schedule(4, threshold=0.9)], gen_length=8, steps=8, mask_id=3
    )
    assert out.commit_steps[0, 0].tolist() == [0, 0, 1, 0, 2, 3, 4, 5], "0, 1 and 3 clear it; then one a step"
    assert out.forward_passes.tolist() == [[6]]


def test_imh_proposal_is_p_to_the_alpha_normalised_without_the_mask():
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=torch.float64)
    p = torch.tensor([0.5, -1.0, 2.0]).double().exp()  # token 3 is the mask
    p = p / p.sum()
    for alpha in (0.5, 1.0, 2.0, 7.0):
        expected = torch.cat([p**alpha / (p**alpha).sum(), torch.zeros(1, dtype=torch.float64)])
        assert torch.allclose(H.tempered_log_probs(logits, alpha, mask_id=3).exp(), expected[None])


def test_mean_field_suffix_mass_is_the_sum_over_completions_where_marginals_factorise():
    V, G, alpha = 4, 3, 2.0  # token 3 is the mask
    logits = torch.randn(G, V, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = FixedLogits(logits)  # marginals that ignore the canvas: the joint is their product
    canvas = torch.tensor([[0, 1, 3, 3, 3]])  # a 2-token prompt, three masked answer positions
    answer_logits = model(canvas).logits[:, 2:]
    p = logits[:, :3].softmax(-1)
    brute = sum(
        (p[0, a] * p[1, b] * p[2, c]) ** alpha for a in range(3) for b in range(3) for c in range(3)
    )  # every completion's p(completion)^alpha
    masked = torch.tensor([[True, True, True]])
    assert torch.allclose(H.suffix_log_mass(answer_logits, masked, alpha, mask_id=3).double(), brute.log()[None])
    only_last = torch.tensor([[False, False, True]])
    assert torch.allclose(
        H.suffix_log_mass(answer_logits, only_last, alpha, 3).double(), (p[2] ** alpha).sum().log()[None]
    )
    assert H.suffix_log_mass(answer_logits, masked, 1.0, 3).abs().max() < 1e-6  # alpha = 1: every Z is 1 (float32)


def test_imh_chain_moves_by_the_weight_ratio():
    half, two, third = math.log(0.5), math.log(2.0), math.log(0.3)
    log_z = torch.tensor([[0.0, half, two], [0.0, half, two], [0.0, half, third], [0.0, 0.0, 0.0]])
    uniforms = torch.tensor([[0.4, 0.9], [0.6, 0.9], [0.4, 0.7], [0.99, 0.0]])
    # row 0: 0.4 < Z1/Z0 = 0.5 moves to 1, then Z2/Z1 = 4 moves to 2; row 1: 0.6 > 0.5 stays, then 2 > 0.9 moves;
    # row 2: moves to 1, then Z2/Z1 = 0.6 < 0.7 stays; row 3: equal weights always move
    assert H.imh_chain(log_z, uniforms).tolist() == [2, 2, 1, 2]
    uniforms = torch.rand(1000, 7, generator=torch.Generator().manual_seed(0))
    assert (H.imh_chain(torch.zeros(1000, 8), uniforms) == 7).all()


def test_imh_at_alpha_1_commits_the_token_with_probability_p_i(model):
    prompt = prompts(1)
    out = imh(
        model, prompt, gen_length=4, alpha=1.0, proposals=3, samples=4000, generator=torch.Generator().manual_seed(0)
    )
    first = out.commit_steps[0, 0].argmin()  # every sample commits the same position first
    assert (out.commit_steps[0, :, first] == 0).all()
    canvas = torch.cat([prompt, torch.full((1, 4), MASK)], dim=1)
    p = model(canvas).logits[0, prompt.shape[1] + first].double().softmax(-1)
    frequency = torch.bincount(out.sequences[0, :, prompt.shape[1] + first], minlength=VOCAB) / 4000
    assert (frequency - p).abs().max() < 5 * math.sqrt(0.25 / 4000)  # five standard errors at worst


def test_imh_with_a_large_alpha_and_one_proposal_is_greedy_confidence_decoding(model):
    prompt = prompts(2)
    for block_length in (None, 4):
        out = imh(model, prompt, alpha=1e6, proposals=1, block_length=block_length)
        greedy = H.generate(model, prompt, block_length=block_length or 8, gen_length=8, steps=8, mask_id=MASK)
        assert torch.equal(out.sequences[:, 0], greedy)


def test_imh_makes_gen_length_plus_one_forward_calls_whatever_the_proposals_and_samples(model):
    for proposals, samples in ((1, 1), (4, 3)):
        recorder = Recorder(model)
        out = imh(recorder, prompts(2), proposals=proposals, samples=samples, block_length=4, generator=None)
        assert [len(x) for x in recorder.seen] == [2 * samples] + [2 * samples * proposals] * 8  # gen_length + 1
        assert out.sequences.shape == (2, samples, 6 + 8)
        commits = out.commit_steps
        assert (commits.sort(-1).values == torch.arange(8)).all()  # one token a step
        assert (commits[..., :4].amax(-1) < commits[..., 4:].amin(-1)).all()  # block 0 before block 1
        assert not (out.sequences == MASK).any()


def test_imh_samples_are_reproducible_from_the_generator(model):
    a, b, c = (imh(model, prompts(2), samples=3, generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6))
    assert torch.equal(a.sequences, b.sequences) and not torch.equal(a.sequences, c.sequences)
    assert len({tuple(row) for row in a.sequences[0].tolist()}) > 1  # the samples of a prompt differ


def test_imh_with_left_padding_and_its_attention_mask_changes_nothing(model):
    prompt = prompts(1)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(prompt)], dim=1)
    alone = imh(model, prompt, samples=2, generator=torch.Generator().manual_seed(0))
    beside = imh(model, padded, attention_mask=mask, samples=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(alone.sequences[..., -8:], beside.sequences[..., -8:])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(alpha=0.0), ValueError, "alpha=0.0 must be a finite number > 0"),
        (dict(alpha=-1), ValueError, "alpha=-1"),
        (dict(alpha=math.inf), ValueError, "alpha=inf"),
        (dict(alpha=True), TypeError, "alpha=True must be a real number"),
        (dict(alpha="2"), TypeError, "alpha='2'"),
        (dict(proposals=0), ValueError, "proposals=0 must be an int >= 1"),
        (dict(samples=1.5), TypeError, "samples=1.5 must be an int"),
        (dict(block_length=3), ValueError, "block_length=3 must be a positive divisor of gen_length=8"),
        (dict(generator=[None]), TypeError, "generator"),
    ],
)
def test_imh_names_bad_arguments(model, kwargs, error, match):
    with pytest.raises(error, match=re.escape(match)):
        imh(model, prompts(1), **kwargs)


def test_pass_at_k_is_the_share_of_k_subsets_with_a_right_sample():
    import itertools

    for n, right in ((5, 0), (5, 2), (8, 3), (8, 8)):
        verdicts = [True] * right + [False] * (n - right)
        for k in (1, 2, 4, 5):
            subsets = list(itertools.combinations(verdicts, k))
            assert math.isclose(H.pass_at_k(n, right, k), sum(map(any, subsets)) / len(subsets))


# The tiny model -----------------------------------------------------------------------------------


def test_tiny_model_is_seeded_without_touching_global_rng():
    state = torch.random.get_rng_state()
    a, b, c = (H.TinyMaskPredictor(VOCAB, d_model=16, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    x = prompts(2)
    assert a(x).logits.shape == (2, 6, VOCAB)


def test_tiny_model_attention_is_bidirectional(model):
    x = prompts(1, 8)
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % MASK
    with torch.no_grad():
        assert not torch.allclose(model(x).logits[0, 0], model(y).logits[0, 0])


@pytest.mark.slow
def test_benchmark_counts_calls_warms_up_and_says_faster_or_slower(capsys):
    H.main(["--repeats", "1"])
    out = capsys.readouterr().out
    assert "gen_length 256, steps 128, 1 run(s) after a warm-up" in out
    rows = re.findall(r"(one lockstep batch|each schedule in turn) +1 +(\d+) +(\d+\.\d\d)-", out)
    assert [(way, calls) for way, calls, _ in rows] == [
        ("one lockstep batch", "128"),
        ("each schedule in turn", "1024"),
    ], "the warm-up run is not counted"
    stated = re.search(r"one batch is (\d+\.\d\d)x (faster|slower)", out)
    batch, in_turn = (float(seconds) for _, _, seconds in rows)  # each way's best time a question
    expected = in_turn / batch if stated[2] == "faster" else batch / in_turn
    assert float(stated[1]) == pytest.approx(expected, rel=0.05, abs=0.02), "the ratio's direction is the times'"


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--repeats", "0"], "argument --repeats: 0 is not a number > 0"),
        (["--repeats", "-1"], "argument --repeats: -1 is not a number > 0"),
        (["--miniature"], "unrecognized arguments: --miniature"),
    ],
)
def test_hex_flags_refuse_what_they_cannot_mean_in_one_line(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        H.main(argv)
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("hex.py: error: ") and says in error


def test_llada_8b_shape_has_its_published_parameter_count():
    with torch.device("meta"):
        model = H.TinyMaskPredictor(**H.SHAPES["llada-8b"])
    parameters = sum(p.numel() for p in model.parameters())
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 12288 + 2 * 4096  # attention, SwiGLU, two norms
    assert parameters == 2 * 126464 * 4096 + 32 * per_layer + 4096 == 8_015_581_184  # untied embeddings
    assert model.lm_head.weight.shape == (126464, 4096) and model.lm_head.weight is not model.embed.weight


def test_llada_8b_benchmark_without_cuda_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        H.main(["--shape", "llada-8b"])
    assert "needs a CUDA GPU" in str(exit_.value.code) and "\n" not in str(exit_.value.code)


# Intervals and the cross-fitted expert -------------------------------------------------------------


def test_paired_difference_interval_and_counts_by_hand():
    first, second = [True, True, False, False, True], [True, False, True, False, False]
    p = H.paired_difference(first, second)
    assert (p.only_first, p.only_second) == (2, 1)
    # Agresti-Min: 1/2 added to each cell, n + 2 = 7; d = (2.5 - 1.5) / 7; SE = sqrt(4 - 1 / 7) / 7
    d, half = 1 / 7, 1.96 * math.sqrt(2.5 + 1.5 - 1 / 7) / 7
    assert p.difference == pytest.approx(0.2) and p.ci95 == pytest.approx((d - half, d + half))
    low, high = H.paired_difference([True] * 3, [True] * 3).ci95
    assert low < -0.3 and high > 0.3, "three concordant questions leave the difference open"


def agresti_min(b, c, n, z=1.96):
    """Agresti & Min (2005) by hand: the paired Wald interval on the table with 1/2 added to every cell."""
    b, c, n = b + 0.5, c + 0.5, n + 2
    d = (b - c) / n
    half = z * math.sqrt((b + c) / n - d * d) / math.sqrt(n)
    return max(-1.0, d - half), min(1.0, d + half)


@pytest.mark.parametrize("n", [1, 5, 100])
@pytest.mark.parametrize("kind", ["none", "some", "only"])
def test_paired_interval_keeps_its_width_and_its_range(n, kind):
    discordant = dict(none=0, some=max(1, n // 5), only=n)[kind]
    first = [True] * n
    second = [i >= discordant for i in range(n)]  # the first `discordant` questions: only `first` right
    p = H.paired_difference(first, second)
    assert p.difference == discordant / n
    assert (p.only_first, p.only_second) == (discordant, 0)
    assert p.ci95 == pytest.approx(agresti_min(discordant, 0, n))
    low, high = p.ci95
    assert -1.0 <= low < high <= 1.0
    assert high - low > 0.02, "no discordant question is no certainty"
    if n == 5 and kind == "none":
        assert high - low > 0.5, "five questions cannot pin a difference down"
    if kind == "only" and n == 1:
        assert high == 1.0 and low < 0.5, "the interval stays in the possible range"
    mirrored = H.paired_difference(second, first)
    assert mirrored.ci95 == pytest.approx((-high, -low))


def test_wilson_over_questions_keeps_its_width_at_the_ends():
    low, high = H.wilson(6, 6)
    assert high == 1.0 and 0.5 < low < 0.7  # 6/6 right: 61% to 100%
    assert H.wilson(0, 6)[0] == 0.0
    assert all(0.0 <= x <= 1.0 for n in (1, 2, 7) for k in range(n + 1) for x in H.wilson(k, n))
    for n in range(1, 400):  # all right or none: the interval holds the share itself despite rounding
        assert H.wilson(n, n)[1] == 1.0 and H.wilson(0, n)[0] == 0.0 and H.wilson(n, n)[0] < 1.0


def test_cross_fitting_does_not_flatter_a_lucky_expert():
    # A is right on every even question and on question 1 (5 of 8), B on every odd one (4 of 8). Chosen on the
    # same questions, A looks 62.5% right; chosen on the other half, each half is scored by the expert that
    # is best elsewhere and worst here: 1 of 8.
    right = {"A": [True, True, True, False, True, False, True, False], "B": [i % 2 == 1 for i in range(8)]}
    verdicts, chosen = H.cross_fitted(right)
    assert chosen == ["B", "A"]  # the even questions are scored by the best on the odd ones, and back
    assert verdicts == [False, True, False, False, False, False, False, False]


# ============================================================ miniature.py ===========================================


# The paper in miniature ----------------------------------------------------------------------------------


@pytest.mark.parametrize("first, second", [("--dilemma", "--visible-length"), ("--cost", "--dilemma")])
def test_miniature_flags_refuse_what_they_cannot_mean_in_one_line(capsys, first, second):
    with pytest.raises(SystemExit) as exit_:
        M.main([first, second])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and error.startswith("miniature.py: error: ")
    assert f"argument {second}: not allowed with argument {first}" in error


def test_chain_task_lengths_answers_and_padding():
    prompts, responses, lengths = M.chain_examples(300, torch.Generator().manual_seed(0))
    assert prompts.shape == (300, 14) and responses.shape == (300, 64)
    assert set(lengths.tolist()) == set(range(4, 15)), "every chain length 4..14 occurs"
    assert max(Counter(lengths.tolist()).values()) < 50, "chain lengths are about uniform"
    for prompt, response, k in zip(prompts.tolist(), responses.tolist(), lengths.tolist()):
        items = [x - M.DIGIT for x in prompt]
        assert all(1 <= x <= 3 for x in items)
        sums = [sum(items[: j + 1]) % 10 for j in range(14)]
        assert sums[k - 1] == 0 and all(s for s in sums[3 : k - 1]), "k: the first j >= 4 with s_j = 0"
        end = response.index(M.ANS)
        assert response[end + 1] == M.STEP + k - 1 and set(response[end + 2 :]) == {M.EOT}, "ANS S_k, then EOT"
        chain = response[:end]
        steps = [i for i, t in enumerate(chain) if t >= M.STEP]
        assert [chain[i] - M.STEP + 1 for i in steps] == list(range(1, k + 1))
        gaps = [b - a for a, b in zip(steps, steps[1:] + [len(chain)])]
        assert set(gaps) <= {3, 4}, "S_j, one or two filler words, s_j"
        assert [chain[i + g - 1] - M.DIGIT for i, g in zip(steps, gaps)] == sums[:k]
    assert (M.chain_answer(responses) == lengths).all()
    visible, _, same = M.chain_examples(300, torch.Generator().manual_seed(0), visible_length=True)
    assert (same == lengths).all()
    assert ((visible == M.PAD) == (torch.arange(14) >= lengths[:, None])).all(), "the control shows k"


def test_chain_answer_reads_the_step_after_the_first_ans():
    G = 8
    answers = torch.full((4, G), M.EOT)
    answers[0, :2] = torch.tensor([M.ANS, M.STEP + 6])  # states 7
    answers[1, :4] = torch.tensor([M.ANS, M.FILLER, M.ANS, M.STEP])  # the first ANS states nothing readable
    answers[2, -1] = M.ANS  # nothing after it
    assert M.chain_answer(answers).tolist() == [7, 0, 0, 0]


def test_masked_diffusion_loss_by_hand():
    V = 128
    prompts = torch.tensor([[4, 5, 6], [7, 8, 9]])
    responses = torch.tensor([[10, 11, 12, 13], [14, 15, 16, 17]])
    seen = []

    def uniform(x):  # every token has probability 1 / V: a masked token's cross-entropy is log V
        seen.append(x)
        return H.MaskPredictorOutput(torch.zeros(*x.shape, V))

    loss = M.masked_diffusion_loss(uniform, prompts, responses, torch.Generator().manual_seed(0))
    draws = torch.Generator().manual_seed(0)
    t = ((torch.rand(1, generator=draws) + torch.tensor([[0.0], [0.5]])) % 1).clamp(min=1e-3)  # stratified
    masked = torch.rand(2, 4, generator=draws) < t
    assert masked.any() and not masked.all(), "the hand-made case masks some tokens, not all"
    assert (seen[0][:, :3] == prompts).all(), "the prompt is never masked"
    assert ((seen[0][:, 3:] == M.MINI_MASK) == masked).all()
    assert loss.item() == pytest.approx((masked * math.log(V) / t).sum().item() / 8)


def test_the_batch_masking_rates_are_stratified():
    seen = []

    def uniform(x):
        seen.append(x)
        return H.MaskPredictorOutput(torch.zeros(*x.shape, 16))

    prompts = torch.full((8, 2), 5)
    responses = torch.full((8, 20_000), 6)  # so long that each row's masked share is its t to +-0.01
    for seed in range(10):
        M.masked_diffusion_loss(uniform, prompts, responses, torch.Generator().manual_seed(seed))
    rates = torch.stack([(x[:, 2:] == M.MINI_MASK).double().mean(1) for x in seen])  # (10 batches, 8)
    for batch in rates:
        eighths = (batch * 8).floor().sort().values
        assert (eighths == torch.arange(8)).sum() >= 6, "one t in each eighth of (0, 1), up to edge noise"
        gaps = batch.sort().values.diff()
        assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=0.03), "evenly spaced by 1/B"
    assert not torch.allclose(rates[0], rates[1], atol=0.05), "the shared offset is random"


@pytest.mark.slow
def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    batch = M.chain_examples(256, torch.Generator().manual_seed(9))[:2]
    held_out = batch[0][:4]

    def loss_of(model):
        with torch.no_grad():
            return M.masked_diffusion_loss(model, *batch, torch.Generator().manual_seed(1)).item()

    before = loss_of(M.miniature_model(0))
    after = loss_of(M.train_miniature(12, 0, False, held_out=held_out))
    assert after < before - 0.5


def test_cached_weights_of_another_recipe_are_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "MINI_CACHE", tmp_path)
    old = H.TinyMaskPredictor(vocab_size=128, d_model=128, n_layers=4, n_heads=4, max_positions=78)  # SwiGLU 4x
    torch.save(old.state_dict(), tmp_path / "seed0.pt")  # an older recipe's: weights alone
    with pytest.raises(ValueError, match=r"seed0.pt is another training.s \(steps or model shape\): delete it"):
        M.miniature(seed=0, visible_length=False, steps=2, questions=4)
    assert torch.load(tmp_path / "seed0.pt").keys() == old.state_dict().keys(), "left as it was"


@pytest.mark.slow
def test_miniature_caches_the_trained_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = M.miniature(seed=0, visible_length=False, steps=2, questions=8)
    names = {p.name for p in (tmp_path / "results/miniature").iterdir()}
    assert names - {"seed0.png"} == {"seed0.pt"}, "one file holds the weights: the finished training's checkpoint"
    assert torch.load(tmp_path / "results/miniature/seed0.pt")["progress"]["step"] == 2, "the finished checkpoint"
    trained = M.miniature_model(0)
    trained.load_state_dict(torch.load(tmp_path / "results/miniature/seed0.pt")["model"])
    again = M.miniature(seed=0, visible_length=False, steps=2, questions=8)
    out = capsys.readouterr().out
    assert out.count("step 2/2") == 1 and "the trained weights from" in out
    assert again == first
    x = torch.randint(0, 128, (2, 30), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(trained(x).logits, M.miniature_model(0)(x).logits), "the weights were trained"
    reloaded = M.miniature_model(0)
    reloaded.load_state_dict(torch.load(tmp_path / "results/miniature/seed0.pt")["model"])
    assert torch.equal(trained(x).logits, reloaded(x).logits)


@pytest.mark.slow
def test_a_resumed_training_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(M, "CHECKPOINT_EVERY", 3)
    held_out = M.chain_examples(8, torch.Generator().manual_seed(2510))[0]
    whole = M.train_miniature(7, 0, False, held_out=held_out)
    checkpoint = tmp_path / "run.checkpoint.pt"
    calls = []

    class Killed(Exception):
        pass

    def killed_after_four(state):  # a kill -9 after step 4: the checkpoint of step 3 is what survives
        calls.append(state["step"])
        if len(calls) == 4:
            raise Killed

    monkeypatch.setattr(M, "_progress", killed_after_four)
    with pytest.raises(Killed):
        M.train_miniature(7, 0, False, held_out=held_out, checkpoint=checkpoint)
    assert torch.load(checkpoint)["progress"]["step"] == 3 and calls == [1, 2, 3, 4]
    resumed = M.train_miniature(7, 0, False, held_out=held_out, checkpoint=checkpoint)
    assert calls[4:] == [4, 5, 6, 7], "it resumed after the checkpoint, losing one step"
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match=r"is another training.s \(steps or model shape\): delete it"):
        M.train_miniature(9, 0, False, held_out=held_out, checkpoint=checkpoint)


def test_training_progress_is_one_bar_on_a_terminal_and_a_line_per_interval_in_a_file(monkeypatch, capsys):
    monkeypatch.setattr(M, "CHECKPOINT_EVERY", 2)
    for step in range(1, 5):
        M._progress(dict(step=step, steps=4, loss=1.5, seconds=2.0))
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "   training [############            ] step 2/4, loss 1.500, 2 s",
        "   training [########################] step 4/4, loss 1.500, 2 s",
    ]
    monkeypatch.setattr(M.sys.stdout, "isatty", lambda: True)
    for step in range(1, 5):
        M._progress(dict(step=step, steps=4, loss=1.5, seconds=2.0))
    out = capsys.readouterr().out
    assert out.count("\r") == 4 and out.count("\n") == 1 and out.endswith("step 4/4, loss 1.500, 2 s\n")


def test_miniature_training_choices():
    model = M.miniature_model(0)
    assert model.position.weight.shape == (78, 128), "a learned absolute position per canvas position"
    assert model.position.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert H.TinyMaskPredictor().position is None, "the LLaDA-like model has rotary positions only"
    x = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        moved = M.miniature_model(0)
        moved.position.weight.zero_()
        assert not torch.allclose(model(x).logits, moved(x).logits), "the position embedding is used"
    assert M.learning_rate(0, 1000) == pytest.approx(2e-5) and M.learning_rate(49, 1000) == pytest.approx(1e-3)
    assert M.learning_rate(99, 10**5) == pytest.approx(2e-3, rel=1e-4), "100 warm-up steps to 2e-3"
    assert M.learning_rate(999, 1000) == pytest.approx(1e-4, rel=1e-3), "a cosine decay to 5%"
    seen = {}
    real_step = torch.optim.AdamW.step

    def spy(optimizer, *args, **kwargs):
        seen["betas"] = optimizer.param_groups[0]["betas"]
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen["norm"] = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
        return real_step(optimizer, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", spy)
        M.train_miniature(1, 0, False, held_out=x[:, :14])
    assert seen["betas"] == (0.9, 0.98)
    assert seen["norm"] <= 1.0 + 1e-5, "the gradient norm is clipped at 1 (a fresh model's is larger)"


@pytest.mark.slow
def test_training_is_bitwise_repeatable_and_moves_only_by_rounding_with_the_thread_count():
    held_out = M.chain_examples(8, torch.Generator().manual_seed(2510))[0]
    threads = torch.get_num_threads()
    weights = []
    try:
        for n in (1, 1, 2):
            torch.set_num_threads(n)
            weights.append(M.train_miniature(3, 0, False, held_out=held_out).state_dict())
    finally:
        torch.set_num_threads(threads)
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name  # the same thread count: the same bits
        # another thread count may sum the backward pass in another order (seen on AVX-512 CPUs): rounding only
        assert torch.allclose(weights[0][name], weights[2][name], rtol=0, atol=1e-5), name


def _hand_made_decodes():
    """Four prompts (two short chains, two long ones) decoded by the six methods: block 4 wrong on prompt 0,
    block 8 on prompt 1, one-block Top-K on the long ones, Top-K margin everywhere (chains cut two steps short)."""
    lengths = torch.tensor([5, 6, 10, 12])
    answers = torch.full((4, 6, 64), M.EOT)
    for q, k in enumerate(lengths.tolist()):
        chain = [t for j in range(k) for t in (M.STEP + j, M.FILLER, M.DIGIT)] + [M.ANS, M.STEP + k - 1]
        short = chain[: 3 * (k - 2)] + [M.ANS, M.STEP + k - 3]
        for m in range(6):
            cut = (m == 4 and q >= 2) or (m == 5) or (m == 0 and q == 0) or (m == 1 and q == 1)
            tokens = short if cut else chain
            answers[q, m, : len(tokens)] = torch.tensor(tokens)
    commit_steps = torch.arange(64).expand(4, 6, 64).clone() // 2  # left to right, two a step
    commit_steps[:, 4:] = commit_steps[:, 4:].flip(-1)  # the one-block rules commit right to left
    return answers, commit_steps, lengths


def test_miniature_table_from_hand_made_decodes():
    figures = M.miniature_figures(*_hand_made_decodes())
    rows = figures.rows
    assert rows["block 4"].accuracy == rows["block 8"].accuracy == 0.75 and rows["block 16"].accuracy == 1.0
    assert (rows["block 4"].short, rows["block 4"].long) == (0.5, 1.0)
    assert (rows["one block, Top-K"].short, rows["one block, Top-K"].long) == (1.0, 0.0)
    assert rows["one block, Top-K margin"].accuracy == 0.0
    assert rows["block 4"].ci95 == H.wilson(3, 4), "an interval over the 4 questions"
    assert (rows["block 16"].eot_first, rows["block 16"].cut_short) == (0.0, 0.0)
    assert (rows["one block, Top-K"].eot_first, rows["one block, Top-K"].cut_short) == (1.0, 0.5)
    assert rows["one block, Top-K margin"].cut_short == 1.0 and rows["block 4"].cut_short == 0.25
    assert rows["HEX"].accuracy == 1.0 and rows["oracle"].accuracy == 1.0 and rows["HEX"].eot_first is None
    # even questions: the best block on the odd ones (4, tied with 16, goes first), wrong on question 0;
    # odd questions: the best on the even ones (8), wrong on question 1. Block 16, never wrong, is not chosen.
    assert figures.chosen == [4, 8]
    assert figures.hex_minus_chosen == H.paired_difference([True] * 4, [False, False, True, True])
    table = M.miniature_table(figures)
    assert "| block 4 | 75.0 [" in table and "| HEX | 100.0 [" in table and "| - | - |" in table


def test_miniature_picture_shows_the_table_and_the_commit_order(tmp_path):
    pytest.importorskip("matplotlib")
    answers, commit_steps, lengths = _hand_made_decodes()
    figures = M.miniature_figures(answers, commit_steps, lengths)
    path = tmp_path / "seed0.png"
    figure = M.miniature_picture(figures, answers[2], commit_steps[2], path)
    assert path.stat().st_size > 10_000
    bars, order = figure.axes[:2]
    heights = [round(p.get_height(), 6) for p in bars.patches]  # all, then short, then long, by method
    rows = list(figures.rows.values())
    assert heights == [100 * r.accuracy for r in rows] + [100 * r.short for r in rows] + [100 * r.long for r in rows]
    assert [t.get_text().replace("\n", " ") for t in bars.get_xticklabels()] == list(figures.rows)
    shown = order.images[0].get_array()
    assert (torch.tensor(shown.data) == commit_steps[2][[1, 4]]).all(), "block 8's and one block's commit steps"
    eot = torch.tensor(order.collections[0].get_offsets().data)  # (column, row) of each end-of-text
    assert sorted(map(tuple, eot.tolist())) == sorted(
        (float(c), float(r)) for r, c in (answers[2][[1, 4]] == M.EOT).nonzero().tolist()
    )
    assert M.miniature_picture(figures, answers[2], commit_steps[2], tmp_path / "again.png") is not None


def test_dilemma_row_by_hand():
    stated = torch.tensor([[5, 5, 0, 7], [0, 0, 0, 0], [6, 6, 6, 6]])  # answers of 4 samples; 0: unreadable
    row = M.dilemma_row(stated, lengths=torch.tensor([5, 9, 7]))
    assert row["pass@1"][0] == pytest.approx((2 / 4 + 0 + 0) / 3)
    assert row["pass@2"][0] == pytest.approx((1 - 1 / 6) / 3)  # C(2, 2) / C(4, 2) pairs miss prompt 0
    assert row["pass@4"][0] == pytest.approx(1 / 3) and "pass@8" not in row  # no estimate from 4 samples
    assert row["vote"][0] == pytest.approx(1 / 3)
    assert row["distinct"] == pytest.approx((2 + 0 + 1) / 3)
    low, high = row["pass@1"][1]
    assert 0 < low < row["pass@1"][0] < high < 1


@pytest.fixture
def cached_weights(tmp_path, monkeypatch, capsys):
    """Seed 7's weights after two training steps, cached where the miniature looks: the tables' form only."""
    monkeypatch.setattr(M, "MINI_CACHE", tmp_path)
    held_out = M.held_out_chains(False)[0]
    M.train_miniature(2, 7, False, held_out=held_out, checkpoint=tmp_path / "seed7.pt")
    capsys.readouterr()
    return tmp_path / "seed7.pt"


@pytest.mark.slow
def test_dilemma_prints_every_method_from_the_cached_weights(cached_weights, capsys):
    rows = M.dilemma(seed=7, steps=2, questions=3, samples=2, proposals=2)
    printed = capsys.readouterr().out
    assert f"the trained weights from {cached_weights}" in printed and "training [" not in printed
    assert len(rows) == 5 and all(label in printed for label in rows)
    samples = {"pass@1", "pass@2", "vote", "distinct"}
    assert [set(row) for row in rows.values()] == [samples] * 3 + [samples | {"pass@4"}, samples]  # HEX: 5
    assert rows["confidence, greedy"]["distinct"] <= 1  # one decode, however many samples


@pytest.mark.slow
def test_cost_frontier_counts_every_forward_pass_and_keeps_every_vote(cached_weights, capsys):
    rows = M.cost(seed=7, steps=2, questions=4)
    printed = capsys.readouterr().out
    experts = [label for label, _ in M.MINI_METHODS[: M.MINI_EXPERTS]]
    hexes = [f"HEX, threshold {t}" for t in M.COST_THRESHOLDS]
    early = [f"{label}, early stop" for label in ["HEX", *hexes]]
    sc = ["SC, 1 sample"] + [f"SC, {n} samples" for n in range(2, 6)]
    assert set(rows) == {*experts, "HEX", *hexes, *early, *sc} and all(f"| {label} |" in printed for label in rows)
    assert [rows[label].cost() for label in experts + ["HEX"] + sc] == [32] * 5 + [160] + [32, 64, 96, 128, 160]
    for label in early:
        assert rows[label].same_vote == 4 and rows[label].cost() <= rows[label.removesuffix(", early stop")].cost()
    assert all(32 <= rows[label].cost() / 5 <= 64 for label in hexes), "a threshold takes 16 to 64 steps"
    assert (cached_weights.parent / "seed7-cost.png").is_file() and "the picture:" in printed


# ============================================================ run_gsm8k.py ===========================================


# run_gsm8k.py: a tiny LLaDA-format checkpoint on disk -----------------------------------------

import importlib.util  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import run_gsm8k as R  # noqa: E402

HERE = Path(__file__).parent
TINY_MODELING = '''
"""hex.TinyMaskPredictor behind a wrapper shaped like LLaDA's own model file, its quirks included:
the model never calls post_init(), tie_weights() takes no arguments, and forward reads
config.use_cache (which the config passes on to PretrainedConfig, as LLaDA's does). TINY_SLEEP
slows each forward call, so that tests can act while a run is under way."""
import os
import time

from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

import hex


class TinyConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(self, vocab_size=64, d_model=32, n_layers=2, n_heads=4, use_cache=False, **kwargs):
        self.vocab_size, self.d_model, self.n_layers, self.n_heads = vocab_size, d_model, n_layers, n_heads
        super().__init__(use_cache=use_cache, **kwargs)


class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.net = hex.TinyMaskPredictor(config.vocab_size, config.d_model, config.n_layers, config.n_heads)

    def tie_weights(self):
        pass

    def get_input_embeddings(self):
        return self.net.embed

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        use_cache = self.config.use_cache if use_cache is None else use_cache
        time.sleep(float(os.environ.get("TINY_SLEEP", 0)))  # the tests' stand-in for a slow model
        return CausalLMOutputWithPast(logits=self.net(input_ids, attention_mask).logits)
'''
STAND_IN_MODELING = '''

class StandInModel(TinyModel):
    """`python test_hex.py` only, never a test: a labelled stand-in that boxes the question's last digit."""

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        out = super().forward(input_ids, attention_mask, use_cache)
        script = self.config.stand_in
        for row, ids in enumerate(input_ids.tolist()):
            marks = [i for i, t in enumerate(ids) if t in (script["reasoning"], script["header_end"])]
            start = marks[-1] + 1  # the answer follows the last <reasoning>, or (lm-eval's prompts) the chat's header
            tokens = script["before"] + [t for t in ids[:start] if t in script["digits"]][-1:] + script["after"]
            for i, t in enumerate(tokens):
                out.logits[row, start + i, t] += 20.0
            out.logits[row, start + len(tokens):, script["eot"]] += 10.0
        return out
'''


def word_level_tokenizer(specials: list[str], chat_words: str, chat_template: str, **special_tokens):
    """A word-level tokenizer for the tiny checkpoints: `specials` first (those not named as unknown,
    end-of-text or in `special_tokens` become additional special tokens), then digits, the chat
    template's words and a few question words, then the authors' answer markup as added tokens.
    '<|endoftext|>' is EOS and pad."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [str(i) for i in range(10)] + f"{chat_words} the answer is apples How many + = ? . A B C D".split()
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
    )
    named = {"[UNK]", "<|endoftext|>", *special_tokens.values()}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="[UNK]",
        additional_special_tokens=[t for t in specials if t not in named],
        **special_tokens,
    )
    tokenizer.add_tokens(["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\\boxed{", "}"])
    tokenizer.chat_template = chat_template
    return tokenizer


def write_checkpoint(d: Path, drop_weight: str | None = None, stand_in: bool = False) -> Path:
    """Tokenizer with LLaDA's special tokens and chat template, config with auto_map, weights; `stand_in`:
    the model boxes the question's last digit as its answer (for `python test_hex.py`, never a test)."""
    from safetensors.torch import save_file

    tokenizer = word_level_tokenizer(
        [
            "[UNK]",
            "<|startoftext|>",
            "<|endoftext|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|mdm_mask|>",
        ],
        "user assistant",
        bos_token="<|startoftext|>",
        chat_template=(
            "{% for m in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}<|start_header_id|>"
            "{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
        ),
    )
    tokenizer.save_pretrained(d)
    (d / "modeling_tiny.py").write_text(TINY_MODELING + STAND_IN_MODELING * stand_in)
    ids = tokenizer.convert_tokens_to_ids
    script = dict(
        reasoning=ids("<reasoning>"),
        header_end=ids("<|end_header_id|>"),
        digits=ids([str(i) for i in range(10)]),
        eot=ids("<|endoftext|>"),
        before=ids(["<answer>", "\\boxed{"]),
        after=ids(["}", "</answer>", "<|eot_id|>"]),
    )
    (d / "config.json").write_text(
        json.dumps(
            dict(
                model_type="llada",
                vocab_size=len(tokenizer),
                d_model=32,
                n_layers=2,
                n_heads=4,
                use_cache=False,
                auto_map={
                    "AutoConfig": "modeling_tiny.TinyConfig",
                    "AutoModel": "modeling_tiny.StandInModel" if stand_in else "modeling_tiny.TinyModel",
                },
                **({"stand_in": script} if stand_in else {}),
            )
        )
    )
    weights = {
        f"net.{k}": v
        for k, v in H.TinyMaskPredictor(len(tokenizer), 32, 2, 4).state_dict().items()
        if k != drop_weight
    }
    save_file(weights, d / "model.safetensors")
    return d


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("tiny-llada"))


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """The tiny checkpoint's tokenizer, config, model in float64 and mask id, loaded once."""
    tokenizer, config = R.load_tokenizer(str(checkpoint))
    model = R.load_model(str(checkpoint), config, torch.device("cpu"), torch.float64)
    return tokenizer, config, model, R.find_mask_id(tokenizer, config)


ROWS = {  # two rows per task, in each dataset's own format
    "gsm8k": [
        {"question": "How many apples ? 3 + 4", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "the answer is ?", "answer": "#### -1,000"},
    ],
    "math500": [
        {
            "problem": "What is $1/2$ as a fraction ?",
            "answer": "\\frac{1}{2}",
            "subject": "Algebra",
            "level": 1,
            "unique_id": "test/algebra/1.json",
            "solution": "It is \\frac12.",
        },
        {
            "problem": "How many + ?",
            "answer": "10\\%",
            "subject": "Prealgebra",
            "level": 2,
            "unique_id": "test/prealgebra/2.json",
            "solution": "10%",
        },
    ],
    "arc-c": [
        {
            "id": "Mercury_1",
            "question": "Which is a gas ?",
            "choices": {"text": ["rock", "air", "wood", "iron"], "label": ["A", "B", "C", "D"]},
            "answerKey": "B",
        },
        {
            "id": "Mercury_2",
            "question": "How many legs ?",
            "choices": {"text": ["2", "4", "6", "8"], "label": ["1", "2", "3", "4"]},
            "answerKey": "3",
        },
    ],
    "truthfulqa": [
        {"question": "Is the answer ?", "choices": ["yes", "no", "maybe", "never"], "label": 0},
        {"question": "How many apples ?", "choices": ["1", "2", "3", "4"], "label": 2},
    ],
}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data(tmp_path):
    return write_rows(tmp_path / "gsm8k.jsonl", ROWS["gsm8k"] * 2)  # four questions


def run_args(checkpoint, data, output, *extra):
    """The small run most checkpoint tests make: gen 16, steps 8, HEX 4 8 16 x 2 samples at 0.7, batches of 2."""
    return [
        "--model",
        str(checkpoint),
        "--data",
        str(data),
        "--output",
        str(output),
        "--gen-length",
        "16",
        "--steps",
        "8",
        "--block-lengths",
        "4",
        "8",
        "16",
        "--samples-per-block",
        "2",
        "--temperature",
        "0.7",
        "--batch-size",
        "2",
        *extra,
    ]


def run(checkpoint, data, output, *extra):
    return R.main(run_args(checkpoint, data, output, *extra))


def command(checkpoint, data, output, *extra):
    return [
        sys.executable,
        "run_gsm8k.py",
        "--model",
        str(checkpoint),
        "--data",
        str(data),
        "--output",
        str(output),
        "--gen-length",
        "16",
        "--steps",
        "8",
        "--block-lengths",
        "4",
        "16",
        *extra,
    ]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def files(directory):
    return sorted(p.name for p in Path(directory).iterdir())


# The checkpoint loads on this transformers version ------------------------------------------------


@pytest.mark.checkpoint
def test_checkpoint_loads_with_its_own_code_and_every_weight(checkpoint):
    tokenizer, config = R.load_tokenizer(str(checkpoint))
    model = R.load_model(str(checkpoint), config, torch.device("cpu"), torch.float32)
    reference = H.TinyMaskPredictor(len(tokenizer), 32, 2, 4)
    x = torch.randint(0, len(tokenizer), (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x).logits, reference(x).logits)
    assert R.find_mask_id(tokenizer, config) == tokenizer.convert_tokens_to_ids("<|mdm_mask|>")


@pytest.mark.checkpoint
def test_checkpoint_quirks_need_the_fixes_on_transformers_5(checkpoint):
    from transformers import AutoModel

    if R._transformers_version() < (5, 0):
        pytest.skip("transformers 4.x loads LLaDA-style code as it is")
    with pytest.raises(AttributeError, match="all_tied_weights_keys"):
        AutoModel.from_pretrained(checkpoint, trust_remote_code=True)


@pytest.mark.checkpoint
def test_checkpoint_missing_weight_is_a_clear_error(tmp_path, capsys):
    broken = write_checkpoint(tmp_path / "broken", drop_weight="lm_head.weight")
    data = write_rows(tmp_path / "d.jsonl", ROWS["gsm8k"])
    with pytest.raises(SystemExit):
        R.main(
            [
                "--model",
                str(broken),
                "--data",
                str(data),
                "--output",
                str(tmp_path / "o.jsonl"),
                "--gen-length",
                "16",
                "--block-lengths",
                "16",
            ]
        )
    err = capsys.readouterr().err
    assert "net.lm_head.weight" in err and "would be random" in err and "Traceback" not in err
    assert files(tmp_path) == ["broken", "d.jsonl"]


@pytest.mark.checkpoint
def test_checkpoint_load_passes_dtype_without_deprecation_warning(checkpoint, caplog, recwarn):
    _, config = R.load_tokenizer(str(checkpoint))
    model = R.load_model(str(checkpoint), config, torch.device("cpu"), torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert "deprecated" not in caplog.text.lower()
    assert not [w for w in recwarn if "dtype" in str(w.message)]


# Each task end to end -----------------------------------------------------------------------------


@pytest.mark.checkpoint
@pytest.mark.parametrize("task", list(R.TASKS))
def test_checkpoint_each_task_end_to_end(checkpoint, tmp_path, task, capsys):
    data = write_rows(tmp_path / f"{task}.jsonl", ROWS[task])
    output = tmp_path / "out.jsonl"
    summary = run(checkpoint, data, output, "--task", task)
    records = lines(output)
    order = list(R.TASKS[task].order(2))
    assert [r["id"] for r in records] == order
    for r in records:
        row = ROWS[task][r["id"]]
        assert r["gold"] == {rule: R.TASKS[task].parse_gold(row, rule) for rule in R.RULES}
        assert r["question"] == R.TASKS[task].question(row)
        assert len([c for c in r["candidates"] if c["method"] == "hex"]) == 6
        for c in r["candidates"]:
            assert c["answers"] == {rule: R.TASKS[task].extract_answer(c["text"], rule) for rule in R.RULES}
        for rule in R.RULES:
            hex_rows = [c for c in r["candidates"] if c["method"] == "hex"]
            answer, tie = H.majority_vote([c["answers"][rule] for c in hex_rows])
            voted = R.verdicts(R.TASKS[task], r, rule, "first").methods["hex"]
            assert voted == (answer, tie, R.TASKS[task].is_correct(answer, r["gold"][rule], rule))
    saved = json.loads(output.with_suffix(".summary.json").read_text())
    assert saved == json.loads(json.dumps(dataclasses.asdict(summary)))
    for rule, other in (("authors", "robust"), ("robust", "authors")):
        recomputed = R.summarize(lines(output), R.Settings.from_file(saved["settings"]), rule)

        def right(m, x):
            return [R.verdicts(R.TASKS[task], r, x, "first").methods[m].right for r in records]

        for m, v in recomputed.methods.items():
            assert v.accuracy == sum(right(m, rule)) / 2 and v.other_rule_accuracy == sum(right(m, other)) / 2
    assert (
        json.loads(
            json.dumps(
                dataclasses.asdict(R.summarize(lines(output), R.Settings.from_file(saved["settings"]), "authors"))
            )
        )
        == saved
    )
    out = capsys.readouterr().out
    assert (
        f"{R.TASKS[task].title}, 2 questions; gen_length 16, steps 8, HEX block lengths 4 8 16, temperature 0.7, "
        "2 samples per block length (6 votes), ties to the answer seen first (the authors' rule)\n"
        "answers read by the authors rule (robust rule beside)"
    ) in out
    for name in ("HEX (hex)", "Top-K margin (topk_margin)", "Top-K (low_confidence)", "Random (random)"):
        assert re.search(re.escape(name) + r" +\d+\.\d\d% +\[ *\d+\.\d\d%, +\d+\.\d\d%\]", out), name
    assert all(r["forward_calls"] == 8 / 2 for r in records), "both questions' methods in one batch: steps calls"
    assert output.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    settings = json.loads(output.with_suffix(".config.json").read_text())
    assert settings["task"] == task and settings["data"]["fingerprint"].startswith("sha256:")


def test_data_reads_parquet_like_jsonl(tmp_path):
    import pyarrow
    import pyarrow.parquet

    for task in ("gsm8k", "arc-c"):
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(ROWS[task]), tmp_path / f"{task}.parquet")
        rows, _ = R.load_rows(R.TASKS[task], str(tmp_path / f"{task}.parquet"))
        assert rows == ROWS[task]


# Prompts and gold answers -------------------------------------------------------------------------


class ShowTemplate:
    """A stand-in tokenizer that shows the chat text it was given."""

    def apply_chat_template(self, chat, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize and len(chat) == 1 and chat[0]["role"] == "user"
        return "[" + chat[0]["content"] + "]"

    def __call__(self, text, add_special_tokens):
        assert add_special_tokens is False
        return type("Encoding", (), {"input_ids": text})


@pytest.mark.parametrize(
    "task,question",
    [
        ("gsm8k", "How many apples ? 3 + 4"),
        ("math500", "What is $1/2$ as a fraction ?"),
        ("arc-c", "Which is a gas ?\n\nOptions:\nA. rock\nB. air\nC. wood\nD. iron\n\nChoose ONE letter."),
        ("truthfulqa", "Is the answer ?\n\nOptions:\nA. yes\nB. no\nC. maybe\nD. never\n\nChoose ONE letter."),
    ],
)
def test_prompt_text_per_task(task, question):
    text = R.TASKS[task].build_prompt(ShowTemplate(), ROWS[task][0])
    assert text == "[" + R.TASKS[task].system_prompt + "\n\n" + question + "]<reasoning>"


def test_prompt_quirks_and_numeric_arc_labels_are_kept():
    gsm8k, math500 = (R.TASKS[task].build_prompt(ShowTemplate(), ROWS[task][0]) for task in ("gsm8k", "math500"))
    assert "\\boxed{}. \nRespond" in gsm8k and "\\boxed{}.\nRespond" in math500  # the authors' spaces, as sent
    assert '</answer>" \n\n' in math500  # their stray quote line before the question
    text = R.TASKS["arc-c"].build_prompt(ShowTemplate(), ROWS["arc-c"][1])
    assert "Options:\n1. 2\n2. 4\n3. 6\n4. 8\n\nChoose ONE letter." in text
    spaced = {"question": "  Which ?  ", "choices": {"text": [" a ", "b"], "label": [" A", "B"]}, "answerKey": "A"}
    assert R.TASKS["arc-c"].question(spaced) == "Which ?\n\nOptions:\nA. a\nB. b\n\nChoose ONE letter."


def test_gold_per_task_and_rule():
    assert R.TASKS["gsm8k"].parse_gold({"answer": "so\n#### 1,234"}) == 1234.0
    assert R.TASKS["gsm8k"].parse_gold({"answer": "#### -3"}) is None  # the authors' parser has no minus sign
    assert R.TASKS["gsm8k"].parse_gold({"answer": "#### -3"}, "robust") == -3.0
    assert R.TASKS["math500"].parse_gold(ROWS["math500"][1]) == "10\\%"
    assert R.TASKS["math500"].parse_gold({"answer": "x = \\dfrac{3}{4}"}, "robust") == "\\frac{3}{4}"
    assert R.TASKS["arc-c"].parse_gold(ROWS["arc-c"][1]) == "3"
    assert R.TASKS["truthfulqa"].parse_gold(ROWS["truthfulqa"][1]) == "C"
    with pytest.raises(ValueError, match="####"):
        R.TASKS["gsm8k"].parse_gold({"answer": "42"}, "robust")
    with pytest.raises(ValueError, match="rule"):
        R.TASKS["gsm8k"].extract_answer("", rule="strict")


def test_truthfulqa_follows_the_authors_numpy_seed_42_order():
    order = R.TASKS["truthfulqa"].order(684)
    assert sorted(order) == list(range(684)) and order == R.TASKS["truthfulqa"].order(684)
    assert order[:6] == [497, 231, 212, 118, 670, 539]  # np.random.seed(42); np.random.choice(684, 684, False)


# Answer rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,authors,robust",
    [
        ("<reasoning>2+2</reasoning><answer>\\boxed{4}</answer>", 4.0, 4.0),
        ("\\boxed{1,000}", 1.0, 1000.0),  # the authors' non-greedy quirk
        ("\\boxed{\\$18.50}", 18.5, 18.5),
        ("\\boxed{-5}", -5.0, -5.0),
        ("\\boxed{...} then \\boxed{12}", 12.0, 12.0),  # the prompt's placeholder is skipped
        ("\\boxed{} <answer>so 3 and then 9</answer>", 9.0, 9.0),  # empty box: last number in <answer>
        ("\\boxed{\\frac{3}{4}}", 3.0, 0.75),
        ("\\boxed{18 \\text{ dollars}}", 18.0, 18.0),
        ("She pays $1,250 in total.\nThe answer is 1,250", None, 1250.0),
        ("The answer is −7.", None, -7.0),
        ("<answer>\\boxed{5}</answer><|eot_id|><|endoftext|><|endoftext|>", 5.0, 5.0),
        ("no number at all", None, None),
    ],
)
def test_gsm8k_answer_rules(text, authors, robust):
    assert R.TASKS["gsm8k"].extract_answer(text) == authors
    assert R.TASKS["gsm8k"].extract_answer(text, "robust") == robust


@pytest.mark.parametrize(
    "text,authors,robust",
    [
        ("\\boxed{2} and later \\boxed{3}", "3", "3"),  # the last box
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{\\dfrac{1}{2}}.", "\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\boxed{} <answer> 7 </answer>", "7", "7"),  # empty box: <answer>
        ("\\boxed{}", "", None),  # empty, no <answer>: "" is a vote
        ("\\boxed{3 <answer>9</answer>", "9", "3 <answer>9</answer>"),  # unclosed box
        ("no box here", "no box here", None),  # the whole text (quirk)
        ("<answer>12</answer>", "<answer>12</answer>", "12"),  # <answer> only: still the whole text
        ("\\boxed{5}<|eot_id|><|endoftext|>", "5", "5"),  # special tokens after the answer
        ("so \\boxed 5$ is it", "5", None),  # the `\boxed ` form reads to `$`
        ("\\fbox{4}", "\\fbox{4}", "4"),  # \fbox keeps its wrapper (quirk)
        ("\\boxed{x = 10\\%}", "x = 10\\%", "10"),
    ],
)
def test_math_answer_rules(text, authors, robust):
    assert R.TASKS["math500"].extract_answer(text) == authors
    assert R.TASKS["math500"].extract_answer(text, "robust") == robust


def test_math_comparators():
    def eq(a, g, rule="authors"):
        return R.TASKS["math500"].is_correct(a, g, rule)

    assert eq("\\dfrac{1}{2}", "\\frac{1}{2}") and eq("0.5", "\\frac{1}{2}") and eq("1/2", "\\frac{1}{2}")
    assert eq("10", "10\\%") and eq("x=5", "5") and eq("\\left( 3, 4 \\right)", "(3,4)")
    assert eq("\\frac12", "\\frac{1}{2}") and eq("90^\\circ", "90")
    assert not eq("0.50", "\\frac{1}{2}") and not eq("2x+1", "1+2x") and not eq(None, "1")
    assert not eq("a/b", "\\frac{a}{b}")  # their a/b fix raises on letters: raw strings compared
    assert eq("a/b", "a/b")
    assert eq("0.50", "\\frac{1}{2}", "robust") and eq("1+2x", "2x+1", "robust")
    assert eq("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", "robust") and not eq("3", "4", "robust")


def test_robust_math_verdicts_are_deterministic_and_bounded(monkeypatch):
    """The same text gets the same verdict on any machine and load: no wall-clock timeout is armed
    (a slow, loaded machine would otherwise turn "equal" into "not equal"), and inputs that could
    run away never reach math-verify, by their form alone."""
    import signal

    import math_verify

    monkeypatch.setattr(signal, "alarm", lambda seconds: pytest.fail(f"a {seconds} s wall-clock timeout was armed"))
    seen = []
    real_verify = math_verify.verify
    monkeypatch.setattr(
        math_verify, "verify", lambda gold, found, **kw: seen.append(kw) or real_verify(gold, found, **kw)
    )
    R.math_equal.cache_clear()

    def eq(a, g):
        return R.TASKS["math500"].is_correct(a, g, "robust")

    for _ in range(2):  # twice, the cache cleared in between: the same verdicts
        assert eq("0.50", "\\frac{1}{2}") and eq("1+2x", "2x+1") and eq("2^{10}", "1024") and not eq("\\pi", "3.14159")
        R.math_equal.cache_clear()
    assert seen and all(kw["timeout_seconds"] is None for kw in seen)
    seen.clear()
    for wild in ("2^{2^{2^{100}}}", "10^{1000}", "99!", "1" * 40, "x+" * 60 + "1"):
        assert not eq(wild, "1") and eq(wild, wild)
    assert seen == [], "answers beyond reach are compared as normal forms only"


def test_a_number_in_another_base_is_not_that_number():
    def eq(a, g):
        return R.TASKS["math500"].is_correct(a, g, "robust")

    assert not eq("2516", "2516_8") and not eq("2516_8", "2516") and not eq("1A_{16}", "26")
    assert eq("2516_{8}", "2516_8") and eq("2516_8", "2516_8")
    assert eq("x_1+1", "1+x_1"), "a variable's subscript is no base"


@pytest.mark.parametrize(
    "text,authors,robust",
    [
        ("<answer>\\boxed{B}</answer>", "B", "B"),
        ("\\boxed{(C)}", "(C)", "C"),
        ("\\boxed{B. air}", "B. air", "B"),
        ("\\boxed{b}", "b", "B"),
        ("\\boxed{\\text{D}}", "\\text{D}", "D"),
        ("\\boxed{A} no wait \\boxed{C}", "C", "C"),
        ("\\boxed{3}", "3", "3"),  # ARC rows labelled 1-4
        ("The answer is (B).", "The answer is (B).", "B"),
        ("\\boxed{air}", "air", None),
    ],
)
def test_choice_answer_rules(text, authors, robust):
    for task in ("arc-c", "truthfulqa"):
        assert R.TASKS[task].extract_answer(text) == authors
        assert R.TASKS[task].extract_answer(text, "robust") == robust


def test_choice_comparators():
    assert R.TASKS["arc-c"].is_correct("B", "B") and R.TASKS["arc-c"].is_correct("B ", "B")  # spaces normalised away
    assert not R.TASKS["arc-c"].is_correct("(B)", "B") and not R.TASKS["arc-c"].is_correct("b", "B")
    assert R.TASKS["truthfulqa"].is_correct("B", "B", "robust") and not R.TASKS["truthfulqa"].is_correct(
        None, "B", "robust"
    )


def test_vote_over_raw_strings_under_the_authors_rule():
    texts = ["\\boxed{\\frac12}", "\\boxed{\\dfrac{1}{2}}", "\\boxed{\\frac{1}{2}}", "\\boxed{3}", "\\boxed{3}"]
    assert H.majority_vote([R.TASKS["math500"].extract_answer(t) for t in texts]) == ("3", False)
    assert H.majority_vote([R.TASKS["math500"].extract_answer(t, "robust") for t in texts]) == ("\\frac{1}{2}", False)


# Runs that cannot mix, block or die with a traceback -----------------------------------------------

# Every method in one batch, the [AfterEoT] figures, rescoring, the picture ------------------------


@pytest.mark.checkpoint
def test_checkpoint_every_method_in_one_batch_equals_the_separate_runs(checkpoint, loaded):
    """At the defaults (gen 256, steps 128): 128 forward calls per question for all eight candidates,
    each equal token for token (float64) to HEX's lockstep run and each baseline's own run."""
    tokenizer, _, model, mask_id = loaded
    settings = R.run_settings(R.parse_args(["--model", str(checkpoint)]), {}, torch.device("cpu"))
    task = R.TASKS["gsm8k"]
    batch = [{"id": 3, "row": ROWS["gsm8k"][0]}]
    [record] = R.decode_batch(model, tokenizer, task, batch, settings, mask_id, torch.device("cpu"))
    assert record["forward_calls"] == 128 and len(record["candidates"]) == 8
    ids = torch.tensor([task.build_prompt(tokenizer, ROWS["gsm8k"][0])])

    def seeded(m):
        return torch.Generator().manual_seed(10**6 * R.METHODS.index(m) + 3)

    kw = dict(gen_length=256, steps=128, mask_id=mask_id)
    alone = list(H.hex_generate(model, ids, generator=seeded("hex"), **kw).sequences[0])
    alone += [H.generate(model, ids, block_length=256, remasking=m, generator=seeded(m), **kw)[0] for m in R.BASELINES]
    for candidate, sequence in zip(record["candidates"], alone):
        assert candidate["text"] == tokenizer.decode(sequence[ids.shape[1] :].tolist()), candidate["method"]


class Scripted(nn.Module):
    """A stand-in instruct model: it always predicts `script` (one token per answer position), sure of
    the end-of-text tokens (logit 9) and less of the rest (logit 5), as an instruct model pads its tail."""

    def __init__(self, script, end_ids, vocab):
        super().__init__()
        self.script, self.end_ids, self.vocab = script, end_ids, vocab

    def forward(self, x, attention_mask=None):
        logits = torch.zeros(*x.shape, self.vocab, dtype=torch.float64)
        G = len(self.script)
        for i, t in enumerate(self.script):
            logits[:, x.shape[1] - G + i, t] = 9.0 if t in self.end_ids else 5.0
        return H.MaskPredictorOutput(logits)


def scripted_records(checkpoint, tokens):
    tokenizer, config = R.load_tokenizer(str(checkpoint))
    ends = R.end_of_text_ids(tokenizer)
    script = tokenizer.convert_tokens_to_ids(tokens)
    script += [tokenizer.eos_token_id] * (32 - len(script))
    args = R.parse_args(
        ["--model", str(checkpoint), "--gen-length", "32", "--steps", "16", "--block-lengths", "8", "16"]
    )
    settings = R.run_settings(args, {}, torch.device("cpu"))
    model = Scripted(script, ends, len(tokenizer))
    batch = [{"id": 0, "row": ROWS["gsm8k"][0]}]
    records = R.decode_batch(
        model, tokenizer, R.TASKS["gsm8k"], batch, settings, R.find_mask_id(tokenizer, config), torch.device("cpu")
    )
    return records, R.summarize(records, settings, "authors")


@pytest.mark.checkpoint
def test_checkpoint_a_complete_answer_then_padding_is_no_collapse_but_eot_first_shows(checkpoint):
    answer = ["<answer>", "\\boxed{", "7", "}", "</answer>", "<|eot_id|>"]
    records, summary = scripted_records(checkpoint, answer)
    assert all(c["answers"]["authors"] == 7.0 for c in records[0]["candidates"])
    assert {m: v.collapse_rate for m, v in summary.methods.items()} == dict.fromkeys(["hex", *R.BASELINES], 0.0)
    assert summary.methods["hex"].accuracy == 1.0
    eot_first = {m: v.eot_first_share for m, v in summary.methods.items()}
    assert eot_first["topk_margin"] == eot_first["low_confidence"] == 1.0, "one block commits the padding first"
    assert summary.block_lengths[8].eot_first_share == 3 / 8, "block 8 commits its own block first"
    for c in records[0]["candidates"]:
        order = c["commit_order"]
        assert len(order) == 32 and sorted(Counter(order).values()) == [2] * 16  # 2 tokens at each of 16 steps
        assert c["end_of_text"] == "." * 5 + "_" * 27


@pytest.mark.checkpoint
def test_checkpoint_no_readable_answer_and_mostly_end_of_text_is_a_collapse(checkpoint):
    records, summary = scripted_records(checkpoint, ["<|eot_id|>", "<|endoftext|>"])
    assert all(c["answers"]["robust"] is None for c in records[0]["candidates"])
    assert {m: v.collapse_rate for m, v in summary.methods.items()} == dict.fromkeys(["hex", *R.BASELINES], 1.0)
    assert summary.block_lengths[16].collapse_rate == 1.0
    half = scripted_records(checkpoint, ["The", "answer", "is"] * 6)[1]  # no answer, but mostly words
    assert half.methods["hex"].collapse_rate == 0.0


@pytest.mark.checkpoint
def test_checkpoint_a_finished_run_reads_its_texts_by_todays_rules_without_the_model(
    checkpoint, data, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "r.jsonl"
    run(checkpoint, data, output)
    records = lines(output)
    for r in records:  # as if an older parser had read nothing
        for c in r["candidates"]:
            c["answers"] = {"authors": None, "robust": None}
    output.write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setattr(R, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(R, "load_tokenizer", lambda *a, **k: pytest.fail("the tokenizer was loaded"))
    capsys.readouterr()
    summary = run(checkpoint, data, output)
    reread = lines(output)
    for r in reread:
        for c in r["candidates"]:
            assert c["answers"] == {rule: R.TASKS["gsm8k"].extract_answer(c["text"], rule) for rule in R.RULES}
    changed = sum(c["answers"] != {"authors": None, "robust": None} for r in reread for c in r["candidates"])
    assert (
        changed > 0 and f"today's answer rules read {changed} stored candidates otherwise" in capsys.readouterr().out
    )
    settings = R.Settings.from_file(json.loads(output.with_suffix(".config.json").read_text()))
    assert summary == R.summarize(reread, settings, "authors")
    run(checkpoint, data, output)
    assert "otherwise" not in capsys.readouterr().out, "once updated, the records agree with today's rules"


@pytest.mark.checkpoint
def test_checkpoint_figure_draws_from_the_records_alone(checkpoint, data, tmp_path):
    from matplotlib.image import imread

    output = tmp_path / "f.jsonl"
    summary = run(checkpoint, data, output)
    picture = tmp_path / "again.png"
    records = lines(output)
    figure = R.write_figures(summary, records, picture)  # no model, no tokenizer: the JSONL alone
    height, width, _ = imread(picture).shape
    assert (width, height) == (1400, 900)
    bars, votes, order = figure.axes[:3]
    shown = list(summary.methods.values()) + list(summary.block_lengths.values())
    assert [round(b.get_height(), 9) for b in bars.patches] == [round(100 * v.accuracy, 9) for v in shown]
    [hex_accuracy] = [line for line in votes.lines if line.get_label() == "HEX, expected accuracy"]
    curve = summary.votes["hex"]
    assert list(hex_accuracy.get_xdata()) == [v.votes for v in curve]
    assert list(hex_accuracy.get_ydata()) == pytest.approx([100 * v.accuracy for v in curve])
    record = next((r for r in records if any(map(R.collapsed, r["candidates"]))), records[0])
    first_samples = [c["commit_order"] for c in record["candidates"] if c["sample"] == 0]
    shares = [[step / max(steps) for step in steps] for steps in first_samples]  # each candidate's own steps
    assert order.images[0].get_array().tolist() == shares, "the commit order of one question's candidates"
    assert order.get_xlabel() == "answer position" and len(votes.get_legend().get_texts()) <= 6


@pytest.mark.checkpoint
def test_checkpoint_resume_appends_only_unfinished_questions(checkpoint, data, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    run(checkpoint, data, output, "--limit", "2", "--methods", "hex")
    first = output.read_text()
    with output.open("a") as f:
        f.write('{"id": 2, "question": "torn wri')  # an interrupted write
    summary = run(checkpoint, data, output, "--methods", "hex")
    assert output.read_text().startswith(first)
    assert [r["id"] for r in lines(output)] == [0, 1, 2, 3]
    assert summary.questions == 4
    before = output.read_text()
    capsys.readouterr()
    run(checkpoint, data, output, "--methods", "hex")  # everything done: nothing is appended
    assert output.read_text() == before


@pytest.mark.checkpoint
def test_checkpoint_finished_run_prints_summary_without_the_model(checkpoint, data, tmp_path, monkeypatch, capsys):
    output = tmp_path / "out.jsonl"
    first = run(checkpoint, data, output, "--methods", "hex", "random")
    capsys.readouterr()
    monkeypatch.setattr(R, "load_tokenizer", lambda *a: pytest.fail("the tokenizer was loaded"))
    monkeypatch.setattr(R, "load_model", lambda *a: pytest.fail("the model was loaded"))
    again = run(checkpoint, data, output, "--methods", "hex", "random", "--answer-rule", "robust")
    assert again.methods["hex"].accuracy == first.methods["hex"].other_rule_accuracy
    assert "answers read by the robust rule (authors rule beside)" in capsys.readouterr().out


@pytest.mark.checkpoint
def test_checkpoint_other_data_or_settings_are_refused_and_file_untouched(checkpoint, data, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    run(checkpoint, data, output, "--limit", "2")
    before = {name: (tmp_path / name).read_bytes() for name in files(tmp_path)}
    other = write_rows(tmp_path / "other.jsonl", ROWS["gsm8k"][::-1])
    errors = []
    for args in ([other], [data, "--tie-break", "likelihood"], [data, "--seed", "1"], [data, "--block-lengths", "4"]):
        with pytest.raises(SystemExit):
            run(checkpoint, *args[:1], output, *args[1:])
        errors.append(capsys.readouterr().err)
        assert "other settings" in errors[-1] and "use another --output, or --no-resume" in errors[-1]
        assert "Traceback" not in errors[-1]
    assert f"data: {data} (" in errors[0] and f"{other} (" in errors[0]
    assert "tie_break: first there, likelihood now" in errors[1] and "seed: 0 there, 1 now" in errors[2]
    assert "block_lengths: [4, 8, 16] there, [4] now" in errors[3]
    assert {name: (tmp_path / name).read_bytes() for name in files(tmp_path) if name in before} == before
    assert files(tmp_path) == sorted([*before, "other.jsonl"])


@pytest.mark.checkpoint
def test_checkpoint_other_data_message_names_both_files(checkpoint, data, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    run(checkpoint, data, output, "--limit", "1", "--methods", "random")
    other = write_rows(tmp_path / "other.jsonl", ROWS["gsm8k"][::-1])
    with pytest.raises(SystemExit):
        run(checkpoint, other, output, "--limit", "1", "--methods", "random")
    err = capsys.readouterr().err
    assert str(data.resolve()) in err and str(other.resolve()) in err


@pytest.mark.checkpoint
def test_checkpoint_results_without_settings_or_with_foreign_lines_are_refused(checkpoint, data, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    output.write_text('{"id": 0, "note": "made by hand"}\n')
    with pytest.raises(SystemExit):
        run(checkpoint, data, output, "--limit", "1")
    assert "has no settings file" in capsys.readouterr().err
    assert output.read_text() == '{"id": 0, "note": "made by hand"}\n'
    run(checkpoint, data, output, "--limit", "1", "--methods", "random", "--no-resume")  # starts it over
    with output.open("a") as f:
        f.write('["not", "a", "record"]\n')
    with pytest.raises(SystemExit):
        run(checkpoint, data, output, "--limit", "2", "--methods", "random")
    assert "line 2: not a record of this script" in capsys.readouterr().err


@pytest.mark.checkpoint
def test_checkpoint_same_model_under_another_spelling_resumes(checkpoint, data, tmp_path, monkeypatch):
    output = tmp_path / "out.jsonl"
    monkeypatch.chdir(checkpoint.parent)
    run(checkpoint.name, data, output, "--limit", "1", "--methods", "random")
    run(checkpoint.name + "/", data, output, "--limit", "2", "--methods", "random")
    run(str(checkpoint), data, output, "--limit", "2", "--methods", "random")
    assert [r["id"] for r in lines(output)] == [0, 1]


@pytest.mark.checkpoint
def test_checkpoint_failed_start_leaves_nothing_and_the_corrected_command_runs(checkpoint, data, tmp_path, capsys):
    output = tmp_path / "results" / "out.jsonl"
    with pytest.raises(SystemExit):
        run(tmp_path / "no-such-model", data, output)
    assert "no such folder" in capsys.readouterr().err
    assert not output.parent.exists()
    run(checkpoint, data, output, "--limit", "1", "--methods", "random")
    assert [r["id"] for r in lines(output)] == [0]


@pytest.mark.checkpoint
def test_checkpoint_a_run_holding_the_imh_samples_of_an_older_version_is_still_summarized(checkpoint, data, tmp_path):
    output = tmp_path / "out.jsonl"
    run(checkpoint, data, output, "--methods", "hex", "random")
    records = lines(output)
    for r in records:  # two IMH samples, as a run made before 2026-12 kept them
        r["candidates"] += [dict(r["candidates"][-1], method="imh", sample=s) for s in range(2)]
    output.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = output.with_suffix(".config.json")
    old = dict(json.loads(config.read_text()), methods=["hex", "random", "imh"], imh_samples=2, imh_alpha=2.0)
    config.write_text(json.dumps(old))
    summary = run(checkpoint, data, output, "--methods", "hex", "random")
    assert list(summary.methods) == ["hex", "random"] and (tmp_path / "out.png").is_file()
    whole = json.loads(output.with_suffix(".summary.json").read_text())
    assert whole["methods"]["imh"]["paper_name"] == "IMH (reconstructed)", "the stored samples, still summarized"


@pytest.mark.checkpoint
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--block-lengths", "5"], "block_length=5 must be a positive divisor"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--block-lengths", "0", "16"], "--block-lengths must each be >= 1, got 0 16"),
        (["--block-lengths", "-4", "16"], "--block-lengths must each be >= 1, got -4 16"),
        (["--block-lengths", "8", "8", "16"], "--block-lengths 8 8 16: each block length is one expert, named once"),
        (["--steps", "6"], "steps=6 must be a multiple"),
        (["--gen-length", "40", "--block-lengths"], "not a multiple of 32"),
        (["--device", "cuda"], "--device cuda: not a device this torch build can use here"),
        (["--device", "tpu9"], "--device tpu9"),
        (["--mask-id", "100000"], "outside the model's vocabulary"),
        (["--offset", "4"], "--offset 4 is past the 4 rows"),
        (["--temperature", "-1"], "--temperature"),
        (["--threshold", "1.5"], "--threshold must be a confidence in [0, 1], got 1.5"),
        (["--methods", "imh"], "argument --methods: invalid choice: 'imh'"),
        (["--task", "mmlu"], "invalid choice"),
        (["--methods", "hex", "beam"], "argument --methods: invalid choice: 'beam'"),
    ],
)
def test_checkpoint_bad_arguments_give_one_message_and_no_files(checkpoint, data, tmp_path, capsys, extra, message):
    if extra[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = [
        "--model",
        str(checkpoint),
        "--data",
        str(data),
        "--output",
        str(tmp_path / "r" / "o.jsonl"),
        "--gen-length",
        "16",
        "--block-lengths",
        "4",
        "16",
        *extra,
    ]
    if extra[-1] == "--block-lengths":
        argv = argv[: -len(extra)] + ["--gen-length", "40"]
        argv.remove("--block-lengths"), argv.remove("4"), argv.remove("16")
    with pytest.raises(SystemExit) as exit_:
        R.main(argv)
    assert exit_.value.code not in (0, None)
    err = capsys.readouterr().err + str(exit_.value.code)
    assert message in err and "Traceback" not in err
    assert files(tmp_path) == ["gsm8k.jsonl"]


@pytest.mark.checkpoint
@pytest.mark.parametrize(
    "content,message",
    [
        ('{"question": "q", "answer": "#### 1"}\n\n{not json\n', "or a parquet file (JSON parse error"),
        ('{"question": "q", "answer": "#### 1"}\n[1]\n', "not a JSONL file (one JSON object per line)"),
        ('{"question": "q", "answer": "#### 1"}\n{"question": "q", "answer": "no marker"}\n', "row 2: the answer"),
        ('{"problem": "q", "answer": "1"}\n', "row 1: needs string fields 'question' and 'answer'"),
        ("[1, 2]\n", "not a JSONL file (one JSON object per line) or a parquet file"),
        ("3\n", "not a JSONL file (one JSON object per line)"),
        ("", "not a JSONL file"),
    ],
)
def test_checkpoint_bad_data_files_give_row_numbers(checkpoint, tmp_path, capsys, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(SystemExit):
        run(checkpoint, bad, tmp_path / "r" / "o.jsonl")
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert files(tmp_path) == ["bad.jsonl"]
    with pytest.raises(SystemExit):
        run(checkpoint, tmp_path / "missing.jsonl", tmp_path / "r" / "o.jsonl")
    assert "no such file" in capsys.readouterr().err


# Every user mistake: one line on stderr, before the model loads, nothing left behind --------------


def one_line_error(capsys, argv, monkeypatch=None):
    """Run argv, expecting a usage error: returns its single stderr line."""
    if monkeypatch is not None:
        monkeypatch.setattr(R, "load_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_:
        R.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("run_gsm8k.py: error: "), err
    return err.strip()


@contextlib.contextmanager
def read_only(folder: Path):
    """folder, read-only: by its mode for an ordinary user; for root (whom modes do not stop) by a
    read-only bind mount, where this machine allows one."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", "-o", "ro", folder, folder], capture_output=True).returncode:
        pytest.skip("no read-only folder can be made here (root, and no bind mount)")
    try:
        yield
    finally:
        subprocess.run(["umount", folder], check=True)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.checkpoint
def test_checkpoint_output_that_is_a_folder_is_refused_before_loading(checkpoint, data, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    for extra in ([], ["--no-resume"]):  # the advice is never "--no-resume" and then a traceback
        err = one_line_error(capsys, ["--model", checkpoint, "--data", data, "--output", folder, *extra], monkeypatch)
        assert f"--output {folder}: is a folder; name a results file, e.g. --output {folder / 'run.jsonl'}" in err
    assert files(folder) == []
    err = one_line_error(capsys, ["--model", checkpoint, "--data", data, "--output", data / "r.jsonl"], monkeypatch)
    assert f"--output {data / 'r.jsonl'}: cannot create the folder {data} (" in err


@pytest.mark.checkpoint
def test_checkpoint_read_only_archive(checkpoint, data, tmp_path, capsys, monkeypatch):
    archive = tmp_path / "archive"
    archive.mkdir()
    output = archive / "r.jsonl"
    run(checkpoint, data, output, "--limit", "2")
    before = snapshot(archive)
    capsys.readouterr()
    with read_only(archive):
        monkeypatch.setattr(R, "load_tokenizer", lambda *a: pytest.fail("the tokenizer was loaded"))
        summary = run(checkpoint, data, output, "--limit", "2")  # finished: the summary, printed, nothing written
        out = capsys.readouterr().out
        assert summary.questions == 2 and "cannot be written" in out and "were not rewritten" in out
        err = one_line_error(
            capsys,
            command(checkpoint, data, output)[2:]
            + [
                "--samples-per-block",
                "2",
                "--temperature",
                "0.7",
                "--batch-size",
                "2",
                "--block-lengths",
                "4",
                "8",
                "16",
            ],
        )
        assert f"--output {output}: {archive} cannot be written (" in err and "use another --output" in err
        nested = archive / "new" / "deeper" / "r.jsonl"
        err = one_line_error(capsys, command(checkpoint, data, nested)[2:])
        assert f"cannot create the folder {nested.parent}" in err
        assert snapshot(archive) == before


@pytest.mark.checkpoint
def test_checkpoint_device_this_torch_build_lacks_is_refused_before_loading(
    checkpoint, data, tmp_path, capsys, monkeypatch
):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    err = one_line_error(
        capsys, command(checkpoint, data, tmp_path / "o.jsonl")[2:] + ["--device", "mps"], monkeypatch
    )
    assert "--device mps: not a device this torch build can use here" in err
    assert files(tmp_path) == ["gsm8k.jsonl"]


@pytest.mark.checkpoint
@pytest.mark.slow
def test_checkpoint_closed_standard_output_is_one_line_not_a_traceback(checkpoint, data, tmp_path):
    output = tmp_path / "o.jsonl"
    run(checkpoint, data, output, "--limit", "1")
    process = subprocess.Popen(
        [sys.executable, "run_gsm8k.py", *run_args(checkpoint, data, output, "--limit", "1")],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # as `| head` does once it has its lines
    err = process.stderr.read()
    assert process.wait(timeout=120) == 1
    assert err.strip() == (
        "run_gsm8k.py: standard output was closed early (a broken pipe); the results files are complete"
    )


@pytest.mark.checkpoint
def test_checkpoint_failed_start_removes_every_folder_it_made(checkpoint, data, tmp_path, capsys):
    one_line_error(capsys, command(tmp_path / "missing", data, tmp_path / "new" / "a" / "b" / "r.jsonl")[2:])
    assert files(tmp_path) == ["gsm8k.jsonl"]


@pytest.mark.checkpoint
def test_checkpoint_a_smaller_limit_prints_its_questions_but_keeps_the_whole_summary(
    checkpoint, data, tmp_path, capsys
):
    output = tmp_path / "r.jsonl"
    whole = run(checkpoint, data, output)
    saved = output.with_suffix(".summary.json").read_text()
    capsys.readouterr()
    part = run(checkpoint, data, output, "--limit", "2")
    out = capsys.readouterr().out
    assert part.questions == 2 and whole.questions == 4
    assert output.with_suffix(".summary.json").read_text() == saved
    assert "(the 2 questions asked for; the summary file and the figure cover all 4 finished questions)" in out


@pytest.mark.checkpoint
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--samples-per-block", "3"], "--samples-per-block 3 at --temperature 0: temperature 0 is deterministic"),
        (
            ["--gen-length", "32"],
            "the default block lengths 1 2 4 8 16 (gen_length/32 x 1, 2, 4, 8, 16) with "
            "--gen-length 32 --steps 16: steps=16 must be a multiple of the number of blocks",
        ),
        (["--block-lengths", "4", "--steps", "2", "--gen-length", "16"], "--block-lengths 4 with --gen-length 16"),
        (["--block-lengths", "8", "16", "48"], "pass block lengths that divide --gen-length, or another --gen-length"),
    ],
)
def test_checkpoint_argument_mistakes_name_what_the_user_passed(checkpoint, data, tmp_path, capsys, extra, message):
    err = one_line_error(capsys, ["--model", checkpoint, "--data", data, "--output", tmp_path / "o.jsonl", *extra])
    assert message in err
    assert files(tmp_path) == ["gsm8k.jsonl"]


@pytest.mark.checkpoint
def test_checkpoint_paths_of_the_wrong_kind_are_named(checkpoint, data, tmp_path, capsys):
    out = ["--output", tmp_path / "o.jsonl"]
    err = one_line_error(capsys, ["--model", checkpoint, "--data", tmp_path, *out])
    assert f"--data {tmp_path}: is a folder; pass the task's JSONL or parquet file" in err
    err = one_line_error(capsys, ["--model", data, "--data", data, *out])
    assert f"--model {data}: is a file; pass the checkpoint's folder" in err
    array = tmp_path / "rows.json"
    array.write_text(json.dumps(ROWS["gsm8k"], indent=1))
    err = one_line_error(capsys, ["--model", checkpoint, "--data", array, *out])
    assert "--data " + str(array) + ": not a JSONL file (one JSON object per line)" in err
    err = one_line_error(capsys, ["--model", "results/offline-demo/tiny-llada", "--data", data, *out])
    assert "--model results/offline-demo/tiny-llada: no such folder (a hub id is owner/name)" in err
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, ["--model", tmp_path / "empty", "--data", data, *out])
    assert "the folder has no config.json and no tokenizer_config.json, so it holds no checkpoint" in err
    assert files(tmp_path) == ["empty", "gsm8k.jsonl", "rows.json"]


def another_value(value):
    """A value of the same kind as `value` that differs from it."""
    if value is None or isinstance(value, (int, float)):
        return (value or 0) + 1
    if isinstance(value, dict):  # the data: another content
        return dict(source="other.jsonl", fingerprint="0" * 8, rows=value.get("rows", 4))
    return value + type(value)(["x"] if isinstance(value, list) else "x")


def test_every_setting_is_declared_and_a_rerun_with_a_compared_one_changed_is_refused():
    stored = R.Settings(methods=["hex", "sc"], data=dict(source="d.jsonl", fingerprint="1" * 8, rows=4))
    for f in dataclasses.fields(R.Settings):
        conflict = R.settings_conflict(
            stored, dataclasses.replace(stored, **{f.name: another_value(getattr(stored, f.name))})
        )
        if R.declared(f).compared:
            assert len(conflict) == 1 and conflict[0].startswith(f"{f.name}: "), f.name
        else:
            assert conflict == [], f.name
    assert {"methods", "batch_size", "environments"} == set(R.declared_as(compared=False))


def test_early_stop_is_refused_with_lm_eval_whose_filters_read_the_answers(capsys):
    err = one_line_error(capsys, ["--lm-eval", "gsm8k", "--early-stop"])
    assert "--early-stop reads each candidate's answer by the task's rules" in err


def test_the_threshold_reaches_every_hex_expert_and_no_other_candidate():
    plan = R.candidate_plan(R.Settings(methods=["hex", "sc", "random"], threshold=0.9))
    assert {p.schedule.threshold for p in plan if p.method == "hex"} == {0.9}
    assert {p.schedule.threshold for p in plan if p.method != "hex"} == {None}


def test_a_new_setting_is_one_declaration():
    fields = [("beam", int, R.setting(4, method="hex"))]
    Extended = dataclasses.make_dataclass("Extended", fields, bases=(R.Settings,), frozen=True)
    data = dict(source="d.jsonl", fingerprint="1" * 8, rows=4)
    run = functools.partial(Extended, data=data)
    assert R.settings_conflict(run(beam=4), run(beam=5)) == ["beam: 4 there, 5 now"]
    assert R.settings_conflict(run(beam=4, methods=["sc"]), run(beam=5, methods=["hex"])) == []
    assert R.grown(run(methods=["sc"]), run(beam=5, methods=["hex"])).beam == 5, "grown with its method"


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        R.parse_args(["--help"])
    text = "".join(capsys.readouterr().out.split())  # without spaces: argparse wraps at the terminal's width
    for shown in ("(default:gsm8k)", "(default:GSAI-ML/LLaDA-8B-Instruct)", "(default:256)", "(default:0)"):
        assert shown in text
    assert "default:gen_length/2" in text and "(default:results/TASK-MODEL" in text
    assert "(default:None)" not in text and "(default:False)" not in text


def test_one_question_and_one_vote_are_singular():
    record = hand_record({("hex", 4, 0): 1.0}, 1.0)
    settings = R.Settings(methods=["hex"], block_lengths=[4], gen_length=16, steps=8)
    text = R.summary_table(R.summarize([record], settings, "authors"))
    assert "GSM8K, 1 question; " in text and "(1 vote)" in text


# The Dream family: a tiny Dream-format checkpoint on disk ------------------------------------------

TINY_DREAM_MODELING = '''
"""A tiny model written to Dream's conventions, its quirks included (Dream-v0-Instruct-7B's own
file behaves the same way): logits at position i predict token i + 1 (Dream is adapted from an
autoregressive model); forward takes a 4-D attention mask, passed to attention as given, and
position ids; the rotary embedding fills a non-persistent inv_freq buffer in __init__ from
ROPE_INIT_FUNCTIONS["default"] (gone in transformers 5: KeyError); from_pretrained is overridden
and returns the model alone (losing output_loading_info)."""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS


class TinyDreamConfig(PretrainedConfig):
    model_type = "Dream"

    def __init__(self, vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 rope_theta=10000.0, mask_token_id=None, pad_token_id=None, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.num_attention_heads, self.rope_theta = num_attention_heads, rope_theta
        self.mask_token_id = mask_token_id
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=False, **kwargs)


class Rotary(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config, self.rope_init_fn = config, ROPE_INIT_FUNCTIONS["default"]
        inv_freq, self.attention_scaling = self.rope_init_fn(config, None)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids):  # (B, T) -> cos, sin (B, 1, T, head_dim)
        angles = position_ids[..., None].float() * self.inv_freq
        angles = torch.cat([angles, angles], dim=-1)[:, None]
        return angles.cos() * self.attention_scaling, angles.sin() * self.attention_scaling


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, self.heads = config.hidden_size, config.num_attention_heads
        self.input_norm, self.post_norm = nn.RMSNorm(d), nn.RMSNorm(d)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=True) for _ in range(3))
        self.o_proj = nn.Linear(d, d, bias=False)
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, h, cos, sin, attention_mask):
        B, T, D = h.shape
        x = self.input_norm(h)
        q, k, v = (p(x).view(B, T, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        rotate = lambda z: torch.cat([-z[..., z.shape[-1] // 2:], z[..., :z.shape[-1] // 2]], -1)
        q, k = q * cos + rotate(q) * sin, k * cos + rotate(k) * sin
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, is_causal=False)  # as given
        h = h + self.o_proj(att.transpose(1, 2).reshape(B, T, D))
        return h + self.down(F.silu(self.up(self.post_norm(h))))


class TinyDreamModel(PreTrainedModel):
    config_class = TinyDreamConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.norm, self.rotary_emb = nn.RMSNorm(config.hidden_size), Rotary(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        model.generation_config = GenerationConfig(mask_token_id=model.config.mask_token_id)  # as Dream does
        return model

    def get_input_embeddings(self):
        return self.embed_tokens

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        cos, sin = self.rotary_emb(position_ids)
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h, cos, sin, attention_mask)
        return MaskedLMOutput(logits=self.lm_head(self.norm(h)))
'''


def tiny_dream_class():
    """The tiny Dream-format model class, built in-process, with a correct rotary buffer: the reference."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    namespace = {}
    exec(compile(TINY_DREAM_MODELING, "tiny_dream_reference", "exec"), namespace)
    namespace["ROPE_INIT_FUNCTIONS"] = {**ROPE_INIT_FUNCTIONS, "default": R._default_rope}
    return namespace["TinyDreamModel"], namespace["TinyDreamConfig"]


def write_dream_checkpoint(d: Path) -> Path:
    """Tokenizer with Dream's special tokens and a Qwen-style chat template, config with auto_map, weights."""
    from safetensors.torch import save_file

    tokenizer = word_level_tokenizer(
        ["[UNK]", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"],
        "system user assistant You are a helpful",
        chat_template=(
            "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a "
            "helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        ),
    )
    tokenizer.save_pretrained(d)
    (d / "modeling_tiny_dream.py").write_text(TINY_DREAM_MODELING)
    config = dict(
        model_type="Dream",
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        rope_theta=10000.0,
        mask_token_id=tokenizer.convert_tokens_to_ids("<|mask|>"),
        pad_token_id=tokenizer.pad_token_id,
        auto_map={
            "AutoConfig": "modeling_tiny_dream.TinyDreamConfig",
            "AutoModel": "modeling_tiny_dream.TinyDreamModel",
        },
    )
    (d / "config.json").write_text(json.dumps(config))
    model_class, config_class = tiny_dream_class()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fields = {k: v for k, v in config.items() if k not in ("model_type", "auto_map")}
        reference = model_class(config_class(**fields))
    save_file(reference.state_dict(), d / "model.safetensors")
    return d


@pytest.fixture(scope="module")
def dream_checkpoint(tmp_path_factory):
    return write_dream_checkpoint(tmp_path_factory.mktemp("tiny-dream"))


def dream_reference(checkpoint, dtype=torch.float32):
    """The tiny Dream-format model built in-process from the checkpoint's weights (a correct rotary buffer)."""
    from safetensors.torch import load_file

    model_class, config_class = tiny_dream_class()
    config = json.loads((checkpoint / "config.json").read_text())
    model = model_class(config_class(**{k: v for k, v in config.items() if k not in ("model_type", "auto_map")}))
    model.load_state_dict(load_file(checkpoint / "model.safetensors"))
    return model.to(dtype).eval()


class ShiftedByHand(nn.Module):
    """Dream's logits shifted back one place, written out in the test: position i keeps i - 1's."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, attention_mask=None):
        logits = self.model(x).logits
        return H.MaskPredictorOutput(torch.cat([logits[:, :1], logits[:, :-1]], dim=1))


@pytest.mark.checkpoint
def test_checkpoint_dream_loads_with_its_own_code_and_gives_the_right_logits(dream_checkpoint):
    tokenizer, config = R.load_tokenizer(str(dream_checkpoint))
    assert R.model_family(config, "x").name == "Dream"
    model = R.load_model(str(dream_checkpoint), config, torch.device("cpu"), torch.float32)
    x = torch.randint(0, len(tokenizer), (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = dream_reference(dream_checkpoint)(x).logits
        assert torch.allclose(model.model(x).logits, expected, atol=1e-6), "the raw logits, rotary buffer included"
        assert torch.equal(model(x).logits, ShiftedByHand(model.model)(x).logits)
    assert R.find_mask_id(tokenizer, config) == tokenizer.convert_tokens_to_ids("<|mask|>") == config.mask_token_id
    ends = R.end_of_text_ids(tokenizer)
    assert ends == sorted(tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"]))


@pytest.mark.checkpoint
def test_checkpoint_dream_quirks_need_the_fixes(tmp_path):
    """What fails without the fitting: the from_pretrained override loses the loading info (4.x and
    5.x); on 5.x the rotary init raises KeyError 'default', and once that is answered, the buffer
    that 5.x leaves unset gives wrong logits without an error."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    dream_checkpoint = write_dream_checkpoint(tmp_path / "unfitted-dream")  # its own, not yet fitted module
    config = AutoConfig.from_pretrained(dream_checkpoint, trust_remote_code=True)
    raw_class = get_class_from_dynamic_module(config.auto_map["AutoModel"], str(dream_checkpoint))
    if R._transformers_version() >= (5, 0):
        with pytest.raises(KeyError, match="default"):
            raw_class.from_pretrained(dream_checkpoint, config=config)
    fitted = R.fit_dream_code(raw_class, config)
    out = fitted.from_pretrained(dream_checkpoint, config=config, output_loading_info=True)
    assert isinstance(out, tuple) and not out[1]["missing_keys"]
    with pytest.raises(AttributeError):  # the override's own from_pretrained cannot hand back the info
        raw_class.from_pretrained(dream_checkpoint, config=config, output_loading_info=True)
    x = torch.randint(0, config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(1))
    right_inv_freq = R._default_rope(config)[0]
    with torch.no_grad():
        expected = dream_reference(dream_checkpoint)(x).logits
        unfilled, unfilled_inv_freq = out[0].eval()(x).logits, out[0].rotary_emb.inv_freq.clone()
        assert torch.allclose(R.refill_rotary(out[0])(x).logits, expected, atol=1e-6)
    assert torch.equal(out[0].rotary_emb.inv_freq, right_inv_freq)
    if R._transformers_version() >= (5, 0):  # loaded without an error, yet wrong
        assert not torch.equal(unfilled_inv_freq, right_inv_freq), "5.x leaves the rotary buffer unset"
        assert not torch.allclose(unfilled, expected, atol=1e-6)


@pytest.mark.checkpoint
@pytest.mark.parametrize("remasking", ["low_confidence", "topk_margin"])
@pytest.mark.parametrize("block_length,steps", [(4, 12), (8, 9), (24, 6)])
def test_checkpoint_dream_generate_matches_the_authors_sampler_on_shifted_logits(
    dream_checkpoint, remasking, block_length, steps
):
    tokenizer, config = R.load_tokenizer(str(dream_checkpoint))
    model = R.load_model(str(dream_checkpoint), config, torch.device("cpu"), torch.float64)
    mask_id = R.find_mask_id(tokenizer, config)
    prompt = torch.randint(0, mask_id, (2, 5), generator=torch.Generator().manual_seed(2))
    ours = H.generate(
        model, prompt, gen_length=24, steps=steps, block_length=block_length, remasking=remasking, mask_id=mask_id
    )
    theirs = reference_generate(
        ShiftedByHand(dream_reference(dream_checkpoint, torch.float64)),
        prompt,
        24,
        steps,
        block_length,
        remasking,
        mask_id=mask_id,
    )
    assert torch.equal(ours, theirs)


@pytest.mark.checkpoint
def test_checkpoint_dream_padded_batch_equals_each_prompt_alone(dream_checkpoint):
    tokenizer, config = R.load_tokenizer(str(dream_checkpoint))
    model = R.load_model(str(dream_checkpoint), config, torch.device("cpu"), torch.float64)
    mask_id = R.find_mask_id(tokenizer, config)
    short, long = ([5, 9, 12], [7, 8, 9, 10, 11, 13])
    ids, attention = R.left_pad([short, long], "cpu")
    kw = dict(block_lengths=(4, 16), gen_length=16, steps=8, mask_id=mask_id)
    batch = H.hex_generate(model, ids, attention, **kw).sequences
    for row, prompt in enumerate((short, long)):
        alone = H.hex_generate(model, torch.tensor([prompt]), **kw).sequences[0]
        assert torch.equal(batch[row, :, len(long) - len(prompt) :], alone)


@pytest.mark.checkpoint
@pytest.mark.parametrize("task", list(R.TASKS))
def test_checkpoint_dream_each_task_end_to_end(dream_checkpoint, tmp_path, task, capsys):
    data = write_rows(tmp_path / f"{task}.jsonl", ROWS[task])
    output = tmp_path / "dream.jsonl"
    summary = run(dream_checkpoint, data, output, "--task", task)
    settings = json.loads(output.with_suffix(".config.json").read_text())
    tokenizer, config = R.load_tokenizer(str(dream_checkpoint))
    found = settings["environments"][-1]
    assert found["mask_id"] == config.mask_token_id and found["end_of_text_ids"] == R.end_of_text_ids(tokenizer)
    records = lines(output)
    assert len(records) == 2 and all(r["forward_calls"] == 8 / 2 for r in records)
    prompt = tokenizer.convert_ids_to_tokens(R.TASKS[task].build_prompt(tokenizer, ROWS[task][0]))  # Qwen's chat turns
    assert prompt[:2] == ["<|im_start|>", "system"] and prompt[-3:] == ["<|im_start|>", "assistant", "<reasoning>"]
    assert prompt.count("<|im_end|>") == 2 and "[UNK]" not in prompt[:6]
    assert summary.questions == 2 and output.with_suffix(".png").is_file()
    again = run(dream_checkpoint, data, output, "--task", task)  # finished: resumes to the summary alone
    assert again == summary


@pytest.mark.checkpoint
def test_checkpoint_unknown_family_is_one_clear_line(checkpoint, data, tmp_path, capsys):
    import shutil

    other = tmp_path / "bert-like"
    shutil.copytree(checkpoint, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    err = one_line_error(capsys, ["--model", other, "--data", data, "--output", tmp_path / "o.jsonl"])
    assert "model_type 'bert' is not a supported masked diffusion family; supported: LLaDA ('llada'" in err
    assert "Dream ('dream'" in err and files(tmp_path) == ["bert-like", "gsm8k.jsonl"]


def test_bad_rows_of_other_tasks_are_named(tmp_path):
    bad = write_rows(tmp_path / "arc.jsonl", [{**ROWS["arc-c"][0], "answerKey": "E"}])
    with pytest.raises(R.UsageError, match="row 1: answerKey 'E' is not one of the labels"):
        R.load_rows(R.TASKS["arc-c"], str(bad))
    bad = write_rows(tmp_path / "tqa.jsonl", [{**ROWS["truthfulqa"][0], "label": 4}])
    with pytest.raises(R.UsageError, match="row 1: needs 'question', 'choices'"):
        R.load_rows(R.TASKS["truthfulqa"], str(bad))


@pytest.mark.checkpoint
def test_checkpoint_no_resume_deletes_only_after_checks_pass(checkpoint, data, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    run(checkpoint, data, output, "--limit", "2", "--methods", "random")
    before = output.read_text()
    with pytest.raises(SystemExit):
        run(checkpoint, data, output, "--methods", "random", "--no-resume", "--mask-id", "100000")
    assert output.read_text() == before
    run(checkpoint, data, output, "--limit", "1", "--methods", "hex", "--no-resume")
    assert [r["id"] for r in lines(output)] == [0] and {c["method"] for c in lines(output)[0]["candidates"]} == {"hex"}


@pytest.mark.checkpoint
def test_checkpoint_unrelated_files_beside_the_results_are_never_merged(checkpoint, data, tmp_path):
    output = tmp_path / "o.jsonl"
    (tmp_path / "o.partial.jsonl").write_text('{"id": 99}\n')
    (tmp_path / "o.part1.jsonl.bak").write_text('{"id": 98}\n')
    run(checkpoint, data, output, "--limit", "1", "--methods", "random")
    assert [r["id"] for r in lines(output)] == [0]
    assert (tmp_path / "o.partial.jsonl").exists() and (tmp_path / "o.part1.jsonl.bak").exists()


@pytest.mark.checkpoint
def test_checkpoint_one_sample_per_block_votes_over_experts_drawn_at_random(checkpoint, data, tmp_path, capsys):
    summary = run(checkpoint, data, tmp_path / "o.jsonl", "--samples-per-block", "1", "--methods", "hex", "random")
    curve = summary.votes["hex"]
    assert [v.votes for v in curve] == [1, 2, 3] and "sc" not in summary.votes
    experts = [v.accuracy for v in summary.block_lengths.values()]
    assert curve[0].accuracy == pytest.approx(sum(experts) / 3), "one expert drawn at random"
    assert curve[2].accuracy == summary.methods["hex"].accuracy, "all three: HEX itself"
    assert curve[2].pass_at_k == summary.methods["hex"].oracle
    assert "HEX, a vote over k random candidates" in capsys.readouterr().out


def start_long_run(checkpoint, tmp_path, sleep=0.02):
    """A 30-question run in a subprocess, each forward call of the tiny model slowed by `sleep` seconds."""
    data = write_rows(tmp_path / "d.jsonl", ROWS["gsm8k"] * 15)
    output = tmp_path / "o.jsonl"
    cmd = command(checkpoint, data, output, "--methods", "hex", "low_confidence")
    env = {**os.environ, "PYTHONPATH": str(HERE), "TINY_SLEEP": str(sleep)}
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def ctrl_c_as_at_a_terminal():  # a shell that starts pytest in the background leaves SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    process = subprocess.Popen(cmd, cwd=HERE, env=env, preexec_fn=ctrl_c_as_at_a_terminal, **pipes)
    return process, cmd, output


def wait_until(condition, seconds=120):
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.02)


def saved(output):
    return output.read_text().count("\n") if output.exists() else 0


@pytest.mark.checkpoint
@pytest.mark.slow
def test_checkpoint_second_writer_is_refused_and_each_question_is_written_once(checkpoint, tmp_path):
    first, cmd, output = start_long_run(checkpoint, tmp_path)
    wait_until(lambda: saved(output) >= 1 or first.poll() is not None)
    second = subprocess.run(
        cmd, cwd=HERE, env={**os.environ, "PYTHONPATH": str(HERE)}, capture_output=True, text=True, timeout=120
    )
    assert first.poll() is None, "the first run ended before the second started"
    assert second.returncode == 1 and "being written by another run" in second.stderr
    assert "Traceback" not in second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert sorted(r["id"] for r in lines(output)) == list(range(30))
    assert not (tmp_path / "o.jsonl.lock").exists()


@pytest.mark.checkpoint
@pytest.mark.slow
def test_checkpoint_kill_9_then_rerun_loses_at_most_the_question_in_flight(checkpoint, tmp_path):
    victim, cmd, output = start_long_run(checkpoint, tmp_path)
    wait_until(lambda: saved(output) >= 3)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert 3 <= saved(output) < 30
    finished = saved(output)
    result = subprocess.run(
        cmd, cwd=HERE, env={**os.environ, "PYTHONPATH": str(HERE)}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(r["id"] for r in lines(output)) == list(range(30))
    assert f"{finished}/30" in result.stderr  # the progress bar starts at the questions already done


@pytest.mark.checkpoint
def test_checkpoint_records_from_before_batches_were_noted_grow_one_by_one(checkpoint, data, tmp_path, monkeypatch):
    output = tmp_path / "old.jsonl"
    run(checkpoint, data, output, "--methods", "hex")
    output.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "batch"}) + "\n" for r in lines(output)))
    rows = counting_decodes(monkeypatch)
    run(checkpoint, data, output, "--methods", "hex", "random")
    assert [batch for batch, _, _ in rows] == [1] * 4, "each question alone: its first batch is not known"
    assert all(R.methods_of(r) == {"hex", "random"} for r in lines(output))


@pytest.mark.checkpoint
@pytest.mark.slow
def test_checkpoint_kill_9_while_growing_then_rerun_loses_nothing(checkpoint, tmp_path):
    first, cmd, output = start_long_run(checkpoint, tmp_path)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    hex_before = {r["id"]: [c for c in r["candidates"] if c["method"] == "hex"] for r in lines(output)}
    grow = [*cmd[:-3], "--methods", "hex", "low_confidence", "sc", "--sc-block-length", "4"]
    env = {**os.environ, "PYTHONPATH": str(HERE), "TINY_SLEEP": "0.02"}
    victim = subprocess.Popen(grow, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: saved(output) >= 33)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    grown_before_the_kill = saved(output) - 30
    assert 3 <= grown_before_the_kill < 30
    # the first command again: the run has grown by SC, so it finishes the growth
    result = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = lines(output)
    assert sorted(r["id"] for r in records) == list(range(30)) and all("sc" in R.methods_of(r) for r in records)
    assert {r["id"]: [c for c in r["candidates"] if c["method"] == "hex"] for r in records} == hex_before
    assert f"{grown_before_the_kill}/30" in result.stderr, "the grown questions are not grown again"


@pytest.mark.checkpoint
@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_checkpoint_ctrl_c_says_how_many_are_saved(checkpoint, tmp_path, stop):
    process, cmd, output = start_long_run(checkpoint, tmp_path, sleep=0.1)  # 24 s at least: the stop is mid-run
    wait_until(lambda: saved(output) >= 2)
    process.send_signal(stop)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err
    count = len(lines(output))
    assert f"interrupted: {count} of 30 questions are saved in {output}; rerun the same command to resume" in err
    assert not (tmp_path / "o.jsonl.lock").exists(), "the lock goes with the run"
    if stop == signal.SIGTERM:  # and the same command resumes
        env = {**os.environ, "PYTHONPATH": str(HERE)}
        result = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert sorted(r["id"] for r in lines(output)) == list(range(30)) and f"{count}/30" in result.stderr


@pytest.mark.checkpoint
@pytest.mark.slow
def test_checkpoint_torchrun_two_ranks_match_one_process_and_resume(checkpoint, data, tmp_path):
    common = [
        "--model",
        str(checkpoint),
        "--data",
        str(data),
        "--gen-length",
        "16",
        "--steps",
        "8",
        "--block-lengths",
        "4",
        "16",
        "--methods",
        "hex",
        "random",
    ]
    R.main([*common, "--output", str(tmp_path / "one.jsonl")])
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "run_gsm8k.py",
        *common,
        "--output",
        str(tmp_path / "two.jsonl"),
    ]
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    result = subprocess.run(
        [*torchrun, "--limit", "3"], capture_output=True, text=True, timeout=300, cwd=HERE, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    result = subprocess.run(torchrun, capture_output=True, text=True, timeout=300, cwd=HERE, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert files(tmp_path) == sorted(
        ["gsm8k.jsonl"]
        + [  # no parts or locks left
            f"{n}.{ext}" for n in ("one", "two") for ext in ("jsonl", "config.json", "summary.json", "png")
        ]
    )

    def drop(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert drop(lines(tmp_path / "two.jsonl")) == drop(lines(tmp_path / "one.jsonl"))
    failed = subprocess.run(
        [*torchrun, "--steps", "6"], capture_output=True, text=True, timeout=300, cwd=HERE, env=env
    )
    assert failed.returncode != 0 and failed.stderr.count("run_gsm8k.py: error:") == 1, "one line, not one per rank"


# HEX against self-consistency, and a newcomer's follow-ups ------------------------------------------


def hand_record(answers: dict, gold: float, question: int = 0) -> dict:
    """A record made by hand: {(method, block_length, sample): answer}."""
    candidates = [
        dict(
            method=m,
            block_length=b,
            sample=s,
            text="",
            answers={"authors": a, "robust": a},
            score=0.0,
            end_of_text=".",
            commit_order=[0],
        )
        for (m, b, s), a in answers.items()
    ]
    return dict(
        id=question,
        question="",
        gold={"authors": gold, "robust": gold},
        candidates=candidates,
        forward_calls=1.0,
        seconds=0.0,
        batch_size=1,
    )


def judge(records):
    """Each hand-made candidate's verdict under the authors' GSM8K rule."""
    return [
        [R.TASKS["gsm8k"].is_correct(c["answers"]["authors"], r["gold"]["authors"]) for c in r["candidates"]]
        for r in records
    ]


def test_votes_curve_averages_every_subset_and_pass_at_k_by_hand():
    # four HEX candidates: 1, 1, 2, None; gold 2. k = 2 subsets in order: (1,1) (1,2) (1,None) (1,2) (1,None)
    # (2,None): votes 1, 1 tie, 1, 1 tie, 1, 2 -> right in 1 of 6; ties in 2 of 6
    record = hand_record({("hex", 4, 0): 1.0, ("hex", 8, 0): 1.0, ("hex", 16, 0): 2.0, ("hex", 32, 0): None}, 2.0)
    curve = R.votes_curve([record], judge([record]), "hex", "authors", "first")
    assert [v.votes for v in curve] == [1, 2, 3, 4]
    assert curve[0].accuracy == 1 / 4 and curve[1].accuracy == 1 / 6 and curve[1].tie_rate == 2 / 6
    assert [v.pass_at_k for v in curve] == pytest.approx([1 / 4, 1 / 2, 3 / 4, 1.0])  # 1 - C(3, k) / C(4, k)
    assert curve[3].accuracy == 0.0, "all four: 1 wins"


def test_votes_curve_draws_random_subsets_with_a_fixed_seed():
    answers = {("sc", 32, s): float(s % 3) for s in range(12)}  # C(12, 6) = 924 subsets: 50 are drawn
    records = [hand_record(answers, 0.0, question=q) for q in range(3)]
    curve = R.votes_curve(records, judge(records), "sc", "authors", "first")
    assert curve == R.votes_curve(records, judge(records), "sc", "authors", "first"), "fixed seed"
    assert 0.0 < curve[5].accuracy < 1.0 and curve[11].accuracy == 1.0  # all 12: 0, 1, 2 tie, 0 first
    assert curve[0].pass_at_k == pytest.approx(4 / 12)


def test_an_expert_interval_counts_questions_not_samples():
    # six questions, two samples of block 4 each, right in 4 of 12 (two questions both right, none split)
    records = [
        hand_record({("hex", 4, 0): float(q < 2), ("hex", 4, 1): float(q < 2)}, 1.0, question=q) for q in range(6)
    ]
    settings = R.Settings(methods=["hex"], block_lengths=[4], samples_per_block=2)
    expert = R.summarize(records, settings, "authors").block_lengths[4]
    assert expert.accuracy == 2 / 6
    assert expert.ci95 == R.wilson(2, 6), "six questions, not twelve candidates"
    assert expert.ci95 != R.wilson(4, 12)


def test_hex_against_an_expert_chosen_on_other_questions():
    # block 4 is right on the even questions and on question 1, block 8 on the odd ones: chosen on the same
    # questions block 4 would look best; chosen on the other half, each half gets the expert that fails it.
    right4 = [True, True, True, False, True, False, True, False]
    records = [
        hand_record({("hex", 4, 0): 1.0 if right4[q] else 0.0, ("hex", 8, 0): 1.0 if q % 2 else 0.0}, 1.0, q)
        for q in range(8)
    ]
    settings = R.Settings(methods=["hex"], block_lengths=[4, 8])
    paired = R.summarize(records, settings, "authors").paired
    assert list(paired) == [
        "HEX - block 4",
        "HEX - block 8",
        "HEX - best block chosen on the other half",
    ]
    assert paired["HEX - block 4"].difference == 0.0, "two voters: a split goes to block 4, so HEX is block 4"
    assert paired["HEX - best block chosen on the other half"].difference == (5 - 1) / 8
    assert paired["HEX - best block chosen on the other half"].chosen == [8, 4]


def test_every_paired_difference_by_hand():
    # four questions, gold 1; each expert's answer, SC's two samples: (hex 4, hex 8, hex 16, sc, sc)
    answers = [(1, 1, 2, 1, 1), (1, 2, 2, 2, 2), (2, 2, 1, 1, 1), (2, 1, 1, 2, 1)]
    records = [
        hand_record(
            {("hex", 4, 0): a[0], ("hex", 8, 0): a[1], ("hex", 16, 0): a[2], ("sc", 32, 0): a[3], ("sc", 32, 1): a[4]},
            gold=1.0,
            question=q,
        )
        for q, a in enumerate(answers)
    ]
    settings = R.Settings(methods=["hex", "sc"], block_lengths=[4, 8, 16], sc_samples=2)
    paired = R.summarize(records, settings, "authors").paired
    # HEX's votes (ties to the smaller block): 1, 2, 2, 1 -> right on questions 0 and 3
    # SC's (ties to the first sample): 1, 2, 1, 2 -> right on 0 and 2; block 4: 0, 1; block 8: 0, 3; block 16: 2, 3
    by_hand = {
        "HEX - SC": (1, 1),  # (only HEX right, only the other right)
        "HEX - block 4": (1, 1),
        "HEX - block 8": (0, 0),
        "HEX - block 16": (1, 1),
    }
    for name, (only_hex, only_other) in by_hand.items():
        assert (paired[name].only_first, paired[name].only_second) == (only_hex, only_other), name
        assert paired[name].difference == (only_hex - only_other) / 4, name
    # cross-fitted: the even questions get the block most often right on the odd ones (1, 3: every block once, the
    # tie to block 4), the odd the even's (0, 2: again once each -> block 4); block 4 is right on 0 and 1
    cross = paired["HEX - best block chosen on the other half"]
    assert cross.chosen == [4, 4] and (cross.only_first, cross.only_second) == (1, 1)


def test_a_summary_file_of_the_earlier_format_reads_back():
    records = [
        hand_record({("hex", 4, 0): 1.0, ("hex", 8, 0): float(q), ("sc", 32, 0): 1.0}, 1.0, q) for q in range(4)
    ]
    summary = R.summarize(records, R.Settings(methods=["hex", "sc"], block_lengths=[4, 8], sc_samples=1), "authors")
    earlier = json.loads(json.dumps(dataclasses.asdict(summary)))  # as the file holds it, then as main wrote it:
    for row in earlier["block_lengths"].values():  # an expert's row had no method fields
        del row["paper_name"], row["correct"], row["tie_rate"]
    for paired in earlier["paired"].values():  # only the cross-fitted comparison said what it chose
        if paired["chosen"] is None:
            del paired["chosen"]
    read = R.Summary.from_file(earlier)
    assert read.block_lengths[8].accuracy == 1 / 4 and read.paired["HEX - SC"].chosen is None
    assert R.summary_table(read) == R.summary_table(summary)


def test_a_question_holding_an_expert_twice_is_refused_not_paired_with_other_questions():
    records = [hand_record({("hex", 8, 0): 1.0, ("hex", 16, 0): 1.0}, 1.0, q) for q in range(4)]
    for record in records:  # what --block-lengths 8 8 16 made before it was refused: block 8 twice a question
        record["candidates"].insert(1, dict(record["candidates"][0], answers={"authors": 2.0, "robust": 2.0}))
    settings = R.Settings(methods=["hex"], block_lengths=[8, 8, 16])
    with pytest.raises(R.UsageError, match="question 0 holds a HEX block length twice"):
        R.summarize(records, settings, "authors")
    with pytest.raises(ValueError, match="the same n >= 1 questions, got 4 and 8"):
        H.paired_difference([True] * 4, [True] * 8)


def sc_settings(checkpoint, *extra):
    return R.run_settings(
        R.parse_args(
            [
                "--model",
                str(checkpoint),
                "--gen-length",
                "16",
                "--steps",
                "8",
                "--block-lengths",
                "4",
                "16",
                "--temperature",
                "0.7",
                "--sc-block-length",
                "16",
                *extra,
            ]
        ),
        {},
        torch.device("cpu"),
    )


@pytest.mark.checkpoint
def test_checkpoint_sc_has_its_own_stream_and_changes_no_other_method(checkpoint, loaded):
    tokenizer, _, model, mask_id = loaded
    batch = [{"id": 1, "row": ROWS["gsm8k"][0]}]

    def decode(settings):
        return R.decode_batch(model, tokenizer, R.TASKS["gsm8k"], batch, settings, mask_id, torch.device("cpu"))[0][
            "candidates"
        ]

    with_sc = sc_settings(checkpoint, "--methods", "hex", "sc", "random", "--samples-per-block", "2")
    assert (with_sc.sc_samples, with_sc.sc_temperature, with_sc.sc_block_length) == (4, 0.7, 16)
    first, again = decode(with_sc), decode(with_sc)
    without = decode(sc_settings(checkpoint, "--methods", "hex", "random", "--samples-per-block", "2"))
    assert first == again, "SC reproduces itself on a rerun"
    assert [c for c in first if c["method"] != "sc"] == without, "adding SC changes no other method's candidates"
    sc = [c["text"] for c in first if c["method"] == "sc"]
    assert len(sc) == 4 and len(set(sc)) > 1, "SC's samples differ"


@pytest.mark.checkpoint
def test_checkpoint_sc_never_votes_over_identical_samples(checkpoint, data, tmp_path, capsys):
    err = one_line_error(
        capsys,
        [
            "--model",
            checkpoint,
            "--data",
            data,
            "--output",
            tmp_path / "o.jsonl",
            "--methods",
            "hex",
            "sc",
            "--sc-temperature",
            "0",
        ],
    )
    assert "--sc-samples 5 at --sc-temperature 0: every sample would be the same decode" in err
    args = R.parse_args(["--methods", "hex", "sc"])  # the paper's HEX at temperature 0: SC samples at its own
    assert (args.sc_temperature, args.sc_samples, args.sc_block_length) == (R.SC_TEMPERATURE, 5, 32)
    assert R.parse_args(["--methods", "sc", "--temperature", "0.9"]).sc_temperature == 0.9
    assert files(tmp_path) == ["gsm8k.jsonl"]


@pytest.mark.checkpoint
def test_checkpoint_hex_against_sc_in_one_run(checkpoint, data, tmp_path, capsys):
    output = tmp_path / "sc.jsonl"
    summary = run(checkpoint, data, output, "--methods", "hex", "sc", "--sc-block-length", "8")
    records = lines(output)
    assert all(r["forward_calls"] == 8 / 2 for r in records), "SC joins the lockstep batch: steps calls per batch"
    assert sum(c["method"] == "sc" for c in records[0]["candidates"]) == 6, "as many SC samples as HEX votes"
    paired = summary.paired["HEX - SC"]

    def right(m):
        return [R.verdicts(R.TASKS["gsm8k"], r, "authors", "first").methods[m].right for r in records]

    assert dataclasses.asdict(paired) == dataclasses.asdict(R.paired_difference(right("hex"), right("sc"))) | {
        "chosen": None
    }
    assert [v.votes for v in summary.votes["sc"]] == list(range(1, 7))
    assert [v.votes for v in summary.votes["hex"]] == list(range(1, 7))
    assert summary.methods["sc"].oracle >= summary.methods["sc"].accuracy
    out = capsys.readouterr().out
    assert (
        "Self-consistency (sc)" in out
        and "HEX - SC: " in out
        and "SC block length 8, temperature 0.7, 6 samples" in out
    )
    assert "Self-consistency, a vote over k random candidates" in out
    assert "HEX - best block chosen on the other half" in out and "HEX - block 4: " in out
    saved = json.loads(output.with_suffix(".summary.json").read_text())
    assert saved == json.loads(
        json.dumps(dataclasses.asdict(R.summarize(records, R.Settings.from_file(saved["settings"]), "authors")))
    )


@pytest.mark.checkpoint
def test_checkpoint_follow_ups_of_a_finished_run(checkpoint, data, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    run(checkpoint, data, output, "--limit", "2")
    capsys.readouterr()
    subset = run(checkpoint, data, output, "--limit", "2", "--methods", "hex")  # a subset: what it has
    out = capsys.readouterr().out
    assert list(subset.methods) == ["hex"] and "all 2 questions asked for are done" in out
    assert "the summary file and the figure cover all 2 finished questions and every method" in out
    run(checkpoint, data, output, "--limit", "3", "--batch-size", "1")  # another batch size resumes
    assert "resuming" in capsys.readouterr().out and [r["batch_size"] for r in lines(output)] == [2, 2, 1]
    fewer = run(checkpoint, data, output, "--methods", "hex")  # a subset, questions still to decode: every method
    assert list(fewer.methods) == ["hex"] and "resuming" in capsys.readouterr().out
    assert all(R.methods_of(r) == {"hex", "topk_margin", "low_confidence", "random"} for r in lines(output))


def counting_decodes(monkeypatch):
    """Every candidate run_gsm8k decodes, as (method of its schedule's row, block length), in order."""
    rows = []
    real = R.decode

    def counted(model, input_ids, attention_mask=None, *, schedules, **kwargs):
        rows.extend((len(input_ids), s.block_length, s.temperature) for s in schedules)
        return real(model, input_ids, attention_mask, schedules=schedules, **kwargs)

    monkeypatch.setattr(R, "decode", counted)
    return rows


@pytest.mark.checkpoint
def test_checkpoint_a_run_grows_by_a_method_and_decodes_only_its_rows(checkpoint, data, tmp_path, capsys, monkeypatch):
    grown = tmp_path / "grown.jsonl"
    together = tmp_path / "together.jsonl"
    run(checkpoint, data, grown, "--methods", "hex", "--dtype", "float64")
    before = grown.read_text().splitlines()
    rows = counting_decodes(monkeypatch)
    summary = run(checkpoint, data, grown, "--methods", "hex", "sc", "--sc-block-length", "8", "--dtype", "float64")
    assert rows == [(2, 8, 0.7)] * 6 * 2, "two batches of two questions: SC's six samples, nothing of HEX"
    resuming = f"resuming {grown}: 4 of 4 questions held, 4 of them to grow by sc (only its candidates), 0 to decode"
    assert resuming in capsys.readouterr().out
    assert "HEX - SC" in summary.paired
    run(checkpoint, data, together, "--methods", "hex", "sc", "--sc-block-length", "8", "--dtype", "float64")
    rows.clear()

    def only(method, records):
        return [[json.dumps(c) for c in r["candidates"] if c["method"] == method] for r in records]

    assert only("hex", lines(grown)) == only("hex", [json.loads(line) for line in before]), "HEX byte-identical"
    assert only("sc", lines(grown)) == only("sc", lines(together)), "SC as if decoded with HEX"
    assert len(grown.read_text().splitlines()) == 4, "one line a question once the run has grown"
    again = run(checkpoint, data, grown, "--methods", "hex", "sc", "--sc-block-length", "8", "--dtype", "float64")
    assert rows == [] and "all 4 questions asked for are done" in capsys.readouterr().out
    assert again == summary
    run(checkpoint, data, grown, "--methods", "hex", "--dtype", "float64")
    out = capsys.readouterr().out
    assert "Self-consistency" not in out and "HEX - SC" not in out, "asked for HEX: nothing of SC"
    assert "SC block length" not in out, "nor its settings in the header"


@pytest.mark.checkpoint
def test_checkpoint_threshold_and_early_stop_resume_grow_and_are_compared(
    checkpoint, data, tmp_path, capsys, monkeypatch
):
    """Every candidate reads 7: two of HEX's three experts settle each vote, so the third is never decoded."""
    monkeypatch.setattr(R.Task, "answers", lambda self, text: dict.fromkeys(R.RULES, "7"))
    output = tmp_path / "out.jsonl"
    cheaper = ["--samples-per-block", "1", "--temperature", "0", "--threshold", "0.5", "--early-stop"]
    run(checkpoint, data, output, *cheaper, "--methods", "hex", "--limit", "2")
    first = [r["candidates"] for r in lines(output)]
    rows = counting_decodes(monkeypatch)  # the lockstep decodes; and the waves' own:
    waves, real = [], H.decode
    monkeypatch.setattr(
        H, "decode", lambda *a, schedules, **kw: waves.append(schedules) or real(*a, schedules=schedules, **kw)
    )
    summary = run(checkpoint, data, output, *cheaper, "--methods", "hex", "random")
    assert [r["candidates"][:3] for r in lines(output)][:2] == first, "HEX's candidates are kept, then grown"
    assert "read 2 stored candidates otherwise" not in capsys.readouterr().out, "a spared candidate reads nothing"
    assert [r["id"] for r in lines(output)] == [0, 1, 2, 3] and summary.questions == 4
    assert rows == [(2, 16, 0.0)] * 2, "the baseline grows questions 0 and 1 and comes with 2 and 3"
    assert [[s.block_length for s in wave] for wave in waves] == [[4, 8]], "two experts settle: block 16 never runs"
    for record in lines(output):
        passes = {c["block_length"]: c["forward_passes"] for c in record["candidates"] if c["method"] == "hex"}
        assert passes[16] == 0 and 0 < passes[4] and 0 < passes[8], "a threshold's steps vary; the spared take none"
        spared = next(c for c in record["candidates"] if c["block_length"] == 16)
        assert spared["answers"] == {"authors": None, "robust": None}
    hex_passes = [sum(c["forward_passes"] for c in r["candidates"] if c["method"] == "hex") for r in lines(output)]
    assert summary.methods["hex"].forward_passes == pytest.approx(sum(hex_passes) / 4)
    assert summary.methods["random"].forward_passes == 8 and summary.methods["hex"].accuracy == 0
    assert summary.block_lengths == {} and "hex" not in summary.votes and not summary.paired
    figure = R.write_figures(summary, lines(output), tmp_path / "figure.png")
    order = next(ax for ax in figure.axes if ax.get_title().startswith("Commit order"))
    labels = [label.get_text() for label in order.get_yticklabels()]
    assert labels == ["HEX block 4", "HEX block 8", "Random"], "a spared expert has no commit order to draw"
    again = run(checkpoint, data, output, *cheaper, "--methods", "hex", "random")
    out = capsys.readouterr().out
    assert again == summary and "all 4 questions asked for are done" in out
    assert "--early-stop: a question stopped once HEX's vote was settled" in out and "confidence threshold 0.5" in out
    for flags, name in ((cheaper[:4] + ["--threshold", "0.6", "--early-stop"], "threshold"), (cheaper[:6], "early")):
        with pytest.raises(SystemExit):
            run(checkpoint, data, output, *flags, "--methods", "hex", "random")
        error = capsys.readouterr().err
        assert name in error, error


@pytest.mark.checkpoint
def test_checkpoint_growth_stopped_midway_says_every_question_is_saved(
    checkpoint, data, tmp_path, capsys, monkeypatch
):
    output = tmp_path / "o.jsonl"
    run(checkpoint, data, output, "--methods", "hex")
    capsys.readouterr()
    real = R.decode_batch
    calls = []

    def stopped_after_one_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(R, "decode_batch", stopped_after_one_batch)
    with pytest.raises(SystemExit) as stop:
        run(checkpoint, data, output, "--methods", "hex", "sc", "--sc-block-length", "8")
    err = capsys.readouterr().err
    assert stop.value.code == 130
    assert f"4 of 4 questions are saved in {output} (2 of the 4 to grow by sc grown)" in err
    assert sum("sc" in R.methods_of(r) for r in R.RunFiles(output).records().values()) == 2


@pytest.mark.slow
def test_unreachable_hub_is_one_line_within_seconds(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    for extra in ([], ["--data", str(write_rows(tmp_path / "d.jsonl", ROWS["gsm8k"]))]):
        start = time.time()
        result = subprocess.run(
            [sys.executable, "run_gsm8k.py", "--output", str(tmp_path / "r" / "o.jsonl"), *extra],
            cwd=HERE,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert time.time() - start < 30 and "Retry" not in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.checkpoint
def test_checkpoint_offline_demo_reads_and_scores_answers_and_two_demos_never_share_a_folder(tmp_path, capsys):
    first, folder = offline_demo(tmp_path), offline_demo(tmp_path)
    assert first != folder and (first / "run.jsonl").is_file() and (folder / "run.jsonl").is_file()
    out = capsys.readouterr().out
    assert "not a result" in out and re.search(r"HEX \(hex\) +50\.00%", out)
    summary = json.loads((folder / "run.summary.json").read_text())
    assert summary["methods"]["hex"]["correct"] == 3 and (folder / "run.png").is_file()
    if importlib.util.find_spec("lm_eval"):
        assert (folder / "tasks" / "local_gsm8k.yaml").is_file() and "the same questions in lm-eval: python" in out


def offline_demo(parent: Path = HERE / "results") -> Path:
    """`python test_hex.py`: run_gsm8k.py end to end, offline, in about ten seconds: a tiny LLaDA-format checkpoint
    and six GSM8K-format questions written to a new folder offline-demo-* in `parent` (two demos at once never
    share a file), a run of every method (SC too), its summary and PNG, and those questions as an lm-eval task
    (tasks/local_gsm8k.yaml, where lm-eval is installed). The model is a labelled stand-in, not a result: it boxes
    the last digit of the question as its answer, so it is right on the three questions whose answer that is, and
    the summary shows answers read and scored. It prints the commands it runs or suggests, to rerun and vary (a
    --gen-length needs block lengths that divide it)."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="offline-demo-", dir=parent))
    checkpoint = write_checkpoint(folder / "tiny-llada-stand-in", stand_in=True)
    questions = [
        ("How many apples ? 7", 7),
        ("3 + 4 = ?", 7),
        ("How many apples ? 2 + 2 = 4", 4),
        ("the answer is 9", 9),
        ("How many ? 5 + 1", 6),
        ("2 + 1 = ?", 3),
    ]
    data = write_rows(folder / "gsm8k.jsonl", [{"question": q, "answer": f"#### {a}"} for q, a in questions])
    print(f"Offline demo in {folder}: a tiny stand-in model that boxes the question's last digit (not a result)")
    argv = [
        *("--model", str(checkpoint), "--data", str(data), "--output", str(folder / "run.jsonl"), "--no-resume"),
        *("--gen-length", "32", "--steps", "16", "--block-lengths", "4", "8", "16", "--sc-block-length", "8"),
        *("--methods", *R.METHODS, "--samples-per-block", "2", "--temperature", "0.7"),
    ]
    print(f"the command: {shlex.join(['python', 'run_gsm8k.py', *argv])}")
    R.main(argv)
    try:
        tasks = write_lm_task(folder / "tasks", "local_gsm8k", data)
        lm = ["--lm-eval", "local_gsm8k", "--include-path", tasks, "--model", checkpoint, "--limit", "2"]
        lm += [
            "--gen-length",
            "32",
            "--steps",
            "16",
            "--block-lengths",
            "4",
            "8",
            "16",
            "--output",
            folder / "lm-eval",
        ]
        print(f"the same questions in lm-eval: {shlex.join(['python', 'run_gsm8k.py', *map(str, lm)])}")
    except ImportError:
        pass
    return folder


# run_gsm8k.py --lm-eval: every method as an lm-evaluation-harness model -----------------------------------------

LM_BLOCKS = [2, 4, 8, 16]


def write_lm_task(folder: Path, name: str, rows: Path) -> Path:
    """An lm-eval task `name` in `folder`: the installed gsm8k_cot, zero-shot, on local GSM8K-format rows."""
    import lm_eval

    folder.mkdir(exist_ok=True)
    task = dict(
        include=str(Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k-cot.yaml"),
        task=name,
        tag=[],
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs=dict(data_files=dict(test=str(rows.resolve()))),
        test_split="test",
        num_fewshot=0,
    )
    (folder / f"{name}.yaml").write_text(json.dumps(task))  # JSON is YAML
    return folder


@pytest.fixture
def lm_tasks(tmp_path):
    """A folder with a local lm-eval task on four local rows."""
    pytest.importorskip("lm_eval")
    rows = write_rows(
        tmp_path / "rows.jsonl", [{"question": f"How many ? {i} + 4", "answer": f"#### {i + 4}"} for i in range(4)]
    )
    return write_lm_task(tmp_path / "tasks", "tiny_gsm8k", rows)


def lm_eval_args(checkpoint, lm_tasks, output, *extra):
    """Four questions of the local task, HEX's four block lengths sampled at 0.7 (distinct candidates), one a batch."""
    return [
        *("--lm-eval", "tiny_gsm8k", "--include-path", lm_tasks, "--model", checkpoint, "--output", output),
        *("--gen-length", "16", "--steps", "8", "--block-lengths", *map(str, LM_BLOCKS), "--temperature", "0.7"),
        *extra,
    ]


def spied_decodes(monkeypatch) -> list[dict]:
    """Every decode call run_gsm8k makes from now on: its block lengths, prompts and forward calls."""
    calls = []
    real = R.decode

    def spy(model, ids, attention, **kwargs):
        out = real(model, ids, attention, **kwargs)
        blocks = [s.block_length for s in kwargs["schedules"]]
        calls.append(dict(blocks=blocks, prompts=len(ids), forward_calls=out.forward_calls))
        return out

    monkeypatch.setattr(R, "decode", spy)
    return calls


def lm_samples(output: Path, task: str = "tiny_gsm8k_hex") -> dict[str, dict[int, dict]]:
    """lm-eval's logged samples by filter, then by document."""
    by_filter = {}
    for sample in lines(output / f"samples_{task}.jsonl"):
        by_filter.setdefault(sample["filter"], {})[sample["doc_id"]] = sample
    return by_filter


@pytest.mark.slow
@pytest.mark.checkpoint
def test_lm_eval_copies_of_a_request_are_one_questions_candidates_and_lm_evals_vote_is_hexs(
    checkpoint, lm_tasks, tmp_path, monkeypatch
):
    calls = spied_decodes(monkeypatch)
    output = tmp_path / "out"
    R.main([str(a) for a in lm_eval_args(checkpoint, lm_tasks, output, "--batch-size", "2")])
    assert calls == [dict(blocks=LM_BLOCKS, prompts=2, forward_calls=8)] * 2, "2 batches of 2 questions x 4 experts"
    samples = lm_samples(output)
    for name in ("strict-match", "flexible-extract"):
        assert set(samples) >= {name, *(f"{name}-block{b}" for b in LM_BLOCKS)}
    texts = [s["resps"][0] for s in samples["flexible-extract"].values()]
    assert all(len(t) == 4 for t in texts) and len({t for row in texts for t in row}) > 4, "distinct candidates"
    for doc, voted in samples["flexible-extract"].items():
        alone = [samples[f"flexible-extract-block{b}"][doc]["filtered_resps"][0] for b in LM_BLOCKS]  # logged as [x]
        vote = H.majority_vote([None if a == "[invalid]" else a for a in alone])[0]
        assert voted["filtered_resps"] == [vote or "[invalid]"]
    held = [json.loads(line)["texts"] for line in (output / "candidates.rank0.jsonl").read_text().splitlines()]
    assert sorted(held) == sorted(texts)
    results = json.loads((output / "results.json").read_text())["results"]["tiny_gsm8k_hex"]
    right = [voted["exact_match"] for voted in samples["flexible-extract"].values()]
    assert results["exact_match,flexible-extract"] == pytest.approx(sum(right) / 4)


CODE_UTILS = """
def build_predictions(resps, docs):  # humaneval's: the prompt and each candidate
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]


def passes(references, predictions):  # code_eval's stand-in: a candidate passes if it holds its reference
    return {"pass@1": sum(references[0] in p for p in predictions[0]) / len(predictions[0])}


def pass_at_1(references, predictions):  # mbpp's shape: one text or a list of them, a float
    candidates = [predictions[0]] if isinstance(predictions[0], str) else predictions[0]
    return sum(references[0] in p for p in candidates) / len(candidates)
"""


CODE_TASK = r"""
task: tiny_code
unsafe_code: true
dataset_path: json
dataset_kwargs:
  data_files:
    test: ROWS
test_split: test
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
output_type: generate_until
generation_kwargs:
  until: ["\nclass"]
  max_gen_toks: 16
metric_list:
  - metric: !function utils.passes
    aggregation: mean
    higher_is_better: true
filter_list:
  - name: create_test
    filter:
      - function: custom
        filter_fn: !function utils.build_predictions
"""


@pytest.fixture
def lm_code_task(tmp_path):
    """A local code task shaped as humaneval (a custom filter hands the scorer every candidate, pass@1), with a
    stand-in for code_eval, which needs the hub: a candidate passes if it holds a "."."""
    pytest.importorskip("lm_eval")
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "utils.py").write_text(CODE_UTILS)
    rows = write_rows(tmp_path / "code.jsonl", [{"prompt": f"def f{i}():", "answer": "."} for i in range(4)])
    task = CODE_TASK.replace("ROWS", str(rows))
    (folder / "tiny_code.yaml").write_text(task)
    mbpp = task.replace("tiny_code", "tiny_mbpp").replace("utils.passes", "utils.pass_at_1")
    (folder / "tiny_mbpp.yaml").write_text(mbpp[: mbpp.index("filter_list:")])  # no filters: take_first
    return folder


@pytest.mark.parametrize("task", ["tiny_code", "tiny_mbpp"])
@pytest.mark.slow
@pytest.mark.checkpoint
def test_lm_eval_code_tasks_are_refused_in_one_line_before_loading(
    checkpoint, lm_code_task, tmp_path, capsys, monkeypatch, task
):
    output = tmp_path / "out"
    args = lm_eval_args(checkpoint, lm_code_task, output)
    err = one_line_error(capsys, args[:1] + [task] + args[2:], monkeypatch)
    assert f"--lm-eval {task}: a code task, whose scorer runs each answer" in err and not output.exists()


def test_lm_eval_vote_filter_drops_unreadable_answers_and_keeps_the_first_of_a_tie():
    vote = R.HexVote()
    answers = [["[invalid]", "[invalid]", "7", "5", "5"], ["[invalid]"] * 3, ["3", "4", "4", "3"]]
    assert vote.apply(answers, None) == ["5", "[invalid]", "3"]
    assert R.HexPick(2).apply(answers, None) == [["7"], ["[invalid]"], ["4"]], "a list of one, for the task's filters"


@pytest.mark.slow
@pytest.mark.checkpoint
def test_lm_eval_rerun_and_a_killed_run_decode_only_unfinished_questions(
    checkpoint, lm_tasks, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "out"
    args = [str(a) for a in lm_eval_args(checkpoint, lm_tasks, output)]
    R.main(args)
    first = lm_samples(output)
    calls = spied_decodes(monkeypatch)
    R.main(args)
    assert calls == [] and lm_samples(output) == first, "a rerun decodes nothing and keeps the K distinct candidates"
    held = output / "candidates.rank0.jsonl"
    kept = held.read_text().splitlines()[:2]
    held.write_text("\n".join(kept) + "\n" + kept[0][:30])  # killed: two questions saved, a third torn
    R.main(args)
    assert [c["prompts"] for c in calls] == [1, 1], "only the two lost questions are decoded again"
    assert lm_samples(output) == first, "with the same streams (seeded by the question, one a batch)"
    capsys.readouterr()
    err = one_line_error(capsys, [*args, "--use-cache", tmp_path / "cache"])
    assert "--use-cache: lm-eval's cache keys on a request alone" in err


@pytest.mark.parametrize(
    "config, message",
    [
        (
            dict(output_type="multiple_choice", doc_to_choice=["a", "b"]),
            "a multiple_choice task, scored by log-likelihoods",
        ),
        (dict(filter_list=None), "its filter 'none' hands its scorer one raw text (as minerva_math's)"),
        (
            dict(generation_kwargs=dict(until=["Q:"], max_gen_toks=64)),
            "it allows 64-token answers (max_gen_toks) and --gen-length is 16",
        ),
    ],
)
@pytest.mark.slow
@pytest.mark.checkpoint
def test_lm_eval_tasks_it_cannot_run_are_refused_in_one_line_before_loading(
    checkpoint, lm_tasks, tmp_path, monkeypatch, capsys, config, message
):
    task = json.loads((lm_tasks / "tiny_gsm8k.yaml").read_text())
    (lm_tasks / "tiny_gsm8k.yaml").write_text(json.dumps({**task, **config}))
    err = one_line_error(capsys, lm_eval_args(checkpoint, lm_tasks, tmp_path / "out"), monkeypatch)
    assert f"--lm-eval tiny_gsm8k: {message}" in err
    assert not (tmp_path / "out").exists(), "a failed start writes nothing"
    err = one_line_error(
        capsys,
        [
            *lm_eval_args(checkpoint, lm_tasks, tmp_path / "out")[:1],
            "no_such_task",
            *lm_eval_args(checkpoint, lm_tasks, tmp_path / "out")[2:],
        ],
        monkeypatch,
    )
    assert "--lm-eval no_such_task: not a YAML task lm-eval knows" in err


@pytest.mark.checkpoint
@pytest.mark.checkpoint
@pytest.mark.slow
def test_lm_eval_task_whose_data_is_out_of_reach_is_one_line_within_seconds_leaving_nothing(checkpoint, tmp_path):
    pytest.importorskip("lm_eval")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    for model in (str(checkpoint), "GSAI-ML/LLaDA-8B-Instruct"):  # the demo's checkpoint, then README's command
        argv = ["--lm-eval", "gsm8k", "--model", model, "--limit", "2", "--output", str(tmp_path / "out")]
        start = time.time()
        result = subprocess.run(
            [sys.executable, "run_gsm8k.py", *argv], cwd=HERE, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr[-2000:]
        assert "--lm-eval gsm8k: its data cannot be loaded" in result.stderr and "--include-path" in result.stderr
        assert time.time() - start < 30 and not (tmp_path / "out").exists()


@pytest.mark.checkpoint
@pytest.mark.slow
def test_lm_eval_runs_the_demos_stand_in_checkpoint(lm_tasks, tmp_path, capsys):
    stand_in = write_checkpoint(tmp_path / "stand-in", stand_in=True)
    R.main([str(a) for a in lm_eval_args(stand_in, lm_tasks, tmp_path / "out", "--limit", "2")])
    assert "tiny_gsm8k_hex" in capsys.readouterr().out
    candidates = [s["resps"][0] for s in lm_samples(tmp_path / "out")["flexible-extract"].values()]
    boxed = ["<answer> \\boxed{ 4 } </answer>"] * len(LM_BLOCKS)  # the last digit of "How many ? i + 4"
    assert candidates == [boxed, boxed]


def test_lm_eval_answer_text_stops_at_end_of_text_max_gen_toks_and_until(loaded):
    tokenizer = loaded[0]
    ids = tokenizer.convert_tokens_to_ids
    answer = ids(["1", "+", "2", "is", "3", "<|endoftext|>", "4"])
    ends = set(R.end_of_text_ids(tokenizer))
    assert R.harness_text(tokenizer, answer, {}, ends) == "1 + 2 is 3"
    assert R.harness_text(tokenizer, answer, dict(until=["is"]), ends) == "1 + 2 "
    assert R.harness_text(tokenizer, answer, dict(until="+", max_gen_toks=1), ends) == "1"


@pytest.mark.checkpoint
@pytest.mark.slow
def test_lm_eval_torchrun_two_ranks_give_one_process_results(checkpoint, lm_tasks, tmp_path):
    args = [str(a) for a in lm_eval_args(checkpoint, lm_tasks, tmp_path / "two")]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "run_gsm8k.py"]
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    result = subprocess.run([*torchrun, *args], capture_output=True, text=True, timeout=300, cwd=HERE, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    R.main([str(a) for a in lm_eval_args(checkpoint, lm_tasks, tmp_path / "one")])
    two, one = lm_samples(tmp_path / "two"), lm_samples(tmp_path / "one")
    assert {f: {d: s["resps"] for d, s in docs.items()} for f, docs in two.items()} == {
        f: {d: s["resps"] for d, s in docs.items()} for f, docs in one.items()
    }
    results = [json.loads((tmp_path / n / "results.json").read_text())["results"] for n in ("one", "two")]
    assert results[0] == results[1]
    assert sorted(p.name for p in (tmp_path / "two").glob("candidates.*")) == [
        "candidates.rank0.jsonl",
        "candidates.rank1.jsonl",
    ]


def test_a_long_library_message_is_cut_at_a_word():
    message = R._one_line(ValueError("alpha beta\n  gamma " + "delta " * 60), limit=40)
    assert message == "alpha beta gamma delta delta delta ..." and len(message) <= 40
    assert R._one_line(ValueError("short\nline")) == "short line"
    with pytest.raises(R.UsageError) as error:
        R.resolve_device("gpu")
    assert str(error.value).startswith("--device gpu: not a device this torch build can use here (")
    assert "\n" not in str(error.value) and len(str(error.value)) < 200


def test_the_demo_answers_help_without_running():
    result = subprocess.run([sys.executable, "test_hex.py", "--help"], cwd=HERE, capture_output=True, text=True)
    assert result.returncode == 0 and "usage: test_hex.py" in result.stdout and "Offline demo" not in result.stdout


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(
        prog="test_hex.py",
        description="The offline demo: run_gsm8k.py end to end on a tiny stand-in model (not a result), in a new "
        "results/offline-demo-* folder. The tests: python -m pytest -m 'not slow'.",
    ).parse_args()
    offline_demo()
