"""Tokenizers and chat templates, through `tokenizers`/`transformers`.

`load_tokenizer(src)` accepts what `load_model` accepts: an HF checkpoint directory, a .gguf file (transformers
rebuilds the tokenizer and chat template from the GGUF metadata), 'smollm2-135m', or a toy preset, which gets
r1kit's character-level tokenizer with an R1-style chat template:
- the generation prompt ends in `<think>\\n`, so the reply starts inside the reasoning block (as R1's does);
- an assistant turn renders `<think>\\n{reasoning}\\n</think>\\n{content}` when it is the last turn and carries a
  `reasoning` field (SFT targets); earlier turns keep only their answer, as R1's template drops old reasoning;
- `tools`, assistant `tool_calls` and `tool` messages render in the Hermes/Qwen2.5 format (r1kit.tools.functions).
"""

from __future__ import annotations

import os
from pathlib import Path

from r1kit.errors import CheckpointError
from r1kit.reasoning import THINK_CLOSE, THINK_OPEN

TOY_SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
TOY_ADDED = [THINK_OPEN, THINK_CLOSE]  # added but not special: decoding keeps them, so reasoning can be split
TOY_CHARS = ["\n", "\t"] + [chr(c) for c in range(32, 127)]

R1_STYLE_TEMPLATE = (
    "{{ bos_token }}"
    # transformers renders with trim_blocks (a newline right after a tag is dropped): such newlines are {{ '\\n' }}
    # tools (OpenAI format) in Qwen2.5's words, after the system text; r1kit.tools.functions writes the same text
    "{% if tools %}<|system|>"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '\\n' }}</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
    "{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% if not (tools and loop.first) %}<|system|>{{ m['content'] }}{% endif %}"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|assistant|>"
    "{% set content = m['content'] or '' %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1].lstrip() %}{% endif %}"
    "{% if loop.last and m.get('reasoning') %}<think>\n{{ m['reasoning'] }}\n</think>\n{% endif %}"
    "{{ content }}"
    "{% for call in m.get('tool_calls') or [] %}"
    "{% set f = call['function'] %}"
    "{% if content or not loop.first %}{{ '\\n' }}{% endif %}"
    "<tool_call>\n{\"name\": \"{{ f['name'] }}\", \"arguments\": "
    "{% if f['arguments'] is string %}{{ f['arguments'] }}{% else %}{{ f['arguments'] | tojson }}{% endif %}"
    "}\n</tool_call>"
    "{% endfor %}"
    "{{ eos_token }}"
    # tool results: a user turn of <tool_response> blocks, one turn per run of tool messages (as Qwen2.5)
    "{% elif m['role'] == 'tool' %}"
    "{% if loop.first or loop.previtem['role'] != 'tool' %}<|user|>{% else %}{{ '\\n' }}{% endif %}"
    "<tool_response>\n{{ m['content'] }}\n</tool_response>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
)


def toy_tokenizer():
    """Character-level tokenizer (vocab < 128) with the R1-style template; ids 0/1/2 are pad/bos/eos."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TOY_SPECIAL + TOY_ADDED + TOY_CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TOY_SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOY_ADDED])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=TOY_SPECIAL[4:], chat_template=R1_STYLE_TEMPLATE, padding_side="right",
    )


def load_tokenizer(src: str | os.PathLike):
    """The tokenizer (a transformers PreTrainedTokenizerFast with a chat template) that goes with a model source."""
    from transformers import AutoTokenizer

    from r1kit.models.checkpoint import resolve_source

    source = resolve_source(src)
    if isinstance(source, str):
        if source.startswith("toy"):
            return toy_tokenizer()
        raise CheckpointError(f"preset {source!r} has no bundled tokenizer; load it from a checkpoint directory")
    source = Path(source)
    if source.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    if not any((source / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise CheckpointError(f"{source}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    if (source / "tokenizer.json").exists():
        # tokenizer.json is the whole tokenizer; AutoTokenizer would pick a class from config.json's model_type
        # (e.g. Qwen2Tokenizer) and rebuild its pre-tokenizer, which changes a custom tokenizer's ids
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(source))
    return AutoTokenizer.from_pretrained(str(source))


def apply_chat_template(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                        tools: list[dict] | None = None) -> str:
    """Render chat messages to a prompt string with the tokenizer's template; `tools` (OpenAI format) go to templates
    that read them (r1kit.tools.functions.render_chat renders them for any template)."""
    if not getattr(tokenizer, "chat_template", None):
        raise CheckpointError("this tokenizer has no chat template; pass already-templated prompt strings")
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **extra)
