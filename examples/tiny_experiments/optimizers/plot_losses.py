"""Plot the training (and evaluation) loss curves of several runs into one PNG.

    python examples/tiny_experiments/optimizers/plot_losses.py \\
        examples/tiny_experiments/optimizers/output_models/* --out optimizers.png

Each argument is a run's output directory (its `trainer_logs.jsonl` files are found below it; a
resumed run's appended records count once) or a log file; the curve is named after the directory.
Needs matplotlib (`pip install matplotlib`). Prints each run's last training and evaluation loss.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from forgather.ml.train.callbacks.logging import find_jsonl_logs, read_jsonl_log


def loss_curves(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    """`({step: training loss}, {step: evaluation loss})` of a run (later records win)."""
    train, evaluation = {}, {}
    for log in find_jsonl_logs(run):
        for record in read_jsonl_log(log):
            step = record.get("global_step")
            if step is None:
                continue
            if isinstance(record.get("loss"), int | float):
                train[step] = record["loss"]
            if isinstance(record.get("eval_loss"), int | float):
                evaluation[step] = record["eval_loss"]
    return train, evaluation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run output directories or log files")
    parser.add_argument("--out", type=Path, default=Path("losses.png"), help="the PNG to write")
    parser.add_argument("--title", default="Training loss by optimizer")
    options = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_losses: needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 2
    figure, (train_axes, eval_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    plotted = 0
    for run in options.runs:
        train, evaluation = loss_curves(run)
        if not train:
            print(f"plot_losses: {run}: no training losses logged, skipped", file=sys.stderr)
            continue
        name = run.name if run.is_dir() else run.parent.name
        steps = sorted(train)
        train_axes.plot(steps, [train[s] for s in steps], label=name)
        if evaluation:
            eval_steps = sorted(evaluation)
            eval_axes.plot(eval_steps, [evaluation[s] for s in eval_steps], marker="o", label=name)
        last_eval = f"{evaluation[max(evaluation)]:.4f}" if evaluation else "-"
        print(f"{name:24s} train loss {train[steps[-1]]:.4f}  eval loss {last_eval}")
        plotted += 1
    if not plotted:
        print("plot_losses: no run had training losses", file=sys.stderr)
        return 1
    for axes, label in ((train_axes, "training loss"), (eval_axes, "evaluation loss")):
        axes.set_xlabel("optimizer step")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(options.title)
    figure.tight_layout()
    options.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(options.out, dpi=120)
    print(f"wrote {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
