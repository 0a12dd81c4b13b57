#!/usr/bin/env python3
"""Print the figures of bench/run.sh as one table with the ratios Alces/MooseFS and Alces/local.

Usage: table.py RESULTS.jsonl [--markdown]
RESULTS.jsonl holds one fsbench.py line per folder, labelled alces, moosefs and local, and
optionally moosefs-fsync (MooseFS with HDD_FSYNC_BEFORE_CLOSE = 1), which adds two columns.
"""
import json
import sys

ROWS = [
    ("sequential write 1 MiB (MB/s)", ("seq_write_MBps",)),
    ("sequential read 1 MiB (MB/s)", ("seq_read_MBps",)),
    ("random write 4 KiB (IOPS)", ("rand_write_4k_iops",)),
    ("random read 4 KiB (IOPS)", ("rand_read_4k_iops",)),
]
for key, who in (("1t", "1 thread"), ("8t", "8 threads"), ("8d", "8 threads, a folder each")):
    for op in ("create", "stat", "rename", "unlink", "mkdir", "rmdir"):
        ROWS.append((f"{op}, {who} (ops/s)", (f"meta_{key}", op)))
ROWS += [
    ("small files 4 KiB, write (files/s)", ("small_4k", "write_files_s")),
    ("small files 4 KiB, read (files/s)", ("small_4k", "read_files_s")),
]


def get(result, path):
    v = result
    for key in path:
        if not isinstance(v, dict) or key not in v:
            return None
        v = v[key]
    return v


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "-"


def main():
    results = {}
    with open(sys.argv[1]) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                results[r["label"]] = r
    markdown = "--markdown" in sys.argv
    synced = "moosefs-fsync" in results
    head = ["workload", "Alces", "MooseFS", "local", "Alces/MooseFS", "Alces/local"]
    if synced:
        head += ["MooseFS, fsync before close", "Alces/MooseFS with fsync"]
    rows = []
    fmt = lambda v: "-" if v is None else f"{v:g}"
    for name, path in ROWS:
        a, m, l = (get(results.get(k, {}), path) for k in ("alces", "moosefs", "local"))
        row = [name, fmt(a), fmt(m), fmt(l), ratio(a, m), ratio(a, l)]
        if synced:
            s = get(results["moosefs-fsync"], path)
            row += [fmt(s), ratio(a, s)]
        rows.append(row)
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


if __name__ == "__main__":
    main()
