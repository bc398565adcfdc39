"""Distillation end to end: teacher traces (JSONL) -> filtered -> student SFT -> HF directory for transformers."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from r1kit.config import load_config
from r1kit.data import make_task_set
from r1kit.errors import ConfigError
from r1kit.models.checkpoint import load_model
from r1kit.training.distill import DistillConfig, distill
from r1kit.training.lm_loss import KDConfig, lm_loss
from r1kit.training.packing import Sample, collate


def write_traces(path, n_good=6, n_bad=2):
    examples = make_task_set("addition", n_good + n_bad, seed=0, level=1, split="train")
    with open(path, "w") as f:
        for i, ex in enumerate(examples):
            answer = ex["answer"] if i < n_good else str(int(ex["answer"]) + 1)  # the last ones are wrong
            row = {"id": ex["id"], "question": ex["question"], "answer": ex["answer"],
                   "completion": f"{ex['solution']}\n</think>\nAnswer: {answer}"}
            f.write(json.dumps(row) + "\n")
    return examples


def test_distill_from_trace_file_to_a_transformers_loadable_student(tmp_path):
    from transformers import AutoModelForCausalLM

    write_traces(tmp_path / "traces.jsonl")
    cfg = load_config(DistillConfig, overrides={
        "traces": str(tmp_path / "traces.jsonl"), "student": "toy-dense",
        "student_overrides": {"dim": 48, "n_layers": 2, "inter_dim": 96},
        "tasks": {"tasks": ["addition"], "level": 1},
        "batch": {"seq_len": 256, "batch_size": 2},
        "run": {"output_dir": str(tmp_path / "run"), "steps": 12, "save_every": 6, "progress": False},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
    })
    result = distill(cfg)
    assert result["traces"]["kept"] == 6 and result["traces"]["rejected"]["incorrect"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 12 and records[-1]["loss"] < records[0]["loss"]
    ours = load_model(tmp_path / "run" / "final").eval()
    assert (ours.config.dim, ours.config.n_layers, ours.config.arch) == (48, 2, "qwen2")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final").eval()
    ids = torch.tensor([[1, 5, 40, 41, 42, 43]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


def test_kd_term_is_the_forward_kl_to_the_teacher():
    student = load_model("toy-dense", seed=0).eval()
    teacher = load_model("toy-dense", seed=1).eval()
    ids, mask = [1, 20, 21, 22, 23, 24], [0, 0, 1, 1, 1, 1]
    batch = collate([[Sample(ids, mask)]], pad_id=0, packed=False)
    T = 2.0
    with torch.no_grad():
        _, same = lm_loss(student, batch, teacher=copy.deepcopy(student), kd=KDConfig(weight=1.0, temperature=T))
        _, parts = lm_loss(student, batch, teacher=teacher, kd=KDConfig(weight=1.0, temperature=T))
        x = torch.tensor([ids])
        s, t = student(x)[0, 1:5] / T, teacher(x)[0, 1:5] / T  # positions 1..4 predict the targets 2..5
        kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1).mean() * T**2
    assert same["kd"] == pytest.approx(0.0, abs=1e-6)
    assert parts["kd"] == pytest.approx(kl.item(), rel=1e-5)


def test_config_needs_a_teacher_or_traces_and_kd_needs_logits():
    with pytest.raises(ConfigError, match="teacher"):
        load_config(DistillConfig, overrides={})
    with pytest.raises(ConfigError, match="kd.weight"):
        load_config(DistillConfig, overrides={"traces": "t.jsonl", "kd": {"weight": 0.5}})
