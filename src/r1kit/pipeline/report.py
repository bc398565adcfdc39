"""The pipeline report: one self-contained HTML page (plots inlined) and a Markdown twin.

Sections: stage-by-stage accuracy (pass@1 over k samples and cons@k per task), the reward / accuracy /
response-length curves of each RL stage, expert load per task domain for the MoE models, sample reasoning
traces before and after RL, and the distilled student against its teacher.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from r1kit.io import atomic_write, atomic_write_text
from r1kit.pipeline.recipe import Recipe


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    return path


def accuracy_rows(recipe: Recipe, results: dict) -> list[dict]:
    """Per stage: pass@1, its stderr and cons@k of each evaluation set; their mean, mean tokens and truncation
    rate over the R1-protocol sets (a greedy run is a column of its own, outside the means)."""
    rows = []
    for stage, per_task in results.items():
        row = {"stage": stage, "kind": recipe.stage(stage).kind}
        for task, s in per_task.items():
            row[task] = s["pass@1"]
            row[f"{task} stderr"] = s.get("pass@1_stderr", 0.0)
            row[f"{task} cons"] = next((v for k, v in s.items() if k.startswith("cons@") and "stderr" not in k), None)
            row[f"{task} truncated"] = s.get("truncation_rate", 0.0)
        protocol = [s for task, s in per_task.items() if not task.endswith("-greedy")] or list(per_task.values())
        row["mean"] = sum(s["pass@1"] for s in protocol) / max(len(protocol), 1)
        row["tokens"] = sum(s["mean_tokens"] for s in protocol) / max(len(protocol), 1)
        row["truncated"] = sum(s.get("truncation_rate", 0.0) for s in protocol) / max(len(protocol), 1)
        rows.append(row)
    return rows


def accuracy_plot(rows: list[dict], tasks: list[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 3.6))
    width = 0.8 / (len(tasks) + 1)
    for j, task in enumerate(tasks + ["mean"]):
        ax.bar([i + j * width for i in range(len(rows))], [100 * r[task] for r in rows], width, label=task)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [r["stage"] for r in rows], rotation=20)
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=len(tasks) + 1)
    ax.set_title("Held-out accuracy by stage")
    return _save(fig, path)


def rl_curves(recipe: Recipe, path: Path) -> Path | None:
    from r1kit.training.metrics import read_metrics

    runs = {s.name: read_metrics(recipe.stage_dir(s.name)) for s in recipe.stages if s.kind == "grpo"}
    runs = {k: [r for r in v if "reward" in r] for k, v in runs.items()}
    if not any(runs.values()):
        return None
    keys = [("reward", "reward"), ("accuracy", "train accuracy"), ("completion_len", "response length (tokens)"),
            ("kl", "KL to the reference")]
    keys = [(k, label) for k, label in keys if any(r.get(k) is not None for recs in runs.values() for r in recs)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    axes = axes[0]
    for ax, (key, label) in zip(axes, keys):
        for i, (name, recs) in enumerate(runs.items()):
            pts = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
            if pts:
                steps, values = zip(*pts)
                color = f"C{i}"
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
                ax.plot(steps, _moving_average(values, 8), color=color, linewidth=2, label=name)
        ax.set_xlabel("step")
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("GRPO stages (thin: per step; thick: 8-step moving average)", y=1.03)
    return _save(fig, path)


def rl_summary(recipe: Recipe, window: int = 10) -> list[str]:
    """Per GRPO stage: its own train reward and accuracy over the first and the last `window` steps."""
    from r1kit.training.metrics import read_metrics

    lines = []
    for stage in (s for s in recipe.stages if s.kind == "grpo"):
        recs = [r for r in read_metrics(recipe.stage_dir(stage.name)) if r.get("reward") is not None]
        if len(recs) < 2:
            continue
        w = min(window, len(recs) // 2)

        def mean(key, part):
            values = [r[key] for r in part if r.get(key) is not None]
            return sum(values) / len(values) if values else float("nan")

        first, last = recs[:w], recs[-w:]
        lines.append(f"RL stage `{stage.name}`: train reward {mean('reward', first):.3f} (first {w} steps) -> "
                     f"{mean('reward', last):.3f} (last {w}); train accuracy {100 * mean('accuracy', first):.1f}% -> "
                     f"{100 * mean('accuracy', last):.1f}%.")
    return lines


def _moving_average(values, window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def expert_load(recipe: Recipe, stage: str, n: int = 64) -> dict[str, list[list[float]]]:
    """Per task: the fraction of routed tokens each expert receives in each MoE layer, on held-out prompts."""
    import torch

    import r1kit
    from r1kit.models.moe import MoE
    from r1kit.training.tasks import example_messages, load_examples

    model = r1kit.load_model(recipe.model_path(stage))
    tok = r1kit.load_tokenizer(recipe.model_path(stage))
    layers = [block.mlp for block in model.layers if isinstance(block.mlp, MoE)]  # the main model's, not MTP's
    if not layers:
        return {}
    loads = {}
    examples = load_examples(recipe.tasks, "test", recipe.seed)
    for task in recipe.tasks.tasks:
        texts = [tok.apply_chat_template(example_messages(ex, recipe.tasks) + [
            {"role": "assistant", "content": f"Answer: {ex['answer']}", "reasoning": ex.get("solution", "")}],
            tokenize=False) for ex in examples if ex.get("task") == task][:n]
        model.train()  # MoE layers count routed tokens in training mode; no gradient is taken
        for m in layers:
            m.expert_load.zero_()
        with torch.no_grad():
            for text in texts:
                model(torch.tensor([tok(text, add_special_tokens=False).input_ids]))
        loads[task] = [(m.expert_load / m.expert_load.sum().clamp(min=1)).tolist() for m in layers]
    return loads


def expert_plot(loads: dict, stage: str, path: Path) -> Path | None:
    if not loads:
        return None
    tasks = list(loads)
    n_layers = len(next(iter(loads.values())))
    fig, axes = plt.subplots(1, n_layers, figsize=(3.6 * n_layers, 0.5 * len(tasks) + 1.6), squeeze=False)
    for layer, ax in enumerate(axes[0]):
        grid = [loads[t][layer] for t in tasks]
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
        ax.set_yticks(range(len(tasks)), tasks if layer == 0 else [""] * len(tasks))
        ax.set_xlabel("expert")
        ax.set_title(f"MoE layer {layer + 1}")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"Share of routed tokens per expert, by task ({stage})", y=1.04)
    return _save(fig, path)


def sample_traces(recipe: Recipe, before: str, after: str, per_task: int = 1) -> list[dict]:
    from r1kit.pipeline.evaluate import eval_names

    out = []
    names = eval_names(recipe)
    for task in names[-1:] if recipe.evaluate.benchmark else names:  # a benchmark: its last (greedy) set
        recs = {}
        for stage in (before, after):
            p = recipe.output_dir / "eval" / stage / task / "samples.jsonl"
            recs[stage] = [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []
        for rec in recs[after][:per_task]:
            prior = next((r for r in recs[before] if r.get("problem_id") == rec.get("problem_id")), None)
            out.append({"task": task, "question": rec.get("prompt", ""), "gold": rec.get("gold"),
                        "before": prior, "after": rec})
    return out


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def write_report(recipe: Recipe, results: dict, timings: dict) -> Path:
    from r1kit.pipeline.evaluate import eval_names

    out = recipe.output_dir
    tasks = eval_names(recipe)
    rows = accuracy_rows(recipe, results)
    images = {"accuracy": accuracy_plot(rows, tasks, out / "accuracy_by_stage.png")}
    if (curves := rl_curves(recipe, out / "rl_curves.png")) is not None:
        images["rl"] = curves
    rl_stages = [s.name for s in recipe.stages if s.kind == "grpo"]
    moe_stage = rl_stages[-1] if rl_stages else None
    if moe_stage and (plot := expert_plot(expert_load(recipe, moe_stage), moe_stage, out / "expert_load.png")):
        images["experts"] = plot
    first = next((s.name for s in recipe.stages if s.kind == "pretrain"), rows[0]["stage"] if rows else None)
    per_task = 3 if recipe.evaluate.benchmark else 1
    traces = sample_traces(recipe, first, rl_stages[-1], per_task) if rl_stages and first else []
    k = recipe.evaluate.samples
    voted = [t for t in tasks if not t.endswith("-greedy")]  # one greedy sample has no majority vote
    header = ["stage", "kind"] + [f"{t} pass@1" for t in tasks] + [f"{t} cons@{k}" for t in voted] + \
        ["mean pass@1", "mean tokens", "truncated"]
    table = [[r["stage"], r["kind"]] + [f"{_pct(r[t])} ± {_pct(r[f'{t} stderr'])}" for t in tasks] +
             [_pct(r[f"{t} cons"]) for t in voted] + [_pct(r["mean"]), f"{r['tokens']:.0f}", _pct(r["truncated"])]
             for r in rows]
    distill = [s for s in recipe.stages if s.kind == "distill"]
    notes = rl_summary(recipe)
    if distill and distill[0].name in results and distill[0].init in results:
        st = next(r for r in rows if r["stage"] == distill[0].name)
        te = next(r for r in rows if r["stage"] == distill[0].init)
        notes.append(f"Distilled student `{distill[0].name}` keeps {100 * st['mean'] / max(te['mean'], 1e-9):.0f}% "
                        f"of its teacher `{distill[0].init}`'s mean pass@1 ({_pct(st['mean'])} vs {_pct(te['mean'])}), "
                        f"with {_params(recipe, distill[0].name):,} parameters against "
                     f"{_params(recipe, distill[0].init):,}.")
    md = _markdown(recipe, header, table, images, traces, notes, timings)
    atomic_write_text(out / "report.md", md)
    page = _html(recipe, header, table, images, traces, notes, timings)
    return atomic_write_text(out / "report.html", page)


def _params(recipe: Recipe, stage: str) -> int:
    from r1kit.models.config import load_hf_config
    from r1kit.models.params import count_params

    return count_params(load_hf_config(recipe.model_path(stage)))["total"]


def _markdown(recipe, header, table, images, traces, notes, timings) -> str:
    lines = [f"# r1kit pipeline report: {recipe.name}", "",
             (f"Held-out accuracy, R1 protocol: temperature {recipe.evaluate.temperature}, top-p "
             f"{recipe.evaluate.top_p}, {recipe.evaluate.samples} samples per problem, "
             f"{recipe.evaluate.problems} problems per task (percent)."), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    for note in notes:
        lines += ["", note]
    for key, title in (("accuracy", "Accuracy by stage"), ("rl", "RL curves"), ("experts", "Expert load by task")):
        if key in images:
            lines += ["", f"## {title}", "", f"![{title}]({images[key].name})"]
    if traces:
        lines += ["", "## Sample traces before and after RL"]
        for t in traces:
            lines += ["", f"**{t['task']}** (gold `{t['gold']}`)", ""]
            for label in ("before", "after"):
                rec = t[label] or {}
                text = (rec.get("reasoning") or "") + " → " + (rec.get("answer") or "")
                lines.append(f"- {label}: `{text.strip()[:300]}` ({'correct' if rec.get('correct') else 'wrong'})")
    lines += ["", "## Time per stage (s)", "", ", ".join(f"{k}: {v}" for k, v in timings.items())]
    return "\n".join(lines) + "\n"


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html(recipe, header, table, images, traces, notes, timings) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>r1kit: {e(recipe.name)}</title>",
             ("<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}"
             ".ok{color:#070}.bad{color:#a00}img{max-width:100%}</style></head><body>"),
             f"<h1>r1kit pipeline report: {e(recipe.name)}</h1>",
             (f"<p>Held-out accuracy with the R1 protocol: temperature {recipe.evaluate.temperature}, top-p "
             f"{recipe.evaluate.top_p}, {recipe.evaluate.samples} samples per problem, {recipe.evaluate.problems} "
             "problems per task; pass@1 is the mean over samples, cons@k the majority vote (percent).</p>"),
             "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table]
    parts.append("</table>")
    parts += [f"<p>{e(note)}</p>" for note in notes]
    for key, title in (("accuracy", "Accuracy by stage"), ("rl", "RL curves: reward, accuracy, response length"),
                       ("experts", "Expert load per task domain")):
        if key in images:
            parts += [f"<h2>{title}</h2>", f"<img src='{_img(images[key])}' alt='{title}'>"]
    if traces:
        parts.append("<h2>Sample reasoning traces before and after RL</h2>")
        for t in traces:
            parts.append(f"<h3>{e(t['task'])}: gold <code>{e(str(t['gold']))}</code></h3>")
            for label in ("before", "after"):
                rec = t[label] or {}
                cls = "ok" if rec.get("correct") else "bad"
                parts.append(f"<p class='{cls}'>{label} ({'correct' if rec.get('correct') else 'wrong'})</p>"
                             f"<pre>&lt;think&gt;{e(rec.get('reasoning') or '')}&lt;/think&gt;\n"
                             f"{e(rec.get('answer') or '')}</pre>")
    parts.append("<h2>Time per stage (seconds)</h2><p>" + e(", ".join(f"{k}: {v}" for k, v in timings.items())) +
                 "</p></body></html>")
    return "\n".join(parts)
