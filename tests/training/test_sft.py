"""The pretrain/SFT loop: packed == unpacked, MTP loss by hand, a toy model overfits, resume is exact."""

import json

import pytest
import torch
import torch.nn.functional as F

from r1kit.config import load_config
from r1kit.errors import ConfigError
from r1kit.models.checkpoint import load_model
from r1kit.tokenizer import toy_tokenizer
from r1kit.training.lm_data import cold_start_rows
from r1kit.training.lm_loss import lm_loss
from r1kit.training.packing import Sample, collate
from r1kit.training.pretrain import PretrainConfig, pretrain
from r1kit.training.sft import SFTConfig, sft
from r1kit.training.tasks import TaskData


def random_samples(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(5, 14, (1,), generator=g))
        ids = [1] + torch.randint(3, 100, (length - 1,), generator=g).tolist()
        prompt = int(torch.randint(1, length - 2, (1,), generator=g))
        out.append(Sample(ids, [0] * prompt + [1] * (length - prompt)))
    return out


@pytest.mark.parametrize("preset", ["toy-dense", "toy-moe"])
def test_packed_and_unpacked_batches_give_the_same_loss(preset):
    model = load_model(preset, seed=0).eval()  # eval: no MoE balance loss, which depends on the row layout
    samples = random_samples(6)
    depths = len(model.mtp)
    packed = collate([samples[0:3], samples[3:5], samples[5:6]], pad_id=0, packed=True)
    unpacked = collate([[s] for s in samples], pad_id=0, packed=False)
    with torch.no_grad():
        _, p = lm_loss(model, packed, depths=depths)
        _, u = lm_loss(model, unpacked, depths=depths)
    assert p["ce"] == pytest.approx(u["ce"], abs=1e-5)
    if depths:
        assert p["mtp"] == pytest.approx(u["mtp"], abs=1e-5)


def test_mtp_loss_equals_a_hand_written_computation():
    model = load_model("toy-moe", seed=1).eval()
    ids = [1] + list(range(10, 30))
    mask = [0] * 6 + [1] * 15
    batch = collate([[Sample(ids, mask)]], pad_id=0, packed=False)
    with torch.no_grad():
        loss, parts = lm_loss(model, batch, depths=1)
        x = torch.tensor([ids])
        logits = model(x)[0]  # (T, V)
        m = torch.tensor(mask, dtype=torch.bool)
        ce = F.cross_entropy(logits[:-1][m[1:]], x[0, 1:][m[1:]])  # position i predicts i+1
        mtp_logits = model.mtp_logits(model.hidden(x), x)[0][0]  # (T-1, V): position i predicts i+2
        ce2 = F.cross_entropy(mtp_logits[:-1][m[2:]], x[0, 2:][m[2:]])
    expected = ce + model.config.mtp_loss_weight * ce2
    assert parts["ce"] == pytest.approx(ce.item(), abs=1e-5)
    assert parts["mtp"] == pytest.approx(ce2.item(), abs=1e-5)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_cold_start_rows_are_readable_by_the_rewards():
    from r1kit.rewards import extract_answer, format_reward

    rows = cold_start_rows(TaskData(tasks=["addition"], level=2, num_train=4), seed=0)
    tok = toy_tokenizer()
    for row in rows:
        reply = row["messages"][-1]
        text = tok.apply_chat_template(row["messages"], tokenize=False)
        completion = text.split("<think>\n", 1)[1].removesuffix("<eos>")
        assert format_reward(completion) == 1.0
        assert extract_answer(completion) == reply["content"].removeprefix("Answer: ")


def sft_config(tmp_path, **extra):
    base = {
        "model": "toy-dense", "tasks": {"tasks": ["addition"], "level": 1, "num_train": 4, "num_test": 4},
        "batch": {"seq_len": 256, "batch_size": 2, "packing": True},
        "run": {"output_dir": str(tmp_path / "sft"), "steps": 60, "save_every": 60, "progress": False, "seed": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 5, "schedule": "constant"},
    }
    base.update(extra)
    return load_config(SFTConfig, overrides=base)


def test_toy_model_overfits_a_small_sft_set(tmp_path):
    from r1kit.generation import generate

    cfg = sft_config(tmp_path)
    sft(cfg)
    records = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < records[0]["loss"] / 100, (records[0]["loss"], records[-1]["loss"])
    model = load_model(tmp_path / "sft" / "final").eval()
    rows = cold_start_rows(cfg.tasks, seed=0)
    outs = generate(model, toy_tokenizer(), [r["messages"][:-1] for r in rows], max_new_tokens=80, temperature=0)
    for row, out in zip(rows, outs):
        reply = row["messages"][-1]
        assert out.text == f"{reply['reasoning']}\n</think>\n{reply['content']}"


def test_pretrain_resume_continues_like_a_straight_run(tmp_path):
    def cfg(name, steps):
        return load_config(PretrainConfig, overrides={
            "model": "toy-moe", "data": {"num_docs": 40, "tasks": ["addition"], "levels": [1]},
            "batch": {"seq_len": 128, "batch_size": 2, "grad_accum": 2},
            "run": {"output_dir": str(tmp_path / name), "steps": steps, "save_every": 2, "progress": False},
            "optim": {"lr": 1e-3, "schedule": "constant"},
        })

    pretrain(cfg("a", 2))
    pretrain(cfg("a", 4))  # resumes from the step-2 checkpoint
    pretrain(cfg("b", 4))

    def metrics(name):
        return [{k: v for k, v in json.loads(line).items() if k not in ("step_s", "tok_s")}
                for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    resumed, straight = metrics("a"), metrics("b")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert "mtp" in straight[0] and "aux" in straight[0] and "expert_load_max" in straight[0]
    for r, s in zip(resumed, straight):
        assert r.keys() == s.keys()
        for k in r:
            assert r[k] == pytest.approx(s[k], rel=1e-6, abs=1e-7), (r["step"], k)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="seq_len"):
        load_config(SFTConfig, overrides={"batch": {"seq_len": 0}})
    with pytest.raises(ConfigError, match="unknown field 'lr'"):
        load_config(SFTConfig, overrides={"lr": 1.0})
