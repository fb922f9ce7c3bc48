"""The raw-pyzmq baseline's processes: a bare proxy and a bare publisher.

    python benchmarks/_peers.py proxy IN OUT [--hwm N]
    python benchmarks/_peers.py publish IN --topic T --header-size H --payload-size P
                                           --count N [--interval S]

Same socket types and options as the real path (XSUB/XPUB proxy with XPUB_NODROP and the same
high-water marks; the publisher is a no-drop XPUB that waits for the subscription), so the
baseline is lossless too and the comparison measures only what our Python layers add. Frames
have the sizes our envelope has; the first 8 bytes of the header frame carry the send time.
"""

from __future__ import annotations

import argparse
import struct
import threading
import time

import zmq

ZERO_COPY_ABOVE = 65536  # pyzmq's advice: zero-copy sends pay off only for large buffers


def proxy(inbound: str, outbound: str, hwm: int) -> None:
    ctx = zmq.Context()
    xsub = ctx.socket(zmq.XSUB)
    xsub.rcvhwm = hwm
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.XPUB_NODROP, 1)
    xpub.sndhwm = hwm
    xsub.bind(inbound)
    xpub.bind(outbound)
    print("proxy ready", flush=True)
    zmq.proxy(xsub, xpub)


def publish(
    inbound: str,
    topic: bytes,
    header_size: int,
    payload_size: int,
    count: int,
    interval: float,
    hwm: int,
) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.XPUB_NODROP, 1)
    sock.sndhwm = hwm
    sock.linger = -1
    sock.connect(inbound)
    while sock.recv()[:1] != b"\x01":  # the subscriber's subscription, through the proxy
        pass
    pad = b"\x00" * max(0, header_size - 8)
    payload = b"\x01" * payload_size
    copy = payload_size < ZERO_COPY_ABOVE
    pack = struct.Struct("<q").pack
    wait = threading.Event().wait
    deadline = time.monotonic()
    for _ in range(count):
        sock.send(topic, zmq.SNDMORE)
        sock.send(pack(time.time_ns()) + pad, zmq.SNDMORE)
        sock.send(payload, copy=copy)
        if interval > 0:  # the same pacing rule as the job runtime
            deadline += interval
            delay = deadline - time.monotonic()
            if delay < -interval:
                deadline = time.monotonic()
            elif delay > 0:
                wait(delay)
    sock.close()
    ctx.term()


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("proxy")
    p.add_argument("inbound")
    p.add_argument("outbound")
    p.add_argument("--hwm", type=int, default=1000)
    q = sub.add_parser("publish")
    q.add_argument("inbound")
    q.add_argument("--topic", required=True)
    q.add_argument("--header-size", type=int, required=True)
    q.add_argument("--payload-size", type=int, required=True)
    q.add_argument("--count", type=int, required=True)
    q.add_argument("--interval", type=float, default=0.0)
    q.add_argument("--hwm", type=int, default=1000)
    args = ap.parse_args()
    if args.cmd == "proxy":
        proxy(args.inbound, args.outbound, args.hwm)
    else:
        publish(
            args.inbound,
            args.topic.encode() + b"\x00",
            args.header_size,
            args.payload_size,
            args.count,
            args.interval,
            args.hwm,
        )


if __name__ == "__main__":
    main()
