"""Latency at 1 kHz: job -> broker -> subscriber against raw pyzmq through a proxy, same run.

A 1-row table every millisecond. Ours: the send time is the header's `time_ns`, stamped by
Source before the table is encoded, so the figure includes encoding, the broker and decoding
the header. Baseline: the bare publisher stamps the time just before its send. Both receivers
read the clock right after a message arrives (same host, same clock). The first messages of a
run are dropped from the figures (connection warm-up). Medians over interleaved repetitions.
"""

from __future__ import annotations

from typing import Any

from _harness import (
    envelope_sizes,
    median,
    print_table,
    processes,
    quantile,
    run_ours,
    run_raw,
    start_broker,
    start_raw_proxy,
)

RATE_HZ = 1000.0
COUNT, QUICK_COUNT = 3000, 300
WARMUP, QUICK_WARMUP = 100, 20
TARGET_P99_RATIO = 2.0  # issue 2: p99 latency <= 2x raw pyzmq's


def _figures(latencies_ns: list[int], warmup: int) -> dict[str, float]:
    us = [v / 1e3 for v in latencies_ns[warmup:]]
    return {
        "p50_us": quantile(us, 0.50),
        "p99_us": quantile(us, 0.99),
        "max_us": max(us),
        "n": float(len(us)),
    }


def run(reps: int = 5, quick: bool = False) -> dict[str, Any]:
    count = QUICK_COUNT if quick else COUNT
    warmup = QUICK_WARMUP if quick else WARMUP
    header_size, payload_size = envelope_sizes("small")
    interval = 1.0 / RATE_HZ
    runs: dict[str, list[dict[str, float]]] = {"ours": [], "raw": []}
    with processes() as procs:
        addr = start_broker(procs)
        raw_eps = start_raw_proxy(procs)
        for rep in range(reps):
            order = ("ours", "raw") if rep % 2 == 0 else ("raw", "ours")
            for impl in order:
                name = f"lat{rep}"
                if impl == "ours":
                    got = run_ours(procs, addr, name, "small", count, interval)
                else:
                    got = run_raw(procs, raw_eps, name, header_size, payload_size, count, interval)
                fig = _figures(got.latencies_ns, warmup)
                fig["rate_hz"] = got.rate
                runs[impl].append(fig)
                print(
                    f"  rep {rep + 1}/{reps} {impl:4s} p50 {fig['p50_us']:8.1f} us  "
                    f"p99 {fig['p99_us']:8.1f} us  max {fig['max_us']:9.1f} us  "
                    f"at {got.rate:6.0f} Hz",
                    flush=True,
                )
    summary: dict[str, Any] = {}
    for impl in runs:
        for key in ("p50_us", "p99_us", "max_us", "rate_hz"):
            summary[f"{impl}_{key}"] = median([r[key] for r in runs[impl]])
    summary["p50_ratio"] = summary["ours_p50_us"] / summary["raw_p50_us"]
    summary["p99_ratio"] = summary["ours_p99_us"] / summary["raw_p99_us"]
    summary["p99_ratio_median_of_reps"] = median(
        [a["p99_us"] / b["p99_us"] for a, b in zip(runs["ours"], runs["raw"], strict=True)]
    )
    print_table(
        f"latency at {RATE_HZ:g} Hz, 1-row tables (medians of {reps} interleaved repetitions, us)",
        ["", "p50", "p99", "max", "rate Hz"],
        [
            [impl] + [summary[f"{impl}_{k}"] for k in ("p50_us", "p99_us", "max_us", "rate_hz")]
            for impl in runs
        ]
        + [["ratio", summary["p50_ratio"], summary["p99_ratio"], float("nan"), float("nan")]],
    )
    met = summary["p99_ratio"] <= TARGET_P99_RATIO
    print(
        f"target: p99 <= {TARGET_P99_RATIO:g}x raw pyzmq: {summary['p99_ratio']:.2f}x -> "
        f"{'MET' if met else 'NOT MET'}"
    )
    return {
        "reps": reps,
        "quick": quick,
        "rate_hz": RATE_HZ,
        "messages_per_run": count,
        "warmup_dropped": warmup,
        "runs": runs,
        "summary": summary,
        "targets": {"p99_ratio_max": TARGET_P99_RATIO, "met": met},
    }
