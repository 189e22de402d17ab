"""Fuzz the C protobuf fast path against the validating decoder, beyond the test suite's 300 cases.

Mutates real SDK requests (byte flips, inserts, deletes, truncation); for every mutant the fast path
must either decline (None) or give exactly the validating decoder's staging tables, and never crash.

    .venv/bin/python scripts/fuzz_protofast.py --seed 2 --iterations 200000
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from google.protobuf.message import DecodeError  # noqa: E402
from ingest_otlp_builders import pd_request_spans, to_request  # noqa: E402
from test_ingest_protofast import validating  # noqa: E402

from kvtrace.ingest import protofast  # noqa: E402


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not buf:
            break
        op, i = rng.random(), rng.randrange(len(buf))
        if op < 0.4:
            buf[i] = rng.randrange(256)
        elif op < 0.6:
            buf[i:i] = rng.randbytes(rng.randint(1, 4))
        elif op < 0.8:
            del buf[i : i + rng.randint(1, 8)]
        elif op < 0.9:
            buf[i] ^= 1 << rng.randrange(8)
        else:
            del buf[i:]
    return bytes(buf)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=20000)
    args = ap.parse_args()
    if not protofast.available():
        print("ingest._otlpfast is not built", file=sys.stderr)
        return 2
    seeds = [to_request(pd_request_spans(seed=s)).SerializeToString() for s in range(1, 6)]
    rng = random.Random(args.seed)
    taken = 0
    t0 = time.monotonic()
    for it in range(args.iterations):
        raw = mutate(rng, rng.choice(seeds))
        fast = protofast.decode_traces(raw)
        if fast is None:
            continue
        taken += 1
        try:
            spans, events, links, quarantine = validating(raw)
        except DecodeError:
            print(f"iteration {it}: the fast path took bytes upb rejects: {raw.hex()}")
            return 1
        if quarantine.num_rows or (fast[0].to_pylist(), fast[1].to_pylist(), fast[2].to_pylist()) != (
            spans.to_pylist(), events.to_pylist(), links.to_pylist()
        ):
            print(f"iteration {it}: the fast path differs from the validating decoder: {raw.hex()}")
            return 1
    print(f"{args.iterations} mutants, {taken} taken by the fast path (all identical), "
          f"{args.iterations - taken} declined, {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
