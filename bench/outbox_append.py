"""Outbox throughput: batched appends at synchronous=FULL and NORMAL, acks, pending reads.

Each append is one transaction (one WAL commit; at FULL one fsync) of `batch` payloads of
100 bytes, about one serialized TelemetrySample. Commit latency is what the caller waits:
on the event loop that is how long the loop would stall without `AsyncOutbox`.

    python -m bench.outbox_append                          # /tmp, 1.5 s per case
    python -m bench.outbox_append --dir /var/lib/phoenyra --seconds 3   # on the site's disk
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from edge_agent.outbox import Outbox, Synchronous

PAYLOAD = bytes(range(100))
STREAM = "telemetry"
MODES: tuple[Synchronous, ...] = ("FULL", "NORMAL")


def _percentile_ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return 1000.0 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_append(
    directory: Path, synchronous: Synchronous, batch: int, seconds: float
) -> tuple[int, list[float]]:
    """Append batches for `seconds`; return rows appended and each commit's latency."""
    path = directory / f"append-{synchronous}-{batch}.sqlite"
    latencies: list[float] = []
    rows = 0
    with Outbox(path, max_rows=10**9, max_age_s=None, synchronous=synchronous) as outbox:
        payloads = [(time.time(), PAYLOAD)] * batch
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            outbox.append(STREAM, payloads)
            latencies.append(time.perf_counter() - started)
            rows += batch
    return rows, latencies


def bench_ack(
    directory: Path, synchronous: Synchronous, ack_every: int, rows: int
) -> tuple[int, float]:
    """Ack `rows` rows in steps of `ack_every` (cumulative acks); return acks and seconds."""
    path = directory / f"ack-{synchronous}-{ack_every}.sqlite"
    with Outbox(path, max_rows=10**9, max_age_s=None, synchronous=synchronous) as outbox:
        for _ in range(rows // 1000):
            outbox.append(STREAM, [(time.time(), PAYLOAD)] * 1000)
        started = time.perf_counter()
        acks = 0
        for through in range(ack_every, rows + 1, ack_every):
            outbox.ack(STREAM, through)
            acks += 1
        return acks, time.perf_counter() - started


def bench_pending(directory: Path, rows: int, limit: int) -> float:
    """Read `rows` rows back in pages of `limit`, as a resend after an outage does; rows/s."""
    path = directory / f"pending-{limit}.sqlite"
    with Outbox(path, max_rows=10**9, max_age_s=None) as outbox:
        for _ in range(rows // 1000):
            outbox.append(STREAM, [(time.time(), PAYLOAD)] * 1000)
        started = time.perf_counter()
        after, read = 0, 0
        while page := outbox.pending(STREAM, after_seq=after, limit=limit):
            after = page[-1].seq
            read += len(page)
        return read / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dir", type=Path, help="directory on the disk to measure (default /tmp)")
    parser.add_argument("--seconds", type=float, default=1.5, help="per append case")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10, 100, 1000])
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="outbox-bench-", dir=args.dir) as tmp:
        directory = Path(tmp)
        print(f"Outbox appends, {len(PAYLOAD)}-byte payloads, WAL, in {directory}")
        print(
            f"{'sync':>6} {'batch':>6} {'commits/s':>10} {'rows/s':>10} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        )
        for synchronous in MODES:
            for batch in args.batches:
                rows, latencies = bench_append(directory, synchronous, batch, args.seconds)
                total = sum(latencies)
                print(
                    f"{synchronous:>6} {batch:>6} {len(latencies) / total:>10,.0f} "
                    f"{rows / total:>10,.0f} {statistics.median(latencies) * 1000:>8.3f} "
                    f"{_percentile_ms(latencies, 0.99):>8.3f} {max(latencies) * 1000:>8.3f}"
                )
        print()
        print("Cumulative acks (delete through seq), 100 000 rows")
        print(f"{'sync':>6} {'ack every':>10} {'acks/s':>10} {'rows/s':>10} {'ms/ack':>8}")
        for synchronous in MODES:
            for ack_every in (1, 100, 1000):
                rows = 100_000 if ack_every > 1 else 5_000
                acks, seconds = bench_ack(directory, synchronous, ack_every, rows)
                print(
                    f"{synchronous:>6} {ack_every:>10} {acks / seconds:>10,.0f} "
                    f"{acks * ack_every / seconds:>10,.0f} {seconds / acks * 1000:>8.3f}"
                )
        print()
        for limit in (100, 1000):
            rate = bench_pending(directory, 100_000, limit)
            print(f"pending(limit={limit}): {rate:,.0f} rows/s read back (100 000 rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
