"""The multi-token-prediction loss against the DeepSeek-V3 paper's equations (sec. 2.2), written out per position.

Depth k at position i (the paper's eq. 21-23, with the released checkpoints' concatenation order: vLLM's
`DeepSeekMultiTokenPredictorLayer` and the HF weights put the embedding first, where the paper writes h first):
    h'_i  = M_k [RMSNorm(Emb(t_{i+k})); RMSNorm(h^{k-1}_i)]
    h^k_i = TRM_k(h'_0..h'_i)                      (causal: position i sees h'_{<=i})
    P     = softmax(OutHead(RMSNorm(h^k_i)))       predicts t_{i+k+1}; Emb and OutHead shared with the main model
    L_k   = mean CE over the positions whose target t_{i+k+1} is a trained token of the same sample
h^0 is the main model's final-normed output (r1kit follows vLLM there); the training objective reports
mean_k L_k as `mtp`. The reference below builds everything from the module's weights with plain tensor ops;
only the transformer block TRM_k (tested against transformers in test_parity.py) is called, once per position
on the prefix, so causality is not taken from the code under test.
"""

import pytest
import torch

from r1kit.models.attention import AttentionContext, RMSNorm
from r1kit.models.config import get_preset
from r1kit.models.transformer import Transformer
from r1kit.training.lm_loss import lm_loss
from r1kit.training.packing import Sample, collate


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def mtp_ce_by_hand(model: Transformer, ids: list[int], mask: list[int], depths: int) -> list[tuple[float, int]]:
    """(sum of CE, number of targets) per depth for one sample, position by position."""
    eps, emb, head = model.config.norm_eps, model.embed_tokens.weight, model.lm_head.weight
    T = len(ids)
    h_prev = model.hidden(torch.tensor([ids]))[0]  # h^0: (T, d)
    out = []
    for k, module in enumerate(model.mtp[:depths], start=1):
        n = T - k  # positions i with a token t_{i+k}
        merged = torch.stack([
            module.eh_proj.weight @ torch.cat([rms_norm(emb[ids[i + k]], module.enorm.weight, eps),
                                               rms_norm(h_prev[i], module.hnorm.weight, eps)])
            for i in range(n)])  # h': (n, d)
        h_k = torch.stack([
            module.block(merged[None, : i + 1],
                         AttentionContext(model.rope_cos[None, : i + 1], model.rope_sin[None, : i + 1]))[0, -1]
            for i in range(n)])  # (n, d)
        ce_sum, count = 0.0, 0
        for i in range(n - 1):  # position i predicts t_{i+k+1}
            if mask[i + k + 1]:
                logits = head @ rms_norm(h_k[i], module.norm.weight, eps)
                ce_sum += -torch.log_softmax(logits, dim=-1)[ids[i + k + 1]].item()
                count += 1
        out.append((ce_sum, count))
        h_prev = h_k  # depth k+1 continues from depth k's block output
    return out


def toy_model(seed: int, **overrides) -> Transformer:
    """toy-moe with random RMSNorm gains (ones would let a missing or misplaced norm go unnoticed)."""
    torch.manual_seed(seed)
    model = Transformer(get_preset("toy-moe").replace(**overrides)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RMSNorm):
                m.weight.normal_(1.0, 0.3)
    return model


def expected_mtp(model, samples: list[Sample], depths: int) -> float:
    per_sample = [mtp_ce_by_hand(model, s.ids, s.mask, depths) for s in samples]
    return sum(sum(s[k][0] for s in per_sample) / sum(s[k][1] for s in per_sample) for k in range(depths)) / depths


def test_depth_one_mtp_loss_follows_the_paper_position_by_position():
    model = toy_model(1)
    sample = Sample([1] + torch.randint(3, 120, (20,)).tolist(), [0] * 6 + [1] * 15)  # prompt masked
    with torch.no_grad():
        _, parts = lm_loss(model, collate([[sample]], pad_id=0, packed=False), depths=1)
        expected = expected_mtp(model, [sample], 1)
    assert parts["mtp"] == pytest.approx(expected, rel=1e-5)


def test_two_depths_on_a_packed_batch_follow_the_paper_per_sample():
    """Depth 2 chains from depth 1's block output; packed samples never predict across their boundary."""
    model = toy_model(2, n_mtp_layers=2)
    lengths, prompts = [9, 14, 6, 11], [3, 5, 0, 4]
    samples = [Sample(torch.randint(3, 120, (n,)).tolist(), [0] * p + [1] * (n - p)) for n, p in zip(lengths, prompts)]
    batch = collate([samples[:2], samples[2:]], pad_id=0, packed=True)  # rows of 23 and 17 tokens (6 pads)
    with torch.no_grad():
        _, parts = lm_loss(model, batch, depths=2)
        expected = expected_mtp(model, samples, 2)
    assert parts["mtp"] == pytest.approx(expected, rel=1e-5)

