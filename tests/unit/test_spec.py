"""Fleet files, hostfiles and ssh configs: what resolves, and the one-line errors for what doesn't."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import tf
from trainfleet.errors import SpecError
from trainfleet.fleet import load_fleet
from trainfleet.fleet.importers import SSHConfig, looks_like_hostfile, parse_hostfile
from trainfleet.fleet.schema import parse_fleet_text
from trainfleet.results import expand_nodes, fold_nodes


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "id_test"
    path.write_text("not checked here\n")
    return path


def write(tmp_path: Path, text: str, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_flow_into_nodes(tmp_path: Path, key: Path) -> None:
    path = write(tmp_path, f"""
ssh: {{user: ubuntu, port: 2222, identity_file: {key}, jump: admin@bastion:2200}}
workdir: /srv/job
nodes:
  - {{host: 10.0.0.1, slots: 8, address: 192.168.1.1, interface: ens5}}
  - {{host: 10.0.0.2, name: gpu2, port: 22, user: root}}
""")
    fleet = load_fleet(path)
    first, second = fleet.nodes
    assert (first.name, first.user, first.port, first.slots) == ("10.0.0.1", "ubuntu", 2222, 8)
    assert (first.address, first.interface, first.identity_file) == ("192.168.1.1", "ens5", str(key))
    assert str(first.jump) == "admin@bastion:2200"
    assert (second.name, second.user, second.port, second.slots, second.address) == ("gpu2", "root", 22, 1, "10.0.0.2")
    assert fleet.workdir == "/srv/job" and fleet.head is first


@pytest.mark.parametrize("body, expected", [
    ("nodes:\n  - {host: a, sltos: 2}\n", "nodes[0].sltos: unknown key"),
    ("nodes:\n  - {host: a}\nworkdri: /x\n", "workdri: unknown key"),
    ("nodes:\n  - {host: a}\n  - {host: a}\n", "nodes[1].host: duplicate host a:22 (also nodes[0])"),
    ("nodes:\n  - {host: a, slots: 0}\n", "nodes[0].slots: Input should be greater than or equal to 1"),
    ("nodes:\n  - {host: a, identity_file: /nonexistent/key}\n",
     "nodes[0] (a): identity_file: key file /nonexistent/key does not exist"),
    ("nodes:\n  - {host: a, name: x}\n  - {host: b, name: x}\n", "nodes[1].name: duplicate node name 'x'"),
    ("nodes: []\n", "nodes: List should have at least 1 item"),
    ("nodes:\n  - {host: a, port: 70000}\n", "nodes[0].port: Input should be less than or equal to 65535"),
    ("nodes: [\n", "not valid YAML"),
    ("ssh: {port: 22}\n", "nodes: required key is missing"),
    # Fields that reach ssh_config files, shell lines and mount options on every node.
    ('nodes:\n  - {host: "a\\n  ProxyCommand touch /tmp/owned"}\n', "nodes[0].host: Value error, contains a control"),
    ("nodes:\n  - {host: -oProxyCommand=x}\n", "nodes[0].host: Value error, not a valid host name"),
    ('nodes:\n  - {host: a, user: "root; id"}\n', "nodes[0].user: Value error, not a valid user name"),
    ('nodes:\n  - {host: a, interface: "eth0 up"}\n', "nodes[0].interface: Value error, not a valid network interface"),
    ('nodes:\n  - {host: a}\nssh: {user: "x y"}\n', "ssh.user: String should match pattern"),
    ('nodes:\n  - {host: a}\ncontainer: {engine: podman, rootfs: "/r\' ; id #"}\n', "`rootfs:` is an absolute path"),
])
def test_bad_spec_is_one_line_naming_the_field(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(SpecError) as caught:
        load_fleet(path)
    assert expected in caught.value.one_line()
    assert str(path) in caught.value.one_line()
    # The same through the CLI: one line on stderr, exit code 2, no traceback.
    completed = tf("check", "-f", str(path))
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in completed.stderr


def test_missing_fleet_file_names_the_fix(tmp_path: Path) -> None:
    completed = tf("exec", "-f", str(tmp_path / "nope.yaml"), "--", "true")
    assert completed.returncode == 2
    assert "nope.yaml: fleet file not found" in completed.stderr and "trainfleet init" in completed.stderr


def test_fleet_env_variable_is_the_default(tmp_path: Path, key: Path) -> None:
    path = write(tmp_path, "nodes:\n  - {host: h1, slots: 3}\n", name="other.yaml")
    completed = tf("check", env={"TRAINFLEET_FLEET": str(path)}, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "h1:" in completed.stdout and "slots=3" in completed.stdout


def test_init_writes_a_valid_commented_fleet_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "fleet.yaml"
    assert tf("init", "-o", str(target)).returncode == 0
    text = target.read_text()
    assert text.count("#") > 10
    # The template names a key file that may not exist here; everything else must validate.
    text = "\n".join(line for line in text.splitlines() if "identity_file" not in line)
    target.write_text(text)
    assert [n.slots for n in load_fleet(target).nodes] == [8, 8]
    again = tf("init", "-o", str(target))
    assert again.returncode == 2 and "already exists" in again.stderr


SEED_SSH_CONFIG = """
# as in the AnomalyGPT runbook: container sshd on port 2222 behind aliases
Host worker-*
    User root
    IdentityFile ~/.ssh/id_rsa_fleet
Host worker-1
    HostName 10.1.0.11
    Port 2222
Host worker-2
    HostName 10.1.0.12
    Port=2222
    User ubuntu
    ProxyJump jump@bastion.example.com:2200
Host *
    User nobody
    Port 22
"""


def test_ssh_config_first_value_wins_and_wildcards_apply(tmp_path: Path) -> None:
    config = SSHConfig.load(write(tmp_path, SEED_SSH_CONFIG, "config"))
    one = config.node_entry("worker-1")
    two = config.node_entry("worker-2")
    assert one == {"host": "10.1.0.11", "name": "worker-1", "port": 2222, "user": "root",
                   "identity_file": "~/.ssh/id_rsa_fleet"}
    assert two["user"] == "root"  # `Host worker-*` came first
    assert two["jump"] == "jump@bastion.example.com:2200" and two["port"] == 2222
    assert config.node_entry("elsewhere") == {"host": "elsewhere", "port": 22, "user": "nobody"}
    assert config.aliases() == ["worker-1", "worker-2"]


def test_hostfile_import_resolves_aliases_like_deepspeed(tmp_path: Path) -> None:
    hostfile = write(tmp_path, "# DeepSpeed hostfile\nworker-1 slots=4\nworker-2 slots=4  # second box\n", "hostfile")
    config = write(tmp_path, SEED_SSH_CONFIG.replace("~/.ssh/id_rsa_fleet", str(tmp_path / "config")), "config")
    assert looks_like_hostfile(hostfile.read_text())
    out = tmp_path / "fleet.yaml"
    completed = tf("import", "hostfile", str(hostfile), "--ssh-config", str(config), "-o", str(out))
    assert completed.returncode == 0, completed.stderr
    fleet = load_fleet(out)
    assert [(n.name, n.host, n.port, n.slots) for n in fleet.nodes] == [
        ("worker-1", "10.1.0.11", 2222, 4), ("worker-2", "10.1.0.12", 2222, 4)]
    assert fleet.nodes[1].jump is not None and fleet.nodes[1].jump.port == 2200


def test_a_hostfile_can_be_used_directly_as_the_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config to consult
    path = write(tmp_path, "localhost slots=4\n10.0.0.2 slots=2\n", "hostfile")
    fleet = load_fleet(path)
    assert [(n.host, n.slots) for n in fleet.nodes] == [("localhost", 4), ("10.0.0.2", 2)]


def test_bad_hostfile_slots(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="line 2: slots must be a whole number"):
        parse_hostfile("a slots=1\nb slots=x\n", "hostfile", SSHConfig([], "none"))


def test_ssh_config_import_command(tmp_path: Path) -> None:
    config = write(tmp_path, SEED_SSH_CONFIG.replace("~/.ssh/id_rsa_fleet", str(tmp_path / "config")), "config")
    out = tmp_path / "fleet.yaml"
    completed = tf("import", "ssh-config", "--config", str(config), "--slots", "2", "-o", str(out))
    assert completed.returncode == 0, completed.stderr
    assert [n.name for n in load_fleet(out).nodes] == ["worker-1", "worker-2"]


def test_fold_nodes_and_back() -> None:
    assert fold_nodes(["node0", "node1", "node2", "node5", "gpu"]) == "gpu,node[0-2,5]"
    assert fold_nodes(["n01", "n02", "n10"]) == "n[01-02,10]"
    assert fold_nodes(["a"]) == "a"
    for names in (["gpu", "node0", "node1", "node2", "node5"], ["n01", "n02", "n10"], ["a"]):
        assert sorted(expand_nodes(fold_nodes(names))) == sorted(names)
    assert expand_nodes("gpu[0-1],node3") == ["gpu0", "gpu1", "node3"]
    for bad in ("gpu[0-1", "gpu[a-b]", "x]"):
        with pytest.raises(ValueError):
            expand_nodes(bad)


def test_unchanged_fleet_loads_from_cache_without_pydantic(tmp_path: Path, key: Path) -> None:
    import subprocess
    import sys

    path = write(tmp_path, f"ssh: {{identity_file: {key}}}\nnodes:\n  - {{host: h1, slots: 2}}\n")
    probe = ("import sys; from pathlib import Path; from trainfleet.fleet import load_fleet; "
             f"f = load_fleet(Path({str(path)!r})); print(f.nodes[0].slots, 'pydantic' in sys.modules)")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env).stdout.split()
            for _ in range(2)]
    assert runs == [["2", "True"], ["2", "False"]]
    # A change to the file is a different entry; a deleted key file is noticed despite the cache.
    path.write_text(path.read_text().replace("slots: 2", "slots: 3"))
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env).stdout.split() == ["3", "True"]
    key.unlink()
    failed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert "key file" in failed.stderr and "does not exist" in failed.stderr


def test_a_subset_keeps_directories_with_their_server() -> None:
    from trainfleet.plans.containers import data_root
    from trainfleet.fleet.model import Container
    from trainfleet.fleet.schema import fleet_from_data

    fleet = fleet_from_data({"nodes": [{"name": "a", "host": "10.0.0.1"}, {"name": "b", "host": "10.0.0.2"},
                                       {"name": "c", "host": "10.0.0.3"}],
                             "storage": [{"type": "shared-dir", "mount": "/data"},
                                         {"type": "s3", "bucket": "x", "mount": "/s3"}],
                             "secrets": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]}, "f.yaml")
    assert fleet.subset(fleet.nodes) is fleet
    two = fleet.subset(fleet.select(["a", "c"]))
    assert [n.name for n in two.nodes] == ["a", "c"] and two.head.name == "a"
    assert two.storage[0].node == "a"  # still served by the fleet's node 0, named
    with pytest.raises(SpecError, match="storage /data is served by a, which is not among the chosen nodes"):
        fleet.subset(fleet.select(["b"]))
    assert data_root(Container(engine="podman", engine_options=("--storage-driver", "vfs", "--root", "/d"))) == "/d"
    assert data_root(Container(engine="podman", engine_options=("--root=/e",))) == "/e"
    assert data_root(Container(engine="docker")) == ""


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    text = "container: {image: a}\nnodes:\n  - {host: 203.0.113.1}\ncontainer:\n  image: b\n"
    with pytest.raises(SpecError) as refused:
        parse_fleet_text(text, "fleet.yaml", tmp_path)
    assert refused.value.one_line() == ("fleet.yaml: line 4: key `container` is given twice (also line 1); the second "
                                        "would silently replace the first; fix: keep one, merging what both say")
    inner = "nodes:\n  - host: 203.0.113.1\n    slots: 2\n    slots: 4\n"
    with pytest.raises(SpecError, match="line 4: key `slots` is given twice \\(also line 3\\)"):
        parse_fleet_text(inner, "fleet.yaml", tmp_path)


@pytest.mark.parametrize("text, field", [
    ('env: {NCCL_DEBUG: "WARN\\nLD_PRELOAD=/tmp/x.so"}\n', "env"),
    ('env: {"A\\nB": "1"}\n', "env"),
    ("ssh: {jump: '-oProxyCommand=sh@bastion'}\n", "jump"),
    ("ssh: {jump: 'admin@-oProxyCommand=x:22'}\n", "jump"),
    ("ssh: {jump: 'ad min@bastion:22'}\n", "jump"),
])
def test_values_that_would_inject_lines_or_options_are_refused(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_fleet_text(text + "nodes:\n  - {host: 203.0.113.1}\n", "fleet.yaml", tmp_path)
    assert field in refused.value.one_line() and "\n" not in refused.value.one_line()
    ok = parse_fleet_text("ssh: {jump: 'admin@bastion.example.com:2222'}\nnodes:\n  - {host: 203.0.113.1}\n",
                          "fleet.yaml", tmp_path)
    assert str(ok.nodes[0].jump) == "admin@bastion.example.com:2222"
