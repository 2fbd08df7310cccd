"""What tracing costs a search when it is off: this tree against an earlier commit, same run.

    python -m bench.trace_cost --base e1b5bbf --quick
    python -m bench.trace_cost --base REF --n 20000 --clients 4 --rounds 6 --seconds 3

Exports the ``--base`` commit of this repository (``git archive``) into a
temporary folder, starts ``python -m vdb serve`` from it and from this tree
(tracing off: no ``OTEL_*`` variable is passed), loads the same points into
both, then measures search QPS with the client processes of
``bench.http``, alternating the two servers round by round so that a change
of load on the box hits both alike. ``--traced`` adds a third server from
this tree with ``OTEL_TRACES_EXPORTER=console`` (spans written to its log:
an upper bound on the cost when on). Prints one line per round and target,
then a summary line with the median QPS of each and
``ratio_this_over_base``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    REPO,
    Server,
    emit,
    free_port,
    host_info,
    log,
    random_unit_vectors,
)
from bench.http import COLLECTION, DIM, create_collection, load_clients, upload


class TreeServer(Server):
    """``python -m vdb serve`` run from ``tree`` (its own code), stopped by its pid."""

    def __init__(self, tree: Path, data: Path, log_path: Path, env: dict[str, str] | None = None):
        port = free_port()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        child_env["PYTHONPATH"] = str(tree)
        child_env.update(env or {})
        argv = [sys.executable, "-m", "vdb", "serve", "--data", str(data), "--port", str(port)]
        super().__init__(
            argv, port, log_path, "/readyz", env=child_env, cwd=tree, timeout=600, port_timeout=300
        )

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used (Linux ``/proc``)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def export_commit(ref: str) -> tuple[str, Path]:
    """``git archive ref`` of this repository into a temp folder kept per commit.

    Kept so that a second run reuses the Numba cache compiled in it. Returns
    the full commit id and the folder.
    """
    commit = subprocess.run(
        ["git", "rev-parse", ref], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    dest = Path(tempfile.gettempdir()) / f"vdb-bench-base-{commit[:12]}"
    if not (dest / "vdb" / "__init__.py").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.Popen(["git", "archive", commit], cwd=REPO, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
        archive.wait()
    return commit, dest


def noop_path_ns(repeat: int = 200_000) -> float:
    """Nanoseconds per search of what tracing adds to the fast search path while off.

    The same calls ``QdrantApi.run_search`` makes for a light query: three
    ``telemetry.span`` no-op blocks, one attribute set, one attributes check.
    """
    from vdb import telemetry
    from vdb.http.qdrant import Query, search_attributes

    assert not telemetry.enabled()
    query = Query(limit=10, offset=0, ef=64, exact=False, filter=None, point_id=None)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(repeat):
            with telemetry.span("vdb.http.parse"):
                pass
            with telemetry.span("vdb.search", search_attributes("c", query)) as span:
                span.set_attribute("db.response.returned_rows", 10)
            with telemetry.span("vdb.http.encode"):
                pass
        best = min(best, (time.perf_counter_ns() - start) / repeat)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the commit to compare with (git ref)")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--ef", type=int, default=64)
    parser.add_argument("--traced", action="store_true", help="also this tree with tracing on")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 10_000)
        args.rounds = min(args.rounds, 4)
        args.seconds = min(args.seconds, 2.0)
    vectors = random_unit_vectors(args.n, DIM, seed=3)
    queries = random_unit_vectors(256, DIM, seed=4)
    bodies = [
        json.dumps({"query": q.tolist(), "limit": 10, "params": {"hnsw_ef": args.ef}}).encode()
        for q in queries
    ]
    path = f"/collections/{COLLECTION}/points/query"
    with tempfile.TemporaryDirectory(prefix="vdb-bench-trace-") as tmp:
        work = Path(tmp)
        base_commit, base_tree = export_commit(args.base)
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout.strip()
        trees = {"base": base_tree, "this": REPO}
        env = {"base": None, "this": None}
        if args.traced:
            trees["this_traced"] = REPO
            env["this_traced"] = {"OTEL_TRACES_EXPORTER": "console"}
        servers: dict[str, TreeServer] = {}
        try:
            for name, tree in trees.items():
                log(f"starting {name} from {tree}")
                servers[name] = TreeServer(
                    tree, work / f"data-{name}", work / f"{name}.log", env[name]
                )
                create_collection(servers[name].port, COLLECTION)
                upload(servers[name].port, COLLECTION, vectors, 1000, "msgpack")
            qps: dict[str, list[float]] = {name: [] for name in servers}
            cpu_us: dict[str, list[float]] = {name: [] for name in servers}
            for round_no in range(args.rounds):
                order = list(servers) if round_no % 2 == 0 else list(reversed(servers))
                for name in order:
                    cpu_before = servers[name].cpu_s()
                    result = load_clients(
                        servers[name].port, path, bodies, args.clients, args.client_procs,
                        args.seconds, args.warmup, work,
                    )  # fmt: skip
                    qps[name].append(result["qps"])
                    # server CPU per search: far less sensitive than QPS to a busy box
                    # (warm-up requests included in the CPU, so divide by all requests)
                    all_requests = result["qps"] * (args.seconds + args.warmup)
                    used = servers[name].cpu_s() - cpu_before
                    result["server_cpu_us_per_search"] = used / max(1.0, all_requests) * 1e6
                    cpu_us[name].append(result["server_cpu_us_per_search"])
                    log(f"round {round_no} {name}: {result['qps']:.0f} QPS")
                    emit(
                        {"bench": "trace_cost", "round": round_no, "target": name, **result,
                         "clients": args.clients, "n": args.n, "dim": DIM, "ef": args.ef,
                         "host": host_info()}
                    )  # fmt: skip
        finally:
            for server in servers.values():
                server.stop()
    medians = {name: statistics.median(values) for name, values in qps.items()}
    summary: dict[str, Any] = {
        "bench": "trace_cost",
        "summary": True,
        "system": f"vdb at {head[:12]} (this tree), tracing off",
        "qps_median": medians["this"],
        "qps_rounds": qps["this"],
        "anchor": {
            "system": f"vdb at {base_commit[:12]} (--base {args.base}), same run",
            "qps_median": medians["base"],
            "qps_rounds": qps["base"],
        },
        "ratio_this_over_base": medians["this"] / medians["base"],
        "ratio_per_round": [t / b for t, b in zip(qps["this"], qps["base"], strict=True)],
        "ratio_per_round_median": float(
            np.median([t / b for t, b in zip(qps["this"], qps["base"], strict=True)])
        ),
        "clients": args.clients,
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "n": args.n,
        "dim": DIM,
        "ef": args.ef,
        "host": host_info(),
    }
    cpu = {name: statistics.median(values) for name, values in cpu_us.items()}
    summary["server_cpu_us_per_search_median"] = cpu["this"]
    summary["anchor"]["server_cpu_us_per_search_median"] = cpu["base"]
    summary["cpu_ratio_this_over_base"] = cpu["this"] / cpu["base"]
    summary["cpu_us_rounds"] = {
        name: [round(v, 1) for v in values] for name, values in cpu_us.items()
    }
    ns = noop_path_ns()
    summary["noop_path_ns_per_search"] = round(ns, 1)
    # closed loop: each client has one request in flight, so a request takes clients / QPS
    request_s = args.clients / medians["this"]
    summary["noop_path_percent_of_request"] = round(100 * ns * 1e-9 / request_s, 5)
    summary["noop_path_percent_of_server_cpu"] = round(100 * ns * 1e-3 / cpu["this"], 5)
    if "this_traced" in medians:
        summary["traced_console"] = {
            "qps_median": medians["this_traced"],
            "ratio_over_base": medians["this_traced"] / medians["base"],
        }
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
