"""MoE balance statistics count real tokens only: padding and packing boundaries excluded.

References: top-k expert ids of real tokens counted by hand from the gate's outputs; the V3 paper's
sequence-wise balance loss (eq. 17-20) written out per real sequence; and the same model run on each
sequence alone, unpadded.
"""

import copy

import pytest
import torch

from r1kit.models.config import get_preset
from r1kit.models.moe import MoE, balance_groups
from r1kit.models.transformer import Transformer
from r1kit.training.packing import Sample, collate

PAD = 0
E, K = get_preset("toy-moe").n_routed_experts, get_preset("toy-moe").n_activated_experts


def toy_moe(**overrides) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(get_preset("toy-moe").replace(**overrides)).train()
    with torch.no_grad():
        for moe in model.moe_layers():
            moe.gate.weight.normal_(0, 0.5)  # decisive routing: float noise of padding cannot flip a top-k choice
    return model


def main_moe(model: Transformer) -> list[MoE]:
    return [layer.mlp for layer in model.layers if isinstance(layer.mlp, MoE)]


def sequences() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 120, (n,), generator=g) for n in (16, 6, 4, 3)]


def padded(seqs):
    """GRPO layout: rows of 32 with left and right padding, attention_mask 0 on pads (77 pads, 29 real)."""
    T, lefts = 32, (0, 10, 5, 20)
    ids = torch.full((len(seqs), T), PAD)
    sample_of = torch.full((len(seqs), T), -1)  # which sequence each token is, -1 = padding
    for r, (left, s) in enumerate(zip(lefts, seqs)):
        ids[r, left:left + len(s)] = s
        sample_of[r, left:left + len(s)] = r
    return ids, {"attention_mask": (sample_of >= 0).long()}, sample_of


def packed(seqs):
    """SFT packing (`collate`): samples back to back, segment ids 1, 2, ...; 0 on the padding."""
    rows = [[0, 3], [1, 2]]  # rows of 19 and 10 tokens: 9 pads
    batch = collate([[Sample(seqs[i].tolist(), [1] * len(seqs[i])) for i in row] for row in rows], PAD, packed=True)
    sample_of = torch.full_like(batch.input_ids, -1)
    for r, row in enumerate(rows):
        for k, i in enumerate(row, start=1):
            sample_of[r][batch.segment_ids[r] == k] = i
    return batch.input_ids, {"positions": batch.positions, "segment_ids": batch.segment_ids}, sample_of


def record_gates(layers: list[MoE]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(expert ids (N, k), affinities s (N, E)) of every gate call, in call order."""
    calls = []
    for moe in layers:
        moe.gate.register_forward_hook(lambda _m, _inp, out: calls.append((out[1].detach(), out[2].detach())))
    return calls


@pytest.mark.parametrize("layout", [padded, packed])
def test_expert_load_counts_real_tokens_only(layout):
    model = toy_moe()
    seqs = sequences()
    ids, kwargs, sample_of = layout(seqs)
    layers = main_moe(model)
    calls = record_gates(layers)
    with torch.no_grad():
        model.hidden(ids, **kwargs)
    real_rows = (sample_of.flatten() >= 0).nonzero().flatten().tolist()
    assert len(real_rows) == sum(len(s) for s in seqs)
    for moe, (indices, _) in zip(layers, calls, strict=True):
        expected = [0.0] * E
        for n in real_rows:
            for e in indices[n].tolist():
                expected[e] += 1
        assert moe.expert_load.tolist() == expected
    batched = [moe.expert_load.clone() for moe in layers]
    for moe in layers:
        moe.expert_load.zero_()
    with torch.no_grad():
        for s in seqs:
            model.hidden(s[None])  # each sequence alone, no padding
    for moe, load in zip(layers, batched):
        assert torch.equal(moe.expert_load, load)


def test_mtp_expert_load_counts_positions_with_a_target_only():
    """Depth 1 at position i reads token i+1: only pairs inside one sample are counted."""
    model = toy_moe()
    ids, kwargs, sample_of = packed(sequences())
    [mtp_moe] = [m for m in model.mtp[0].modules() if isinstance(m, MoE)]
    calls = record_gates([mtp_moe])
    with torch.no_grad():
        model.mtp_logits(model.hidden(ids, **kwargs), ids, **kwargs)
    [(indices, _)] = calls
    T = ids.shape[1] - 1
    expected = [0.0] * E
    for b in range(ids.shape[0]):
        for i in range(T):
            if sample_of[b, i] >= 0 and sample_of[b, i] == sample_of[b, i + 1]:
                for e in indices[b * T + i].tolist():
                    expected[e] += 1
    assert sum(expected) == K * sum(len(s) - 1 for s in sequences())
    assert mtp_moe.expert_load.tolist() == expected


@pytest.mark.parametrize("layout", [padded, packed])
def test_sequence_balance_loss_is_the_formula_over_each_real_sequence(layout):
    alpha = 0.5
    model = toy_moe(seq_aux_alpha=alpha)
    seqs = sequences()
    ids, kwargs, sample_of = layout(seqs)
    layers = main_moe(model)
    calls = record_gates(layers)
    with torch.no_grad():
        model.hidden(ids, **kwargs)
    got = model.aux_loss().item()
    expected = 0.0
    for indices, scores in calls:  # one MoE layer: alpha * mean over sequences of sum_i f_i P_i
        per_sequence = []
        for s in range(len(seqs)):
            rows = (sample_of.flatten() == s).nonzero().flatten().tolist()
            T = len(rows)
            total = 0.0
            for i in range(E):
                f = E / (K * T) * sum(i in indices[r].tolist() for r in rows)
                p = sum((scores[r, i] / scores[r].sum()).item() for r in rows) / T
                total += f * p
            per_sequence.append(total)
        expected += alpha * sum(per_sequence) / len(per_sequence)
    assert got == pytest.approx(expected, rel=1e-5)
    alone = []
    for s in seqs:  # the same as the mean of each sequence's loss computed alone
        with torch.no_grad():
            model.hidden(s[None])
        alone.append(model.aux_loss().item())
    assert got == pytest.approx(sum(alone) / len(alone), rel=1e-5)


@pytest.mark.parametrize("layout", [padded, packed])
def test_bias_update_with_padding_moves_as_without(layout):
    with_pads = toy_moe(bias_update_speed=0.01)
    alone, unmasked = copy.deepcopy(with_pads), copy.deepcopy(with_pads)
    seqs = sequences()
    ids, kwargs, _ = layout(seqs)
    with torch.no_grad():
        for _ in range(3):
            with_pads.hidden(ids, **kwargs)
            with_pads.update_router_biases()
            for s in seqs:
                alone.hidden(s[None])
            alone.update_router_biases()
            unmasked.hidden(ids)  # what the statistics saw before: padding counted as tokens
            unmasked.update_router_biases()
    biases = lambda m: torch.stack([moe.gate.e_score_correction_bias for moe in main_moe(m)])
    assert biases(with_pads).abs().sum() > 0
    assert torch.equal(biases(with_pads), biases(alone))
    assert not torch.equal(biases(unmasked), biases(alone))  # the pads would have moved it differently


def test_balance_groups_mark_padding_and_split_samples():
    seq_ids = torch.tensor([[0, 0, 1, 1, 0, 1, 2, 2, 0],
                            [3, 3, 3, 5, 0, 0, 0, 0, 0]])
    real, seq = balance_groups(seq_ids, 2, 9, seq_ids.device)
    assert real.tolist() == [float(v != 0) for v in seq_ids.flatten().tolist()]
    groups = [seq[n].item() for n in range(18) if real[n]]
    # row 0: sample 1 across a hole of padding is one sequence, sample 2 another; row 1: samples 3 and 5
    a, b, c, d = groups[0], groups[3], groups[5], groups[8]
    assert groups == [a, a, a, b, b, c, c, c, d]
    assert len({a, b, c, d}) == 4
