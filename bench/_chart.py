"""``bench-results.png``: the throughput and latency figures as bar charts.

One panel per figure whose ``chart`` is ``"throughput"`` or ``"latency"``: a
horizontal bar per contestant at its median, a whisker from its minimum to its
maximum; ours in blue, the peers in grey (the C ceiling, ``mosquitto_pub``, in
light grey).  Latency panels show each extra metric (the p99) as a second,
hatched bar.  Needs matplotlib (the ``bench`` extra: ``pip install -e
'.[bench]'``); drawn with the Agg backend, no display needed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .harness import FigureResult

OURS = "#1f77b4"
PEER = "#8c8c8c"
CEILING = "#d0d0d0"


def _label(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:,.1f}k"
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def draw(results: Sequence[FigureResult], path: Path, *, subtitle: str = "") -> bool:
    """Draw the charted figures of ``results`` into ``path``; False if there are none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [r for r in results if r.status == "ok" and r.figure.chart in
              ("throughput", "latency") and r.contestants]
    panels.sort(key=lambda r: r.figure.chart != "throughput")  # throughput first
    if not panels:
        return False
    heights = [max(1.6, 0.42 * len(r.contestants) * (1 + len(r.figure.metrics)) + 0.9)
               for r in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, result in zip(axes[:, 0], panels, strict=True):
        _panel(ax, result)
    title = "iotdev against paho-mqtt 1.6, azure-iot-device 2.14 and mosquitto_pub"
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _panel(ax: Any, result: FigureResult) -> None:
    figure = result.figure
    metrics: list[tuple[str | None, str]] = [(None, "median")]
    metrics += [(m.name, m.title or m.name) for m in figure.metrics]
    names = [c.name for c in result.contestants]
    band = 0.8 / len(metrics)
    top = 0.0
    for offset, (metric, label) in enumerate(metrics):
        for row, c in enumerate(result.contestants):
            samples = c.metric(metric)
            if not samples:
                continue
            median = statistics.median(samples)
            y = row + (offset - (len(metrics) - 1) / 2) * band
            colour = OURS if c.ours else (CEILING if "mosquitto_pub" in c.name else PEER)
            ax.barh(y, median, height=band * 0.9, color=colour,
                    hatch="//" if metric is not None else None, edgecolor="white",
                    xerr=[[median - min(samples)], [max(samples) - median]],
                    error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
            text = _label(median) + (f"  {label}" if metric is not None else "")
            ax.text(max(samples), y, "  " + text, va="center", fontsize=7)
            top = max(top, max(samples))
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{n} (ours)" if c.ours else n
                        for n, c in zip(names, result.contestants, strict=True)], fontsize=8)
    ax.invert_yaxis()
    better = "higher" if figure.higher_is_better else "lower"
    ax.set_xlabel(f"{figure.unit} ({better} is better; bar = median, whisker = min-max of "
                  f"{result.rounds} runs)", fontsize=7)
    ax.set_xlim(0, top * 1.3 if top > 0 else 1)
    ax.set_title(f"{figure.name}: {figure.title}", fontsize=8, loc="left")
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
