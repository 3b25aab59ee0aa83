"""scripts/bench's figures as Markdown (`--markdown FILE`), each table headed by the command that produced it, so
that the figures in docs/performance.md are pasted from a run, never typed."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and abs(value) < 100:
        return f"{value:.2f}"
    if isinstance(value, int | float):
        return f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table: columns of numbers right-aligned, of words left."""
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows) for i in range(len(columns))]
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return out


def _cpu(stage: dict[str, Any]) -> str:
    """The process's CPU seconds, and central's mariadbd's meanwhile where the stage writes into central."""
    server = stage.get("central_cpu_seconds")
    return f"{stage['cpu_seconds']:.2f}" + (f" + central {server:.2f}" if server is not None else "")


def _ratios(stage: dict[str, Any]) -> str:
    parts = [f"{stage[k + '_ratio']:.2f} × {stage[k]}" for k in ("ceiling", "also") if stage.get(k + "_ratio") is not None]
    if stage.get("cpu_ratio") is not None:
        parts.append(f"{stage['cpu_ratio']:.2f} × {stage['ceiling']} by CPU")
    if stage.get("cpu_ratio_also") is not None:
        parts.append(f"{stage['cpu_ratio_also']:.2f} × {stage['also']} by CPU")
    parts += [f"memory {stage[k]:.2f} × {stage['ceiling' if k == 'memory_ratio' else 'also']}"
              for k in ("memory_ratio", "memory_ratio_also") if stage.get(k) is not None]
    return "; ".join(parts)


def render(result: dict[str, Any], argv: Sequence[str], when: str, commit: str) -> str:
    """The run's figures: stages with their ratios, ceilings, envelopes, growth pairs, end to end and latency."""
    command = "scripts/bench " + shlex.join(argv)
    lines = [f"Measured by `{command}` ({when}, commit {commit}, {result.get('cpus', '?')} CPUs, shared machine; "
             f"{result.get('wall_seconds', '?')} s in all).", ""]
    stages = result.get("stages", [])
    if stages:
        lines += table(["stage", "rows", "what is counted", "seconds", "CPU s", "rows/s", "peak RSS MB", "ratios"],
                       [[s["stage"], s["rows"], s.get("counted", ""), s["seconds"], _cpu(s),
                         s["rows_per_second"], round(s.get("peak_rss_total_mb", s["peak_rss_mb"])), _ratios(s)]
                        for s in stages]) + [""]
    if result.get("ceilings"):
        lines += table(["ceiling (same data, same window)", "rows", "seconds", "rows/s", "how"],
                       [[c["ceiling"], c["rows"], c["seconds"], c["rows_per_second"],
                         c["note"] + (f" (central's mariadbd: {c['central_cpu_seconds']:.2f} CPU s)"
                                      if c.get("central_cpu_seconds") is not None else "")]
                        for c in result["ceilings"]]) + [""]
    if "envelopes" in result:
        e = result["envelopes"]
        lines += [f"publish's messages on this workload: {e['messages']:,} messages holding {e['rows']:,} rows "
                  f"({e['rows_per_message']} rows a message, {e['body_bytes_per_message']:,} body bytes a message, "
                  f"{e['body_bytes_per_row']} a row; {e['deflated_messages']:,} deflated).", ""]
    if "growth" in result:
        g = result["growth"]
        pre = g["preload"]
        lines += table(["pair", "empty central rows/s", f"central at {pre['central_rows']:,} rows, rows/s", "ratio"],
                       [[n, p["empty_rows_per_second"], p["big_rows_per_second"], float(p["ratio"])]
                        for n, p in enumerate(g["pairs"], 1)])
        built = (f"built in {pre['seconds']:.0f} s (generator {pre.get('generator_seconds', 0):.0f} s, copies "
                 f"{pre.get('copy_seconds', 0):.0f} s)" if pre["how"] == "built" else "reused (built by an earlier run)")
        lines += ["", f"Median growth ratio {g['median_ratio']}; the big central {built}.", ""]
    if "e2e" in result:
        e = result["e2e"]
        rss = ", ".join(f"{k} {v.get('peak_rss_total_mb', v['peak_rss_mb']):.0f} MB"
                        for k, v in e.get("processes", {}).items())
        workers = e.get("receiver_workers", 1)
        receiving = f", {workers} receiver workers" if workers > 1 else ""
        lines.append(f"Whole pipeline (2 sites → central{receiving}): {e['rows']:,} rows found at central in "
                     f"{e['seconds']} s, {e['rows_per_second']:,} rows/s; peak RSS {rss}.")
        m = e.get("machine")
        if m:
            lines.append(f"The machine over that window: {m['cores_busy']} of {m['cores']} cores busy; "
                         f"{m['cpu_us_per_row']:,} µs of CPU a row in all processes but the bench's own (the workload "
                         f"writer, {m['writer_cpu_seconds']} CPU s); at that cost {m['cores']} cores allow "
                         f"{m['rows_per_second_all_cores']:,} rows/s.")
        lines.append("")
    if "archive" in result:
        a = result["archive"]
        lines += [f"Archive: apply {a['rows_per_second_off']:,} rows/s off, {a['rows_per_second_on']:,} on (median, "
                  f"{a['on_off_ratio']:.2f} ×); CPU a row {a['cpu_us_per_row_off']} µs off, {a['cpu_us_per_row_on']} µs "
                  f"on; the archive {a['archive_bytes_per_row']} bytes a row, its binlog "
                  f"{a['archive_binlog_bytes_per_row']} bytes a row.", ""]
    for key, title in (("latency", "Latency"), ("fairness", "Fairness")):
        if key in result and "p50_ms" in result[key]:
            lat = result[key]
            lines += [f"{title}: {lat.get('rows'):,} rows, p50 {lat['p50_ms']:,} ms, p95 {lat['p95_ms']:,} ms, "
                      f"max {lat['max_ms']:,} ms, {lat.get('missing', 0)} missing.", ""]
    return "\n".join(lines)
