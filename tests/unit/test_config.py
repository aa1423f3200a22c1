"""Tests for callerid.config: defaults, a full override, rejected keys and types, addresses, reference."""

from __future__ import annotations

from dataclasses import fields

import pytest

from callerid import config
from callerid.config import Config, ConfigError, load, parse_addr, reference


@pytest.fixture
def no_default_file(monkeypatch, tmp_path):
    # The host may have a real /etc/callerid/callerid.toml: never read it here.
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "absent.toml")


def write(tmp_path, text: str):
    p = tmp_path / "callerid.toml"
    p.write_text(text)
    return p


def test_defaults_when_no_file(no_default_file):
    cfg = load()
    assert cfg == Config()
    assert cfg.common.munge_socket == "/run/munge/munge.socket.2"
    assert cfg.common.slurm_user == "slurm"
    assert cfg.common.rpc_port == config.DEFAULT_RPC_PORT == 6828
    assert cfg.tracer.listen == []
    assert cfg.tracer.metrics == "[::]:9828"
    assert cfg.tracer.max_clients == 64
    assert cfg.tracer.read_timeout_seconds == 2.0
    assert cfg.tracer.max_frame_bytes == 8192
    assert cfg.tracer.replace_pinned is False
    assert cfg.adopter.metrics == "[::]:9829"
    assert cfg.adopter.service == ["sshd"]


def test_default_lists_are_not_shared():
    a, b = Config(), Config()
    a.adopter.service.append("login")
    a.tracer.listen.append("1.2.3.4:5")
    assert b.adopter.service == ["sshd"]
    assert b.tracer.listen == []


def test_default_path_is_read_when_present(monkeypatch, tmp_path):
    p = write(tmp_path, "[common]\nslurm_user = 'slurmd'\n")
    monkeypatch.setattr(config, "DEFAULT_CONFIG", p)
    assert load().common.slurm_user == "slurmd"


def test_node_falls_back_to_short_hostname(monkeypatch):
    monkeypatch.setattr(config.socket, "gethostname", lambda: "cn-07.cluster.example")
    assert Config().common.node() == "cn-07"
    c = Config()
    c.common.nodename = "node7"
    assert c.common.node() == "node7"


FULL = """
[common]
munge_socket = "/tmp/m.sock"
slurm_user = "slurmadm"
nodename = "cn-01"
log_level = "debug"
rpc_port = 7000

[tracer]
listen = ["10.0.0.1:7000", "[fd00::1]:7000"]
metrics = ""
probe = "kprobe"
pin_root = "/sys/fs/bpf/other"
replace_pinned = true
max_connections = 1024
max_pending = 128
max_closed_connections = 512
closed_share_per_uid = 77
close_grace_seconds = 30.5
sweep_interval_seconds = 1.5
reconcile = false
fallback = false
require_bpf = true
max_clients = 8
read_timeout_seconds = 0.5
max_frame_bytes = 4096
header_timeout_seconds = 0.25
max_rpc_connections = 100
max_rpc_connections_per_peer = 10

[adopter]
socket = "/tmp/adopter.sock"
metrics = "127.0.0.1:9999"
action_no_jobs = "ignore"
action_unknown = "deny"
action_adopt_failure = "deny"
action_generic_failure = "deny"
ignore_root = false
single_job_skip_rpc = false
service = ["sshd", "login"]
rpc_timeout_seconds = 1.25
deadline_seconds = 3.5
cgroup_root = "/tmp/cg"
adopt_exe = ["sshd", "login"]
mode = "audit"
join_container = false
job_group = false
attach_socket = ""
job_container_conf = "/tmp/jc.conf"
slurm_conf = "/tmp/slurm.conf"
job_env = ["CUDA_VISIBLE_DEVICES"]
"""

FULL_EXPECTED = {
    "common": dict(munge_socket="/tmp/m.sock", slurm_user="slurmadm", nodename="cn-01", log_level="debug",
                   rpc_port=7000),
    "tracer": dict(listen=["10.0.0.1:7000", "[fd00::1]:7000"], metrics="", probe="kprobe",
                   pin_root="/sys/fs/bpf/other", replace_pinned=True, max_connections=1024, max_pending=128,
                   max_closed_connections=512, closed_share_per_uid=77,
                   close_grace_seconds=30.5, sweep_interval_seconds=1.5, reconcile=False, fallback=False,
                   require_bpf=True, max_clients=8, read_timeout_seconds=0.5, max_frame_bytes=4096,
                   header_timeout_seconds=0.25, max_rpc_connections=100, max_rpc_connections_per_peer=10),
    "adopter": dict(socket="/tmp/adopter.sock", metrics="127.0.0.1:9999", action_no_jobs="ignore",
                    action_unknown="deny", action_adopt_failure="deny", action_generic_failure="deny",
                    ignore_root=False, single_job_skip_rpc=False, service=["sshd", "login"],
                    rpc_timeout_seconds=1.25, deadline_seconds=3.5, cgroup_root="/tmp/cg",
                    adopt_exe=["sshd", "login"], mode="audit", join_container=False, job_group=False, attach_socket="",
                    job_container_conf="/tmp/jc.conf", slurm_conf="/tmp/slurm.conf", job_env=["CUDA_VISIBLE_DEVICES"]),
}


def test_full_file_overrides_every_option(tmp_path):
    cfg = load(write(tmp_path, FULL))
    default = Config()
    for sect in fields(Config):
        got, want = getattr(cfg, sect.name), FULL_EXPECTED[sect.name]
        # The fixture must cover every option, and each value must differ from its default.
        assert set(want) == {f.name for f in fields(got)}, sect.name
        for name, value in want.items():
            assert getattr(got, name) == value, f"{sect.name}.{name}"
            assert type(getattr(got, name)) is type(value), f"{sect.name}.{name}"
            assert getattr(getattr(default, sect.name), name) != value, f"{sect.name}.{name} equals its default"


def test_partial_file_keeps_other_defaults(tmp_path):
    cfg = load(write(tmp_path, "[tracer]\nmax_clients = 3\n"))
    assert cfg.tracer.max_clients == 3
    assert cfg.tracer.read_timeout_seconds == 2.0
    assert cfg.common == Config().common
    assert cfg.adopter == Config().adopter


def test_empty_file_is_defaults(tmp_path):
    assert load(write(tmp_path, "")) == Config()


@pytest.mark.parametrize("text, name", [
    ("[bogus]\nx = 1\n", "[bogus]"),
    ("[Tracer]\nmax_clients = 1\n", "[Tracer]"),
    ("common = 5\n", "[common]"),          # a top-level key, not a table
    ("stray = 'x'\n", "[stray]"),
])
def test_unknown_section(tmp_path, text, name):
    with pytest.raises(ConfigError, match="unknown section") as info:
        load(write(tmp_path, text))
    assert name in str(info.value)


@pytest.mark.parametrize("section, key", [("common", "rpcport"), ("tracer", "max_client"),
                                          ("adopter", "listen"), ("tracer", "node")])
def test_unknown_key(tmp_path, section, key):
    with pytest.raises(ConfigError, match="unknown option") as info:
        load(write(tmp_path, f"[{section}]\n{key} = 1\n"))
    assert repr(key) in str(info.value)
    assert f"[{section}]" in str(info.value)


@pytest.mark.parametrize("line, where", [
    ("[tracer]\nmax_clients = '64'", "[tracer].max_clients"),    # string for int
    ("[tracer]\nmax_clients = true", "[tracer].max_clients"),    # bool for int
    ("[common]\nrpc_port = false", "[common].rpc_port"),
    ("[tracer]\nmax_clients = 1.5", "[tracer].max_clients"),     # float for int
    ("[tracer]\nread_timeout_seconds = '2'", "[tracer].read_timeout_seconds"),
    ("[tracer]\nread_timeout_seconds = true", "[tracer].read_timeout_seconds"),  # bool for float
    ("[tracer]\nfallback = 1", "[tracer].fallback"),             # int for bool
    ("[tracer]\nfallback = 'yes'", "[tracer].fallback"),
    ("[common]\nslurm_user = 0", "[common].slurm_user"),         # int for str
    ("[adopter]\nservice = 'sshd'", "[adopter].service"),        # str for list
    ("[tracer]\nlisten = '[::]:6828'", "[tracer].listen"),
])
def test_wrong_type(tmp_path, line, where):
    with pytest.raises(ConfigError, match="expected") as info:
        load(write(tmp_path, line + "\n"))
    assert where in str(info.value)


def test_int_accepted_for_float(tmp_path):
    cfg = load(write(tmp_path, "[tracer]\nread_timeout_seconds = 3\nclose_grace_seconds = 0\n"
                               "[adopter]\ndeadline_seconds = 10\n"))
    assert cfg.tracer.read_timeout_seconds == 3.0
    assert type(cfg.tracer.read_timeout_seconds) is float
    assert type(cfg.tracer.close_grace_seconds) is float
    assert cfg.adopter.deadline_seconds == 10.0


def test_bad_toml_is_config_error(tmp_path):
    p = write(tmp_path, "[tracer\nmax_clients = 1\n")
    with pytest.raises(ConfigError) as info:
        load(p)
    assert str(p) in str(info.value)


def test_missing_explicit_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError):
        load(tmp_path / "nope.toml")


@pytest.mark.parametrize("text, default, want", [
    ("1.2.3.4:5", 99, ("1.2.3.4", 5)),
    ("[::1]:5", 99, ("::1", 5)),
    ("[::]", 6828, ("::", 6828)),
    ("host", 7, ("host", 7)),
    ("host:8", 7, ("host", 8)),
    ("  10.0.0.1:6828 ", 1, ("10.0.0.1", 6828)),
    ("[fd00::1]:65535", 1, ("fd00::1", 65535)),
    ("::1", 3, ("::1", 3)),   # bare IPv6: several colons, so no port
])
def test_parse_addr(text, default, want):
    assert parse_addr(text, default) == want


def test_reference_mentions_every_option():
    ref = reference()
    cfg = Config()
    for sect in fields(Config):
        head = f"## [{sect.name}]"
        assert head in ref
        section_text = ref.split(head, 1)[1].split("\n## ", 1)[0]
        for f in fields(getattr(cfg, sect.name)):
            rows = [line for line in section_text.splitlines() if line.startswith(f"| `{f.name}` |")]
            assert len(rows) == 1, f"{sect.name}.{f.name}"
            assert f.metadata["help"] in rows[0]
            assert repr(getattr(getattr(cfg, sect.name), f.name)) in rows[0]


# Regression tests for bugs found by review.

@pytest.mark.parametrize("text", ["[__init__]\nx = 1\n", "[__dict__]\nx = 1\n", "[__class__]\ncommon = 1\n"])
def test_dunder_section_is_config_error(tmp_path, text):
    with pytest.raises(ConfigError, match="unknown section"):
        load(write(tmp_path, text))


def test_list_elements_are_type_checked(tmp_path):
    with pytest.raises(ConfigError):
        load(write(tmp_path, "[tracer]\nlisten = [5]\n"))


@pytest.mark.parametrize("text", ["[tracer]\nmax_clients = -5\n", "[tracer]\nmax_clients = 0\n",
                                  "[adopter]\nrpc_timeout_seconds = -1.0\n", "[adopter]\nservice = [1, true]\n"])
def test_out_of_range_and_mistyped_list_values_are_refused(tmp_path, text):
    with pytest.raises(ConfigError):
        load(write(tmp_path, text))


@pytest.mark.parametrize("text", ["host:", "[::1]:", "1.2.3.4:x", "[::1]junk", "[::1", ":5", "1.2.3.4:70000"])
def test_parse_addr_rejects_malformed_addresses(text):
    with pytest.raises(ConfigError):
        parse_addr(text, 1)


def test_sample_is_the_defaults_commented_out(tmp_path):
    """The packaged /etc/callerid/callerid.toml: as shipped it changes nothing; with every
    option line uncommented it states every default, and loads."""
    import re
    from dataclasses import asdict
    text = config.sample()
    shipped = tmp_path / "shipped.toml"
    shipped.write_text(text)
    assert asdict(load(shipped)) == asdict(Config())
    uncommented = tmp_path / "all.toml"
    uncommented.write_text(re.sub(r"(?m)^#(\w+ = )", r"\1", text))
    assert asdict(load(uncommented)) == asdict(Config())
    options = sum(len(fields(s.default_factory())) for s in fields(Config))
    assert len(re.findall(r"(?m)^\w+ = ", uncommented.read_text())) == options
# --- every option range-checked (issue 12, item 9) -----------------------------------------------

def _bounded_options():
    for sect in fields(Config):
        for f in fields(sect.default_factory()):
            if f.metadata.get("lo") is not None:
                yield sect.name, f


@pytest.mark.parametrize("section,f", list(_bounded_options()), ids=lambda v: getattr(v, "name", v))
def test_numbers_outside_their_range_are_refused_naming_the_option(tmp_path, section, f):
    lo, hi = f.metadata["lo"], f.metadata["hi"]
    default = getattr(getattr(Config(), section), f.name)
    assert lo <= default <= hi, "the default itself is accepted"
    step = 1 if isinstance(lo, int) else 0.01
    for bad in (lo - step, hi + step):
        with pytest.raises(ConfigError) as info:
            load(write(tmp_path, f"[{section}]\n{f.name} = {bad!r}\n"))
        assert f"[{section}].{f.name}: must be between {lo} and {hi}" in str(info.value)
    for good in (lo, hi):
        assert getattr(getattr(load(write(tmp_path, f"[{section}]\n{f.name} = {good!r}\n")), section), f.name) == good


def test_every_number_has_a_range():
    for sect in fields(Config):
        for f in fields(sect.default_factory()):
            if type(getattr(sect.default_factory(), f.name)) in (int, float):
                assert f.metadata.get("lo") is not None, f"[{sect.name}].{f.name} has no range"


def test_zero_sweep_interval_is_refused(tmp_path):
    # sweep_interval_seconds = 0 made the sweeper spin a core (issue 12)
    with pytest.raises(ConfigError, match=r"\[tracer\]\.sweep_interval_seconds: must be between 0.1 and 3600"):
        load(write(tmp_path, "[tracer]\nsweep_interval_seconds = 0\n"))


@pytest.mark.parametrize("line,where", [
    ('[common]\nlog_level = "verbose"', "[common].log_level: must be one of debug, info, warning, error"),
    ('[tracer]\nprobe = "uprobe"', "[tracer].probe: must be one of auto"),
    ('[tracer]\nlisten = ["[::1]:x"]', "[tracer].listen: bad address"),
    ('[tracer]\nmetrics = "host:"', "[tracer].metrics: bad address"),
    ('[adopter]\nmetrics = "1.2.3.4:70000"', "[adopter].metrics: bad address"),
])
def test_strings_outside_their_choices_are_refused_naming_the_option(tmp_path, line, where):
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, line + "\n"))
    assert where in str(info.value)


def test_empty_metrics_address_switches_the_endpoint_off(tmp_path):
    assert load(write(tmp_path, '[tracer]\nmetrics = ""\n')).tracer.metrics == ""
