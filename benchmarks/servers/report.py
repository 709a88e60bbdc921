"""The summary tables bench_servers.py ends with: restarts, reloads and SIGKILLs per server; deploys."""

import statistics
from typing import Any

# ------------------------------------------------------------------------------------------ report


def med(s: dict[str, Any] | None, key: str, fmt: str = ".0f") -> str:
    return format(s[key]["median"], fmt) if s and s.get(key) else "-"


def mm(s: dict[str, Any] | None, key: str) -> str:
    return f"{s[key]['median']:.0f}/{s[key]['max']:.0f}" if s and s.get(key) else "-"


def print_table(results: dict[str, Any]) -> None:
    cols = ("server", "restart failed held", "restart failed own bind", "gap held/own (ms)", "reload-app failed",
            "SIGKILL->first 200", "SIGKILL->RUNNING")
    units = ("", "median/max", "median/max", "median", "median/max", "median ms", "median ms")
    widths = [max(10, len(c)) for c in cols]
    rows = []
    for server, r in results["servers"].items():
        if r.get("skipped"):
            rows.append(f"{server:<{widths[0]}} | skipped: {r['skipped']}")
            continue
        held, own = r.get("restart_held"), r.get("restart_own_bind")
        cells = (server, mm(held, "failed"), mm(own, "failed"), f"{med(held, 'gap_ms')}/{med(own, 'gap_ms')}",
                 mm(r.get("reload_app"), "failed"), med(r.get("sigkill"), "first_200_ms"),
                 med(r.get("sigkill"), "running_ms"))
        line = " | ".join(f"{v:<{w}}" for v, w in zip(cells, widths))
        if r.get("error"):
            line += f"  (harness error: {r['error'].splitlines()[0][:80]})"
        rows.append(line)
    print(f"summary ({results['mode']}, {results['rounds']} round(s) per figure; figures only, none fails the run):")
    print("  " + " | ".join(f"{c:<{w}}" for c, w in zip(cols, widths)).rstrip())
    print("  " + " | ".join(f"{u:<{w}}" for u, w in zip(units, widths)).rstrip())
    print("  " + "-+-".join("-" * w for w in widths))
    for row in rows:
        print("  " + row.rstrip())
    ref = results["reference"]
    print(f"  reference ({ref['source']}): {ref['what']}, supervisord fails {ref['supervisord_failed']} requests "
          f"and circus {ref['circus_failed']}, with gaps of about {ref['gap_ms'] / 1e3:.1f} s "
          f"({ref['gap_ms']:.0f} ms); compare the gunicorn row (own bind is their setup)")
    for server, r in results["servers"].items():
        kills = (r.get("sigkill") or {}).get("rounds", [])
        early = [k for k in kills if k["running_ms"] - k["first_200_ms"] > 100]
        if early:
            gaps = statistics.median(k["max_gap_ms"] for k in kills)
            print(f"  note: {server}: in {len(early)} of {len(kills)} SIGKILL round(s) the first 200 came before the "
                  f"new master was RUNNING (the old master's orphaned workers answered on the held socket); the "
                  f"longest time without a 200 was {gaps:.0f} ms (median)")
    print_deploy_table(results)
    print(f"  server processes that outlived their daemon: {results['survivors_total']}")


def print_deploy_table(results: dict[str, Any]) -> None:
    """Deploys beside restarts (issue #16): medians, max in brackets where it matters."""
    def mx(s: dict[str, Any] | None, key: str) -> str:
        return f"{s[key]['max']:.0f}" if s and s.get(key) else "-"

    print("deploys (median; [max] over the rounds; latencies: p50/p99 ms across the action vs the steady load "
          "before it):")
    head = ("row", "failed [max]", "longest gap ms [max]", "steady gap ms", "p50/p99 across", "p50/p99 steady",
            "command ms")
    print("  " + " | ".join(head))
    for server, r in results["servers"].items():
        if r.get("skipped"):
            continue
        rows = [(f"{server}: deploy", r.get("deploy")), (f"{server}: restart (held)", r.get("restart_held")),
                (f"{server}: SIGKILL under load", r.get("sigkill_load"))]
        rows += [(f"{server} under {kind}: restart", s) for kind, s in (r.get("peers") or {}).items()
                 if not s.get("skipped")]
        for label, s in rows:
            print(f"  {label} | {med(s, 'failed')} [{mx(s, 'failed')}] | {med(s, 'gap_ms')} [{mx(s, 'gap_ms')}] | "
                  f"{med(s, 'steady_gap_ms')} | "
                  f"{med(s, 'across_p50_ms', '.1f')}/{med(s, 'across_p99_ms', '.1f')} | "
                  f"{med(s, 'steady_p50_ms', '.1f')}/{med(s, 'steady_p99_ms', '.1f')} | {med(s, 'cli_ms')}")
        m = r.get("memory")
        if m and "peak_rss_mib" in m:
            print(f"  {server}: memory of one generation: RSS {m['rss_mib']:.0f} MiB, PSS {m['pss_mib']:.0f} MiB "
                  f"({m['processes']} processes); both generations during the deploys, peak RSS "
                  f"{m['peak_rss_mib']:.0f} MiB")
        broken = r.get("deploy_broken")
        if broken:
            print(f"  {server}: deploy of a broken release (fails import) | failed {med(broken, 'failed')} | verdict "
                  f"after {broken['cli_ms']['median'] / 1e3:.1f} s | p50/p99 {med(broken, 'across_p50_ms', '.1f')}/"
                  f"{med(broken, 'across_p99_ms', '.1f')}")
