"""The Python kernel of a sandbox session: one process, the task's user, in which every Python
call of the task runs, so that its variables are there in the next call.

The session supervisor (`session_supervisor.py`) starts it as `python3 -u -c <this text>
COMMANDS STATUS`. From COMMANDS it reads a call as `N SIZE` and SIZE bytes of code; it runs
the code in the namespace all calls share, as a script would run (`__name__ == "__main__"`, a
traceback on stderr and status 1 for an exception, `sys.exit`'s status), its source lines
shown in tracebacks as `<cell N>`; once the output is flushed it writes `N STATUS WRITTEN` to
STATUS, WRITTEN being the bytes it has written to disk so far (only it may read its own
/proc/self/io). The supervisor's interrupt at the time limit raises KeyboardInterrupt only
while a call's code runs; between calls it is ignored. A process forked by the code that
returns here ends instead of serving calls, and the two descriptors are not inherited by
programs the code starts. Standard library only.

The working directory (the workspace) comes last on the module path, not first as a script's
would: a module left there by earlier code (`traceback.py`, or `ast.py`, which printing a
traceback imports) never runs as the kernel's part, and the calls' code imports its own
modules from the workspace after the standard library and the installed packages.
"""

import sys

WORKING_DIRECTORY = sys.path.pop(0) if sys.path[:1] == [""] else None

import builtins  # noqa: E402
import contextlib  # noqa: E402
import linecache  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import traceback  # noqa: E402

RUNNING = [False]
"""Whether a call's code runs now: only then does an interrupt reach it."""


def interrupt(signum, frame):
    if RUNNING[0]:
        raise KeyboardInterrupt


def exit_status(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def disk_written():
    """Bytes this process (and the children it reaped) wrote to disk: /proc/self/io."""
    try:
        with open("/proc/self/io") as handle:
            for line in handle:
                if line.startswith("write_bytes:"):
                    return int(line.split(":")[1])
    except (OSError, ValueError):
        pass
    return 0


def run(number, source, namespace):
    name = f"<cell {number}>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    sys.argv = [name]
    try:
        compiled = compile(source, name, "exec")
        RUNNING[0] = True
        try:
            exec(compiled, namespace)
        finally:
            RUNNING[0] = False
    except SystemExit as exc:
        return exit_status(exc.code)
    except BaseException:  # noqa: BLE001 (the code's own, reported as a script's would be)
        kind, value, trace = sys.exc_info()
        with contextlib.suppress(Exception):
            traceback.print_exception(kind, value, trace.tb_next if trace else None)
        return 1
    return 0


def main():
    kernel = os.getpid()
    signal.signal(signal.SIGINT, interrupt)
    commands = os.fdopen(int(sys.argv[1]), "rb")
    status = int(sys.argv[2])
    for fd in (commands.fileno(), status):
        os.set_inheritable(fd, False)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    if WORKING_DIRECTORY is not None:
        sys.path.append(WORKING_DIRECTORY)
    while True:
        line = commands.readline()
        if not line:
            return
        number, size = (int(word) for word in line.split())
        source = commands.read(size).decode("utf-8", "replace")
        code = run(number, source, namespace)
        if os.getpid() != kernel:  # a fork of the code's, back from its code: not a kernel
            os._exit(code)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            os.write(status, f"{number} {code} {disk_written()}\n".encode())


if __name__ == "__main__":
    main()
