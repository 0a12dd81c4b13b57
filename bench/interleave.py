#!/usr/bin/env python3
"""Compares two mounts (or folders) on small-file writes, in alternated batches.

    bench/interleave.py [--threads N] [--rounds R] [--batch B] [--size BYTES] [--json] A B

On a shared virtual machine the speed of the host changes by a third from one minute to the
next, so two builds measured one after the other (even alternated, a fresh cluster each)
differ by less than the runs of one build do. Here both are mounted at once and written in
turns: batch after batch of B files of BYTES bytes (each an open, a write and a close),
R batches on each, the first of each pair alternating. It prints, for each side, the median
rate of its batches, the p50 and p90 time of a file, and how many of the pairs it won.
"""

import argparse
import json
import os
import statistics
import threading
import time


def batch(folder, names, data, threads):
    """Writes every file of `names` in `folder` with `threads` threads; (seconds, per-file times)."""
    times = []
    lock = threading.Lock()

    def work(part):
        for name in part:
            t = time.perf_counter()
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
            with lock:
                times.append(time.perf_counter() - t)

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(names[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - started, times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    a = ap.parse_args()
    data = os.urandom(a.size)
    sides = {a.a: {"rates": [], "times": []}, a.b: {"rates": [], "times": []}}
    folders = {}
    for mount in sides:
        folders[mount] = os.path.join(mount, f"interleave-{os.getpid()}-{a.threads}")
        os.mkdir(folders[mount])
    for r in range(a.rounds):
        order = (a.a, a.b) if r % 2 == 0 else (a.b, a.a)
        for mount in order:
            names = [f"r{r}-{i}" for i in range(a.batch)]
            took, times = batch(folders[mount], names, data, a.threads)
            sides[mount]["rates"].append(a.batch / took)
            sides[mount]["times"].extend(times)
    out = []
    for mount, other in ((a.a, a.b), (a.b, a.a)):
        s = sides[mount]
        times = sorted(s["times"])
        won = sum(1 for x, y in zip(s["rates"], sides[other]["rates"]) if x > y)
        out.append({
            "folder": mount,
            "threads": a.threads,
            "files": len(times),
            "median_batch_files_s": round(statistics.median(s["rates"]), 1),
            "p50_ms": round(times[len(times) // 2] * 1e3, 3),
            "p90_ms": round(times[len(times) * 9 // 10] * 1e3, 3),
            "batches_won": won,
            "batches": len(s["rates"]),
        })
    if a.json:
        print(json.dumps(out, indent=2))
        return
    for o in out:
        print(f"{o['folder']}: {o['threads']} thread(s), {o['files']} files of {a.size} bytes: "
              f"{o['median_batch_files_s']:.0f} files/s (median of batches), "
              f"p50 {o['p50_ms']:.2f} ms, p90 {o['p90_ms']:.2f} ms, "
              f"won {o['batches_won']} of {o['batches']} batches")


if __name__ == "__main__":
    main()
