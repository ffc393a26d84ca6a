"""What tokens, grants and TLS cost on L3 hits: throughput and p50 read latency.

Four regions run at once, each started by ``blobtier up`` as a user starts one: a metadata
server (which signs grants), a chunk server and a flash node, no daemon. They differ only
in security:

    off            plaintext, no tokens (the baseline)
    tokens+grants  [auth] token_file: every call carries a token, every chunk a grant the
                   metadata service signed (HMAC-SHA256), checked by the flash node
    tls            [tls] mode = "auto", require_client_cert: mutual TLS on every call
    tokens+grants+tls  both

The same blobs go into each; a first pass fills each flash node. Then, interleaved (a busy
machine slows every mode alike), clients with no L1 read them back, every read an L3 hit:

1. Throughput: ``get_many`` of 4 MiB chunks, 32 MiB per call; once as a client on another
   host reads (the bytes streamed over gRPC: TLS encrypts every byte) and once with the
   node's short-circuit read (``flash.local_reads``: a Locate call, then the node's region
   file; the default on the node's host).
2. Latency: ``get`` of one 64 KiB blob after another (metadata record, grant and L3 hit),
   p50 and p99, streamed over gRPC.

Expected (issue 14): tokens, grants and TLS together cost at most 10% of throughput and
add at most 10% to p50, against ``off`` in the same run.

    python benchmarks/auth_cost.py                  # ~3 minutes
    python benchmarks/auth_cost.py --data-mib 64 --passes 2 --out auth.json
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

import blobtier  # noqa: E402
from blobtier import runstate  # noqa: E402

MiB, KiB = 1 << 20, 1 << 10
MODES = ("off", "tokens+grants", "tls", "tokens+grants+tls")
NO_L1 = {"l1_bytes": 0, "daemon": "off"}
CHUNK, SMALL = 4 * MiB, 64 * KiB


def free_base() -> int:
    """A base port with 40 free ports from it, below the kernel's ephemeral range."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from tests.integration.region_support import free_base_port

    return free_base_port(40)


def region_config(work: str, mode: str, base: int, token: str) -> str:
    """A region TOML for ``mode``: 1 metadata server, 1 chunk server, 1 flash node."""
    d = os.path.join(work, mode)
    os.makedirs(d, exist_ok=True)
    text = f'''root = "{d}/region"
[block]
servers = 1
replicas = 1
[client]
chunk_size = "{CHUNK // MiB}MiB"
[services]
base_port = {base}
metrics = false
meta_servers = 1
flash_nodes = 1
flash_capacity_bytes = "2GiB"
flash_region_bytes = "64MiB"
daemon = false
'''
    if "tokens" in mode:
        with open(os.path.join(d, "tokens.toml"), "w") as f:
            f.write(f'[[token]]\nname = "bench"\nsha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
                    'rights = ["read", "write", "admin"]\n')
        text += f'[auth]\ntoken_file = "tokens.toml"\ntoken = "{token}"\n'
    if "tls" in mode:
        text += '[tls]\nmode = "auto"\nrequire_client_cert = true\n'
    path = os.path.join(d, "region.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def cli(*args: str) -> None:
    run = subprocess.run([sys.executable, "-m", "blobtier.cli", *args], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"blobtier {' '.join(args)} failed: {run.stderr.strip()}")


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of these processes and this one so far: unlike MiB/s, what
    a pass costs in CPU hardly moves with the load others put on the machine."""
    tick, used = os.sysconf("SC_CLK_TCK"), time.process_time()
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        used += (int(fields[11]) + int(fields[12])) / tick
    return used


IDLE_S = 0.5  # how long the CPU the processes use while idle is measured before each pass


def idle_rate(pids: list[int]) -> float:
    """CPU seconds per second these processes (and this one) use while nothing is read:
    background work (snapshots, refreshers, the other clients' threads), taken off a pass."""
    cpu = cpu_seconds(pids)
    time.sleep(IDLE_S)
    return (cpu_seconds(pids) - cpu) / IDLE_S


def throughput_pass(client: blobtier.Client, keys: list[str], batch: int, total: int,
                    pids: list[int] = ()) -> tuple[float, float]:
    """MiB/s of reading ``keys``, and CPU ms per MiB of this process and ``pids`` (less
    their idle rate)."""
    idle = idle_rate(pids) if pids else 0.0
    cpu = cpu_seconds(pids)
    with h.Timer() as t:
        for i in range(0, len(keys), batch):
            client.get_many(keys[i:i + batch])
    used = cpu_seconds(pids) - cpu - idle * t.seconds
    return total / t.seconds / MiB, used * 1000 / (total / MiB)


def latency_pass(client: blobtier.Client, keys: list[str], pids: list[int] = ()) -> tuple[list[float], float]:
    """Seconds of each ``get``, and CPU us per get of this process and ``pids`` (less their
    idle rate)."""
    idle = idle_rate(pids) if pids else 0.0
    cpu = cpu_seconds(pids)
    samples = h.timed_each(client.get, keys)
    return samples, (cpu_seconds(pids) - cpu - idle * sum(samples)) * 1e6 / len(keys)


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--data-mib", type=int, default=128, help="4 MiB blobs per region (throughput)")
    p.add_argument("--small", type=int, default=256, help="64 KiB blobs per region (latency)")
    p.add_argument("--batch-mib", type=int, default=32, help="bytes per get_many")
    p.add_argument("--passes", type=int, default=3, help="measured passes per mode (median reported)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    work = args.dir or tempfile.mkdtemp(prefix="bench-auth-")
    token = secrets.token_hex(16)
    base = free_base()
    configs = {m: region_config(work, m, base + 10 * i, token) for i, m in enumerate(modes)}
    n = args.data_mib * MiB // CHUNK
    big = {f"big/{i:05d}": os.urandom(CHUNK) for i in range(n)}
    small = {f"small/{i:05d}": os.urandom(SMALL) for i in range(args.small)}
    total, batch = n * CHUNK, max(1, args.batch_mib * MiB // CHUNK)
    clients: dict[tuple[str, str], blobtier.Client] = {}
    results = {m: {"mode": m, "remote": [], "local": [], "remote_cpu": [], "local_cpu": [], "lat": [],
                   "get_cpu": []} for m in modes}
    pids: dict[str, list[int]] = {}
    try:
        for m in modes:
            cli("up", "-c", configs[m])
            pids[m] = [s.pid for s in runstate.read(os.path.join(work, m, "region")).services]
        for m in modes:
            for how, local in (("remote", False), ("local", True)):
                clients[m, how] = blobtier.connect(configs[m], cache=NO_L1, flash={"local_reads": local})
            c = clients[m, "remote"]
            c.put_many(big)
            c.put_many(small)
            throughput_pass(c, list(big), batch, total)  # fills the flash node
            latency_pass(c, list(small))
        for k in range(args.passes):
            order = modes[k % len(modes):] + modes[:k % len(modes)]
            for m in order:
                for how in ("remote", "local"):
                    rate, cpu = throughput_pass(clients[m, how], list(big), batch, total, pids[m])
                    results[m][how].append(rate)
                    results[m][f"{how}_cpu"].append(cpu)
                samples, cpu = latency_pass(clients[m, "remote"], list(small), pids[m])
                results[m]["lat"] += samples
                results[m]["get_cpu"].append(cpu)
        for m in modes:
            stats = clients[m, "remote"].stats()
            results[m]["l3_hits"] = stats["l3"]["hits"]
            results[m]["block_reads"] = stats["origin"]["hits"]
    finally:
        for c in clients.values():
            c.close()
        for m in modes:
            try:
                cli("down", "-c", configs[m])
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    rows = []
    for m in modes:
        r = results[m]
        lat = h.summarize(r["lat"])
        rows.append({"mode": m, "remote_MiB_s": h.percentile(r["remote"], 50),
                     "remote_cpu_ms_MiB": h.percentile(r["remote_cpu"], 50),
                     "local_MiB_s": h.percentile(r["local"], 50),
                     "local_cpu_ms_MiB": h.percentile(r["local_cpu"], 50), "p50_us": lat["p50_us"],
                     "get_cpu_us": h.percentile(r["get_cpu"], 50),
                     "p99_us": lat["p99_us"], "l3_hits": r["l3_hits"], "block_reads": r["block_reads"]})
    off = rows[0]
    for r in rows:
        r["remote_vs_off"] = r["remote_MiB_s"] / off["remote_MiB_s"]
        r["local_vs_off"] = r["local_MiB_s"] / off["local_MiB_s"]
        r["p50_vs_off"] = r["p50_us"] / off["p50_us"]
        r["remote_cpu_vs_off"] = r["remote_cpu_ms_MiB"] / off["remote_cpu_ms_MiB"]
        r["local_cpu_vs_off"] = r["local_cpu_ms_MiB"] / off["local_cpu_ms_MiB"]
        r["get_cpu_vs_off"] = r["get_cpu_us"] / off["get_cpu_us"]
    print(h.table(rows, ["mode", "remote_MiB_s", "remote_vs_off", "remote_cpu_ms_MiB", "remote_cpu_vs_off",
                         "local_MiB_s", "local_vs_off", "local_cpu_ms_MiB", "local_cpu_vs_off", "p50_us",
                         "p50_vs_off", "p99_us", "get_cpu_us", "get_cpu_vs_off", "l3_hits", "block_reads"],
                  f"L3 hits, no L1: get_many of {CHUNK // MiB} MiB chunks ({args.batch_mib} MiB per call; "
                  "remote: streamed over gRPC, local: the node's region file), get of one "
                  f"{SMALL // KiB} KiB blob (streamed); median of {args.passes} passes; cpu: ms of CPU "
                  "per MiB read (us per get), the client's and every service's, less what they use idle"))
    full = rows[-1]
    ok = (full["remote_vs_off"] >= 0.9 and full["local_vs_off"] >= 0.9 and full["p50_vs_off"] <= 1.1)
    summary = (f"{full['mode']} vs off: throughput {full['remote_vs_off']:.2f}x streamed "
               f"({full['remote_MiB_s']:,.0f} vs {off['remote_MiB_s']:,.0f} MiB/s), "
               f"{full['local_vs_off']:.2f}x short-circuit ({full['local_MiB_s']:,.0f} vs "
               f"{off['local_MiB_s']:,.0f} MiB/s), p50 {full['p50_vs_off']:.2f}x ({full['p50_us']:,.0f} vs "
               f"{off['p50_us']:,.0f} us); CPU per MiB {full['remote_cpu_vs_off']:.2f}x streamed, "
               f"{full['local_cpu_vs_off']:.2f}x short-circuit, per get {full['get_cpu_vs_off']:.2f}x; "
               f"expected >= 0.9x and <= 1.1x: {'met' if ok else 'MISSED'}")
    print(summary)
    h.write_json(args.out, "auth_cost", vars(args), rows, summary)


if __name__ == "__main__":
    main()
