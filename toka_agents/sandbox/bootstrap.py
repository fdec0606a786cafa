"""The supervisor that runs as PID 1 inside every sandbox container (`python3 -c <this file>`).

It reads one JSON header line and then the code from stdin, runs the code as a child
process with the header's `env` added to its environment (the task's variables never enter
the container's configuration, where `docker inspect` would show them), passes its stdout
and stderr through up to a byte cap (counting what it cuts), and finally writes one result
line to stderr: a NUL, `<marker> {json}`, with the exit status and what the code used, read
from the container's cgroup (v1 or v2) and the kernel: peak memory, CPU time, peak pids and
forks the pids limit refused, OOM kills, bytes the code wrote to disk (the workspace is the
only disk it can write to), the byte counts of its output before any cut, and whether /tmp
or the workspace was full. The host strips that line.

At the header's `timeout` (seconds) the supervisor kills every process of the code and
reports, so a timed-out task is measured too; the host kills the container a little later
should the supervisor not manage, and should the host die first, the header's `deadline`
ends the container. Both count from the header's arrival, so a container started ahead of
demand (the warm pool) gives its task the whole limit. Such a container waits for its header at most
`argv[1]` seconds (when given), and one whose attach socket closes without a header (its
host went away) ends quietly. It uses only the standard library and must run on any Python
3.8+ in any image; it is never imported by toka-agents itself.

The code's result is its main process's, as with `docker run`: when that process exits,
the supervisor passes on what it left in the pipes (without waiting for processes it left
running, which may hold them open), kills and reaps those (their disk writes then count),
reports, and exits.

The supervisor runs as root with only CAP_SETUID, CAP_SETGID (to start the code as another
user) and CAP_KILL (to end it); the code runs as the header's `user` with no capabilities.
Being another user, the code can neither read this process's memory (and forge the report)
nor write to its file descriptors (and pass the cap).
"""

import ast
import contextlib
import fcntl
import os
import select
import selectors
import signal
import struct
import subprocess
import sys
import time

# Images with python3-minimal only (the shell image) lack these three; the supervisor does
# without them there.
try:
    import json
except ImportError:  # the header is JSON with strings and numbers only: a Python literal too
    json = None
try:
    import resource
except ImportError:
    resource = None
try:
    from termios import FIONREAD
except ImportError:
    FIONREAD = 0x541B  # Linux

TAIL = 4096
POLL = 0.05
"""Seconds between looks at the main process where its exit cannot be waited for (no pidfd)."""


def read_first(paths):
    for path in paths:
        try:
            with open(path) as handle:
                return handle.read()
        except OSError:
            continue
    return None


def number(paths):
    text = read_first(paths)
    return int(text) if text and text.strip().isdigit() else None


def field(paths, name):
    """The value of `name` in a flat-keyed cgroup file (`key value` per line)."""
    for line in (read_first(paths) or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return None


def peak_memory():
    # cgroup v1, then v2 (Linux 5.19+)
    return number(["/sys/fs/cgroup/memory/memory.max_usage_in_bytes", "/sys/fs/cgroup/memory.peak"])


def oom_kills():
    return field(
        ["/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"], "oom_kill"
    )


def peak_pids():
    return number(["/sys/fs/cgroup/pids/pids.peak", "/sys/fs/cgroup/pids.peak"])


def refused_forks():
    """Forks and clones the pids limit refused (the `max` count of pids.events)."""
    return field(["/sys/fs/cgroup/pids/pids.events", "/sys/fs/cgroup/pids.events"], "max")


def cpu_nanoseconds():
    v1 = number(["/sys/fs/cgroup/cpuacct/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage"])
    if v1 is not None:
        return v1
    usec = field(["/sys/fs/cgroup/cpu.stat"], "usage_usec")
    return usec * 1000 if usec is not None else None


def disk_written():
    """Bytes this process and the children it reaped wrote to disk (page-cache writes to a
    block device count; tmpfs and pipes do not)."""
    return field_colon("/proc/self/io", "write_bytes")


def field_colon(path, name):
    for line in (read_first([path]) or "").splitlines():
        key, _, value = line.partition(":")
        if key == name and value.strip().isdigit():
            return int(value)
    return None


FULL_MARGIN = 1024 * 1024
"""Bytes free below which a file system counts as full (or 1% of it, if more): a write that
failed for lack of room leaves at most a few blocks, or a chunk smaller than it wanted."""


def is_full(path):
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize < max(FULL_MARGIN, stats.f_blocks * stats.f_frsize // 100)


def since(now, before):
    return None if now is None or before is None else now - before


def kill_and_reap(child, bound=5.0):
    """Kill every other process of the container (the code's and any it left behind) and reap
    them, so their CPU and disk writes are in this process's counts."""
    end = time.monotonic() + bound
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)  # as PID 1: every process of the container but this one
        try:
            while True:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                if pid == child.pid:
                    child.returncode = (
                        -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                    )
        except ChildProcessError:
            return
        time.sleep(0.01)


def give_up():
    # As PID 1, exiting takes every process of the container with it.
    os._exit(124)


def remaining(deadline):
    """Seconds left before the deadline (None: no deadline); past it, end the container."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        give_up()
    return left


def task_user(text):
    """(uid, gid) from the header's `uid:gid`."""
    uid, _, gid = text.partition(":")
    return int(uid), int(gid or uid)


def start_task(argv, cwd, user, env, pass_fds=(), own_group=False):
    """Start the code as `user`, in no supplementary group, with `env` added to this
    process's environment; `own_group`: in a process group of its own, to be killed whole."""
    uid, gid = user
    environment = dict(os.environ)
    environment.update({str(key): str(value) for key, value in env.items()})
    options = {
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "env": environment,
        "pass_fds": pass_fds,
        "start_new_session": own_group,
    }
    if sys.version_info >= (3, 9):  # noqa: UP036 (it runs on the image's Python, 3.8 included)
        options.update(user=uid, group=gid, extra_groups=[])
    else:

        def become_user():
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

        options["preexec_fn"] = become_user
    return subprocess.Popen(argv, cwd=cwd, **options)


def exit_signal(child):
    """A descriptor that turns readable when `child` exits (pidfd, Linux 5.3+ and Python 3.9+),
    or None: then the caller looks every `POLL` seconds."""
    try:
        return os.pidfd_open(child.pid)
    except (AttributeError, OSError):  # an older Python or kernel, or a seccomp profile without it
        return None


def watch(child, output, *more):
    """A selector on the code's output pipes, the descriptors `more` (None left out) and the
    exit of `child` where it can be waited on; returns it, the pipes, and that exit's
    descriptor (None: the caller looks every `POLL` seconds)."""
    pipes = list(output.names)
    exited = exit_signal(child)
    selector = selectors.DefaultSelector()
    for fd in (*pipes, *more, exited):
        if fd is not None:
            selector.register(fd, selectors.EVENT_READ)
    return selector, pipes, exited


def readable(selector, timeout, exited):
    """The descriptors with something to read, or at their end, within `timeout` (at most
    `POLL` when the child's exit cannot be waited on); the exit's own descriptor left out."""
    if exited is None:
        timeout = POLL if timeout is None else min(timeout, POLL)
    return [key.fd for key, _ in selector.select(timeout) if key.fd != exited]


def waiting(fd):
    """Bytes waiting in a pipe now."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


class Output:
    """The code's stdout and stderr on their way out: passed on up to the cap, all counted."""

    def __init__(self, child, cap):
        self.cap = cap
        self.names = {}  # a call that never started has no pipes
        if child is not None:
            self.names = {child.stdout.fileno(): "stdout", child.stderr.fileno(): "stderr"}
        self.sinks = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
        self.total = {"stdout": 0, "stderr": 0}
        self.tails = {"stdout": b"", "stderr": b""}

    def forward(self, fd, data):
        name = self.names[fd]
        room = self.cap - self.total[name]
        if room > 0:
            self.sinks[name].write(data[:room])
            self.sinks[name].flush()
        self.total[name] += len(data)
        self.tails[name] = (self.tails[name] + data)[-TAIL:]

    def drain(self, fd):
        """Pass on what is in the pipe now, without waiting for more."""
        left = waiting(fd)
        while left > 0:
            data = os.read(fd, min(left, 65536))
            if not data:
                return
            self.forward(fd, data)
            left -= len(data)


def to_json(value):
    """JSON of the report's values (dicts, strings, numbers, booleans, None), without `json`."""
    if json is not None:
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(to_json(str(k)) + ": " + to_json(v) for k, v in value.items()) + "}"
    if isinstance(value, str):
        escaped = (c if c not in '"\\' and ord(c) >= 0x20 else f"\\u{ord(c):04x}" for c in value)
        return '"' + "".join(escaped) + '"'
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def wait_for_header(stdin, idle_limit):
    """The header line, once it comes; None when stdin closes first or `idle_limit` passes."""
    if idle_limit is not None and not select.select([stdin], [], [], idle_limit)[0]:
        return None
    line = stdin.readline()
    if not line.strip():
        return None
    return json.loads(line) if json is not None else ast.literal_eval(line.decode())


def limits(header):
    """(deadline, time limit) of a call, counted from now, its header's arrival."""
    arrived = time.monotonic()
    deadline = arrived + float(header["deadline"]) if header.get("deadline") else None
    time_limit = arrived + float(header["timeout"]) if header.get("timeout") else None
    return deadline, time_limit


def counts():
    """The counters a call's report gives the growth of."""
    return {
        "cpu": cpu_nanoseconds(),
        "forks": refused_forks(),
        "oom": oom_kills(),
        "disk": disk_written(),
    }


def write_code(path, code):
    os.makedirs("/tmp/toka", mode=0o755, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(code)


def task_env(header):
    """The code's environment: the header's, and the run's inputs as one JSON file too, which
    the code may not change."""
    env = dict(header.get("env") or {})
    if "TOKA_INPUTS" in env:
        os.makedirs("/tmp/toka", mode=0o755, exist_ok=True)
        with open("/tmp/toka/inputs.json", "w") as handle:
            handle.write(env["TOKA_INPUTS"])
        env["TOKA_INPUTS_FILE"] = "/tmp/toka/inputs.json"
    return env


def report(header, result):
    line = "\0" + header["marker"] + " " + to_json(result) + "\n"
    sys.stderr.buffer.write(line.encode())
    sys.stderr.buffer.flush()


def usage_report(before, output, timed_out, status, disk=True):
    """The report's measures of a call that ended with `status` (negative: a signal)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN) if resource is not None else None
    cpu = since(cpu_nanoseconds(), before["cpu"])
    return {
        "exit_code": status if status >= 0 else 128 - status,
        "signal": -status if status < 0 else None,
        "timed_out": timed_out,
        "peak_memory": peak_memory() or (usage.ru_maxrss * 1024 if usage else None),
        "cpu_seconds": cpu / 1e9
        if cpu is not None
        else (usage.ru_utime + usage.ru_stime if usage else None),
        "peak_pids": peak_pids(),
        "refused_forks": since(refused_forks(), before["forks"]),
        "disk_written": since(disk_written(), before["disk"]) if disk else None,
        "stdout_bytes": output.total["stdout"],
        "stderr_bytes": output.total["stderr"],
        "stdout_tail": output.tails["stdout"].decode("utf-8", "replace"),
        "stderr_tail": output.tails["stderr"].decode("utf-8", "replace"),
        "oom_kills": since(oom_kills(), before["oom"]),
        "tmp_full": is_full("/tmp"),
        "workspace_full": is_full("/workspace") if os.path.ismount("/workspace") else None,
    }


def main():
    os.umask(0o022)  # the code, another user, must be able to read the file it runs
    stdin = sys.stdin.buffer
    header = wait_for_header(stdin, float(sys.argv[1]) if len(sys.argv) > 1 else None)
    if header is None:
        return 0  # nobody came for this container: nothing ran, nothing to report
    if header.get("session"):  # the session's part of the supervisor comes with its first header
        exec(header["session"], globals())
        return globals()["serve_session"](stdin, header)
    code = stdin.read()
    cap = int(header["output_limit"])
    deadline, time_limit = limits(header)
    before = counts()
    if header["language"] == "python":
        path, argv = "/tmp/toka/task.py", [sys.executable, "/tmp/toka/task.py"]
    else:
        path, argv = "/tmp/toka/task.sh", ["/bin/sh", "/tmp/toka/task.sh"]
    write_code(path, code)
    cwd = header.get("cwd") or "/tmp"
    child = start_task(argv, cwd, task_user(header["user"]), task_env(header))
    output = Output(child, cap)
    selector, pipes, exited = watch(child, output)
    timed_out = False
    while child.poll() is None:
        timeout = remaining(deadline)
        if time_limit is not None:
            left = time_limit - time.monotonic()
            if left <= 0:
                timed_out = True
                kill_and_reap(child)
                break
            timeout = left if timeout is None else min(timeout, left)
        for fd in readable(selector, timeout, exited):
            data = os.read(fd, 65536)
            if data:
                output.forward(fd, data)
            else:
                selector.unregister(fd)
                pipes.remove(fd)
    for fd in pipes:
        output.drain(fd)
    status = child.returncode
    kill_and_reap(child)  # what the code left running; as PID 1 its exit would end them anyway
    report(header, usage_report(before, output, timed_out, status))
    return 124 if timed_out else 0  # as timeout(1): the engine's exit code says why it ended


if __name__ == "__main__":
    sys.exit(main())
