#!/usr/bin/env bash
# r1kit on one GPU (H100/H200), in under 8 minutes: one summary line per check.
#
#   scripts/gpu_check.sh              # on a CUDA machine
#   scripts/gpu_check.sh --cpu-smoke  # every check on the CPU at toy sizes: proves the script runs end to end
#
# Checks: (1) the device-aware tests with R1KIT_TEST_DEVICE=cuda; (2) greedy parity with transformers on the
# device (SmolLM2-135M when its weights package is installed, and a tiny DeepseekV3); (3) one bf16 GRPO step;
# (4) SFT throughput and MFU of a 1.5B dense model (distill-qwen-1.5b shape) at seq 4096 in bf16, FLOPs per
# token = 6 * N (non-embedding parameters) + 12 * layers * d_attn * seq (attention, as torchtitan counts it);
# (5) FSDP2 on one GPU (`torchrun --nproc-per-node 1 -m r1kit sft`) against the same run without torchrun;
# (6) the vLLM backend, when vllm is installed; (7) the decode step eager vs compiled with static shapes and CUDA
# graphs (tok/s at batch 1 and 8, greedy replies compared). Logs go to $R1KIT_GPU_CHECK_DIR (default a temp dir).
# Environment: PYTHON (default .venv/bin/python when present), R1KIT_PEAK_TFLOPS (peak bf16 dense TFLOP/s of
# the card when it is not an H100/H200/A100).
set -u
cd "$(dirname "$0")/.."
SMOKE=0
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}
DIR=${R1KIT_GPU_CHECK_DIR:-$(mktemp -d -t r1kit-gpu-check.XXXXXX)}
mkdir -p "$DIR"
DEV=cuda
[[ $SMOKE == 1 ]] && DEV=cpu
export R1KIT_CHECK_DEVICE=$DEV R1KIT_CHECK_SMOKE=$SMOKE PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
START=$(date +%s)
FAILED=0

# check NAME TIMEOUT_S COMMAND...: runs the command, logs it, prints "NAME  PASS|FAIL|SKIP  <its RESULT line>"
check() {
  local name=$1 limit=$(( $2 * (SMOKE ? 3 : 1) )); shift 2  # CPU smoke runs share a few cores: 3x the time
  local t0=$(date +%s) log="$DIR/$name.log" status
  timeout "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local result=$(grep -h '^RESULT:' "$log" | tail -1 | cut -c9-)
  [[ -z "$result" ]] && result="$(grep -v '^\s*$' "$log" | tail -1 | cut -c1-150)"
  if [[ $rc == 0 ]]; then status=PASS; elif grep -q '^SKIP:' "$log"; then status=SKIP
    result=$(grep -h '^SKIP:' "$log" | tail -1 | cut -c7-); else status=FAIL; FAILED=$((FAILED + 1))
    [[ $rc == 124 ]] && result="timed out after ${limit}s"
    [[ -z "$result" ]] && result="$(tail -1 "$log" | cut -c1-150)"; fi
  printf '%-14s %-4s %5ss  %s  (log: %s)\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$result" "$log"
}

cat >"$DIR/checks.py" <<'PYEOF'
"""The Python side of gpu_check.sh: one subcommand per check, each ending with a RESULT: line."""
import json, os, subprocess, sys, tempfile, time
from pathlib import Path

import torch

DEV = torch.device(os.environ["R1KIT_CHECK_DEVICE"])
SMOKE = os.environ["R1KIT_CHECK_SMOKE"] == "1"


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def parity():
    """Greedy tokens of r1kit's engine vs transformers' generate, both on DEV, fp32."""
    import transformers
    from r1kit import load_model, load_tokenizer
    from r1kit.generation import Engine, SamplingParams
    from r1kit.models.checkpoint import save_model

    models = ["toy-moe"] + ([] if SMOKE else ["smollm2-135m"])
    out = []
    for name in models:
        try:
            model = load_model(name, device=DEV).eval()
        except Exception as e:  # the SmolLM2 weights package may be absent
            out.append(f"{name}: skipped ({str(e)[:60]})")
            continue
        tok = load_tokenizer(name)
        d = Path(tempfile.mkdtemp()) / name
        save_model(model, d, tokenizer=tok)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).to(DEV).eval()
        engine = Engine(model, tok, max_batch_size=2)
        prompts = [engine.encode([{"role": "user", "content": p}])[0]
                   for p in ("What is 12 + 30?", "Write a haiku about GPUs.")]
        ours = engine.generate(prompts, SamplingParams(max_new_tokens=24, temperature=0))
        same = 0
        for p, c in zip(prompts, ours):
            ids = torch.tensor([p], device=DEV)
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                              do_sample=False)[0, ids.shape[1]:].tolist()
            n = min(len(ref), len(c.token_ids))
            same += ref[:n] == list(c.token_ids)[:n]
        out.append(f"{name}: {same}/{len(prompts)} prompts identical")
        if same != len(prompts):
            print("RESULT: " + "; ".join(out))
            sys.exit(1)
    print("RESULT: " + "; ".join(out))


def grpo():
    """One GRPO step of the toy MoE on DEV in bf16 autocast (fp32 master weights)."""
    from r1kit.config import load_config
    from r1kit.training.grpo import GRPOConfig, train

    out = Path(tempfile.mkdtemp()) / "grpo"
    cfg = load_config(GRPOConfig, overrides={
        "model": "toy-moe", "questions_per_step": 2 if SMOKE else 4, "num_generations": 4 if SMOKE else 8,
        "max_new_tokens": 16 if SMOKE else 32,
        "loss": {"beta": 0.04}, "data": {"tasks": ["addition"], "num_train": 32, "num_test": 4},
        "run": {"output_dir": str(out), "steps": 1, "save_every": 1, "progress": False,
                "device": DEV.type, "dtype": "bfloat16"}})
    t0 = time.perf_counter()
    m = train(cfg)
    ok = all(m.get(k) is not None for k in ("reward", "grad_norm", "kl")) and m["grad_norm"] == m["grad_norm"]
    print(f"RESULT: step in {time.perf_counter() - t0:.1f}s, reward {m['reward']:.3f}, kl {m['kl']:.2e}, "
          f"grad_norm {m['grad_norm']:.3g}, rollout {m['rollout_tok_s']:.0f} tok/s")
    sys.exit(0 if ok else 1)


def peak_flops() -> float:
    if os.environ.get("R1KIT_PEAK_TFLOPS"):
        return float(os.environ["R1KIT_PEAK_TFLOPS"]) * 1e12
    if DEV.type != "cuda":
        return float("nan")
    name = torch.cuda.get_device_name(DEV)
    table = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
    return next((v for k, v in table.items() if k in name), float("nan"))


def mfu():
    """SFT steps of a dense model (1.5B at seq 4096; toy sizes with --cpu-smoke): tokens/s and MFU."""
    import dataclasses

    from r1kit.models.config import get_preset
    from r1kit.models.transformer import Transformer
    from r1kit.training.lm_loss import lm_loss
    from r1kit.training.loop import amp_dtype
    from r1kit.training.optim import build_optimizer
    from r1kit.training.packing import Batch

    cfg = get_preset("toy-dense" if SMOKE else "distill-qwen-1.5b")
    seq, batch, steps, warmup = (256, 2, 3, 1) if SMOKE else (4096, int(os.environ.get("R1KIT_MFU_BATCH", 1)), 8, 3)
    cfg = dataclasses.replace(cfg, max_seq_len=max(cfg.max_seq_len, seq))
    if DEV.type == "cuda":
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    with torch.device(DEV):
        model = Transformer(cfg)
    model.train()
    if os.environ.get("R1KIT_MFU_CKPT") == "1":
        from r1kit.training.loop import enable_activation_checkpointing
        enable_activation_checkpointing(model)
    opt = build_optimizer(model, 1e-5, 0.1, fused=DEV.type == "cuda")
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.embed_tokens.weight.numel()
    d_attn = cfg.n_heads * cfg.head_dim
    flops_per_token = 6 * (n_params - n_embed) + 12 * cfg.n_layers * d_attn * seq
    ids = torch.randint(3, cfg.vocab_size, (batch, seq), device=DEV)
    b = Batch(ids, torch.ones_like(ids), torch.arange(seq, device=DEV).expand(batch, seq), None)
    dtype = amp_dtype("auto", DEV) or (torch.bfloat16 if not SMOKE else None)
    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(DEV.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = lm_loss(model, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    tok_s = batch * seq / (sum(times) / len(times))
    mfu = tok_s * flops_per_token / peak_flops()
    mem = torch.cuda.max_memory_allocated(DEV) / 2**30 if DEV.type == "cuda" else 0.0
    print(f"RESULT: {n_params / 1e6:,.1f}M params, seq {seq} x {batch}, {tok_s:,.0f} tok/s, "
          f"MFU {100 * mfu:.1f}% (peak {peak_flops() / 1e12:.0f} TFLOP/s, {flops_per_token / 1e9:.2f} GFLOP/token), "
          f"max mem {mem:.1f} GiB")


def fsdp():
    """`torchrun --nproc-per-node 1 -m r1kit sft` (FSDP2 on one device) against the same run without torchrun."""
    root = Path(tempfile.mkdtemp())
    sets = ["model=toy-dense", "tasks.num_train=32", "batch.seq_len=128", "batch.batch_size=8",
            "batch.micro_batch_size=4", "run.steps=4", "run.save_every=4", "run.progress=false",
            f"run.device={DEV.type}", "optim.schedule=constant"]
    losses = {}
    for name, launcher in [("plain", [sys.executable, "-m", "r1kit"]),
                           ("fsdp", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                     "--nproc-per-node", "1", "-m", "r1kit"])]:
        args = launcher + ["sft"] + [a for s in sets + [f"run.output_dir={root / name}"] for a in ("--set", s)]
        subprocess.run(args, check=True)
        losses[name] = [json.loads(line)["loss"] for line in open(root / name / "metrics.jsonl")]
    rel = max(abs(a - b) / abs(a) for a, b in zip(losses["plain"], losses["fsdp"]))
    print(f"RESULT: last loss plain {losses['plain'][-1]:.4f} vs FSDP2 {losses['fsdp'][-1]:.4f}, "
          f"max rel diff {rel:.2e} over 4 steps")
    sys.exit(0 if rel < 0.05 else 1)


def decode():
    """The engine's decode step eager vs compiled (on CUDA: static shapes + CUDA graphs), greedy, batch 1 and 8."""
    from r1kit import load_model, load_tokenizer
    from r1kit.generation import Engine, SamplingParams

    name = "toy-dense" if SMOKE else "smollm2-135m"
    try:
        model = load_model(name, device=DEV).eval()
    except Exception as e:  # the SmolLM2 weights package may be absent
        model, name = load_model("toy-dense", device=DEV).eval(), f"toy-dense ({name}: {str(e)[:40]})"
    tok = load_tokenizer("toy-dense" if name.startswith("toy") else name)
    new = 16 if SMOKE else 128
    prompts = [f"Question {i}: what is {i} + {2 * i}? Explain." for i in range(8)]
    params = SamplingParams(max_new_tokens=new, temperature=0, ignore_eos=True)
    rates, tokens = {}, {}
    for compile in (False, True):
        engine = Engine(model, tok, max_batch_size=8, compile=compile)
        for batch in (1, 8):
            engine.generate(prompts[:batch], params)  # compiles / records every shape the timed run meets
            sync()
            t = time.perf_counter()
            out = engine.generate(prompts[:batch], params)
            sync()
            rates[compile, batch] = batch * new / (time.perf_counter() - t)
            tokens[compile, batch] = [c.token_ids for c in out]
    same = sum(a == b for a, b in zip(tokens[False, 8], tokens[True, 8]))
    graphs = "static shapes + CUDA graphs" if DEV.type == "cuda" else "compiled"
    print(f"RESULT: {name} fp32, {graphs} vs eager: batch 1 {rates[True, 1]:.0f} vs {rates[False, 1]:.0f} tok/s "
          f"({rates[True, 1] / rates[False, 1]:.2f}x), batch 8 {rates[True, 8]:.0f} vs {rates[False, 8]:.0f} "
          f"({rates[True, 8] / rates[False, 8]:.2f}x); greedy replies identical {same}/8")


def vllm():
    """r1kit generate --backend vllm on an exported toy model (when vllm is installed)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("SKIP: vllm not installed")
        sys.exit(3)
    from r1kit import load_model, load_tokenizer
    from r1kit.models.checkpoint import save_model

    d = Path(tempfile.mkdtemp()) / "toy-dense"
    save_model(load_model("toy-dense"), d, tokenizer=load_tokenizer("toy-dense"))
    out = subprocess.run([sys.executable, "-m", "r1kit", "generate", "--backend", "vllm", "--model", str(d),
                          "--prompt", "1 + 1 =", "--temperature", "0", "--max-new-tokens", "16", "--json",
                          "--gpu-memory-utilization", "0.3"], capture_output=True, text=True, check=True)
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"RESULT: {reply['tokens']} tokens, finish_reason {reply['finish_reason']}")


if __name__ == "__main__":
    globals()[sys.argv[1]]()
PYEOF

if [[ $SMOKE == 0 ]] && ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible (use --cpu-smoke to run the checks on the CPU)"; exit 2
fi
$PY -c "import torch; d = torch.cuda.get_device_name(0) if torch.cuda.is_available() and '$DEV' == 'cuda' else 'cpu'; print(f'gpu_check on {d}, torch {torch.__version__}, logs in $DIR')"

TESTS="tests/training/test_device.py tests/generation"
[[ $SMOKE == 1 ]] && TESTS="tests/training/test_device.py"  # the generation tests take minutes on 2 CPU cores
check device-tests 180 env R1KIT_TEST_DEVICE=$DEV $PY -m pytest -q -x -p no:cacheprovider $TESTS
check parity       90  $PY "$DIR/checks.py" parity
check grpo-bf16    120  $PY "$DIR/checks.py" grpo
check sft-mfu      120 $PY "$DIR/checks.py" mfu
check fsdp2-1gpu   90  $PY "$DIR/checks.py" fsdp
check vllm         120 $PY "$DIR/checks.py" vllm
check decode       240 $PY "$DIR/checks.py" decode
echo "gpu_check: $FAILED failed, total $(( $(date +%s) - START ))s"
exit $(( FAILED > 0 ))
