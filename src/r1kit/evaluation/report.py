"""A run's outputs beside the R1 paper's published numbers: summary.json, report.md, a length plot.

Published numbers are from the DeepSeek-R1 report (arXiv:2501.12948): Table 2 (R1-Zero vs. o1),
Table 4 (R1 vs. frontier models) and Table 5 (distilled models), in percent. The paper gives no
cons@64 for R1 itself (86.7 is R1-Zero's); blanks are numbers the paper does not report.
Leaves out: other papers' numbers, and benchmarks the R1 tables lack (GSM8K, HumanEval, synthetic tasks).
"""

from __future__ import annotations

from pathlib import Path

from r1kit.io import atomic_write, atomic_write_json, atomic_write_text

# (benchmark, metric) columns of the R1 tables, in the order the values below are given.
COLUMNS = (
    ("aime24", "pass@1"),
    ("aime24", "cons@64"),
    ("math500", "pass@1"),
    ("gpqa-diamond", "pass@1"),
    ("livecodebench", "pass@1"),
    ("mmlu", "pass@1"),
)


def _row(*values: float | None) -> dict[tuple[str, str], float]:
    return {col: v for col, v in zip(COLUMNS, values, strict=True) if v is not None}


PUBLISHED: dict[str, dict[tuple[str, str], float]] = {
    # Table 4 (MMLU, GPQA, LCB, AIME pass@1, MATH-500) and Tables 2/5 (AIME cons@64)
    "DeepSeek-R1": _row(79.8, None, 97.3, 71.5, 65.9, 90.8),
    "DeepSeek-R1-Zero": _row(71.0, 86.7, 95.9, 73.3, 50.0, None),
    "OpenAI-o1-1217": _row(79.2, None, 96.4, 75.7, 63.4, 91.8),
    "OpenAI-o1-mini": _row(63.6, 80.0, 90.0, 60.0, 53.8, 85.2),
    "DeepSeek-V3": _row(39.2, None, 90.2, 59.1, 36.2, 88.5),
    "GPT-4o-0513": _row(9.3, 13.4, 74.6, 49.9, 32.9, 87.2),
    "Claude-3.5-Sonnet-1022": _row(16.0, 26.7, 78.3, 65.0, 38.9, 88.3),
    "QwQ-32B-Preview": _row(50.0, 60.0, 90.6, 54.5, 41.9, None),
    # Table 5: distilled dense models
    "DeepSeek-R1-Distill-Qwen-1.5B": _row(28.9, 52.7, 83.9, 33.8, 16.9, None),
    "DeepSeek-R1-Distill-Qwen-7B": _row(55.5, 83.3, 92.8, 49.1, 37.6, None),
    "DeepSeek-R1-Distill-Qwen-14B": _row(69.7, 80.0, 93.9, 59.1, 53.1, None),
    "DeepSeek-R1-Distill-Qwen-32B": _row(72.6, 83.3, 94.3, 62.1, 57.2, None),
    "DeepSeek-R1-Distill-Llama-8B": _row(50.4, 80.0, 89.1, 49.0, 39.6, None),
    "DeepSeek-R1-Distill-Llama-70B": _row(70.0, 86.7, 94.5, 65.2, 57.5, None),
}


def published_for(benchmark: str) -> dict[str, dict[str, float]]:
    """{model: {metric: percent}} of the R1 paper for `benchmark`; empty when the paper does not report it."""
    out: dict[str, dict[str, float]] = {}
    for model, row in PUBLISHED.items():
        metrics = {metric: v for (bench, metric), v in row.items() if bench == benchmark}
        if metrics:
            out[model] = metrics
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def score_lines(summary: dict) -> list[tuple[str, str]]:
    """(metric, "value ± stderr" in percent) for every score of the summary, pass@k first."""
    keys = [k for k in summary if (k.startswith(("pass@", "cons@"))) and not k.endswith("_stderr")]
    return [(k, f"{_pct(summary[k])} ± {_pct(summary[k + '_stderr'])}") for k in keys]


def render_report(summary: dict, plot_name: str | None) -> str:
    """report.md: settings, scores, the paper's numbers for the same benchmark, and the length analysis."""
    s = summary["settings"]
    lines = [
        f"# {summary['benchmark']}: {summary['model']}",
        "",
        (
            f"{summary['problems']} problems x {summary['samples']} samples; temperature {s['temperature']}, "
            f"top-p {s['top_p']}, max {s['max_new_tokens']} new tokens, seed {s['seed']}, "
            f"{'chat template' if s['chat'] else 'raw prompt'}. "
            "Scores in percent, ± one standard error over problems."
        ),
        "",
        "| metric | score |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in score_lines(summary)],
        f"| mean output tokens | {summary['mean_tokens']:.1f} |",
        f"| truncated (hit max tokens), % | {_pct(summary['truncation_rate'])} |",
        "",
        "## Published numbers (DeepSeek-R1 report, arXiv:2501.12948)",
        "",
    ]
    published = summary["published"]
    if published:
        metrics = sorted({m for v in published.values() for m in v})
        ours = [_pct(summary[m]) if m in summary else "-" for m in metrics]
        lines += [
            "| model | " + " | ".join(metrics) + " |",
            "|---|" + "---|" * len(metrics),
            f"| **this run: {summary['model']}** | " + " | ".join(ours) + " |",
            *[
                f"| {model} | " + " | ".join(f"{v[m]:.1f}" if m in v else "-" for m in metrics) + " |"
                for model, v in published.items()
            ],
            "",
            (
                "The paper samples with temperature 0.6, top-p 0.95 and up to 32,768 tokens; "
                "compare with care when this run's budget or k differ."
            ),
        ]
    else:
        lines.append(f"The R1 report publishes no numbers for {summary['benchmark']}.")
    lines += ["", "## Accuracy by output length", "", "| tokens | samples | accuracy |", "|---|---|---|"]
    lines += [
        f"| {b['lo']}-{b['hi']} | {b['count']} | {_pct(b['accuracy'])} |"
        for b in summary["accuracy_by_length"]
    ]
    if plot_name:
        lines += ["", f"![accuracy against output length]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot_accuracy_by_length(summary: dict, path: Path) -> None:
    """A bar chart of accuracy per output-length bin (bar labels: sample counts), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = summary["accuracy_by_length"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
    width = max((bins[0]["hi"] - bins[0]["lo"]) * 0.9, 1) if bins else 1
    bars = ax.bar(centers, [100 * b["accuracy"] for b in bins], width=width, color="#4c72b0")
    ax.bar_label(bars, labels=[str(b["count"]) for b in bins], fontsize=7)
    ax.set_xlabel("output length (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{summary['benchmark']}: {summary['model']} (bar labels: samples)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def write_outputs(out_dir: Path, summary: dict) -> None:
    """summary.json, report.md and accuracy_vs_length.png in `out_dir`, each written atomically."""
    plot_name = "accuracy_vs_length.png"
    plot_accuracy_by_length(summary, out_dir / plot_name)
    atomic_write_text(out_dir / "report.md", render_report(summary, plot_name))
    atomic_write_json(out_dir / "summary.json", summary)
