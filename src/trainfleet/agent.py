"""The node-side agent. This file runs on the nodes, not on the controller.

It is sent over the SSH channel's stdin and started with the fleet's Python
(`python3 -c 'exec(<first stdin line>)'`), so nothing needs installing on a node and
nothing of the job (its environment, secrets included) appears in any process's argv
or in any file. Stdlib only; keeps to Python 3.8 syntax.

Modes (second stdin line, JSON):
- launch: start the job command in a new session with the given environment, relay
  its exit status, and end its whole process tree when stdin closes or says "stop"
  (the controller went away or asked), SIGTERM first and SIGKILL after a grace period.
- sweep: find processes of a job (by the TRAINFLEET_JOB_ID in their environment),
  optionally kill them, and report what is left as JSON.
- facts: report what doctor and run need to know of the node (sections on request).
- listen / connect: hold test listeners / try connections, for the port checks.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

JOB_VARIABLE = "TRAINFLEET_JOB_ID"


def jobs_running():
    """(job id, pid, command line) of every live process that carries a trainfleet job id
    in its environment: every descendant of a launch, whatever session it moved to."""
    prefix = ("%s=" % JOB_VARIABLE).encode()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                tagged = [item for item in handle.read().split(b"\0") if item.startswith(prefix)]
            if not tagged:
                continue
            with open("/proc/%s/stat" % entry) as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
        yield tagged[0][len(prefix):].decode(errors="replace"), int(entry), cmdline[:200]


def job_processes(job_id):
    return [{"pid": pid, "cmdline": cmdline} for job, pid, cmdline in jobs_running() if job == job_id]


def kill_job(job_id, sig):
    for proc in job_processes(job_id):
        try:
            os.kill(proc["pid"], sig)
        except OSError:
            pass


def wait_gone(job_id, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not job_processes(job_id):
            return True
        time.sleep(0.1)
    return not job_processes(job_id)


def launch(spec):
    cwd = os.path.expanduser(spec["cwd"])
    os.makedirs(cwd, exist_ok=True)
    env = dict(os.environ)
    env.update(spec["env"])
    env[JOB_VARIABLE] = spec["job_id"]
    grace = float(spec.get("grace", 10))
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, on_signal)

    try:
        child = subprocess.Popen(spec["argv"], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    except OSError as exc:
        sys.stderr.write("trainfleet-agent: cannot start %s: %s\n" % (spec["argv"][0], exc))
        return 127

    def watch_controller():
        # EOF (the controller or its connection is gone) and "stop" both end the job.
        try:
            for line in sys.stdin:
                if line.strip() == "stop":
                    break
        except (OSError, ValueError):
            pass
        stop.set()

    threading.Thread(target=watch_controller, daemon=True).start()
    while child.poll() is None and not stop.is_set():
        stop.wait(0.2)
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGTERM)
        except OSError:
            pass
        kill_job(spec["job_id"], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    # Whatever the job left behind (workers in sessions of their own, daemons) goes too.
    if job_processes(spec["job_id"]):
        kill_job(spec["job_id"], signal.SIGTERM)
        if not wait_gone(spec["job_id"], min(grace, 3.0)):
            kill_job(spec["job_id"], signal.SIGKILL)
            wait_gone(spec["job_id"], 5.0)
    code = child.wait()
    for path in spec.get("remove_after", []):
        import shutil

        shutil.rmtree(os.path.expanduser(path), ignore_errors=True)
    return code if code >= 0 else 128 - code


def sweep(spec):
    job_id = spec["job_id"]
    if spec.get("kill") and job_processes(job_id):
        kill_job(job_id, signal.SIGTERM)
        if not wait_gone(job_id, float(spec.get("grace", 3))):
            kill_job(job_id, signal.SIGKILL)
            wait_gone(job_id, 5.0)
    print(json.dumps({"left": job_processes(job_id)}))
    return 0


def port_is_free(address, port):
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def free_port(address):
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind((address, 0))
        return probe.getsockname()[1]
    finally:
        probe.close()


# ---- facts: what doctor and run ask of every node ------------------------------------


def run_quiet(argv, timeout=5.0):
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              universal_newlines=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def interfaces():
    """Every interface with its IPv4 addresses and what kind of link it is."""
    found = []
    text = run_quiet(["ip", "-j", "-d", "addr", "show"])
    if text is None:
        return found
    for link in json.loads(text):
        info = link.get("linkinfo", {}) or {}
        found.append({
            "name": link.get("ifname"),
            "up": "UP" in link.get("flags", []) and link.get("operstate") != "DOWN",
            "loopback": "LOOPBACK" in link.get("flags", []),
            "kind": info.get("info_kind") or "",
            "master": link.get("master"),
            "addrs": ["%s/%s" % (a["local"], a["prefixlen"]) for a in link.get("addr_info", [])
                      if a.get("family") == "inet"],
        })
    return found


def route_to(peer):
    out = run_quiet(["ip", "-o", "route", "get", peer])
    if not out:
        return None
    fields = out.split()
    route = {}
    for key in ("dev", "src", "via"):
        if key in fields:
            route[key] = fields[fields.index(key) + 1]
    return route


def package_version(name):
    try:
        from importlib import metadata
    except ImportError:
        return None
    try:
        return metadata.version(name)
    except Exception:
        return None


def torch_facts():
    """Versions without importing torch (seconds of CPU on every node otherwise)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    facts = {"version": package_version("torch"), "cuda": None}
    path = os.path.join(list(spec.submodule_search_locations)[0], "version.py")
    try:
        with open(path) as handle:
            match = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*['\"]([^'\"]+)['\"]", handle.read(), re.MULTILINE)
        facts["cuda"] = match.group(1) if match else None
    except OSError:
        pass
    for name in ("nvidia-nccl-cu13", "nvidia-nccl-cu12", "nvidia-nccl-cu11"):
        if package_version(name):
            facts["nccl"] = package_version(name)
            break
    return facts


def gpu_facts():
    if run_quiet(["sh", "-c", "command -v nvidia-smi"]) is None:
        return None
    gpus = run_quiet(["nvidia-smi", "--query-gpu=index,uuid,name,driver_version,memory.used",
                      "--format=csv,noheader,nounits"], timeout=15)
    if gpus is None:
        return {"error": "nvidia-smi failed"}
    apps = run_quiet(["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,process_name",
                      "--format=csv,noheader"], timeout=15) or ""
    busy = {}
    for line in apps.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2:
            busy.setdefault(parts[0], []).append({"pid": parts[1], "name": parts[2] if len(parts) > 2 else ""})
    found = []
    for line in gpus.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            found.append({"index": parts[0], "uuid": parts[1], "name": parts[2], "driver": parts[3],
                          "busy": busy.get(parts[1], [])})
    return {"gpus": found}


def disk_free(path):
    path = os.path.expanduser(path)
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        stats = os.statvfs(path or "/")
    except OSError:
        return None
    return {"path": path, "free": stats.f_bavail * stats.f_frsize, "total": stats.f_blocks * stats.f_frsize}


def docker_root():
    try:
        with open("/etc/docker/daemon.json") as handle:
            return json.load(handle).get("data-root") or "/var/lib/docker"
    except (OSError, ValueError):
        pass
    return "/var/lib/docker" if os.path.isdir("/var/lib/docker") else None


CODE_SUFFIXES = (".py", ".sh", ".yaml", ".yml", ".json", ".toml", ".cfg", ".txt", ".ini")


def code_hash(workdir, limit=5000):
    import hashlib

    root = os.path.expanduser(workdir)
    if not os.path.isdir(root):
        return None
    digest = hashlib.sha256()
    count = 0
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "checkpoints"))
        for name in sorted(files):
            if not name.endswith(CODE_SUFFIXES):
                continue
            path = os.path.join(current, name)
            try:
                if os.path.getsize(path) > 4 * 1024 * 1024:
                    continue
                with open(path, "rb") as handle:
                    digest.update(os.path.relpath(path, root).encode() + b"\0" + handle.read() + b"\0")
            except OSError:
                continue
            count += 1
            if count >= limit:
                break
    if count == 0:
        return None  # an empty workdir holds no code, like a missing one
    return {"sha256": digest.hexdigest()[:16], "files": count}


def stale_jobs():
    found = {}
    for job, pid, cmdline in jobs_running():
        found.setdefault(job, []).append({"pid": pid, "cmdline": cmdline[:120]})
    return [{"job_id": job, "processes": procs} for job, procs in sorted(found.items())]


def port_holder(port):
    """pid and command of whoever listens on a TCP port (from /proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except (OSError, StopIteration):
            continue
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir("/proc/%s/fd" % entry):
                target = os.readlink("/proc/%s/fd/%s" % (entry, fd))
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    with open("/proc/%s/cmdline" % entry, "rb") as handle:
                        cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
                    return {"pid": int(entry), "cmdline": cmdline[:120]}
        except OSError:
            continue
    return {"pid": None, "cmdline": "(another user's process)"}


def login_shell_facts(python):
    shell = os.environ.get("SHELL") or "/bin/sh"
    out = run_quiet([shell, "-lc", "command -v %s; echo \"PATH=$PATH\"" % python], timeout=10)
    if out is None:
        return None
    lines = out.strip().splitlines()
    found = [line for line in lines if not line.startswith("PATH=")]
    path = [line[5:] for line in lines if line.startswith("PATH=")]
    return {"python": found[-1] if found else None, "path": path[-1] if path else ""}


def facts(spec):
    import shutil

    wanted = set(spec.get("sections", []))
    result = {"hostname": socket.gethostname(), "time": time.time()}
    if "net" in wanted:
        result["port_range"] = [int(p) for p in (_read("/proc/sys/net/ipv4/ip_local_port_range") or "32768 60999").split()]
        result["interfaces"] = interfaces()
        result["routes"] = dict((peer, route_to(peer)) for peer in spec.get("peers", []))
    if "ports" in wanted:
        address = spec.get("port_address") or "0.0.0.0"
        result["ports"] = dict((str(p), None if port_is_free(address, p) else (port_holder(p) or {"pid": None}))
                               for p in spec.get("ports", []))
        result["free_port"] = free_port(address)
    if "software" in wanted:
        result["python"] = {"version": sys.version.split()[0], "executable": sys.executable}
        result["python_found"] = shutil.which(spec.get("python", "python3"))
        result["path"] = os.environ.get("PATH", "")
        result["login"] = login_shell_facts(spec.get("python", "python3"))
        result["torch"] = torch_facts()
        result["code"] = code_hash(spec.get("workdir", "~"))
    if "gpu" in wanted:
        result["gpu"] = gpu_facts()
        try:
            with open("/proc/driver/nvidia/version") as handle:
                result["driver"] = handle.readline().strip()
        except OSError:
            result["driver"] = None
    if "disk" in wanted:
        result["disk"] = disk_free(spec.get("workdir", "~"))
        root = docker_root()
        result["docker_disk"] = disk_free(root) if root else None
    if "stale" in wanted:
        result["stale"] = stale_jobs()
    print(json.dumps(result))
    return 0


# ---- listen / connect: the port reachability tests ------------------------------------


def listen(spec):
    """Hold listeners on the given ports (0 = any) until stdin closes; report what was bound."""
    address = spec.get("address") or "0.0.0.0"
    bound = {}
    sockets = []
    for port in spec["ports"]:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((address, int(port)))
            server.listen(64)
        except OSError as exc:
            bound[str(port)] = {"error": exc.strerror}
            server.close()
            continue
        bound[str(port)] = {"port": server.getsockname()[1]}
        sockets.append(server)
    print(json.dumps(bound))
    sys.stdout.flush()

    def serve(conn):
        # A bare connect closes at once; a throughput test sends an 8-byte length, then
        # that many bytes, and waits for one byte back once they have all arrived.
        try:
            header = b""
            while len(header) < 8:
                chunk = conn.recv(8 - len(header))
                if not chunk:
                    return
                header += chunk
            remaining = int.from_bytes(header, "big")
            while remaining > 0:
                chunk = conn.recv(min(remaining, 1 << 20))
                if not chunk:
                    return
                remaining -= len(chunk)
            conn.sendall(b"k")
        except OSError:
            pass
        finally:
            conn.close()

    def accept_all(server):
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    for server in sockets:
        threading.Thread(target=accept_all, args=(server,), daemon=True).start()
    deadline = time.monotonic() + float(spec.get("max_seconds", 60))
    watcher = threading.Thread(target=lambda: sys.stdin.read(), daemon=True)
    watcher.start()
    while watcher.is_alive() and time.monotonic() < deadline:
        watcher.join(0.2)
    return 0


def try_connect(address, port, timeout, payload=0):
    import errno

    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    started = time.monotonic()
    try:
        probe.connect((address, int(port)))
        outcome = {"result": "ok", "ms": round((time.monotonic() - started) * 1000, 2)}
        if payload:
            block = b"\0" * (1 << 20)
            began = time.monotonic()
            probe.settimeout(max(timeout, 10.0))
            probe.sendall(int(payload).to_bytes(8, "big"))
            left = int(payload)
            while left > 0:
                sent = probe.send(block[:min(left, len(block))])
                left -= sent
            if probe.recv(1) != b"k":
                return {"result": "error", "error": "throughput test was cut short"}
            seconds = time.monotonic() - began
            outcome["mbit_s"] = round(payload * 8 / seconds / 1e6, 1)
        return outcome
    except socket.timeout:
        return {"result": "timeout"}
    except ConnectionRefusedError:
        return {"result": "refused"}
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return {"result": "unreachable", "error": exc.strerror}
        return {"result": "error", "error": exc.strerror}
    finally:
        probe.close()


def connect_targets(spec):
    timeout = float(spec.get("timeout", 2))
    results = []
    threads = []

    def attempt(target):
        outcome = try_connect(target["address"], target["port"], timeout, target.get("bytes", 0))
        outcome.update(target)
        results.append(outcome)

    for target in spec.get("targets", []):
        thread = threading.Thread(target=attempt, args=(target,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    resolved = {}

    def resolve(name):
        try:
            resolved[name] = socket.gethostbyname(name)
        except OSError:
            resolved[name] = None

    lookups = [threading.Thread(target=resolve, args=(name,), daemon=True) for name in spec.get("resolve", [])]
    for lookup in lookups:
        lookup.start()
    for lookup in lookups:
        lookup.join(3.0)  # a resolver that hangs is itself the answer: not resolvable in time
    print(json.dumps({"connects": results, "resolved": resolved}))
    return 0


# ---- trust: fleet SSH key, host keys and aliases on the node ---------------------------


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _write_if_changed(path, text, mode, changed):
    if _read(path) == text:
        if (os.stat(path).st_mode & 0o777) != mode:
            os.chmod(path, mode)
            changed.append(path)
        return
    directory = os.path.dirname(path)
    fd, tmp = __import__("tempfile").mkstemp(dir=directory, prefix=".trainfleet-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    changed.append(path)


def _without_block(text, begin, end):
    lines, inside, kept = text.splitlines(True), False, []
    for line in lines:
        if line.strip() == begin:
            inside = True
        elif line.strip() == end and inside:
            inside = False
        elif not inside:
            kept.append(line)
    return "".join(kept)


def trust(spec):
    """Install the fleet key pair, pinned host keys and aliases; touch nothing else."""
    home = os.path.expanduser("~")
    ssh = os.path.join(home, ".ssh")
    tag = spec["tag"]
    changed = []
    if not os.path.isdir(ssh):
        os.makedirs(ssh, 0o700)
        changed.append(ssh)
    if os.stat(ssh).st_mode & 0o077:
        os.chmod(ssh, 0o700)
        changed.append(ssh)
    state_path = os.path.join(ssh, "trainfleet_%s.state" % tag)
    state = json.loads(_read(state_path) or "{}")
    key_path = os.path.join(ssh, "trainfleet_%s" % tag)
    _write_if_changed(key_path, spec["private_key"], 0o600, changed)
    _write_if_changed(key_path + ".pub", spec["public_key"] + "\n", 0o644, changed)
    _write_if_changed(os.path.join(ssh, "trainfleet_%s_known_hosts" % tag), spec["known_hosts"], 0o644, changed)

    authorized = os.path.join(ssh, "authorized_keys")
    current = _read(authorized)
    line = "%s trainfleet:%s" % (spec["public_key"].split(" trainfleet:")[0].strip(), tag)
    if current is None:
        state.setdefault("authorized_keys_created", True)
        current = ""
    if line not in current.splitlines():
        if current and not current.endswith("\n"):
            state["authorized_keys_newline_added"] = True
            current += "\n"
        _write_if_changed(authorized, current + line + "\n", 0o600, changed)

    config_path = os.path.join(ssh, "config")
    config = _read(config_path)
    if config is None:
        state.setdefault("config_created", True)
        config = ""
    begin, end = "# >>> trainfleet %s >>>" % tag, "# <<< trainfleet %s <<<" % tag
    block = "%s\n%s%s\n" % (begin, spec["ssh_config"], end)
    # First match wins in ssh_config: the fleet's aliases go on top.
    _write_if_changed(config_path, block + _without_block(config, begin, end), 0o600, changed)

    errors = []
    if spec.get("hosts"):
        hosts = _read("/etc/hosts") or ""
        hbegin, hend = "# >>> trainfleet %s >>>" % tag, "# <<< trainfleet %s <<<" % tag
        wanted = _without_block(hosts, hbegin, hend)
        if wanted and not wanted.endswith("\n"):
            wanted += "\n"
        wanted += "%s\n%s%s\n" % (hbegin, spec["hosts"], hend)
        try:
            if hosts != wanted:
                with open("/etc/hosts", "w") as handle:  # in place: /etc/hosts may be a bind mount
                    handle.write(wanted)
                changed.append("/etc/hosts")
        except OSError as exc:
            errors.append("/etc/hosts: %s (needs root)" % exc.strerror)
    if changed or not os.path.exists(state_path):
        _write_if_changed(state_path, json.dumps(state), 0o600, changed)
    print(json.dumps({"changed": changed, "errors": errors}))
    return 0


def _put_back(path, text, created_by_us, removed):
    """Leave `path` holding `text`; a file trust created and that is now empty goes."""
    if not text and created_by_us:
        os.unlink(path)
    else:
        with open(path, "w") as handle:  # in place: keeps the file's mode and owner
            handle.write(text)
    removed.append(path)


def untrust(spec):
    """Remove exactly what `trust` added."""
    ssh = os.path.join(os.path.expanduser("~"), ".ssh")
    tag = spec["tag"]
    removed = []
    state_path = os.path.join(ssh, "trainfleet_%s.state" % tag)
    state = json.loads(_read(state_path) or "{}")
    authorized = os.path.join(ssh, "authorized_keys")
    current = _read(authorized)
    if current is not None:
        kept = [l for l in current.splitlines(True) if not l.rstrip("\n").endswith(" trainfleet:%s" % tag)]
        text = "".join(kept)
        if state.get("authorized_keys_newline_added") and text.endswith("\n"):
            text = text[:-1]
        if text != current:
            _put_back(authorized, text, state.get("authorized_keys_created"), removed)
    config_path = os.path.join(ssh, "config")
    config = _read(config_path)
    begin, end = "# >>> trainfleet %s >>>" % tag, "# <<< trainfleet %s <<<" % tag
    if config is not None:
        text = _without_block(config, begin, end)
        if text != config:
            _put_back(config_path, text, state.get("config_created"), removed)
    hosts = _read("/etc/hosts")
    if hosts is not None and begin in hosts:
        try:
            with open("/etc/hosts", "w") as handle:
                handle.write(_without_block(hosts, begin, end))
            removed.append("/etc/hosts")
        except OSError:
            pass
    for name in ("trainfleet_%s" % tag, "trainfleet_%s.pub" % tag, "trainfleet_%s_known_hosts" % tag,
                 "trainfleet_%s.state" % tag):
        path = os.path.join(ssh, name)
        if os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    print(json.dumps({"removed": removed}))
    return 0


def ssh_matrix(spec):
    """From this node, `ssh ALIAS true` to every fleet alias (itself included), at once."""
    results = {}

    def attempt(alias):
        try:
            done = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % spec.get("timeout", 5),
                                   alias, "true"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  universal_newlines=True, timeout=spec.get("timeout", 5) + 10)
            results[alias] = {"ok": done.returncode == 0, "error": done.stderr.strip().splitlines()[-1:]}
        except (OSError, subprocess.SubprocessError) as exc:
            results[alias] = {"ok": False, "error": [str(exc)]}

    threads = [threading.Thread(target=attempt, args=(alias,)) for alias in spec["aliases"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(results))
    return 0


# ---- firewall: allow rules in whichever firewall the node uses ------------------------


def _privileged(argv):
    return argv if os.geteuid() == 0 else ["sudo", "-n"] + argv


def _run_checked(argv):
    done = subprocess.run(_privileged(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv[:3]), (done.stderr or done.stdout).strip()))
    return done.stdout


def _nft_input_chains():
    """Base chains hooked on input in ip/inet tables (native nftables rulesets)."""
    try:
        ruleset = json.loads(_run_checked(["nft", "-j", "list", "ruleset"]))
    except (RuntimeError, OSError, ValueError):
        return []
    chains = []
    for item in ruleset.get("nftables", []):
        chain = item.get("chain")
        if chain and chain.get("hook") == "input" and chain.get("family") in ("ip", "inet"):
            chains.append((chain["family"], chain["table"], chain["name"]))
    return chains


def _iptables_input():
    try:
        return _run_checked(["iptables", "-w", "-S", "INPUT"]).splitlines()
    except (RuntimeError, OSError):
        return None


def _ufw_active():
    try:
        return "Status: active" in _run_checked(["ufw", "status"])
    except (RuntimeError, OSError):
        return False


def firewall_backend():
    if _ufw_active():
        return "ufw"  # its rules live in its own files; iptables rules would not survive a reload
    rules = _iptables_input()
    if rules is not None and (rules[:1] != ["-P INPUT ACCEPT"] or len(rules) > 1):
        return "iptables"
    iptables_tables = {("ip", "filter")}
    if [c for c in _nft_input_chains() if (c[0], c[1]) not in iptables_tables]:
        return "nft"
    return "none"


def firewall(spec):
    import shlex

    tag = "trainfleet:%s" % spec["tag"]
    backend = firewall_backend()
    added, removed = [], []
    if spec["action"] == "apply" and backend == "iptables":
        for rule in spec["rules"]:
            ports = ",".join(p.replace("-", ":") for p in rule["ports"])
            for source in rule["sources"]:
                args = ["INPUT", "-s", source, "-p", "tcp", "-m", "multiport", "--dports", ports,
                        "-m", "comment", "--comment", tag, "-j", "ACCEPT"]
                exists = subprocess.run(_privileged(["iptables", "-w", "-C"] + args), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL).returncode == 0
                if not exists:
                    _run_checked(["iptables", "-w", "-I"] + args)
                    added.append("%s -> %s" % (source, ports))
    elif spec["action"] == "apply" and backend == "ufw":
        for rule in spec["rules"]:
            for source in rule["sources"]:
                for port in rule["ports"]:
                    out = _run_checked(["ufw", "allow", "from", source, "to", "any", "port", port.replace("-", ":"),
                                        "proto", "tcp", "comment", tag])
                    if "Rule added" in out:
                        added.append("%s -> %s" % (source, port))
    elif spec["action"] == "apply" and backend == "nft":
        for family, table, chain in _nft_input_chains():
            if (family, table) == ("ip", "filter"):
                continue
            listing = _run_checked(["nft", "-a", "list", "chain", family, table, chain])
            for index, rule in enumerate(spec["rules"]):
                marker = '"%s:%d"' % (tag, index)
                if marker in listing:
                    continue
                text = "ip saddr { %s } tcp dport { %s } accept comment %s" % (
                    ", ".join(rule["sources"]), ", ".join(rule["ports"]), marker)
                _run_checked(["nft", "insert", "rule", family, table, chain] + shlex.split(text, posix=False))
                added.append("%s %s/%s: %s" % (family, table, chain, ", ".join(rule["ports"])))
    elif spec["action"] == "revoke":
        if backend == "ufw":
            numbered = _run_checked(["ufw", "status", "numbered"])
            numbers = [int(line.split("]")[0].strip("[ ")) for line in numbered.splitlines()
                       if line.startswith("[") and line.rstrip().endswith("# " + tag)]
            for number in sorted(numbers, reverse=True):  # later numbers shift when earlier go
                _run_checked(["ufw", "--force", "delete", str(number)])
                removed.append("ufw rule %d" % number)
        for line in _iptables_input() or []:
            if tag in line and line.startswith("-A INPUT"):
                _run_checked(["iptables", "-w", "-D"] + shlex.split(line)[1:])
                removed.append(line)
        for family, table, chain in _nft_input_chains():
            listing = _run_checked(["nft", "-a", "list", "chain", family, table, chain])
            for line in listing.splitlines():
                if '"%s:' % tag in line and "# handle" in line:
                    handle = line.rsplit("# handle", 1)[1].strip()
                    _run_checked(["nft", "delete", "rule", family, table, chain, "handle", handle])
                    removed.append("%s %s/%s handle %s" % (family, table, chain, handle))
    print(json.dumps({"backend": backend, "added": added, "removed": removed}))
    return 0


def main():
    spec = json.loads(sys.stdin.readline())
    modes = {"launch": launch, "sweep": sweep, "facts": facts, "listen": listen,
             "connect": connect_targets, "trust": trust, "untrust": untrust, "ssh_matrix": ssh_matrix, "firewall": firewall}
    sys.stdout.flush()
    sys.exit(modes[spec["mode"]](spec))


if __name__ == "__main__" or __name__ == "trainfleet_agent":
    main()
