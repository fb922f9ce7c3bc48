"""Run-report plots from a stats history: throughput, latency and loss over time.

matplotlib is imported here only, inside the function, with the Agg backend: plotting works on
a headless DAQ machine over ssh, and `daq --help` never pays for it.
"""

from __future__ import annotations

import math
from pathlib import Path

from enrgdaq_core.stats_history import HistoryError, Series, read_history

GAP_INTERVALS = 3.0  # a pause longer than this many report intervals breaks the line


def _points(series: Series, values: list[float | None]) -> tuple[list, list[float]]:
    """The points to draw, with a break (NaN, which matplotlib does not join) wherever the
    piece did not report for more than GAP_INTERVALS of its usual interval: two runs an
    idle hour apart are two lines, not one slope across the hour."""
    xs: list = []
    ys: list[float] = []
    for t, v in zip(series.time, values, strict=True):
        if v is not None:
            xs.append(t)
            ys.append(v)
    steps = sorted(
        d for d in (b - a for a, b in zip(xs[:-1], xs[1:], strict=True)) if d.total_seconds() > 0
    )
    if not steps:
        return xs, ys
    limit = steps[len(steps) // 2] * GAP_INTERVALS
    out_x, out_y = xs[:1], ys[:1]
    for prev, t, v in zip(xs[:-1], xs[1:], ys[1:], strict=True):
        if t - prev > limit:
            out_x.append(prev + (t - prev) / 2)
            out_y.append(math.nan)
        out_x.append(t)
        out_y.append(v)
    return out_x, out_y


def plot_history(
    history: str | Path,
    output: str | Path,
    *,
    title: str | None = None,
    pieces: list[str] | None = None,
    dpi: int = 110,
) -> Path:
    """Draw the three panels into `output` (PNG, SVG or PDF by extension); returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    series = read_history(history)
    if pieces:
        import fnmatch

        series = [s for s in series if any(fnmatch.fnmatchcase(s.piece, p) for p in pieces)]
    if not series:
        raise HistoryError(f"{history}: no rows" + (" for those pieces" if pieces else ""))
    output = Path(output)
    fig, (ax_rate, ax_lat, ax_lost) = plt.subplots(
        3, 1, sharex=True, figsize=(10, 8), constrained_layout=True
    )
    try:
        colour = {s.label: f"C{i % 10}" for i, s in enumerate(series)}  # one per piece
        for s in series:
            xs, ys = _points(s, s.rate())
            if xs:
                ax_rate.plot(xs, ys, label=s.label, linewidth=1.2, color=colour[s.label])
        ax_rate.set_ylabel("messages/s")
        ax_rate.set_title("throughput (out for sources, in for stores and the broker)", fontsize=9)

        drew_latency = False
        for s in series:
            for col, style in (("latency_p50_ms", "-"), ("latency_p99_ms", "--")):
                xs, ys = _points(s, s.column(col))
                if xs:
                    q = col.split("_")[1]
                    ax_lat.plot(
                        xs, ys, style, label=f"{s.label} {q}", linewidth=1.0, color=colour[s.label]
                    )
                    drew_latency = True
        ax_lat.set_ylabel("latency (ms)")
        ax_lat.set_title("end-to-end latency, p50 (solid) and p99 (dashed)", fontsize=9)
        if not drew_latency:
            ax_lat.text(0.5, 0.5, "no latency recorded", ha="center", transform=ax_lat.transAxes)

        drew_lost = False
        for s in series:
            xs, ys = _points(s, s.column("lost"))
            if xs and max((y for y in ys if not math.isnan(y)), default=0) > 0:
                ax_lost.step(
                    xs, ys, where="post", label=s.label, linewidth=1.2, color=colour[s.label]
                )
                drew_lost = True
        ax_lost.set_ylabel("messages lost")
        ax_lost.set_title("messages lost (cumulative, from sequence gaps)", fontsize=9)
        if not drew_lost:
            ax_lost.text(0.5, 0.5, "no messages lost", ha="center", transform=ax_lost.transAxes)

        for ax, drew in ((ax_rate, True), (ax_lat, drew_latency), (ax_lost, drew_lost)):
            ax.grid(True, alpha=0.3)
            if drew and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="upper left", ncol=2)
        ax_lost.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax_lost.set_xlabel("time (UTC)")
        fig.suptitle(title or f"enrgdaq run: {Path(history).name}")
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=dpi)
    finally:
        plt.close(fig)
    return output
