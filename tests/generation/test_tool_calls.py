"""The engine's tool loop: a cell pauses its request, its output enters as tokens in the same cache row.

The models are real r1kit models (random weights, dense GQA and MLA+MoE) over a word-level vocabulary in which a
whole cell is one token, so sampling at T=1 emits calls by chance. What is checked against an independent
reference: after each insertion, every sampled token's log-probability equals the one a plain full forward of
prompt + every token so far gives (so the cache row holds exactly those tokens), and the inserted ids are the
tokenizer's encoding of the interpreter block, which the model never chose."""

import dataclasses
import time

import pytest
import torch
from helpers.scripted import ScriptedModel

from r1kit.generation import Engine, SamplingParams
from r1kit.models.config import PRESETS
from r1kit.models.transformer import Transformer
from r1kit.tools.python import ToolConfig

CELL_SET = "<code>x = 6 * 7</code>"
CELL_USE = "<code>x + 1</code>"
CELL_BAD = "<code>1 / 0</code>"
PIECES = ["Q", "a", "b", " ", CELL_SET, CELL_USE, CELL_BAD, "\n", "<interpreter>", "</interpreter>", "42",
          "43", "ZeroDivisionError: division by zero", "NameError: name 'x' is not defined"]


def tool_tokenizer(extra: list[str] = ()):
    """Word-level tokenizer over PIECES that also encodes them (the engine tokenizes tool output)."""
    import re

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = [*PIECES, *extra]
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", *pieces])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    alternatives = "|".join(re.escape(p) for p in sorted(pieces, key=len, reverse=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(alternatives), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<pad>", "<eos>")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def tiny_model(preset: str, vocab: int, device) -> Transformer:
    torch.manual_seed(0)
    cfg = dataclasses.replace(PRESETS[preset], vocab_size=vocab, eos_token_id=[1], pad_token_id=0, bos_token_id=0,
                              max_seq_len=256, n_mtp_layers=0)
    return Transformer(cfg).to(device).eval()


@pytest.mark.parametrize("preset", ["toy-dense", "toy-moe"])
def test_tool_output_enters_as_tokens_and_the_cache_matches_a_full_forward(preset, device):
    tok = tool_tokenizer()
    model = tiny_model(preset, len(tok), device)
    engine = Engine(model, tok, max_batch_size=6, tools=ToolConfig(timeout=5.0, max_calls=20))
    prompt = tok.convert_tokens_to_ids(["Q"])
    params = [SamplingParams(max_new_tokens=40, temperature=1.0, seed=s) for s in range(12)]
    completions = engine.generate([prompt] * len(params), params)
    expected_output = {CELL_SET: "", CELL_USE: "43", CELL_BAD: "ZeroDivisionError: division by zero"}
    calls = 0
    for c in completions:
        mask = c.model_token_mask()
        assert len(mask) == len(c.token_ids) == len(c.logprobs)
        # every cell the model emitted was run once, in order, and followed by its output block
        cells = [tok.convert_ids_to_tokens(t) for t, m in zip(c.token_ids, mask) if m]
        cells = [t for t in cells if t.startswith("<code>")]
        assert [call.code for call in c.tool_calls] == [t[len("<code>"):-len("</code>")] for t in cells
                                                       ][: len(c.tool_calls)]
        i = 0
        for k, call in enumerate(c.tool_calls):
            while tok.convert_ids_to_tokens(c.token_ids[i]) not in (CELL_SET, CELL_USE, CELL_BAD):
                i += 1
            assert mask[i]
            block = "\n<interpreter>\n" + call.output.rstrip() + "\n</interpreter>\n"
            ids = tok(block, add_special_tokens=False).input_ids
            if len(c.token_ids) < i + 1 + len(ids):  # no room left: the block is cut and the reply ends
                ids = ids[: len(c.token_ids) - i - 1]
                assert c.finish_reason == "length"
            else:
                assert block in c.text
            assert c.token_ids[i + 1: i + 1 + len(ids)] == ids  # the tool's tokens, exactly
            assert mask[i + 1: i + 1 + len(ids)] == [False] * len(ids)
            cell = tok.convert_ids_to_tokens(c.token_ids[i])
            if cell == CELL_USE and not any(p.code == "x = 6 * 7" for p in c.tool_calls[:k]):
                assert call.output == "NameError: name 'x' is not defined"  # fresh per reply
            else:
                assert call.output.rstrip() == expected_output[cell]
            i += 1 + len(ids)
            calls += 1
        # the cache row after each insertion: the sampled log-probs equal a full forward's (T = 1)
        ids = torch.tensor([prompt + c.token_ids], device=device)
        with torch.no_grad():
            logp = model(ids).float().log_softmax(-1)[0, len(prompt) - 1:-1]
        ref = logp.gather(1, ids[0, len(prompt):, None]).squeeze(1)
        model_pos = torch.tensor(mask, device=device)
        got = torch.tensor(c.logprobs, device=device)
        torch.testing.assert_close(got[model_pos], ref[model_pos].to(got.dtype), atol=2e-4, rtol=0)
        assert (got[~model_pos] == 0).all()
    assert calls >= 4, "the seeds should sample a few cells"
    assert any(len(c.tool_calls) >= 2 for c in completions)


def test_a_slow_call_does_not_stall_the_other_rows(device):
    slow = "<code>import time; time.sleep(1.5)</code>"
    tok = tool_tokenizer(extra=[slow])
    # Q -> the slow cell; after its output block (ending in a newline) -> a -> EOS. b -> b -> ... (no EOS)
    model = ScriptedModel(tok, [("Q", slow), ("\n", "a"), ("b", "b")]).to(device)
    engine = Engine(model, tok, max_batch_size=2, tools=ToolConfig(timeout=5.0))
    waiting = engine.add_request(tok.convert_tokens_to_ids(["Q"]), SamplingParams(max_new_tokens=20, seed=0))
    other = engine.add_request(tok.convert_tokens_to_ids(["b"]), SamplingParams(max_new_tokens=60, seed=1))
    start = time.monotonic()
    while not other.done:
        engine.step()
    assert waiting.paused and time.monotonic() - start < 1.4  # 60 tokens decoded while the cell slept
    while not waiting.done:
        engine.step()
    c = waiting.completion()
    assert c.text == slow + "\n<interpreter>\n\n</interpreter>\na" and c.finish_reason == "stop"
    assert c.tool_calls[0].code == "import time; time.sleep(1.5)" and c.tool_calls[0].seconds >= 1.4
    # the cell | \n <interpreter> \n (empty output) \n </interpreter> \n | a EOS
    assert c.model_mask == [True] + [False] * 6 + [True, True]


def test_a_reply_without_room_for_the_output_ends_and_step_reports_it(device):
    """The output block (6 tokens) does not fit in max_new_tokens=4: the reply keeps what fits, ends with
    "length", and the step that ends it returns it (a server streaming from step() must see it finish)."""
    cell = "<code>print(1)</code>"
    tok = tool_tokenizer(extra=[cell, "1"])
    model = ScriptedModel(tok, [("Q", cell)]).to(device)
    engine = Engine(model, tok, max_batch_size=1, tools=ToolConfig(timeout=5.0))
    req = engine.add_request(tok.convert_tokens_to_ids(["Q"]), SamplingParams(max_new_tokens=4, seed=0))
    seen_done = False
    for _ in range(200):
        seen_done |= any(r is req and r.done for r in engine.step())
        if req.done:
            break
    assert seen_done and req.finish_reason == "length"
    c = req.completion()
    # the cell, then the first 3 tokens of "\n<interpreter>\n1\n</interpreter>\n"
    assert c.token_ids == tok.convert_tokens_to_ids([cell, "\n", "<interpreter>", "\n"])
    assert c.model_mask == [True, False, False, False] and c.text == cell + "\n<interpreter>\n"
    assert not engine.has_work()
