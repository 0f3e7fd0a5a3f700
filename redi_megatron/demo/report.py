"""The demo's summary: a results table and the training curves as PNG files."""

import json
from pathlib import Path


def read_metrics(log_dir: str | Path) -> list[dict]:
    """Return the per-step metrics a training run wrote to log_dir/metrics.jsonl."""
    path = Path(log_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def trend(metrics: list[dict], key: str) -> tuple[float | None, float | None]:
    """Return (mean of the first 3 steps, mean of the last 3 steps) of a metric, None where absent."""
    values = [m[key] for m in metrics if m.get(key) is not None]
    if not values:
        return None, None
    head, tail = values[:3], values[-3:]
    return sum(head) / len(head), sum(tail) / len(tail)


def results_table(rows: list[dict]) -> str:
    """Return a fixed-width table: method, steps, held-out accuracy, chosen/rejected log-prob start -> end."""
    def span(pair):
        start, end = pair
        return "-" if start is None else f"{start:7.3f} -> {end:7.3f}"

    lines = [f"{'method':<16} {'steps':>5} {'held-out acc':>13}   {'logp chosen (first->last)':>26}   "
             f"{'logp rejected (first->last)':>28}"]
    for row in rows:
        accuracy = f"{100 * row['accuracy']:.1f}% ± {100 * row['stderr']:.1f}"
        lines.append(f"{row['method']:<16} {row['steps']:>5} {accuracy:>13}   {span(row['chosen']):>26}   "
                     f"{span(row['rejected']):>28}")
    return "\n".join(lines)


def plot_curves(runs: dict[str, list[dict]], accuracies: dict[str, float], out_dir: str | Path) -> list[str]:
    """Return the paths of the PNGs written: loss per run, chosen/rejected log-probs, held-out accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths = []
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, metrics in runs.items():
        axis.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], label=name)
    axis.set(xlabel="step", ylabel="loss", title="Training loss per run")
    axis.legend()
    paths.append(_save(figure, out_dir / "loss_curves.png"))

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, metrics in runs.items():
        steps = [m["step"] for m in metrics if m.get("logp_chosen") is not None]
        if not steps:
            continue
        line, = axis.plot(steps, [m["logp_chosen"] for m in metrics if m.get("logp_chosen") is not None],
                          label=f"{name} chosen")
        rejected = [(m["step"], m["logp_rejected"]) for m in metrics if m.get("logp_rejected") is not None]
        if rejected:
            axis.plot(*zip(*rejected), linestyle="--", color=line.get_color(), label=f"{name} rejected")
    axis.set(xlabel="step", ylabel="mean log-prob per token", title="Chosen (solid) vs rejected (dashed)")
    axis.legend(fontsize=8)
    paths.append(_save(figure, out_dir / "logprob_curves.png"))

    figure, axis = plt.subplots(figsize=(6, 4))
    names = list(accuracies)
    axis.bar(names, [100 * accuracies[n] for n in names], color="tab:blue")
    axis.set(ylabel="held-out pass@1 (%)", title="pass@1 over sampled answers, held-out problems")
    paths.append(_save(figure, out_dir / "accuracy.png"))
    return paths


def _save(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return str(path)
