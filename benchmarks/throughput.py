"""Throughput of job -> broker -> subscriber, against raw pyzmq through a proxy in the same run.

Ours: a real `daq broker`, a real `daq job run` (job runtime, Source, Publisher) sending the
same prebuilt table every step, and the real Subscriber in this process decoding every header
and checking every sequence number (a run that loses anything fails). Baseline: a bare no-drop
publisher -> zmq.proxy process -> SUB with the same frame sizes. The two alternate, several
repetitions; the figures are medians and the ratio is ours / raw.
"""

from __future__ import annotations

from typing import Any

from _harness import (
    envelope_sizes,
    median,
    print_table,
    processes,
    run_ours,
    run_raw,
    start_broker,
    start_raw_proxy,
)

COUNTS = {"small": 50_000, "large": 300}
QUICK_COUNTS = {"small": 5_000, "large": 30}
TARGET_SMALL_RATIO = 0.5  # issue 2: small messages >= 50% of raw pyzmq's rate


def run(reps: int = 5, quick: bool = False) -> dict[str, Any]:
    counts = QUICK_COUNTS if quick else COUNTS
    sizes = {shape: envelope_sizes(shape) for shape in counts}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        s: {"ours": [], "raw": []} for s in counts
    }
    with processes() as procs:
        addr = start_broker(procs)
        raw_eps = start_raw_proxy(procs)
        for rep in range(reps):
            for shape, count in counts.items():
                header_size, payload_size = sizes[shape]
                # alternate who goes first, so a slow phase of the machine hits both alike
                order = ("ours", "raw") if rep % 2 == 0 else ("raw", "ours")
                for impl in order:
                    name = f"tp{rep}{shape}"
                    if impl == "ours":
                        got = run_ours(procs, addr, name, shape, count)
                    else:
                        got = run_raw(procs, raw_eps, name, header_size, payload_size, count)
                    runs[shape][impl].append(
                        {"msgs_per_s": got.rate, "mb_per_s": got.mb_per_s / 1e6}
                    )
                    print(
                        f"  rep {rep + 1}/{reps} {shape:5s} {impl:4s} "
                        f"{got.rate:12,.0f} msg/s {got.mb_per_s / 1e6:10,.1f} MB/s",
                        flush=True,
                    )
    summary: dict[str, Any] = {}
    rows = []
    for shape in counts:
        ours, raw = runs[shape]["ours"], runs[shape]["raw"]
        o_rate = median([r["msgs_per_s"] for r in ours])
        r_rate = median([r["msgs_per_s"] for r in raw])
        o_mb = median([r["mb_per_s"] for r in ours])
        r_mb = median([r["mb_per_s"] for r in raw])
        per_rep = median(
            [a["msgs_per_s"] / b["msgs_per_s"] for a, b in zip(ours, raw, strict=True)]
        )
        summary[shape] = {
            "messages_per_run": counts[shape],
            "header_bytes": sizes[shape][0],
            "payload_bytes": sizes[shape][1],
            "ours_msgs_per_s": o_rate,
            "raw_msgs_per_s": r_rate,
            "ours_mb_per_s": o_mb,
            "raw_mb_per_s": r_mb,
            "ratio": o_rate / r_rate,
            "ratio_median_of_reps": per_rep,
        }
        rows.append([shape, sizes[shape][1], o_rate, r_rate, o_mb, r_mb, o_rate / r_rate, per_rep])
    print_table(
        f"throughput (medians of {reps} interleaved repetitions)",
        [
            "table",
            "payload B",
            "ours msg/s",
            "raw msg/s",
            "ours MB/s",
            "raw MB/s",
            "ratio",
            "ratio/rep",
        ],
        rows,
    )
    met = summary["small"]["ratio"] >= TARGET_SMALL_RATIO
    print(
        f"target: small-message rate >= {TARGET_SMALL_RATIO:.0%} of raw pyzmq: "
        f"{summary['small']['ratio']:.0%} -> {'MET' if met else 'NOT MET'}"
    )
    return {
        "reps": reps,
        "quick": quick,
        "runs": runs,
        "summary": summary,
        "targets": {"small_ratio_min": TARGET_SMALL_RATIO, "met": met},
    }
