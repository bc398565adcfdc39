"""Loss masks checked token by token against hand-built examples; packing and the step schedule by hand."""

import pytest
import torch

from r1kit.errors import R1kitError
from r1kit.tokenizer import toy_tokenizer
from r1kit.training.packing import (
    Sample,
    chat_sample,
    collate,
    make_rows,
    pack_groups,
    step_rows,
    text_sample,
    truncate,
)


@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer()


def ids_of(tok, pieces):
    """Token ids of a hand-written token list: special tokens by name, other strings char by char."""
    out = []
    for p in pieces:
        if p.startswith("<") and p.endswith(">") and len(p) > 1:
            out.append(tok.convert_tokens_to_ids(p))
        else:
            out.extend(tok.convert_tokens_to_ids(list(p)))
    return out


def test_sft_mask_covers_reasoning_answer_and_eos_only(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2?"},
                {"role": "assistant", "content": "Answer: 3", "reasoning": "1+2=3."}]
    prompt = ids_of(tok, ["<bos>", "<|system|>", "Be brief.", "<|user|>", "1+2?", "<|assistant|>", "<think>", "\n"])
    target = ids_of(tok, ["1+2=3.", "\n", "</think>", "\n", "Answer: 3", "<eos>"])
    s = chat_sample(tok, messages)
    assert s.ids == prompt + target
    assert s.mask == [0] * len(prompt) + [1] * len(target)


def test_sft_mask_without_reasoning_and_earlier_turns_masked(tok):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "ok?"}, {"role": "assistant", "content": "ok"}]
    # The template prefills <think>\n for generation, but a turn without reasoning renders no think block:
    # the targets start right after the last <|assistant|>. The earlier assistant turn is context only.
    prompt = ids_of(tok, ["<bos>", "<|user|>", "hi", "<|assistant|>", "yo", "<eos>", "<|user|>", "ok?",
                          "<|assistant|>"])
    target = ids_of(tok, ["ok", "<eos>"])
    s = chat_sample(tok, messages)
    assert s.ids == prompt + target
    assert s.mask == [0] * len(prompt) + [1] * len(target)


def test_chat_must_end_with_assistant(tok):
    with pytest.raises(R1kitError, match="assistant"):
        chat_sample(tok, [{"role": "user", "content": "hi"}])


def test_text_sample_trains_on_everything_after_bos(tok):
    s = text_sample(tok, "ab")
    assert s.ids == ids_of(tok, ["<bos>", "ab", "<eos>"])
    assert s.mask == [0, 1, 1, 1]


def test_truncate_drops_samples_without_targets():
    a = Sample([1, 5, 6, 7, 8], [0, 0, 0, 1, 1])
    b = Sample([1, 5, 6, 7], [0, 1, 1, 1])
    out = truncate([a, b], 3)
    assert [s.ids for s in out] == [[1, 5, 6]] and out[0].mask == [0, 1, 1]


def test_first_fit_packing():
    assert pack_groups([5, 4, 3, 2, 6, 1], 8) == [[0, 2], [1, 3, 5], [4]]
    with pytest.raises(R1kitError, match="more than seq_len"):
        pack_groups([9], 8)


def test_collate_segments_positions_and_targets():
    a, b, c = Sample([1, 10, 11], [0, 1, 1]), Sample([1, 20], [0, 1]), Sample([1, 30, 31, 32], [0, 0, 1, 1])
    batch = collate([[a, b], [c]], pad_id=0, packed=True)
    assert batch.input_ids.tolist() == [[1, 10, 11, 1, 20], [1, 30, 31, 32, 0]]
    assert batch.segment_ids.tolist() == [[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]]
    assert batch.positions[0].tolist() == [0, 1, 2, 0, 1]
    assert batch.positions[1, :4].tolist() == [0, 1, 2, 3]
    # next-token targets: never the first token of a sample (it would be predicted from the previous sample)
    assert batch.target_mask(1).tolist() == [[True, True, False, True], [False, True, True, False]]
    # depth-2 targets (token i+2 at i): must stay within one sample
    assert batch.target_mask(2).tolist() == [[True, False, False], [True, True, False]]
    unpacked = collate([[c], [a]], pad_id=0, packed=False)
    assert unpacked.segment_ids is None
    assert unpacked.target_mask(1).tolist() == [[False, True, True], [True, True, False]]
    assert unpacked.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_unpacked_padding_is_not_counted_by_moe_balancing():
    """A right-padded unpacked batch routes (and counts) exactly the real tokens that the samples alone do."""
    import r1kit
    from r1kit.training.lm_loss import lm_loss

    model = r1kit.load_model("toy-moe", seed=0).train()
    short, long = Sample([1, 40, 41], [0, 1, 1]), Sample([1, 50, 51, 52, 53, 54, 55], [0, 1, 1, 1, 1, 1, 1])
    loads = []
    for rows in ([[short], [long]], [[short]], [[long]]):
        model.update_router_biases(apply=False)  # reset the counts
        lm_loss(model, collate(rows, pad_id=0, packed=False))
        loads.append(torch.stack([m.expert_load.clone() for m in model.moe_layers()]))
    torch.testing.assert_close(loads[0], loads[1] + loads[2])


def test_step_rows_cover_each_row_once_per_epoch_and_are_deterministic():
    rows = make_rows([Sample([1, i], [0, 1]) for i in range(10)], seq_len=4, packing=True, seed=3)
    assert len(rows) == 5 and sorted(s.ids[1] for r in rows for s in r) == list(range(10))
    epoch = [id(r) for step in (1, 2, 3, 4, 5) for r in step_rows(rows, step, 1, seed=0)]
    assert sorted(epoch) == sorted(id(r) for r in rows)
    assert [id(r) for r in step_rows(rows, 4, 3, seed=0)] == [id(r) for r in step_rows(rows, 4, 3, seed=0)]
    assert torch.equal(collate(step_rows(rows, 2, 2, 0), 0, True).input_ids,
                       collate(step_rows(rows, 2, 2, 0), 0, True).input_ids)


def test_tool_output_in_an_sft_trace_is_context_not_target():
    """The <interpreter> block (what the engine inserts after a cell) is masked out of the SFT loss; the cell and
    everything the model writes after the output stay targets."""
    from r1kit.tokenizer import toy_tokenizer
    from r1kit.training.packing import chat_sample

    tok = toy_tokenizer()
    trace = "<code>\nprint(482*37)\n</code>\n<interpreter>\n17834\n</interpreter>\nSo 17834."
    messages = [{"role": "user", "content": "What is 482*37?"},
                {"role": "assistant", "content": "Answer: 17834", "reasoning": trace}]
    s = chat_sample(tok, messages)
    target = "".join(tok.convert_ids_to_tokens([i for i, m in zip(s.ids, s.mask) if m]))
    context = "".join(tok.convert_ids_to_tokens([i for i, m in zip(s.ids, s.mask) if not m]))
    assert target == "<code>\nprint(482*37)\n</code>So 17834.\n</think>\nAnswer: 17834<eos>"
    assert context == "<bos><|user|>What is 482*37?<|assistant|><think>\n\n<interpreter>\n17834\n</interpreter>\n"
