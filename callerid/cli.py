"""The `callerid` command: tracer, adopter, query, conns, doctor, config."""

from __future__ import annotations

import argparse
import json
import sys

from . import config as cfgmod


def _query(args) -> int:
    from .client import RpcError, ask
    from .protocol import Query, Status

    cfg = cfgmod.load(args.config)
    try:
        q = Query.make(args.src_ip, args.src_port, args.dst_ip, args.dst_port)
    except ValueError as exc:
        print(f"callerid query: {exc}", file=sys.stderr)
        return 2
    port = cfg.common.rpc_port
    server = cfgmod.parse_addr(args.server, port) if args.server else (str(q.src_ip), port)
    try:
        ans = ask(server, q, args.timeout, cfg.common.munge_socket)
    except RpcError as exc:
        print(f"callerid query: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(ans.to_dict(), sort_keys=True))
    elif ans.status == Status.FOUND:
        from .userdb import user_name
        state = " (owner exited)" if ans.owner_exited else (" (closed)" if ans.closed else "")
        print(f"job {ans.job_id if ans.job_id else '-'} on {ans.node}: pid {ans.pid} ({ans.comm}) "
              f"uid {ans.uid} ({user_name(ans.uid)}){state}")
        print(f"  cgroup {ans.cgroup or '-'}")
        print(f"  answered from {ans.source.name.lower()}")
    else:
        print(f"not found on {ans.node}: {q}")
    return 0 if ans.status == Status.FOUND else 1


def _tracer(args) -> int:
    from callerid.tracer.daemon import run
    return run(args)


def _adopter(args) -> int:
    from callerid.adopter.daemon import run
    return run(args)


def _conns(args) -> int:
    from callerid.tracer.conns_table import main
    return main(args)


def _doctor(args) -> int:
    from callerid.adopter.checks import check_slurm_layout
    from callerid.tracer.checks import check_probes

    from .doctor import main
    return main(args, check_probes, check_slurm_layout)


def _attach(args) -> int:
    """Ask this node's adopter to move the caller's ssh session into job JOBID."""
    import socket

    from callerid.adopter import pamwire
    path = args.socket
    if path is None:
        try:
            path = cfgmod.load(args.config).adopter.attach_socket
        except cfgmod.ConfigError:
            path = cfgmod.AdopterConfig().attach_socket   # users may not read the node's config
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(pamwire.encode([("job", str(args.jobid))]))
            raw = b""
            while not raw.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                raw += chunk
        reply = pamwire.decode(raw)
    except (OSError, pamwire.WireError) as exc:
        print(f"callerid attach: cannot ask the adopter at {path}: {exc}", file=sys.stderr)
        return 2
    print(reply.get("msg", ""), file=sys.stdout if reply.get("result") == "attached" else sys.stderr)
    return 0 if reply.get("result") == "attached" else 1


def _config(args) -> int:
    if args.doc:
        print(cfgmod.reference())
        return 0
    if args.sample:
        sys.stdout.write(cfgmod.sample())
        return 0
    try:
        cfg = cfgmod.load(args.config)
    except cfgmod.ConfigError as exc:
        print(f"callerid config: {exc}", file=sys.stderr)
        return 2
    from dataclasses import asdict
    print(json.dumps(asdict(cfg), indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callerid", description=__doc__)
    p.add_argument("--config", help=f"TOML configuration file (default {cfgmod.DEFAULT_CONFIG} if it exists)")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("tracer", help="run the source-side daemon (probe, RPC server, metrics) in the foreground")
    t.add_argument("--listen", action="append", metavar="ADDR:PORT", help="RPC address (repeatable)")
    t.add_argument("--metrics", metavar="ADDR:PORT", help="metrics address ('' disables)")
    t.add_argument("--probe", choices=("auto", "cookie", "sockstore", "tracepoint", "kprobe", "fentry"))
    t.set_defaults(func=_tracer)

    a = sub.add_parser("adopter", help="run the destination-side daemon (PAM hook socket, adoption, metrics)")
    a.set_defaults(func=_adopter)

    q = sub.add_parser("query", help="ask a tracer who opened SRC_IP:SRC_PORT -> DST_IP:DST_PORT")
    q.add_argument("--server", metavar="HOST:PORT", help="tracer to ask (default: SRC_IP at the RPC port)")
    q.add_argument("--timeout", type=float, default=2.0)
    q.add_argument("--json", action="store_true")
    q.add_argument("src_ip")
    q.add_argument("src_port", type=int)
    q.add_argument("dst_ip")
    q.add_argument("dst_port", type=int)
    q.set_defaults(func=_query)

    c = sub.add_parser("conns", help="list tracked outgoing TCP connections with owners and jobs")
    c.add_argument("--json", action="store_true")
    c.add_argument("--all", action="store_true", help="include closed entries still in their grace period")
    c.set_defaults(func=_conns)

    d = sub.add_parser("doctor", help="check kernel, BPF, cgroups, Slurm layout and MUNGE; say what to fix")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_doctor)

    at = sub.add_parser("attach", help="move this ssh session into another of your jobs on this node "
                                       "(when callerid could only guess its job)")
    at.add_argument("jobid")
    at.add_argument("--socket", help="the adopter's attach socket (default: [adopter] attach_socket)")
    at.set_defaults(func=_attach)

    g = sub.add_parser("config", help="print the effective configuration, --doc for the reference, "
                                      "--sample for a default configuration file")
    g.add_argument("--doc", action="store_true")
    g.add_argument("--sample", action="store_true")
    g.set_defaults(func=_config)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except cfgmod.ConfigError as exc:
        print(f"callerid: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
