"""The flash tier (L3): hit throughput through the SDK, single flight, warm restart.

1. L3-hit throughput: a client with no L1 reads a dataset through one ``blobtier flash
   serve`` process (every read an L3 hit after a first pass that fills it), for 4 MiB and
   128 KiB chunks, against plain reads of the same bytes from a file on the same disk, in
   the same run: both with the bytes in the page cache, then both cold (the page cache
   dropped for the region files and the file before each pass). A bare gRPC stream
   between two processes shows what the transport alone carries on this machine.
2. Single flight: 3 chunk servers and 3 flash nodes as processes; 8 reader processes ask
   for the same cold chunks at once. Counted: chunks the nodes read from the block layer
   (their Stats ``fills``) and Get requests the chunk servers saw, per chunk; once with the
   nodes hedging slow chunk-server reads (the default: a hedge is a second GET), once not.
3. Warm restart of a cache of a few GiB: the time to reopen it, and the entries recovered,
   after a clean close (index snapshot) and after a crash (scan of every region, page
   cache dropped first so the scan reads the disk).

    python benchmarks/flash_tier.py                    # ~2-3 minutes
    python benchmarks/flash_tier.py --data-mib 128 --restart-gib 1 --out flash.json
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402
import numpy as np  # noqa: E402

import blobtier  # noqa: E402
from blobtier.chunks import ChunkKey  # noqa: E402
from blobtier.flash_l3.cache import FlashCache  # noqa: E402
from blobtier.rpc.remote_cache import RemoteChunkCache  # noqa: E402

MiB, KiB = 1 << 20, 1 << 10
NO_L1 = {"l1_bytes": 0, "daemon": "off"}


def start(args: list[str], expect: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", *args], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if expect not in line:
        proc.kill()
        raise RuntimeError(f"{args[:2]} did not start: {line!r}")
    return proc, line.split()[-1]


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        proc.wait(60)


def drop_page_cache(paths: list[str]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def region_files(root: str) -> list[str]:
    d = os.path.join(root, "regions")
    return [os.path.join(d, n) for n in sorted(os.listdir(d))]


# -- 1. hit throughput ----------------------------------------------------------------------------
def file_pass(path: str, chunk: int, total: int) -> float:
    """MiB/s of reading ``path`` chunk by chunk into fresh buffers, as the flash node reads
    its entries (uninitialised buffers: a zero-filled bytearray would slow the baseline)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with h.Timer() as t:
            for pos in range(0, total, chunk):
                buf = np.empty(chunk, np.uint8)
                os.preadv(fd, [buf], pos)
    finally:
        os.close(fd)
    return total / t.seconds / MiB


def sdk_pass(client: blobtier.Client, keys: list[str], batch: int, total: int) -> float:
    with h.Timer() as t:
        for i in range(0, len(keys), batch):
            client.get_many(keys[i:i + batch])
    return total / t.seconds / MiB


def hit_throughput(work: str, chunk: int, total: int, batch_bytes: int, passes: int) -> dict:
    region = os.path.join(work, f"region-{chunk}")
    flash_dir = os.path.join(work, f"flash-{chunk}")
    n = total // chunk
    payload = os.urandom(total)
    blobs = {f"bench/{i:06d}": payload[i * chunk:(i + 1) * chunk] for i in range(n)}
    with blobtier.connect(region, block={"servers": 1, "replicas": 1},
                          client={"chunk_size": chunk}, cache=NO_L1) as c:
        for start_at in range(0, n, 256):
            c.put_many({k: blobs[k] for k in list(blobs)[start_at:start_at + 256]})
    plain = os.path.join(work, f"plain-{chunk}.bin")
    with open(plain, "wb") as f:
        f.write(payload)
    del payload, blobs
    proc, addr = start(["flash", "serve", "--dir", flash_dir, "--capacity", f"{2 * total + 128 * MiB}",
                        "--region-size", "64MiB", "--region", region], "serving")
    out: dict = {"chunk": chunk, "chunks": n, "MiB": total // MiB}
    try:
        keys = [f"bench/{i:06d}" for i in range(n)]
        batch = max(1, batch_bytes // chunk)
        with blobtier.connect(region, client={"chunk_size": chunk}, cache=NO_L1,
                              flash={"endpoints": [addr]}) as c:
            out["fill_MiB_s"] = sdk_pass(c, keys, batch, total)  # read through: fills L3
            before = c.stats()
            warm_l3, warm_file, cold_l3, cold_file = [], [], [], []
            for _ in range(passes):  # interleaved: a busy machine slows both alike
                warm_l3.append(sdk_pass(c, keys, batch, total))
                warm_file.append(file_pass(plain, chunk, total))
            for _ in range(passes):
                drop_page_cache(region_files(flash_dir))
                cold_l3.append(sdk_pass(c, keys, batch, total))
                drop_page_cache([plain])
                cold_file.append(file_pass(plain, chunk, total))
            after = c.stats()
        out["l3_hits"] = after["l3"]["hits"] - before["l3"]["hits"]
        out["origin_reads"] = after["origin"]["hits"] - before["origin"]["hits"]
    finally:
        stop_all([proc])
    med = h.percentile
    out.update(l3_warm_MiB_s=med(warm_l3, 50), file_warm_MiB_s=med(warm_file, 50),
               l3_cold_MiB_s=med(cold_l3, 50), file_cold_MiB_s=med(cold_file, 50))
    out["warm_ratio"] = out["l3_warm_MiB_s"] / out["file_warm_MiB_s"]
    out["cold_ratio"] = out["l3_cold_MiB_s"] / out["file_cold_MiB_s"]
    out["grpc_MiB_s"] = grpc_ceiling(total, passes)
    out["of_grpc"] = out["l3_warm_MiB_s"] / out["grpc_MiB_s"]
    return out


GRPC_SERVER = textwrap.dedent("""
    import sys
    from concurrent.futures import ThreadPoolExecutor
    import grpc
    piece = b"x" * (1 << 20)
    def stream(request, context):
        for _ in range(int(request)):
            yield piece
    methods = {"S": grpc.unary_stream_rpc_method_handler(stream)}
    handler = grpc.method_handlers_generic_handler("bench", methods)
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((handler,))
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    server.start()
    server.wait_for_termination()
""")


def grpc_ceiling(total: int, passes: int) -> float:
    """MiB/s of a bare gRPC stream of 1 MiB messages between two processes (no cache, no
    protobuf): what the transport itself can carry on this machine."""
    import grpc

    proc = subprocess.Popen([sys.executable, "-c", GRPC_SERVER], stdout=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream("/bench/S")
            rates = []
            for _ in range(passes):
                with h.Timer() as t:
                    for _ in call(str(total // MiB).encode(), timeout=600):
                        pass
                rates.append(total / t.seconds / MiB)
    finally:
        proc.kill()
        proc.wait()
    return h.percentile(rates, 50)


# -- 2. single flight ----------------------------------------------------------------------------
READER = textwrap.dedent("""
    import hashlib, json, os, sys, time
    import blobtier
    region, go, keys, config = sys.argv[1], sys.argv[2], sys.argv[3].split(","), json.loads(sys.argv[4])
    with blobtier.connect(region, **config) as c:
        c.exists(keys[0])
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.001)
        t = time.perf_counter()
        data = b"".join(bytes(v) for v in c.get_many(keys))
        print(hashlib.sha256(data).hexdigest(), time.perf_counter() - t, c.stats()["origin"]["hits"])
""")


def chunk_server_gets(addrs: list[str]) -> int:
    from blobtier.blockstore_sim.remote import RemoteChunkStore

    total = 0
    for addr in addrs:
        store = RemoteChunkStore(addr, timeout_s=10)
        total += store.fault_state().counters["requests"]
        store.close()
    return total


def single_flight(work: str, readers: int, chunks: int, chunk: int, hedge_after_ms: float) -> dict:
    os.makedirs(work, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        block = []
        for i in range(3):
            proc, addr = start(["block", "serve", "--root", os.path.join(work, f"chunks{i}"), "--id", str(i)],
                               "serving")
            procs.append(proc)
            block.append(addr)
        flash = []
        for i in range(3):
            proc, addr = start(["flash", "serve", "--dir", os.path.join(work, f"sf-flash{i}"), "--capacity",
                                "1GiB", "--region-size", "16MiB", "--id", str(i), "--hedge-after-ms",
                                str(hedge_after_ms), "--block-endpoints", ",".join(block)], "serving")
            procs.append(proc)
            flash.append(addr)
        region = os.path.join(work, "sf-region")
        keys = [f"sf/{i:05d}" for i in range(chunks)]
        data = {k: os.urandom(chunk) for k in keys}
        with blobtier.connect(region, block={"endpoints": block}, client={"chunk_size": chunk},
                              cache=NO_L1) as c:
            c.put_many(data)
        config = {"block": {"endpoints": block}, "flash": {"endpoints": flash},
                  "client": {"chunk_size": chunk}, "cache": NO_L1}
        go = os.path.join(work, "go")
        gets_before = chunk_server_gets(block)
        argv = [sys.executable, "-c", READER, region, go, ",".join(keys), json.dumps(config)]
        started = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(readers)]
        for reader in started:  # every reader has opened its client: now the start line
            assert reader.stdout.readline().strip() == "ready"
        open(go, "w").close()
        lines = [p.communicate(timeout=600)[0].split() for p in started]
        gets = chunk_server_gets(block) - gets_before
        fills = 0
        for addr in flash:
            remote = RemoteChunkCache(addr)
            fills += int(remote.stats()["fills"])
            remote.close()
    finally:
        stop_all(procs)
    expected = hashlib.sha256(b"".join(data.values())).hexdigest()
    return {"hedging": "never" if hedge_after_ms < 0 else "auto", "readers": readers, "chunks": chunks,
            "chunk_KiB": chunk // KiB,
            "correct_readers": sum(1 for line in lines if line[0] == expected),
            "node_block_reads": fills, "node_block_reads_per_chunk": fills / chunks,
            "chunk_server_gets": gets, "chunk_server_gets_per_chunk": gets / chunks,
            "client_origin_reads": sum(int(line[2]) for line in lines),
            "reader_seconds_max": max(float(line[1]) for line in lines)}


# -- 3. warm restart -----------------------------------------------------------------------------
def warm_restart(work: str, total: int, chunk: int) -> list[dict]:
    root = os.path.join(work, f"restart-{chunk}")
    capacity = total + 256 * MiB
    cache = FlashCache(root, capacity)
    payload = os.urandom(chunk)
    n = total // chunk
    for i in range(n):
        cache.insert(ChunkKey(i.to_bytes(16, "little"), 1, 0), payload)
    written = cache.stats()["entries"]
    cache.close()  # clean: writes the snapshot
    rows = []
    drop_page_cache(region_files(root))
    with h.Timer() as t:
        cache = FlashCache(root, capacity)
    rows.append({"chunk_KiB": chunk // KiB, "cache_MiB": total // MiB, "after": "clean stop",
                 "recovered_from": cache.recovered_from, "seconds": t.seconds,
                 "entries": cache.stats()["entries"], "written": written})
    cache.device.close()  # a crash: no snapshot
    drop_page_cache(region_files(root))
    with h.Timer() as t:
        cache = FlashCache(root, capacity)
    stats = cache.stats()
    rows.append({"chunk_KiB": chunk // KiB, "cache_MiB": total // MiB, "after": "crash",
                 "recovered_from": cache.recovered_from, "seconds": t.seconds, "entries": stats["entries"],
                 "written": written, "scan_MiB_s": stats["used_bytes"] / t.seconds / MiB})
    cache.close()
    shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--data-mib", type=int, default=256, help="dataset per chunk size (part 1)")
    p.add_argument("--batch-mib", type=int, default=32, help="bytes per client.get_many (part 1)")
    p.add_argument("--passes", type=int, default=3, help="measured passes per mode (median reported)")
    p.add_argument("--readers", type=int, default=8)
    p.add_argument("--sf-chunks", type=int, default=64, help="cold chunks the readers share (part 2)")
    p.add_argument("--restart-gib", type=float, default=3.0)
    args = p.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="bench-flash-")
    try:
        throughput = [hit_throughput(work, chunk, args.data_mib * MiB, args.batch_mib * MiB, args.passes)
                      for chunk in (4 * MiB, 128 * KiB)]
        flight = [single_flight(os.path.join(work, name), args.readers, args.sf_chunks, 1 * MiB, hedge)
                  for name, hedge in (("sf-auto", 0.0), ("sf-never", -1.0))]
        restart = [r for chunk in (4 * MiB, 128 * KiB)
                   for r in warm_restart(work, int(args.restart_gib * 1024) * MiB, chunk)]
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print(h.table([{**r, "chunk": f"{r['chunk'] // KiB} KiB"} for r in throughput],
                  ["chunk", "MiB", "fill_MiB_s", "l3_warm_MiB_s", "file_warm_MiB_s", "warm_ratio",
                   "l3_cold_MiB_s", "file_cold_MiB_s", "cold_ratio", "grpc_MiB_s", "of_grpc", "l3_hits",
                   "origin_reads"],
                  "1. L3 hits through the SDK (no L1, one node) vs plain file reads of the same bytes, "
                  "same disk; grpc: a bare 1 MiB-message stream between two processes"))
    print()
    print(h.table(flight, list(flight[0]), f"2. {args.readers} reader processes, the same cold chunks, "
                                          "3 flash nodes over 3 chunk servers (the nodes' hedging of "
                                          "slow chunk-server reads on, then off)"))
    print()
    print(h.table(restart, ["chunk_KiB", "cache_MiB", "after", "recovered_from", "seconds", "entries",
                            "written", "scan_MiB_s"], "3. warm restart (page cache dropped first)"))
    big, small = throughput
    crash = [r for r in restart if r["after"] == "crash"]
    summary = (f"L3 hits via SDK {big['l3_warm_MiB_s']:,.0f} MiB/s at 4 MiB ({big['warm_ratio']:.2f}x plain "
               f"file, cold {big['cold_ratio']:.2f}x), {small['l3_warm_MiB_s']:,.0f} MiB/s at 128 KiB "
               f"({small['warm_ratio']:.2f}x, cold {small['cold_ratio']:.2f}x; bare gRPC stream "
               f"{big['grpc_MiB_s']:,.0f} MiB/s); {args.readers} cold readers: "
               f"{flight[0]['node_block_reads_per_chunk']:.2f} block reads per chunk "
               f"({flight[1]['chunk_server_gets_per_chunk']:.2f} chunk-server GETs without hedging); "
               f"restart of "
               f"{args.restart_gib:g} GiB: snapshot {restart[0]['seconds']:.2f} s, scan "
               f"{crash[0]['seconds']:.2f} s ({crash[0]['entries']}/{crash[0]['written']} entries)")
    print(summary)
    h.write_json(args.out, "flash_tier", vars(args),
                 {"throughput": throughput, "single_flight": flight, "restart": restart}, summary)


if __name__ == "__main__":
    main()
