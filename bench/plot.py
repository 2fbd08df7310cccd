"""Charts from benchmark JSON lines: ``python -m bench.plot RESULTS.jsonl [...] --out DIR``.

Reads the lines of ``bench/ann.py`` and ``bench/freshness.py`` (any other
line is skipped) and writes PNG files into ``DIR``, printing each path:

* ``ann-<dataset>.png`` — recall@10 against queries per second (log scale),
  one curve per system of the run (vdb and each anchor), single-query and
  batch QPS side by side, each point labelled with its ``ef``.
* ``freshness-cdf.png`` — the distribution of produce → searchable latency
  (and the broker's own produce → consume floor) per rate, as CDFs from the
  lines' ``latency_ms_quantiles``, beside p50 / p99 against the rate.
* ``freshness-over-time.png`` — ingest rate and lag over time per rate,
  from the lines' ``series`` (sampled every 0.25 s while producing).

Each chart's title names the dataset (or the workload), the host (CPUs) and
its load (the range of ``host.load1`` over the lines drawn). Needs
matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

COLORS = {"vdb": "#2563eb", "hnswlib": "#d97706"}
EXTRA_COLORS = ["#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#b91c1c"]


def read_lines(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every JSON object line of the files (other lines, e.g. logs, are skipped)."""
    lines = []
    for path in paths:
        for raw in Path(path).read_text().splitlines():
            raw = raw.strip()
            if not raw.startswith("{"):
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict):
                lines.append(line)
    return lines


def host_label(lines: list[dict[str, Any]]) -> str:
    """``host: N CPUs, load a–b`` over the lines of one chart."""
    hosts = [line.get("host") or {} for line in lines]
    cpus = sorted({h.get("cpus") for h in hosts if h.get("cpus")})
    loads = [h["load1"] for h in hosts if h.get("load1") is not None]
    cpu_text = "/".join(str(c) for c in cpus) or "?"
    if not loads:
        return f"host: {cpu_text} CPUs, load unknown"
    low, high = min(loads), max(loads)
    load = f"{low:.1f}" if abs(high - low) < 0.05 else f"{low:.1f}–{high:.1f}"
    return f"host: {cpu_text} CPUs, load (1 min) {load}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _color(system: str, others: dict[str, str]) -> str:
    key = system.split()[0].split(":")[0]
    if key in COLORS:
        return COLORS[key]
    if system not in others:
        others[system] = EXTRA_COLORS[len(others) % len(EXTRA_COLORS)]
    return others[system]


# -- ann ------------------------------------------------------------------------------------


def ann_curves(lines: list[dict[str, Any]]) -> dict[tuple, dict[str, list[dict[str, Any]]]]:
    """``{(dataset, n, dim, metric, M, efc): {system: [rows by ef]}}`` from ``bench.ann`` lines.

    Anchors appear as their own lines; where a run printed only vdb lines,
    each line's ``anchor`` object supplies the anchor's points.
    """
    groups: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for line in lines:
        if line.get("bench") != "ann" or line.get("summary") or "recall_at_10" not in line:
            continue
        key = (
            line.get("dataset"),
            line.get("n"),
            line.get("dim"),
            line.get("metric"),
            line.get("M"),
            line.get("ef_construction"),
        )
        systems = groups[key]
        systems[line["system"]][line["ef"]] = {**line}
        anchor = line.get("anchor")
        if isinstance(anchor, dict) and "recall_at_10" in anchor:
            name = anchor.get("system", "anchor")
            systems[name].setdefault(line["ef"], {**anchor, "ef": line["ef"], "host": line["host"]})
    return {
        key: {s: [rows[ef] for ef in sorted(rows)] for s, rows in systems.items()}
        for key, systems in groups.items()
    }


def plot_ann(lines: list[dict[str, Any]], out: Path) -> list[Path]:
    plt = _pyplot()
    written = []
    for (dataset, n, dim, metric, m, efc), systems in ann_curves(lines).items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
        others: dict[str, str] = {}
        drawn: list[dict[str, Any]] = []
        for ax, field, label in (
            (axes[0], "single_qps", "single-query QPS (one thread, one query per call)"),
            (axes[1], "batch_qps", "batch QPS"),
        ):
            for system, rows in sorted(systems.items()):
                rows = [r for r in rows if r.get(field)]
                if not rows:
                    continue
                drawn += rows
                xs = [r["recall_at_10"] for r in rows]
                ys = [r[field] for r in rows]
                color = _color(system, others)
                ax.plot(xs, ys, "o-", color=color, label=system, linewidth=1.6, markersize=4)
                for r, x, y in zip(rows, xs, ys, strict=True):
                    ax.annotate(
                        f"ef {r['ef']}", (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=color,
                    )  # fmt: skip
            ax.set_yscale("log")
            ax.set_xlabel("recall@10")
            ax.set_ylabel(f"{label}, log scale")
            ax.legend(loc="lower left")
        fig.suptitle(
            f"recall@10 vs QPS — {dataset} (n={n:,}, dim={dim}, {metric}, M={m}, "
            f"ef_construction={efc})\n{host_label(drawn)}",
            fontsize=10,
        )
        path = out / f"ann-{dataset}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


# -- freshness ------------------------------------------------------------------------------


def _freshness_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        line
        for line in lines
        if line.get("bench") == "freshness"
        and line.get("measure") in ("broker_floor", "produce_to_searchable")
    ]


KIND_COLORS = {
    "broker floor": "#d97706",
    "vdb embedded": "#2563eb",
    "vdb serve": "#059669",
}
RATE_STYLES = ["-", "--", ":", "-."]


def _kind(line: dict[str, Any]) -> str:
    """``broker floor``, ``vdb serve`` or ``vdb embedded`` (what the line measured)."""
    system = str(line.get("system", "?"))
    if line.get("measure") == "broker_floor":
        return "broker floor"
    if system.startswith("vdb serve"):
        return "vdb serve"
    if system.startswith("vdb"):
        return "vdb embedded"
    return system


KIND_LABELS = {
    "broker floor": "broker floor (kafka-python consumer)",
    "vdb serve": "vdb serve (REST probe)",
    "vdb embedded": "vdb embedded (search probe)",
}


def _series_label(line: dict[str, Any]) -> str:
    kind = _kind(line)
    return f"{KIND_LABELS.get(kind, kind)}, {line.get('rate', 0):,.0f} msg/s"


def _rate_style(rates: list[Any], rate: Any) -> str:
    return RATE_STYLES[rates.index(rate) % len(RATE_STYLES)]


def _workload(lines: list[dict[str, Any]]) -> str:
    dims = sorted({line.get("dim") for line in lines if line.get("dim")})
    formats = sorted({str(line.get("format")) for line in lines if line.get("format")})
    return f"{'/'.join(map(str, dims))}-d vectors, {'/'.join(formats)}, 1 partition"


def plot_freshness(lines: list[dict[str, Any]], out: Path) -> list[Path]:
    plt = _pyplot()
    rows = _freshness_lines(lines)
    if not rows:
        return []
    written = []
    fig, (cdf, per_rate) = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    rates = sorted({line.get("rate") for line in rows})
    for line in sorted(rows, key=lambda x: (_kind(x), x.get("rate", 0))):
        label = _series_label(line)
        color = KIND_COLORS.get(_kind(line), EXTRA_COLORS[0])
        style = _rate_style(rates, line.get("rate"))
        quantiles = line.get("latency_ms_quantiles")
        if quantiles:
            ms = [max(v, 1e-3) for v in quantiles["ms"]]
            cdf.plot(ms, [q / 100 for q in quantiles["q"]], style, color=color, label=label,
                     linewidth=1.6)  # fmt: skip
        else:  # older lines: the percentiles they carry, as points
            pct = line.get("latency_ms") or {}
            points = sorted((float(k[1:]), v) for k, v in pct.items() if k.startswith("p"))
            cdf.plot([v for _, v in points], [q / 100 for q, _ in points], "o", color=color,
                     label=label)  # fmt: skip
    cdf.set_xscale("log")
    cdf.set_xlabel("latency, ms (log scale)")
    cdf.set_ylabel("fraction of messages at or below")
    cdf.set_ylim(0, 1.01)
    cdf.set_title("CDF per rate", fontsize=9)
    cdf.legend(fontsize=7, loc="lower right")
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in rows:
        by_kind[_kind(line)].append(line)
    for kind, group in sorted(by_kind.items()):
        group = sorted(group, key=lambda x: x.get("rate", 0))
        xs = [g.get("rate") for g in group]
        color = KIND_COLORS.get(kind, EXTRA_COLORS[0])
        for key, marker, style in (("p50", "o", "-"), ("p99", "^", "--")):
            ys = [(g.get("latency_ms") or {}).get(key) for g in group]
            per_rate.plot(xs, ys, marker=marker, linestyle=style, color=color,
                          label=f"{KIND_LABELS.get(kind, kind)} {key}")  # fmt: skip
    per_rate.set_xscale("log")
    per_rate.set_yscale("log")
    per_rate.set_xlabel("producer rate, messages/s (log scale)")
    per_rate.set_ylabel("latency, ms (log scale)")
    per_rate.set_title("p50 and p99 per rate", fontsize=9)
    per_rate.legend(fontsize=7)
    fig.suptitle(
        f"freshness: produce → searchable (vdb) and produce → consume (broker floor) — "
        f"{_workload(rows)}\n{host_label(rows)}",
        fontsize=10,
    )
    path = out / "freshness-cdf.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)

    timed = [line for line in rows if (line.get("series") or {}).get("t_s")]
    if timed:
        fig, (rate_ax, lag_ax) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
        timed_rates = sorted({line.get("rate") for line in timed})
        for line in sorted(timed, key=lambda x: (_kind(x), x.get("rate", 0))):
            series = line["series"]
            t, seen, lag = series["t_s"], series["searchable"], series["lag"]
            # rate over a 1 s window (4 samples), so that one batch does not make a spike
            rate = [
                (seen[i] - seen[max(0, i - 4)]) / max(1e-6, t[i] - t[max(0, i - 4)]) if i else 0.0
                for i in range(len(t))
            ]
            label = _series_label(line)
            color = KIND_COLORS.get(_kind(line), EXTRA_COLORS[0])
            style = _rate_style(timed_rates, line.get("rate"))
            rate_ax.plot(t, rate, style, color=color, label=label, linewidth=1.4)
            lag_ax.plot(t, lag, style, color=color, label=label, linewidth=1.4)
        rate_ax.set_xlabel("time since the producer started, s")
        rate_ax.set_ylabel("searchable messages per second")
        rate_ax.set_title("ingest rate: newly searchable per second (1 s window)", fontsize=9)
        lag_ax.set_xlabel("time since the producer started, s")
        lag_ax.set_ylabel("lag: sent − searchable, messages")
        lag_ax.set_title("lag", fontsize=9)
        for ax in (rate_ax, lag_ax):
            ax.legend(fontsize=7)
        fig.suptitle(f"ingest over time — {_workload(timed)}\n{host_label(timed)}", fontsize=10)
        path = out / "freshness-over-time.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", type=Path, help="JSON-lines files of bench runs")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    args = parser.parse_args(argv)
    lines = read_lines(args.results)
    args.out.mkdir(parents=True, exist_ok=True)
    written = plot_ann(lines, args.out) + plot_freshness(lines, args.out)
    if not written:
        print("no bench.ann or bench.freshness lines to plot", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
