#!/usr/bin/env python3
"""Writes BENCHMARKS.md from the JSON results benches/run.sh collected.

usage: report.py RESULTS_DIR COMMAND > BENCHMARKS.md

Every figure stands next to its baseline from the same run and the ratio;
a target the run missed is marked so, with the margin.
"""

import json
import sys
from pathlib import Path


def load(directory: Path, name: str):
    path = directory / f"{name}.json"
    if not path.exists():
        sys.exit(f"report.py: {path} is missing: the bench that writes it did not run")
    with open(path) as handle:
        return json.load(handle)


def fmt(value, digits=1):
    if isinstance(value, (int,)) or (isinstance(value, float) and value >= 1000):
        return f"{value:,.0f}".replace(",", " ")
    return f"{value:.{digits}f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def main() -> None:
    directory = Path(sys.argv[1])
    command = sys.argv[2]
    machine = load(directory, "machine")
    floor = load(directory, "floor")
    fsync = load(directory, "fsync")
    sign16 = load(directory, "sign-16")
    sign1 = load(directory, "sign-1")
    bao16 = load(directory, "openbao-16")
    bao1 = load(directory, "openbao-1")
    watch = load(directory, "watch")
    watches = sorted(watch["runs"], key=lambda run: run["watchers"])
    bao_version = load(directory, "openbao-version")["version"]
    rotation = load(directory, "rotation")
    cold = load(directory, "cold_start")
    propagation = load(directory, "propagation")

    out = []
    w = out.append
    w("# Benchmarks")
    w("")
    w(f"Written by `{command}` on {machine['date']} at commit `{machine['commit']}`.")
    w(
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory']}, "
        f"Linux {machine['kernel']}; {machine['rustc']}. Server, load generators and "
        "baselines ran on this one machine in the same run; each load generator is a "
        "process of its own (`trustplane bench ...`, `cargo bench --bench ...`)."
    )
    w("")
    w("Ratios compare against baselines measured in this same run: these machines are")
    w("noisy, and a ratio carries from one run to the next far better than a time.")
    w("")

    # --- targets ---------------------------------------------------------
    floor_rate = floor["per_second"]
    rate16 = sign16["per_second"]
    bao_rate16 = bao16["per_second"]
    w("## Targets")
    w("")
    w("| figure | measured | baseline (same run) | ratio | target | |")
    w("| --- | --- | --- | --- | --- | --- |")
    ratio_floor = rate16 / floor_rate if floor_rate else 0.0
    ratio_bao = rate16 / bao_rate16 if bao_rate16 else 0.0
    w(
        f"| issuance, 16 callers | {fmt(rate16)}/s | crypto floor {fmt(floor_rate)}/s | "
        f"{ratio_floor:.2f}× | ≥ 0.5× | {verdict(ratio_floor >= 0.5)} |"
    )
    w(
        f"| issuance, 16 callers | {fmt(rate16)}/s | OpenBao sign-intermediate {fmt(bao_rate16)}/s | "
        f"{ratio_bao:.2f}× | ≥ 3× | {verdict(ratio_bao >= 3.0)} |"
    )
    w(
        f"| issuance latency, 1 caller | p50 {sign1['p50_ms']:.2f} ms, p99 {sign1['p99_ms']:.2f} ms | "
        f"OpenBao p50 {bao1['p50_ms']:.2f} ms; one fsync p50 {fsync['p50_ms']:.2f} ms | {bao1['p50_ms'] / sign1['p50_ms'] if sign1['p50_ms'] else 0:.2f}× OpenBao's | "
        f"p50 ≤ 1 ms | {verdict(sign1['p50_ms'] <= 1.0)} |"
    )
    for run in watches:
        n = run["watchers"]
        target = "p99 < 250 ms" if n == 10000 else "report"
        w(
            f"| bundle fan-out, {fmt(n)} watchers | p50 {run['p50_ms']:.1f} / p99 {run['p99_ms']:.1f} / "
            f"max {run['max_ms']:.1f} ms ({run['count']} of {run['expected']} receipts) | — | — | {target} | "
            f"{verdict(run['p99_ms'] < 250.0) if n == 10000 else ''} |"
        )
    for run in watches:
        n = run["watchers"]
        per = run["server_rss_per_watcher_bytes"] / 1024
        w(
            f"| memory per idle watcher, {fmt(n)} watchers | {per:.1f} KiB | server RSS with no watcher "
            f"{fmt(watch['server_rss_kib_no_watchers'])} KiB, with {fmt(n)}: {fmt(run['server_rss_kib'])} KiB | — | "
            f"< 16 KiB | {verdict(per < 16.0)} |"
        )
    for path in ("agent", "push"):
        p = propagation[path]
        w(
            f"| Secret propagation, {path} path | p50 {p['p50_ms']:.0f} / p99 {p['p99_ms']:.0f} ms "
            f"({p['count']} versions) | — | — | p50 < 200 ms | {verdict(p['p50_ms'] < 200.0)} |"
        )
    w(
        f"| rotation, {fmt(rotation['clusters'])} in-process clusters, grace 0 | "
        f"{rotation['rotation_s']:.2f} s (enrollment {rotation['enrollment_s']:.1f} s, not counted) | — | — | < 10 s | {verdict(rotation['rotation_s'] < 10.0)} |"
    )
    loaded, baseline = cold["loaded"], cold["baseline"]
    w(
        f"| cold start, {fmt(cold['clusters'])} clusters + {fmt(cold['records'])} records | "
        f"ready {loaded['ready_ms']:.0f} ms, first GetBundle {loaded['first_get_bundle_ms']:.0f} ms, "
        f"first SignIntermediate {loaded['first_sign_intermediate_ms']:.0f} ms | "
        f"same clusters, no records: ready {baseline['ready_ms']:.0f} ms, first SignIntermediate "
        f"{baseline['first_sign_intermediate_ms']:.0f} ms | {cold['ready_ratio']:.2f}× / "
        f"{cold['first_sign_intermediate_ratio']:.2f}× | report; no O(records) on the request path | |"
    )
    w("")

    # --- details ---------------------------------------------------------
    w("## Issuance")
    w("")
    w("| load | per second | p50 ms | p99 ms | max ms | issuances per fsync |")
    w("| --- | --- | --- | --- | --- | --- |")
    w(f"| crypto floor (ring P-256: 1 sign + 2 verifies, {floor.get('threads', 2)} threads) | {fmt(floor_rate)} | | | | |")
    w(
        f"| fsync floor (4 KiB write + fsync, one after another) | {fmt(fsync['per_second'])} | "
        f"{fsync['p50_ms']:.2f} | {fsync['p99_ms']:.2f} | | 1 |"
    )
    for label, result in (("trustplane, 16 callers", sign16), ("trustplane, 1 caller", sign1)):
        per_fsync = result.get("store", {}).get("batches_per_commit")
        per_fsync_text = f"{per_fsync:.2f}" if per_fsync is not None else ""
        w(
            f"| {label} | {fmt(result['per_second'])} | {result['p50_ms']:.2f} | {result['p99_ms']:.2f} | "
            f"{result['max_ms']:.2f} | {per_fsync_text} |"
        )
    for label, result in ((f"OpenBao {bao_version}, 16 callers", bao16), (f"OpenBao {bao_version}, 1 caller", bao1)):
        w(
            f"| {label} | {fmt(result['per_second'])} | {result['p50_ms']:.2f} | {result['p99_ms']:.2f} | "
            f"{result['max_ms']:.2f} | |"
        )
    w("")

    w("## The pure core (criterion, `cargo bench --bench core`)")
    w("")
    w("| bench | time per iteration |")
    w("| --- | --- |")
    core = directory / "core.txt"
    if core.exists():
        for line in core.read_text().splitlines():
            # test NAME ... bench:   12,345 ns/iter (+/- 67)
            if " ... bench:" not in line:
                continue
            name, rest = line[len("test "):].split(" ... bench:", 1)
            w(f"| {name.strip()} | {rest.strip()} |")
    w("")
    w("## Rotation and cold start")
    w("")
    w("```json")
    w(json.dumps({"rotation": rotation, "cold_start": cold}, indent=2))
    w("```")
    w("")
    profile = Path(__file__).with_name("profile.md")
    out.append(profile.read_text())
    print("\n".join(out))


if __name__ == "__main__":
    main()
