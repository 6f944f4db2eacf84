"""The training-curve plot of a run directory (``curves.png``): per epoch (or, for stream training, per time
partition: progressive validation), the training loss and every validation metric the objective reports on one
panel each (log-loss-like metrics and AUCs side by side)."""

from __future__ import annotations

from pathlib import Path

from rankcraft.files import atomic_write_bytes


def plot_curves(history: list[dict], metric_names: list[str], path: str | Path, *, title: str = "",
                x: str = "epoch") -> None:
    """Write ``path`` (PNG). ``history`` holds one dict per epoch (``epoch``, ``train_loss`` and the validation
    metrics) or, with ``x="partition"``, per partition (``partition`` key, progressive metrics); metrics that are
    missing or ``None`` leave a gap."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)] if x == "epoch" else list(range(len(history)))
    losses = [n for n in metric_names if n.rsplit("/", 1)[-1] in ("logloss", "mse", "mae")]
    scores = [n for n in metric_names if n.rsplit("/", 1)[-1] in ("auc", "gauc")]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)

    def series(name):
        return [h.get(name) if isinstance(h.get(name), (int, float)) else float("nan") for h in history]

    what = "valid" if x == "epoch" else "progressive"
    marker = "o" if len(history) <= 60 else None
    ax1.plot(epochs, series("train_loss"), marker=marker, label="train loss (objective total)")
    for n in losses:
        ax1.plot(epochs, series(n), marker=marker, label=f"{what} {n}")
    ax1.set_xlabel(x)
    ax1.set_title("loss")
    ax1.legend(fontsize=8)
    for n in scores:
        ax2.plot(epochs, series(n), marker=marker, label=f"{what} {n}")
    ax2.set_xlabel(x)
    ax2.set_title("ranking metrics")
    if scores:
        ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:  # partition keys as tick labels, at most ~12 of them
            step = max(1, len(history) // 12)
            ticks = list(range(0, len(history), step))
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(history[i].get("partition", i)) for i in ticks], rotation=45, ha="right",
                               fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
