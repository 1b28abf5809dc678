"""Tests for hex.py: CPU only, no network. Run: python -m pytest -q"""
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hex as H

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
            out[:, -self.logits.shape[0]:] = self.logits  # the last G positions: the answer
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
        n = (x[:, P + nb * block_length:block_end] == mask_id).sum(1)
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
        committed = (before != MASK)
        assert torch.equal(after[committed], before[committed]), "a committed token changed"
        new = committed.logical_not() & (after != MASK)
        for r, b in enumerate(block_lengths):
            spb = H.steps_per_block(gen_length, steps, b)
            start = t // spb * b
            cols = new[r].nonzero().flatten()
            assert len(cols) == H.num_transfer_tokens(b, spb)[t % spb], f"row {r} step {t}"
            assert ((cols >= start) & (cols < start + b)).all(), "committed outside the open block"


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
    ours = H.generate(model, prompt, gen_length=24, steps=steps, block_length=block_length,
                      remasking=remasking, mask_id=MASK)
    with torch.no_grad():
        theirs = reference_generate(model, prompt, 24, steps, block_length, remasking)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("remasking,temperature", [("low_confidence", 0.0), ("topk_margin", 0.0),
                                                   ("random", 0.0), ("low_confidence", 0.8)])
@pytest.mark.parametrize("block_length,steps", [(4, 12), (4, 36), (12, 6), (24, 5)])
def test_generate_trajectory_invariants(model, remasking, temperature, block_length, steps):
    recorder, prompt = Recorder(model), prompts()
    out = H.generate(recorder, prompt, gen_length=24, steps=steps, block_length=block_length,
                     remasking=remasking, temperature=temperature, mask_id=MASK,
                     generator=torch.Generator().manual_seed(1))
    check_trajectory(recorder.seen, out, prompt.shape[1], 24, steps, [block_length] * len(prompt))


def test_leftmost_position_wins_equal_confidences():
    logits = torch.zeros(VOCAB, dtype=torch.float64)
    logits[5] = 3.0  # every position predicts token 5 with the same confidence
    out = H.hex_generate(FixedLogits(logits), prompts(1), block_lengths=(8,), gen_length=8, steps=8,
                         mask_id=MASK)
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
        out = H.hex_generate(model, prompts(1), block_lengths=(2,), gen_length=2, steps=2,
                             remasking=remasking, mask_id=MASK)
        order[remasking] = out.commit_steps[0, 0].tolist()
    assert order == {"low_confidence": [0, 1], "topk_margin": [1, 0]}
    _, conf = H.x0_and_confidence(model(torch.zeros(1, 2, dtype=torch.long)).logits,
                                  torch.tensor([0, 0]), torch.tensor([0, 1]), remasking="topk_margin",
                                  temperature=0.0, mask_id=MASK)
    p = probs / probs.sum(-1, keepdim=True)
    assert torch.allclose(conf, p[:, 0] - p.topk(2).values[:, 1])


def test_sampled_x0_is_scored_by_the_untempered_softmax():
    logits = torch.randn(1, 40, VOCAB, generator=torch.Generator().manual_seed(0))
    rows, cols = torch.zeros(40, dtype=torch.long), torch.arange(40)
    x0, conf = H.x0_and_confidence(logits, rows, cols, remasking="low_confidence", temperature=2.0,
                                   mask_id=MASK, generator=torch.Generator().manual_seed(0))
    greedy, _ = H.x0_and_confidence(logits, rows, cols, remasking="low_confidence", temperature=0.0,
                                    mask_id=MASK)
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
    hexed = H.hex_generate(model, batch, attention, block_lengths=(4, 16), gen_length=16, steps=8,
                           mask_id=MASK)
    alone = H.hex_generate(model, short, block_lengths=(4, 16), gen_length=16, steps=8, mask_id=MASK)
    assert torch.equal(hexed.sequences[0, :, 3:], alone.sequences[0])
    assert torch.allclose(hexed.scores[0], alone.scores[0])


# HEX in lockstep ----------------------------------------------------------------------------------

@pytest.mark.parametrize("remasking", ["low_confidence", "topk_margin"])
def test_hex_rows_equal_generate_per_schedule(model, remasking):
    prompt, blocks = prompts(2), (4, 8, 16, 32)
    kw = dict(gen_length=32, steps=16, remasking=remasking, mask_id=MASK)
    out = H.hex_generate(model, prompt, block_lengths=blocks, samples_per_block=2, **kw)
    assert out.sequences.shape == (2, 8, 6 + 32) and out.block_lengths == list(blocks) * 2
    for k, b in enumerate(out.block_lengths):
        assert torch.equal(out.sequences[:, k], H.generate(model, prompt, block_length=b, **kw)), b


def test_hex_trajectory_invariants_and_forward_calls(model):
    recorder, prompt, blocks = Recorder(model), prompts(2), (4, 8, 24)
    out = H.hex_generate(recorder, prompt, block_lengths=blocks, samples_per_block=2, gen_length=24,
                         steps=12, temperature=0.7, mask_id=MASK, generator=torch.Generator().manual_seed(0))
    assert len(recorder.seen) == 12  # steps forward calls, not K x steps
    check_trajectory(recorder.seen, out.sequences.flatten(0, 1), 6, 24, 12, list(blocks) * 2 * 2)
    assert torch.equal(out.commit_steps.flatten(0, 1) >= 0, torch.ones(12, 24, dtype=torch.bool))


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
    with torch.no_grad():
        first = model(F.pad(prompt, (0, 16), value=MASK)).logits[:, -16:].log_softmax(-1)  # (B, G, V)
    for k in range(2):
        answer = out.sequences[:, k, -16:]
        expected = first.gather(-1, answer[..., None]).squeeze(-1).mean(-1)
        assert torch.allclose(out.scores[:, k], expected)


# Bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(block_length=5), "block_length"),
    (dict(steps=6), "steps"),
    (dict(steps=2), "steps"),
    (dict(remasking="greedy"), "remasking"),
    (dict(temperature=-0.1), "temperature"),
    (dict(attention_mask=torch.ones(2, 3, dtype=torch.long)), "attention_mask"),
])
def test_generate_rejects_bad_input(model, kwargs, match):
    kw = dict(gen_length=16, steps=8, block_length=4, mask_id=MASK) | kwargs
    with pytest.raises(ValueError, match=match):
        H.generate(model, prompts(2), **kw)


def test_mask_id_outside_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="mask_id"):
        H.generate(FixedLogits(torch.zeros(VOCAB)), prompts(1), gen_length=8, steps=4, block_length=4,
                   mask_id=VOCAB + 10)


def test_prompt_containing_mask_and_wrong_types_are_rejected(model):
    with pytest.raises(ValueError, match="mask_id"):
        H.generate(model, torch.tensor([[1, MASK]]), gen_length=8, steps=4, block_length=4, mask_id=MASK)
    with pytest.raises(TypeError, match="input_ids"):
        H.generate(model, [[1, 2]], gen_length=8, steps=4, block_length=4, mask_id=MASK)


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_lengths=()), "block_lengths"),
    (dict(block_lengths=(4, 6)), "block_length"),
    (dict(samples_per_block=0), "samples_per_block"),
])
def test_hex_generate_rejects_bad_input(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        H.hex_generate(model, prompts(1), **(dict(block_lengths=(4,), gen_length=16, steps=8, mask_id=MASK) | kwargs))


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


def test_demo_shows_schedules_and_lockstep_forward_calls(capsys):
    H.main()
    out = capsys.readouterr().out
    pictures = [line.split()[-1] for line in out.splitlines() if "block_length" in line or "margin" in line]
    assert len(pictures) == 5 and all(len(p) == 64 for p in pictures)
    assert pictures[0][:4] in ("0011", "1100")  # block length 4: the first block fills in steps 0 and 1
    assert "128 forward calls" in out and "640 forward calls" in out


# run_gsm8k.py -------------------------------------------------------------------------------------

import json  # noqa: E402

import run_gsm8k as R  # noqa: E402

TINY_MODELING = '''
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

import hex


class TinyConfig(PretrainedConfig):
    model_type = "hex-tiny"

    def __init__(self, vocab_size=64, d_model=32, n_layers=2, n_heads=4, **kwargs):
        self.vocab_size, self.d_model, self.n_layers, self.n_heads = vocab_size, d_model, n_layers, n_heads
        super().__init__(**kwargs)


class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.net = hex.TinyMaskPredictor(config.vocab_size, config.d_model, config.n_layers, config.n_heads)

    def _init_weights(self, module):
        pass  # hex.TinyMaskPredictor seeds its own weights

    def forward(self, input_ids, attention_mask=None):
        return MaskedLMOutput(logits=self.net(input_ids, attention_mask).logits)
'''

PROBLEMS = [
    {"question": "How many apples ? 3 + 4", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "How many ? 1 + 1", "answer": "#### 2"},
    {"question": "How many apples ? 5 + 5 + 5 + 5 + 5 + 5", "answer": "#### 30"},
    {"question": "the answer is ?", "answer": "#### -1,000"},
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny LLaDA-like checkpoint with remote code and a chat-template tokenizer, on disk."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast
    d = tmp_path_factory.mktemp("tiny-llada")
    specials = ["[UNK]", "<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>", "<|mdm_mask|>"]
    markup = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\\boxed{", "}"]
    words = [str(i) for i in range(10)] + "user assistant the answer is apples How many + = ? .".split()
    words = [w for w in words if w not in specials]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>",
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        unk_token="[UNK]", additional_special_tokens=specials[3:])
    tokenizer.add_tokens(markup)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}<|start_header_id|>"
        "{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
    tokenizer.save_pretrained(d)
    (d / "modeling_tiny.py").write_text(TINY_MODELING)
    (d / "config.json").write_text(json.dumps(dict(
        model_type="hex-tiny", vocab_size=len(tokenizer), d_model=32, n_layers=2, n_heads=4,
        auto_map={"AutoConfig": "modeling_tiny.TinyConfig", "AutoModel": "modeling_tiny.TinyModel"})))
    model = AutoModel.from_config(AutoConfig.from_pretrained(d, trust_remote_code=True), trust_remote_code=True)
    save_file(model.state_dict(), d / "model.safetensors")
    return d


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def run(checkpoint, data, output, *extra):
    return R.main(["--model", str(checkpoint), "--data", str(data), "--output", str(output),
                   "--gen-length", "16", "--steps", "8", "--block-lengths", "4", "8", "16",
                   "--samples-per-block", "2", "--temperature", "0.7", "--batch-size", "2", *extra])


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gsm8k_end_to_end_records_and_summary_agree(checkpoint, data, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    summary = run(checkpoint, data, output)
    records = lines(output)
    assert [r["id"] for r in records] == [0, 1, 2, 3]
    assert [r["gold"] for r in records] == [7.0, 2.0, 30.0, -1000.0]
    for r in records:
        methods = [c["method"] for c in r["candidates"]]
        assert methods.count("hex") == 6 and {"topk_margin", "low_confidence", "random"} <= set(methods)
        for c in r["candidates"]:
            assert c["answer"] == R.extract_answer_robust(c["text"])
        hex_rows = [c for c in r["candidates"] if c["method"] == "hex"]
        answer, tie = H.majority_vote([c["answer"] for c in hex_rows])
        assert r["votes"]["hex"] == {"answer": answer, "tie": tie}
        assert r["correct"]["hex"] == (answer is not None and answer == r["gold"])
        assert r["forward_calls"] == 4 * 8 / 2  # HEX and three baselines, 8 steps each, 2 questions a batch
    saved = json.loads(output.with_suffix(".summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    recomputed = R.summarize(lines(output), saved["config"], saved["environment"])
    assert json.loads(json.dumps(recomputed)) == saved
    assert saved["methods"]["hex"]["accuracy"] == sum(r["correct"]["hex"] for r in records) / 4
    assert [v["votes"] for v in saved["hex_vs_votes"]] == [3, 6]
    assert saved["hex_vs_votes"][-1]["accuracy"] == saved["methods"]["hex"]["accuracy"]
    assert set(saved["block_lengths"]) == {"4", "8", "16"}
    assert "GSM8K, 4 questions" in capsys.readouterr().out


def test_gsm8k_resume_appends_only_unfinished_questions(checkpoint, data, tmp_path):
    output = tmp_path / "out.jsonl"
    run(checkpoint, data, output, "--limit", "2", "--methods", "hex")
    first = output.read_text()
    with output.open("a") as f:
        f.write('{"id": 2, "question": "torn wri')  # an interrupted write
    summary = run(checkpoint, data, output, "--methods", "hex")
    assert output.read_text().startswith(first)
    assert [r["id"] for r in lines(output)] == [0, 1, 2, 3]
    assert summary["questions"] == 4
    before = output.read_text()
    run(checkpoint, data, output, "--methods", "hex")  # everything done: nothing is appended
    assert output.read_text() == before
    with pytest.raises(SystemExit, match="other settings"):
        run(checkpoint, data, output, "--methods", "hex", "random")


def test_gsm8k_bad_input_is_reported_clearly(checkpoint, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="--data"):
        R.load_problems(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PROBLEMS[0]) + "\n\n{not json\n")
    with pytest.raises(ValueError, match="line 3"):
        R.load_problems(str(bad))
    bad.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(ValueError, match="line 1.*####"):
        R.load_problems(str(bad))
    with pytest.raises(SystemExit):
        R.parse_args(["--methods", "hex", "beam"])
    assert "unknown method(s) beam" in capsys.readouterr().err


def test_gsm8k_reads_parquet_like_jsonl(data, tmp_path):
    import pandas
    pandas.DataFrame(PROBLEMS).to_parquet(tmp_path / "test.parquet")
    assert R.load_problems(str(tmp_path / "test.parquet")) == R.load_problems(str(data)) == PROBLEMS


@pytest.mark.parametrize("text,authors,robust", [
    ("<reasoning>2+2</reasoning><answer>\\boxed{4}</answer>", 4.0, 4.0),
    ("\\boxed{1,000}", 1.0, 1000.0),                           # the authors' non-greedy quirk
    ("\\boxed{\\$18.50}", 18.5, 18.5),
    ("\\boxed{-5}", -5.0, -5.0),
    ("\\boxed{...} then \\boxed{12}", 12.0, 12.0),             # the prompt's placeholder is skipped
    ("\\boxed{} <answer>so 3 and then 9</answer>", 9.0, 9.0),  # empty box: last number in <answer>
    ("\\boxed{\\frac{3}{4}}", 3.0, 0.75),
    ("\\boxed{18 \\text{ dollars}}", 18.0, 18.0),
    ("She pays $1,250 in total.\nThe answer is 1,250", None, 1250.0),
    ("The answer is −7.", None, -7.0),
    ("no number at all", None, None),
])
def test_answer_rules(text, authors, robust):
    assert R.extract_answer_authors(text) == authors
    assert R.extract_answer_robust(text) == robust


def test_gold_answers_parse_commas_and_negatives():
    assert R.parse_gold("so...\n#### 1,234") == 1234.0
    assert R.parse_gold("#### -3") == -3.0
    with pytest.raises(ValueError, match="####"):
        R.parse_gold("42")


def test_majority_vote_over_extracted_floats_counts_equal_numbers_together():
    answers = [R.extract_answer_robust(t) for t in ("\\boxed{18}", "\\boxed{18.0}", "\\boxed{$20}", "x")]
    assert H.majority_vote(answers) == (18.0, False)


def test_gsm8k_torchrun_two_ranks_match_one_process(checkpoint, data, tmp_path):
    import subprocess
    import sys
    common = ["--model", str(checkpoint), "--data", str(data), "--gen-length", "16", "--steps", "8",
              "--block-lengths", "4", "16", "--methods", "hex", "random"]
    R.main([*common, "--output", str(tmp_path / "one.jsonl")])
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "run_gsm8k.py", *common, "--output", str(tmp_path / "two.jsonl")],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["gsm8k.jsonl"] + [  # no parts left
        f"{n}.{ext}" for n in ("one", "two") for ext in ("jsonl", "config.json", "summary.json")])
    drop = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]
    assert drop(lines(tmp_path / "two.jsonl")) == drop(lines(tmp_path / "one.jsonl"))
