"""The scale bench's report: the rendered text of its results dict (pure)."""

from __future__ import annotations


def machine_line(m: dict) -> str:
    return (f"machine: {m.get('os')}, kernel {m.get('kernel')}, {m.get('cpu')}, {m.get('cores')} cores, "
            f"{m.get('mem_gib')} GiB; Python {m.get('python')}, BCC {m.get('bcc')}")


def render(r: dict) -> str:
    L = [f"callerid scale benchmark, {r['mode']} mode, {r['date']}",
         machine_line(r["machine"]),
         (f"background CPU busy (others' work) at start / end: {r['background_cpu_busy_start'] * 100:.0f}% / "
         f"{r.get('background_cpu_busy_end', 0) * 100:.0f}%"), ""]
    L.append("(a) map memory (memlock from /proc/self/fdinfo; conns is BPF_MAP_TYPE_LRU_HASH, preallocated)")
    L.append(f"   {'max_conns':>10}  {'conns map':>12}  {'bytes/entry':>11}  {'pending map (16384)':>20}  load")
    for m in r["memory"]:
        if not m["loaded"]:
            L.append(f"   {m['max_conns']:>10}  did not load: {m['error']}")
            continue
        L.append(f"   {m['max_conns']:>10}  {m['conns_memlock'] / 2**20:>8.1f} MiB  {m['bytes_per_entry']:>11.0f}  "
                 f"{m['pending_memlock'] / 2**20:>16.1f} MiB  {m['load_s']:.1f} s")
    if m.get("loaded"):
        L.append(f"   key {m['conns_key_size']} B + value {m['conns_value_size']} B per entry")
        if "closed_memlock" in m:
            L.append(f"   closed map ({m['closed_max']} entries, same layout): {m['closed_memlock'] / 2**20:.1f} MiB")
    c = r.get("capacity")
    if c:
        b, y, fb, mp = c["below"], c["beyond"], c["fallback_on_evicted"], c["resolver_on_present"]
        L += ["", f"(b) capacity: map of {c['capacity']} entries, connections held by child processes"]
        L.append(f"   {b['held']} held (90% of capacity): {b['in_map']} attributable from the map "
                 f"({b['held'] - b['in_map']} lost); map entries {b['map_entries']}")
        L.append(f"   {y['held']} held: {y['in_map']} in the map; "
                 f"oldest {y['oldest_excess']}: {y['oldest_excess_in_map']} in map; "
                 f"newest {y['newest_cap']}: {y['newest_cap_in_map']} in map; newest 1000: "
                 f"{y['newest_1000_in_map']}; map entries {y['map_entries']}")
        L.append(f"   in map by decile of age (oldest first, {y['held'] // 10} each): {y['in_map_by_decile']}")
        L.append(f"   evicted ones asked to Resolver(fallback=True): {fb['asked']} of {fb['evicted_total']} "
                 f"(random sample, bounded time): right pid {fb['right_pid']}, from /proc {fb['found_proc']}, "
                 f"not found {fb['not_found']}; latency p50 {fb['latency'].get('p50_ns', 0) / 1e6:.1f} ms, "
                 f"p99 {fb['latency'].get('p99_ns', 0) / 1e6:.1f} ms")
        L.append(f"   present ones asked to Resolver: {mp['asked']}: from the map {mp['found_bpf']}, "
                 f"right pid {mp['right_pid']}")
    ch = r.get("churn")
    if ch:
        L += ["", (f"(c) churn: {ch['workers']} processes, connect+accept+close (RST) on loopback "
                   f"for {ch['seconds']:.0f} s, map of {ch['capacity']}")]
        L.append(f"   {ch['connections']} connections in {ch['wall_s']:.1f} s = {ch['conns_per_s']:,.0f}/s "
                 f"(per worker {', '.join(f'{x:,.0f}' for x in ch['per_worker_conns_per_s'])}); "
                 f"connect errors {ch['errors']}")
        L.append(f"   open connections sampled (1%, looked up while open): {ch['sampled']}, attributable "
                 f"{ch['hit']} ({ch['hit'] / max(1, ch['sampled']) * 100:.2f}%), wrong pid {ch['wrong_pid']}; "
                 f"lookup p50 {ch['sample_lookup'].get('p50_ns', 0) / 1e3:.1f} us "
                 f"p99 {ch['sample_lookup'].get('p99_ns', 0) / 1e3:.1f} us")
        L.append(f"   map entries after: {ch['map_entries_after']}; 100 long-lived connections opened before: "
                 f"{ch['held_in_map_before']} in map before, {ch['held_in_map_after']} after")
        for s in ch["sweeps_during"]:
            L.append(f"   sweep during churn: {s['entries']:>7} entries, {s['wall_s'] * 1e3:7.0f} ms wall, "
                     f"{s['cpu_s'] * 1e3:7.0f} ms CPU ({s['cpu_s'] / max(1, s['entries']) * 1e9:.0f} ns/entry)")
        for s in ch["sweeps_after"]:
            L.append(f"   sweep after, grace {s['grace_s']:>3} s: {s['entries']:>7} entries, "
                     f"{s['wall_s'] * 1e3:7.0f} ms wall, {s['cpu_s'] * 1e3:7.0f} ms CPU, deleted {s['deleted']}")
    cc = r.get("churn_c")
    if cc:
        w, wo = cc["with_probe"], cc["without_probe"]
        L += ["", f"(c2) churn with bench/churn_gen.c ({w['workers']} processes, C loop, RST close), "
                  f"map of {cc['capacity']}"]
        L.append(f"   without our probe: {wo['connections']} connections in {wo['wall_s']:.1f} s = "
                 f"{wo['conns_per_s']:,.0f}/s; with it: {w['connections']} in {w['wall_s']:.1f} s = "
                 f"{w['conns_per_s']:,.0f}/s; errors {w['errors']}")
        L.append(f"   sampler connections opened amid the churn, looked up while open: "
                 f"{cc['hit']}/{cc['sampled']} attributable, wrong pid {cc['wrong_pid']}; "
                 f"map entries after {cc['map_entries_after']}")
        if "added_us_per_conn_rough" in cc:
            L.append(f"   rough probe cost from the two rates: {cc['added_us_per_conn_rough']:.1f} us per connection "
                     "(different moments on a shared machine: indicative only)")
    return "\n".join(L)
