"""Pure DataLoader throughput, the way users see it: cold and warm epochs, no step time.

The same samples (``--samples`` x ``--size``, random bytes), the same ``DataLoader``
(shuffled, ``--batch``, ``--workers`` workers) and the same collate (each sample written
once into the batch's uint8 tensor) for every row:

  plain files        one file per sample, ``open/read/close`` in ``__getitem__``
  blobtier           ``BlobDataset`` on the embedded default region (the samples put
                     into it), in-process L1 owned by the trainer, embedded L3 on disk
  blobtier+daemon    the same with a host daemon (``blobtier daemon``) holding the L1
  mosaic             Mosaic Streaming's ``StreamingDataset`` over MDS shards of the
                     samples on local disk (``pip install 'blobtier[bench]'``)
  slow: simplecache  the files behind a ``--latency-ms``-per-request origin
                     (``slowfile://``, ``blockstore_sim/slow_origin.py``), read through
                     fsspec's ``simplecache::``
  slow: blobtier     the same origin registered by reference (nothing copied)
  slow: 2nd process  a new process over the same region after the run: its origin
                     requests (expected: none) and its epoch

Cold: a first epoch with every cache of the row empty (blobtier: a new client, the
region's L3 removed; simplecache: a new cache directory); the page cache is not
dropped. Warm: the next epoch of the same loader. Rates exclude worker start (timed from
the first batch). Each row runs in a process of its own, ``--repeats`` times, rows
interleaved; the table shows medians.

``--profile`` records the warm blobtier epoch with py-spy (trainer process and workers,
``--subprocesses``) and prints the top frames by own time per process kind.

    python benchmarks/loader_throughput.py                   # 4,000 x 100 KiB, a few minutes
    python benchmarks/loader_throughput.py --full --out lt.json   # 10,000 x 100 KiB
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
KEY_PREFIX = "bench/lt/"
ROWS = ("plain", "blobtier", "daemon", "mosaic", "slow-simplecache", "slow-blobtier")
LABELS = {"plain": "plain files", "blobtier": "blobtier", "daemon": "blobtier+daemon",
          "mosaic": "mosaic", "slow-simplecache": "slow: simplecache", "slow-blobtier": "slow: blobtier",
          "slow-second": "slow: 2nd process"}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}


# -- the measured side (runs in a process of its own per row: ``--run ROW``) -------------
def collate(samples: list) -> object:
    """One batch tensor; each sample's bytes copied into it once."""
    import numpy as np
    import torch

    first = samples[0]["x"] if isinstance(samples[0], dict) else samples[0]
    out = torch.empty((len(samples), len(first)), dtype=torch.uint8)
    rows = out.numpy()
    for i, s in enumerate(samples):
        rows[i] = np.frombuffer(s["x"] if isinstance(s, dict) else s, np.uint8)
    return out


def as_view(view: memoryview) -> memoryview:
    """BlobDataset's decode: the view itself (collate copies it into the batch)."""
    return view


class Files:
    """Map-style dataset: sample i is the bytes of a file, read with open/read/close."""

    def __init__(self, paths: list[str], opener=open) -> None:  # noqa: ANN001 - open or fsspec.open
        self.paths = paths
        self.opener = opener

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> bytes:
        with self.opener(self.paths[i], "rb") as f:
            return f.read()


def epochs(loader, n: int, count: int) -> list[float]:  # noqa: ANN001 - a DataLoader
    """Samples/s of ``count`` epochs of ``n`` samples, each timed from its first batch."""
    rates = []
    for e in range(count):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(e)
        it = iter(loader)
        first = next(it)
        t0, seen = time.perf_counter(), 0
        for batch in it:
            seen += len(batch)
        rates.append(seen / (time.perf_counter() - t0) if seen else float("nan"))
        del first
        if e == 0 and os.environ.get("BENCH_WARM_MARK"):
            print("WARM", flush=True)  # the profiler attaches now
            time.sleep(float(os.environ["BENCH_WARM_MARK"]))
    return rates


def loader_of(dataset, args) -> object:  # noqa: ANN001
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                      persistent_workers=True, collate_fn=collate, generator=torch.Generator().manual_seed(0))


def run_row(args) -> dict:  # noqa: ANN001
    d = args.dir
    paths = [os.path.join(d, "data", f"s{i:05d}.bin") for i in range(args.samples)]
    count = 1 + args.warm_epochs
    out: dict = {}
    if args.run == "plain":
        rates = epochs(loader_of(Files(paths), args), args.samples, count)
    elif args.run == "mosaic":
        rates = run_mosaic(args, count)
    elif args.run == "slow-simplecache":
        import fsspec

        from blobtier.blockstore_sim import slow_origin

        slow_origin.register()
        cache = tempfile.mkdtemp(dir=d, prefix="simplecache-")
        opts = {"simplecache": {"cache_storage": cache}, "slowfile": {"latency_s": args.latency_ms / 1000}}

        def opener(path: str, mode: str):  # noqa: ANN202
            return fsspec.open(f"simplecache::slowfile://{path}", mode, **opts)

        rates = epochs(loader_of(Files(paths, opener), args), args.samples, count)
    else:
        rates, out = run_blobtier(args, count)
    return {"row": args.run, "cold": rates[0], "warm": statistics.median(rates[1:]) if rates[1:] else None,
            **out}


def run_blobtier(args, count: int) -> tuple[list[float], dict]:  # noqa: ANN001
    import fsspec

    import blobtier
    from blobtier.blockstore_sim import slow_origin
    from blobtier.dataloader import BlobDataset

    slow = args.run.startswith("slow")
    root = os.path.join(args.dir, "ref" if slow else "region")
    counter = os.path.join(args.dir, "origin-requests")
    if slow:
        slow_origin.register()
        fsspec.config.conf["slowfile"] = {"latency_s": args.latency_ms / 1000, "counter_path": counter}
    if args.run != "slow-second":
        shutil.rmtree(os.path.join(root, "l3"), ignore_errors=True)  # cold: no cache left
    cache = {"daemon": args.daemon_socket} if args.run == "daemon" else {"daemon": "off"}
    before = slow_origin.requests_at(counter)
    with blobtier.connect(root, cache=cache) as client:
        ds = BlobDataset(KEY_PREFIX, client=client, decode=as_view)
        rates = epochs(loader_of(ds, args), args.samples, count)
        extra = {"origin_requests": slow_origin.requests_at(counter) - before, "tiers": client.tiers}
        stats = client.stats()
        extra["hits"] = {t: s.get("hits", 0) for t, s in stats.items()}
    return rates, extra


def run_mosaic(args, count: int) -> list[float]:  # noqa: ANN001
    _import_streaming()
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(local=os.path.join(args.dir, "mds"), shuffle=True, shuffle_seed=0,
                          batch_size=args.batch)
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_size=args.batch, num_workers=args.workers, persistent_workers=True,
                        collate_fn=collate)
    return epochs(loader, args.samples, count)  # a StreamingDataset reshuffles each epoch itself


def _import_streaming() -> None:
    """``import streaming`` loads its vision datasets, which import torchvision; where no
    torchvision build matches the installed torch, placeholders for the two names it
    imports let the package load (MDS reading, measured here, never touches them)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or built for another torch
        import importlib.machinery
        import types

        for name in ("torchvision", "torchvision.datasets", "torchvision.transforms",
                     "torchvision.transforms.functional"):
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules["torchvision.datasets"].VisionDataset = object
        sys.modules["torchvision.datasets"].CIFAR10 = object
        sys.modules["torchvision.transforms.functional"].to_tensor = None
    import streaming  # noqa: F401


def write_mds(args) -> None:  # noqa: ANN001
    _import_streaming()
    from streaming import MDSWriter

    with MDSWriter(out=os.path.join(args.dir, "mds"), columns={"x": "bytes"}, size_limit=1 << 26) as w:
        for i in range(args.samples):
            with open(os.path.join(args.dir, "data", f"s{i:05d}.bin"), "rb") as f:
                w.write({"x": f.read()})


# -- the driver -----------------------------------------------------------------------
def setup(args) -> dict:  # noqa: ANN001
    """The samples as files, in the embedded region, registered by reference, and as MDS."""
    import blobtier
    from blobtier.blockstore_sim import slow_origin
    from blobtier.sdk.ingest import register

    d = args.dir
    done = os.path.join(d, "setup.json")
    if os.path.exists(done):  # a --dir set up by an earlier run (same --samples and --size)
        with open(done) as f:
            status = json.load(f)
        if (status.get("samples"), status.get("size")) == (args.samples, args.size):
            return status
        raise SystemExit(f"{d} holds {status.get('samples')} x {status.get('size')} B: use another --dir")
    os.makedirs(os.path.join(d, "data"), exist_ok=True)
    for i in range(args.samples):
        with open(os.path.join(d, "data", f"s{i:05d}.bin"), "wb") as f:
            f.write(os.urandom(args.size))
    with blobtier.connect(os.path.join(d, "region"), flash={"local_l3": False}) as c:
        items = []
        for i in range(args.samples):
            with open(os.path.join(d, "data", f"s{i:05d}.bin"), "rb") as f:
                items.append((f"{KEY_PREFIX}s{i:05d}.bin", f.read()))
            if len(items) == 256:
                c.put_many(items)
                items = []
        if items:
            c.put_many(items)
    # The slow rows read the same files by reference, through slowfile://.
    import fsspec

    slow_origin.register()
    fsspec.config.conf["slowfile"] = {"latency_s": 0.0}
    with blobtier.connect(os.path.join(d, "ref"), flash={"local_l3": False}) as c:
        register(c, f"slowfile://{os.path.join(d, 'data')}", KEY_PREFIX.rstrip("/"))
    status: dict = {"mosaic": None}
    try:
        subprocess.run([args.mosaic_python, __file__, "--write-mds", "--dir", d, *common(args)], check=True,
                       capture_output=True, text=True, timeout=600, env=ENV)
    except subprocess.CalledProcessError as exc:
        status["mosaic"] = exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else "failed"
    with open(done, "w") as f:
        json.dump({**status, "samples": args.samples, "size": args.size}, f)
    return status


def common(args) -> list[str]:  # noqa: ANN001
    return ["--samples", str(args.samples), "--size", str(args.size), "--batch", str(args.batch),
            "--workers", str(args.workers), "--latency-ms", str(args.latency_ms),
            "--warm-epochs", str(args.warm_epochs)]


def start_daemon(d: str) -> tuple[subprocess.Popen, str]:
    sock = os.path.join(d, "run", "daemon.sock")
    os.makedirs(os.path.dirname(sock), mode=0o700, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "daemon", "--memory", "512MiB",
                             "--socket", sock], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=ENV)
    for _ in range(300):
        if os.path.exists(sock):
            return proc, sock
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the daemon did not start: {proc.stderr.read().decode()[-500:]}")


def measure(row: str, args, extra: list[str] | None = None, env: dict | None = None) -> dict:  # noqa: ANN001
    python = args.mosaic_python if row == "mosaic" else sys.executable
    cmd = [python, __file__, "--run", row, "--dir", args.dir, *common(args), *(extra or [])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=REPO,
                         env={**ENV, **(env or {})})
    if out.returncode != 0:
        return {"row": row, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def profile(args, daemon_sock: str) -> dict:  # noqa: ANN001
    """py-spy over the warm blobtier epochs: the top frames by own time, trainer and workers."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    raw = os.path.join(args.dir, "profile.txt")
    cmd = [sys.executable, __file__, "--run", "blobtier", "--dir", args.dir, *common(args)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**ENV, "BENCH_WARM_MARK": "1"})
    for line in proc.stdout:
        if line.startswith("WARM"):
            break
    spy_proc = subprocess.run([spy, "record", "--pid", str(proc.pid), "--subprocesses", "--format", "raw",
                               "--rate", "200", "--nonblocking", "--output", raw, "--duration",
                               str(int(args.profile_s))], capture_output=True, text=True)
    proc.communicate()
    if spy_proc.returncode != 0 or not os.path.exists(raw):
        return {"error": spy_proc.stderr.strip()[-300:]}
    return top_frames(raw, proc.pid)


def top_frames(raw: str, trainer_pid: int, n: int = 12) -> dict:
    """Per process kind (trainer, worker): share of samples by leaf frame (own time) and
    by frame anywhere on the stack (inclusive), from py-spy's raw (collapsed) output."""
    kinds = ("trainer", "workers")
    own = {kind: collections.Counter() for kind in kinds}
    incl = {kind: collections.Counter() for kind in kinds}
    total = collections.Counter()
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            frames = stack.split(";")
            if not frames or not count.isdigit():
                continue
            # A child's stacks start "process ROOT:...;process CHILD:...;" (--subprocesses).
            procs = [i for i, fr in enumerate(frames) if fr.startswith("process ")]
            pid = frames[procs[-1]].split()[1].split(":")[0] if procs else ""
            kind = "trainer" if pid == str(trainer_pid) else "workers"
            calls = [fr for fr in frames[procs[-1] + 1 if procs else 0:] if not fr.startswith("thread ")]
            if not calls:
                continue
            c = int(count)
            total[kind] += c
            own[kind][calls[-1]] += c
            for fr in set(calls):
                incl[kind][fr] += c
    def shares(counts: collections.Counter, kind: str, k: int) -> list:
        return [(fr, round(100 * c / max(1, total[kind]), 1)) for fr, c in counts.most_common(k)]

    return {kind: {"samples": total[kind], "own": shares(own[kind], kind, n),
                   "inclusive": shares(incl[kind], kind, n + 8)} for kind in kinds}


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--full", action="store_true", help="10,000 samples (the issue's size)")
    p.add_argument("--size", type=int, default=100 << 10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warm-epochs", type=int, default=1)
    p.add_argument("--latency-ms", type=float, default=2.0)
    p.add_argument("--rows", default=",".join(ROWS), help="which rows, comma-separated")
    p.add_argument("--mosaic-python", default=sys.executable,
                   help="a Python with mosaicml-streaming (the bench extra), if this one lacks it")
    p.add_argument("--profile", action="store_true", help="py-spy the warm blobtier epoch")
    p.add_argument("--profile-s", type=int, default=8)
    p.add_argument("--run", help=argparse_hidden())
    p.add_argument("--daemon-socket", help=argparse_hidden())
    p.add_argument("--write-mds", action="store_true", help=argparse_hidden())
    args = p.parse_args()
    if args.full:
        args.samples = 10_000
    if args.write_mds:
        write_mds(args)
        return
    if args.run:
        print(json.dumps(run_row(args)))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the daemon below
    own_dir = args.dir is None
    args.dir = args.dir or tempfile.mkdtemp(prefix="blobtier-lt-")
    daemon = None
    try:
        print(f"setting up {args.samples} x {args.size} B in {args.dir}", file=sys.stderr)
        status = setup(args)
        rows = [r for r in args.rows.split(",") if r]
        if status["mosaic"] and "mosaic" in rows:
            print(f"mosaic: not measured ({status['mosaic']})", file=sys.stderr)
            rows.remove("mosaic")
        daemon, sock = start_daemon(args.dir) if "daemon" in rows else (None, "")
        results: dict[str, list[dict]] = collections.defaultdict(list)
        for rep in range(args.repeats):
            for row in rows:
                extra = ["--daemon-socket", sock] if row == "daemon" else []
                if row == "daemon":  # a cold L1: restart the daemon with an empty arena
                    daemon.send_signal(signal.SIGTERM)
                    daemon.wait(30)
                    daemon, sock = start_daemon(args.dir)
                    extra = ["--daemon-socket", sock]
                results[row].append(measure(row, args, extra))
                print(f"repeat {rep + 1}: {row}: {results[row][-1]}", file=sys.stderr)
                if row == "slow-blobtier":
                    results["slow-second"].append(measure("slow-second", args))
                    print(f"repeat {rep + 1}: slow-second: {results['slow-second'][-1]}", file=sys.stderr)
        report(args, results, status, daemon_sock=sock)
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        if own_dir:
            shutil.rmtree(args.dir, ignore_errors=True)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def report(args, results: dict[str, list[dict]], status: dict, daemon_sock: str) -> None:  # noqa: ANN001
    def med(row: str, what: str) -> float | None:
        vals = [r[what] for r in results.get(row, []) if r.get(what) is not None]
        return statistics.median(vals) if vals else None

    plain_cold, plain_warm = med("plain", "cold"), med("plain", "warm")
    table_rows = []
    for row, runs in results.items():
        cold, warm = med(row, "cold"), med(row, "warm")
        errors = [r["error"] for r in runs if "error" in r]
        table_rows.append({
            "row": LABELS[row], "cold/s": cold if cold is not None else "-",
            "warm/s": warm if warm is not None else "-",
            "cold x plain": cold / plain_cold if cold and plain_cold else "-",
            "warm x plain": warm / plain_warm if warm and plain_warm else "-",
            "origin reqs": med(row, "origin_requests") if row in ("slow-blobtier", "slow-second") else "",
            "note": errors[0][:60] if errors else ""})
    columns = ["row", "cold/s", "warm/s", "cold x plain", "warm x plain", "origin reqs", "note"]
    if table_rows:
        print(h.table(table_rows, columns,
                      f"{args.samples} x {args.size // 1024} KiB, batch {args.batch}, {args.workers} "
                      f"workers, medians of {args.repeats}"))
    prof = profile(args, daemon_sock) if args.profile else None
    if prof:
        for kind, p in prof.items():
            if not isinstance(p, dict):
                print(f"profile: {kind}: {p}")
                continue
            print(f"\nprofile, warm blobtier epoch, {kind} ({p['samples']} samples): own time")
            for fr, pct in p["own"]:
                print(f"  {pct:5.1f}%  {fr}")
    b_warm, m_warm = med("blobtier", "warm"), med("mosaic", "warm")
    sc_cold, sb_cold = med("slow-simplecache", "cold"), med("slow-blobtier", "cold")
    checks = {
        "warm >= 1.5x plain": bool(b_warm and plain_warm and b_warm >= 1.5 * plain_warm),
        "warm >= 2x mosaic": bool(b_warm and m_warm and b_warm >= 2 * m_warm) if m_warm else None,
        "cold >= 1.0x plain": bool(med("blobtier", "cold") and plain_cold
                                   and med("blobtier", "cold") >= plain_cold),
        "slow cold >= 5x simplecache": bool(sb_cold and sc_cold and sb_cold >= 5 * sc_cold),
        "slow warm >= 1.0x plain": bool(med("slow-blobtier", "warm") and plain_warm
                                        and med("slow-blobtier", "warm") >= plain_warm),
        "2nd process reads no sample from the origin": (med("slow-second", "origin_requests") == 0
                                                       if results.get("slow-second") else None),
    }
    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a and b else "n/a"

    print(f"\nsummary: blobtier warm {ratio(b_warm, plain_warm)} plain, {ratio(b_warm, m_warm)} mosaic; "
          f"cold {ratio(med('blobtier', 'cold'), plain_cold)} plain; slow origin cold "
          f"{ratio(sb_cold, sc_cold)} simplecache, warm {ratio(med('slow-blobtier', 'warm'), plain_warm)} "
          f"plain; 2nd process origin requests {med('slow-second', 'origin_requests')}; "
          f"met: {sum(1 for v in checks.values() if v)}/{sum(1 for v in checks.values() if v is not None)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": h.machine(), "args": {k: v for k, v in vars(args).items() if k != "run"},
                       "results": results, "checks": checks, "mosaic": status["mosaic"], "profile": prof},
                      f, indent=1, default=str)


if __name__ == "__main__":
    main()
