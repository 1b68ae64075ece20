"""`phm-train --stream` against the default reader on a large text corpus: time to the first 200 batches and peak RSS.

    python benchmarks/bench_stream.py [--rows 500000] [--json benchmarks/results/stream_cpu.json]

A corpus of `--rows` generated sentences (24 words each) written as 4 parquet files, then in two
child processes with SmolLM2-135M's tokenizer, packed 16 × 128-token batches: the default reader
(`read_samples` + `TokenBatches.packed`: every text read and tokenized first) and the streaming one
(`StreamingTokenBatches`: rows read and tokenized as batches are built), each building batches
0..199. Measured: wall seconds and the child's peak RSS (the tokenizer and imports included in both).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("alpha", "beta", "gamma", "delta", "model", "layer", "phm", "kernel", "edge", "jetson", "token",
         "weight", "quant", "scale")
CHILD = """
import resource, sys, time
from phm.trainer.models import load_tokenizer, smollm2_dir
tok = load_tokenizer(smollm2_dir())
t = time.perf_counter()
if sys.argv[1] == "stream":
    from phm.trainer.stream import StreamingTokenBatches
    batches = StreamingTokenBatches(sys.argv[2], tok, 16, 128, pack=True)
else:
    from phm.trainer.data import TokenBatches, read_samples
    batches = TokenBatches.packed(tok, [s.text for s in read_samples(sys.argv[2])], 16, 128)
for step in range(200):
    batches.batch(step)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def corpus(folder: Path, rows: int) -> int:
    """`rows` seeded sentences as 4 parquet files in `folder`; returns their bytes."""
    import datasets

    rng = random.Random(0)
    table = datasets.Dataset.from_dict({"text": [" ".join(rng.choice(WORDS) for _ in range(24)) for _ in range(rows)]})
    datasets.disable_progress_bars()
    for i in range(4):
        table.shard(4, i).to_parquet(str(folder / f"part-{i}.parquet"))
    return sum(p.stat().st_size for p in folder.glob("*.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "stream_cpu.json")
    args = ap.parse_args()
    from phm.common.fsutil import atomic_write_text

    rows = {}
    with tempfile.TemporaryDirectory(prefix="phm-stream-") as tmp:
        size = corpus(Path(tmp), args.rows)
        for reader in ("stream", "default"):
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CHILD, reader, tmp], capture_output=True, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if done.returncode:
                sys.exit(f"{reader} reader failed: {done.stderr.strip().splitlines()[-1:]}")
            seconds, rss = done.stdout.split()[-2:]
            rows[reader] = {"seconds_to_200_batches": round(float(seconds), 1), "peak_rss_gb": round(int(rss) / 1e9, 2),
                            "process_s": round(time.perf_counter() - t, 1)}
            print(reader, rows[reader], flush=True)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "rows": args.rows,
              "parquet_bytes": size, "batch": [16, 128], "readers": rows}
    atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    print("| reader | 200 packed batches of 16 × 128 | peak RSS |\n|---|---:|---:|")
    for reader, r in rows.items():
        print(f"| {reader} | {r['seconds_to_200_batches']} s | {r['peak_rss_gb']} GB |")


if __name__ == "__main__":
    main()
