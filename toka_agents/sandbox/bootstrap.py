"""The supervisor that runs as PID 1 inside every sandbox container (`python3 -c <this file>`).

It reads one JSON header line and then the code from stdin, runs the code as a child
process with the header's `env` added to its environment (the task's variables never enter
the container's configuration, where `docker inspect` would show them), passes its stdout
and stderr through up to a byte cap (counting what it cuts), and finally writes one result
line to stderr: a NUL, `<marker> {json}`, with the exit status, the cgroup's peak memory,
the child's CPU time, the byte counts, and whether the kernel killed anything for memory.
The host strips that line. The host kills the container at the time limit; should the host
die first, the header's `deadline` (seconds) ends the container a little later. That
deadline counts from the header's arrival, so a container started ahead of demand (the warm
pool) gives its task the whole limit. Such a container waits for its header at most
`argv[1]` seconds (when given), and one whose attach socket closes without a header (its
host went away) ends quietly. It uses only the standard library and must run on any Python
3.8+ in any image; it is never imported by toka-agents itself.

The code's result is its main process's, as with `docker run`: when that process exits,
the supervisor passes on what it left in the pipes (without waiting for processes it left
running, which may hold them open), reports, and exits; as PID 1 its exit ends them all.

The supervisor runs as root with only CAP_SETUID and CAP_SETGID; the code runs as the
header's `user` with no capabilities. Being another user, the code can neither read this
process's memory (and forge the report) nor write to its file descriptors (and pass the cap).
"""

import fcntl
import json
import os
import resource
import select
import selectors
import struct
import subprocess
import sys
import termios
import time

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


def peak_memory():
    text = read_first(
        [
            "/sys/fs/cgroup/memory/memory.max_usage_in_bytes",  # cgroup v1
            "/sys/fs/cgroup/memory.peak",  # cgroup v2, Linux 5.19+
        ]
    )
    return int(text) if text and text.strip().isdigit() else None


def oom_kills():
    text = read_first(["/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"])
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


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


def start_task(argv, cwd, user, env):
    """Start the code as `user`, in no supplementary group, with `env` added to this
    process's environment."""
    uid, gid = user
    environment = dict(os.environ)
    environment.update({str(key): str(value) for key, value in env.items()})
    options = {
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "env": environment,
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


def waiting(fd):
    """Bytes waiting in a pipe now."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


class Output:
    """The code's stdout and stderr on their way out: passed on up to the cap, all counted."""

    def __init__(self, child, cap):
        self.cap = cap
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


def wait_for_header(stdin, idle_limit):
    """The header line, once it comes; None when stdin closes first or `idle_limit` passes."""
    if idle_limit is not None and not select.select([stdin], [], [], idle_limit)[0]:
        return None
    line = stdin.readline()
    return json.loads(line) if line.strip() else None


def main():
    os.umask(0o022)  # the code, another user, must be able to read the file it runs
    stdin = sys.stdin.buffer
    header = wait_for_header(stdin, float(sys.argv[1]) if len(sys.argv) > 1 else None)
    if header is None:
        return 0  # nobody came for this container: nothing ran, nothing to report
    code = stdin.read()
    cap = int(header["output_limit"])
    deadline = time.monotonic() + float(header["deadline"]) if header.get("deadline") else None

    os.makedirs("/tmp/toka", mode=0o755, exist_ok=True)
    if header["language"] == "python":
        path, argv = "/tmp/toka/task.py", [sys.executable, "/tmp/toka/task.py"]
    else:
        path, argv = "/tmp/toka/task.sh", ["/bin/sh", "/tmp/toka/task.sh"]
    with open(path, "wb") as handle:
        handle.write(code)

    cwd = header.get("cwd") or "/tmp"
    child = start_task(argv, cwd, task_user(header["user"]), header.get("env") or {})
    output = Output(child, cap)
    pipes = list(output.names)
    selector = selectors.DefaultSelector()
    for fd in pipes:
        selector.register(fd, selectors.EVENT_READ)
    exited = exit_signal(child)
    if exited is not None:
        selector.register(exited, selectors.EVENT_READ)
    while child.poll() is None:
        timeout = remaining(deadline)
        if exited is None:
            timeout = POLL if timeout is None else min(timeout, POLL)
        for key, _ in selector.select(timeout):
            if key.fd == exited:
                continue
            data = os.read(key.fd, 65536)
            if data:
                output.forward(key.fd, data)
            else:
                selector.unregister(key.fd)
                pipes.remove(key.fd)
    for fd in pipes:
        output.drain(fd)
    status = child.returncode
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)

    result = {
        "exit_code": status if status >= 0 else 128 - status,
        "signal": -status if status < 0 else None,
        "peak_memory": peak_memory() or usage.ru_maxrss * 1024,
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 6),
        "stdout_bytes": output.total["stdout"],
        "stderr_bytes": output.total["stderr"],
        "stdout_tail": output.tails["stdout"].decode("utf-8", "replace"),
        "stderr_tail": output.tails["stderr"].decode("utf-8", "replace"),
        "oom_kills": oom_kills(),
    }
    line = "\0" + header["marker"] + " " + json.dumps(result) + "\n"
    sys.stderr.buffer.write(line.encode())
    sys.stderr.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
