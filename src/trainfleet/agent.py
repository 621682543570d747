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
- probe: report facts that planning needs (a free port, the interface towards a peer).
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


def job_processes(job_id):
    """Processes whose environment carries this job's id: every descendant of the launch."""
    marker = ("%s=%s" % (JOB_VARIABLE, job_id)).encode()
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                environ = handle.read().split(b"\0")
            if marker not in environ:
                continue
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open("/proc/%s/stat" % entry) as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append({"pid": int(entry), "cmdline": cmdline[:200]})
    return found


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


def interface_towards(peer):
    try:
        out = subprocess.run(["ip", "-o", "route", "get", peer], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    fields = out.split()
    if "dev" in fields:
        return fields[fields.index("dev") + 1]
    return None


def probe(spec):
    facts = {"hostname": socket.gethostname(), "python": sys.version.split()[0]}
    if spec.get("peer"):
        facts["interface"] = interface_towards(spec["peer"])
    if spec.get("port_address"):
        address, wanted = spec["port_address"], int(spec.get("port", 0))
        facts["port"] = wanted if wanted and port_is_free(address, wanted) else free_port(address)
        facts["wanted_port_free"] = bool(wanted) and facts["port"] == wanted
    print(json.dumps(facts))
    return 0


def main():
    spec = json.loads(sys.stdin.readline())
    modes = {"launch": launch, "sweep": sweep, "probe": probe}
    sys.stdout.flush()
    sys.exit(modes[spec["mode"]](spec))


if __name__ == "__main__" or __name__ == "trainfleet_agent":
    main()
