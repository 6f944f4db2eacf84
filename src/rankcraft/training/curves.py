"""The training-curve plot of a run directory (``curves.png``): per epoch, the training loss and every
validation metric the objective reports on one panel each (log-loss-like metrics and AUCs side by side)."""

from __future__ import annotations

from pathlib import Path

from rankcraft.files import atomic_write_bytes


def plot_curves(history: list[dict], metric_names: list[str], path: str | Path, *, title: str = "") -> None:
    """Write ``path`` (PNG). ``history`` holds one dict per epoch (``epoch``, ``train_loss`` and the validation
    metrics); metrics that are missing or ``None`` in an epoch leave a gap."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    losses = [n for n in metric_names if n.rsplit("/", 1)[-1] in ("logloss", "mse", "mae")]
    scores = [n for n in metric_names if n.rsplit("/", 1)[-1] in ("auc", "gauc")]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)

    def series(name):
        return [h.get(name) if isinstance(h.get(name), (int, float)) else float("nan") for h in history]

    ax1.plot(epochs, series("train_loss"), marker="o", label="train loss (objective total)")
    for n in losses:
        ax1.plot(epochs, series(n), marker="o", label=f"valid {n}")
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax1.legend(fontsize=8)
    for n in scores:
        ax2.plot(epochs, series(n), marker="o", label=f"valid {n}")
    ax2.set_xlabel("epoch")
    ax2.set_title("ranking metrics")
    if scores:
        ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
