"""Throughput of job -> broker -> subscriber, against raw pyzmq through a proxy in the same run.

Ours: a real `daq broker`, a real `daq job run` (job runtime, Source, Publisher) sending the
same prebuilt table every step, and the real Subscriber in this process decoding every header
and checking every sequence number (a run that loses anything fails). Baseline (raw): a bare
no-drop publisher -> zmq.proxy process -> SUB with the same frame sizes. A third run (bare)
puts our job and Subscriber on the baseline's bare proxy, which splits what we add into the
broker's share and the endpoints' share. The three alternate, several repetitions; figures
are medians, ratios are to raw.
"""

from __future__ import annotations

from typing import Any

from _harness import (
    bare_address,
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
IMPLS = ("ours", "bare", "raw")
TARGET_SMALL_RATIO = 0.5  # issue 2: small messages >= 50% of raw pyzmq's rate


def run(reps: int = 5, quick: bool = False) -> dict[str, Any]:
    counts = QUICK_COUNTS if quick else COUNTS
    sizes = {shape: envelope_sizes(shape) for shape in counts}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {impl: [] for impl in IMPLS} for s in counts
    }
    with processes() as procs:
        addr = start_broker(procs)
        raw_eps = start_raw_proxy(procs)
        bare = bare_address(procs)
        for rep in range(reps):
            for shape, count in counts.items():
                header_size, payload_size = sizes[shape]
                # rotate who goes first, so a slow phase of the machine hits all alike
                order = IMPLS[rep % 3 :] + IMPLS[: rep % 3]
                for impl in order:
                    name = f"tp{rep}{shape}{impl}"
                    if impl == "ours":
                        got = run_ours(procs, addr, name, shape, count)
                    elif impl == "bare":
                        got = run_ours(procs, bare, name, shape, count, bare=True)
                    else:
                        got = run_raw(procs, raw_eps, name, header_size, payload_size, count)
                    runs[shape][impl].append(
                        {
                            "msgs_per_s": got.rate,
                            "mb_per_s": got.mb_per_s / 1e6,
                            "cpu_us_per_msg": got.cpu_us_per_msg,
                            "rss_mb": got.rss_mb,
                        }
                    )
                    print(
                        f"  rep {rep + 1}/{reps} {shape:5s} {impl:4s} "
                        f"{got.rate:12,.0f} msg/s {got.mb_per_s / 1e6:10,.1f} MB/s",
                        flush=True,
                    )
    summary: dict[str, Any] = {}
    rows = []
    for shape in counts:
        med = {
            impl: {
                key: median([r[key] for r in runs[shape][impl]])
                for key in ("msgs_per_s", "mb_per_s")
            }
            for impl in IMPLS
        }
        raw_rate = med["raw"]["msgs_per_s"]
        per_rep = median(
            [
                a["msgs_per_s"] / b["msgs_per_s"]
                for a, b in zip(runs[shape]["ours"], runs[shape]["raw"], strict=True)
            ]
        )
        summary[shape] = {
            "messages_per_run": counts[shape],
            "header_bytes": sizes[shape][0],
            "payload_bytes": sizes[shape][1],
            **{f"{impl}_{k}": v for impl in IMPLS for k, v in med[impl].items()},
            "ratio": med["ours"]["msgs_per_s"] / raw_rate,
            "ratio_median_of_reps": per_rep,
            "bare_ratio": med["bare"]["msgs_per_s"] / raw_rate,
        }
        for impl in IMPLS:
            rows.append(
                [
                    f"{shape} {impl}",
                    med[impl]["msgs_per_s"],
                    med[impl]["mb_per_s"],
                    med[impl]["msgs_per_s"] / raw_rate,
                ]
            )
    print_table(
        f"throughput (medians of {reps} interleaved repetitions; bare = our job and Subscriber "
        "on the bare proxy)",
        ["", "msg/s", "MB/s", "ratio to raw"],
        rows,
    )
    cpu_rows = []
    for shape in counts:
        for impl in IMPLS:
            cpu = {
                k: median([r["cpu_us_per_msg"].get(k, float("nan")) for r in runs[shape][impl]])
                for k in ("producer", "hub", "receiver")
            }
            cpu["total"] = sum(cpu.values())
            summary[shape][f"{impl}_cpu_us_per_msg"] = cpu
            cpu_rows.append([f"{shape} {impl}", *cpu.values()])
    print_table(
        "CPU per message (us, all threads of each process; hub = daq broker or bare proxy)",
        ["", "producer", "hub", "receiver", "total"],
        cpu_rows,
    )
    rss_rows = []
    for shape in counts:
        for impl in IMPLS:
            rss = {
                k: median([r["rss_mb"].get(k, float("nan")) for r in runs[shape][impl]])
                for k in ("producer", "hub")
            }
            summary[shape][f"{impl}_rss_mb"] = rss
            rss_rows.append([f"{shape} {impl}", *rss.values()])
    print_table(
        "resident memory late in a run (MB): queues fill to their high-water marks",
        ["", "producer", "hub"],
        rss_rows,
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
