"""What a running lab looks like: its daemons, nodes, users, logs (for `lab.sh status` and failures).

A mixin of SlurmLab."""

from __future__ import annotations

from pathlib import Path

from .config import CLUSTER, PSA_PORT, SSH_PORT
from .procctl import same_proc, tail


class Report:
    def logs_tail(self, lines: int = 20) -> str:
        paths = [Path(r["log"]) for r in self.state.get("procs", [])]
        paths += [self.logdir / "slurmctld.log", *[self.logdir / f"slurmd-{n.name}.log" for n in self.nodes]]
        if self.state.get("devlog"):
            paths.append(Path(self.state["devlog"]["log"]))
        return "\n".join(tail(p, lines) for p in paths if p.exists())

    def describe(self) -> dict:
        procs = [{**r, "alive": same_proc(r)} for r in self.state.get("procs", [])]
        return {
            "root": str(self.root), "slurm_conf": str(self.conf), "munge_socket": self.munge_socket,
            "cgroup": self.host.version,
            "nodes": [{"name": n.name, "ip": n.ip, "ip6": n.ip6, "netns": n.netns.path,
                       "tracer_metrics": n.tracer_metrics, "adopter_metrics": n.adopter_metrics,
                       "adopter_socket": self.adopter_socket(n), "ssh": f"{n.ip}:{SSH_PORT} ({self.cidlab_service(n)})",
                       "ssh_psa": f"{n.ip}:{PSA_PORT} ({self.psa_service(n)})"} for n in self.nodes],
            "daemons": procs,
            "users": [{"name": u.name, "uid": u.uid, "home": u.home, "key": str(u.key)}
                      for u in (self.user(x) for x in self.state.get("users", []) if x in self.users)],
            "syslog": (self.state.get("devlog") or {}).get("log"),
            "timings": self.state.get("timings", {}),
        }

    def status_text(self) -> str:
        d = self.describe()
        out = [f"callerid Slurm lab (cluster {CLUSTER}), state {self.state_file}",
               f"slurm.conf {self.conf}, munge socket {self.munge_socket}, cgroup {d['cgroup']}", "", "nodes:"]
        for n in d["nodes"]:
            out.append(f"  {n['name']:7} {n['ip']:14} {n['ip6']:12} netns {n['netns']}")
            out.append(f"          metrics: tracer {n['tracer_metrics']}  adopter {n['adopter_metrics']}")
            out.append(f"          sshd: {n['ssh']}  {n['ssh_psa']}")
        out += ["", "daemons:"]
        for p in d["daemons"]:
            out.append(f"  {p['name']:24} pid {p['pid']:<8} {'running' if p['alive'] else 'DEAD'}  log {p['log']}")
        out += ["", "users:"] + [f"  {u['name']} uid {u['uid']} home {u['home']} key {u['key']}" for u in d["users"]]
        if self.live_procs():
            for cmd in ("sinfo", "squeue"):
                r = self.run(self.ctl, [cmd], timeout=15)
                out += ["", f"{cmd}:", *["  " + x for x in (r.stdout or r.stderr).rstrip().splitlines()]]
        out += ["", "enter a node (as root):",
                f"  SLURM_CONF={self.conf} nsenter --net={self.ctl.netns.path} -- bash",
                "as a test user:",
                f"  SLURM_CONF={self.conf} nsenter --net={self.ctl.netns.path} -- runuser -u cidlab1 -- bash -l"]
        if d["syslog"]:
            out += ["", f"syslog (pam_slurm_adopt, callerid): {d['syslog']}"]
        return "\n".join(out)
