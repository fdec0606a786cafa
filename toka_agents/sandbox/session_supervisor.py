"""The session part of the sandbox supervisor: one container serves every call of a task.

`bootstrap.py` (the supervisor) runs this text in its own globals when the first header it
reads asks for a session (`"session": 1`, this text its value), and hands it the rest of stdin:
a header (with the `size` of its code) and the code, call after call, until stdin closes.
Python code runs in one kernel process (`kernel.py`, whose text comes in the same header),
started on the first Python call as the task's user; the code goes to it over a pipe (never
through /tmp, which the code may fill), and a call's variables, imports and working directory
are there in the next, as in a notebook. A shell script runs as a process group of its own,
killed whole when its main process ends. /tmp persists for the session.

Each call ends with a report line as a one-shot call's, with `note` saying when a kernel was
restarted (killed at its time limit, by the memory limit, or ended otherwise) and its
variables lost, and `error` when the call could not start (a full /tmp, the pids limit). At a
call's time limit the kernel is interrupted (KeyboardInterrupt: its variables survive), and
killed only should the code not stop within `INTERRUPT_GRACE`. The kernel's word on its
call's status is taken only for that call (its number) and only as an exit status and a
count of bytes written: the code runs in the kernel's process and could write there itself.
Processes the calls leave behind are reaped after every call, so they never hold pids.

Like `bootstrap.py`, it uses only the standard library and runs on any Python 3.8+.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # at run time these are the supervisor's own globals
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    from toka_agents.sandbox.bootstrap import (
        Output,
        counts,
        kill_and_reap,
        limits,
        oom_kills,
        readable,
        remaining,
        report,
        start_task,
        task_env,
        task_user,
        usage_report,
        wait_for_header,
        waiting,
        watch,
        write_code,
    )

INTERRUPT_GRACE = 2.0
"""Seconds a session's Python code has, past its time limit, to end on the interrupt it is
sent (its variables are kept) before its kernel is killed (they are lost)."""
KERNEL_EXIT_WAIT = 1.0
"""Seconds a kernel whose end of the calls' pipe closed has to exit before it is killed."""
STATUS_LINE = 256
"""Bytes of the kernel's status pipe read at once: its line is `N STATUS WRITTEN`."""


def read_exactly(stdin, size):
    code = stdin.read(size)
    return code if len(code) == size else None


def serve_session(stdin, header):
    """Serve the calls of one task, one after another, each a header (with the `size` of its
    code) and its code, until stdin closes."""
    session = {"kernel": None, "ended": None, "calls": 0, "source": header["kernel"]}
    while header is not None:
        code = read_exactly(stdin, int(header["size"]))
        if code is None:
            break
        session["calls"] += 1
        session_call(session, header, code)
        header = wait_for_header(stdin, None)
    if session["kernel"] is not None:
        kill_and_reap(session["kernel"]["process"])
    return 0


def start_kernel(session, header, cwd, env):
    commands, their_commands = os.pipe()[::-1]  # (write end, read end)
    their_status, status = os.pipe()[::-1]  # (write end, read end)
    argv = [sys.executable, "-u", "-c", session["source"], str(their_commands), str(their_status)]
    try:
        process = start_task(argv, cwd, task_user(header["user"]), env, (their_commands, their_status))
    except BaseException:
        for fd in (commands, status):
            os.close(fd)
        raise
    finally:
        os.close(their_commands)
        os.close(their_status)
    return {"process": process, "commands": commands, "status": status, "written": 0}


def end_kernel(session, why):
    """Forget the kernel, which ended (or is killed here) for `why`: the next Python call
    starts another and is told."""
    kernel, session["kernel"] = session["kernel"], None
    if kernel["process"].poll() is None:
        kill_and_reap(kernel["process"])
    for fd in (kernel["commands"], kernel["status"]):
        with contextlib.suppress(OSError):
            os.close(fd)
    session["ended"] = why


def kernel_end(status, timed_out, out_of_memory):
    """Why a kernel ended, as the next call's note says it."""
    if out_of_memory:
        return "its kernel was killed by the memory limit"
    if timed_out:
        return "its kernel did not stop at the time limit and was killed"
    if status is not None and status < 0:
        return f"its kernel was killed by signal {-status}"
    return f"its kernel exited with code {status}"


def closed_kernel_end(process):
    """Why a kernel that takes no more calls ended: it exited, or it lives on with its end of
    the calls' pipe closed (its code's doing) and is killed."""
    try:
        return kernel_end(process.wait(timeout=KERNEL_EXIT_WAIT), False, False)
    except subprocess.TimeoutExpired:
        return "its kernel closed its end of the calls' pipe"


def session_call(session, header, code):
    """Run one call and report it; a call that cannot start reports why, in one line."""
    before = counts()
    try:
        result = run_call(session, header, code, before)
    except Exception as exc:  # noqa: BLE001 (it never takes the session down)
        output = Output(None, 0)
        result = usage_report(before, output, False, 1)
        result["error"] = f"the call could not start: {cannot_start(exc)}"
    reap_orphans(session)
    report(header, result)


def cannot_start(exc):
    if getattr(exc, "errno", None) == 28:
        return "/tmp is full (tmp_size): free some of it"
    if getattr(exc, "errno", None) == 11:
        return "no more processes may start (limits.pids): end some"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def run_call(session, header, code, before, retried=False):
    """Run one call. A Python call the kernel never took (it had ended, or was ending, when
    the call was sent) goes to a new kernel, once, as a call after a kernel's end does."""
    deadline, time_limit = limits(header)
    cwd = header.get("cwd") or "/tmp"
    env = task_env(header)
    note = None
    number = session["calls"]
    kernel = session["kernel"]
    if kernel is not None and kernel["process"].poll() is not None:  # it ended between calls
        end_kernel(session, kernel_end(kernel["process"].returncode, False, False))
        kernel = None
    if header["language"] == "python":
        if kernel is None:
            kernel = session["kernel"] = start_kernel(session, header, cwd, env)
            if session["ended"]:
                note = f"the Python session was restarted: {session['ended']}; its variables are gone"
        command = f"{number} {len(code)}\n".encode() + code
        try:
            os.write(kernel["commands"], command)
        except BrokenPipeError:  # it ended, or closed its end of the pipe, before taking the call
            end_kernel(session, closed_kernel_end(kernel["process"]))
            if retried:
                raise
            return run_call(session, header, code, before, retried=True)
        process, done = kernel["process"], kernel["status"]
    else:
        path = f"/tmp/toka/cell-{number}.sh"
        write_code(path, code)
        process = start_task(["/bin/sh", path], cwd, task_user(header["user"]), env, own_group=True)
        done = None
    output = Output(process, int(header["output_limit"]))
    status, timed_out, said = pump_call(process, output, done, number, deadline, time_limit)
    out_of_memory = (oom_kills() or 0) > (before["oom"] or 0)
    if done is None:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)  # what the script left running
        reap_group(process)
        if kernel is not None and kernel["process"].poll() is not None:  # the memory limit's choice
            end_kernel(session, kernel_end(kernel["process"].returncode, False, out_of_memory))
            note = f"this call ended the Python session: {session['ended']}"
            out_of_memory = out_of_memory and status is not None and status < 0
    elif status is None:  # the kernel ended under the call
        untaken = waiting(kernel["commands"]) >= len(command)  # it never read the call
        status = process.returncode if process.returncode is not None else -9
        end_kernel(session, kernel_end(status, timed_out, out_of_memory))
        if untaken and not retried and not timed_out:
            return run_call(session, header, code, before, retried=True)
    result = usage_report(before, output, timed_out, status, disk=done is None)
    if not out_of_memory:
        result["oom_kills"] = 0
    if said is not None:  # the kernel's own count of what it wrote: never less than before
        result["disk_written"] = max(said - kernel["written"], 0)
        kernel["written"] = max(said, kernel["written"])
    result["note"] = note
    return result


def pump_call(process, output, done, number, deadline, time_limit):
    """Pass the call's output on until it ends: the kernel says so on `done` (its status for
    call `number`; then it lives on), or `process` exits. At the time limit the kernel is
    interrupted (and killed, should it not stop within `INTERRUPT_GRACE`), a script killed.
    Returns (status, timed out, the kernel's count of bytes it wrote so far); status None when
    the kernel ended."""
    selector, pipes, exited = watch(process, output, done)
    timed_out, kill_at, said = False, None, b""
    try:
        while process.poll() is None:
            timeout = remaining(deadline)
            now = time.monotonic()
            if time_limit is not None and now >= time_limit and not timed_out:
                timed_out = True
                if done is None:
                    with contextlib.suppress(OSError):
                        os.killpg(process.pid, signal.SIGKILL)
                else:
                    with contextlib.suppress(OSError):
                        process.send_signal(signal.SIGINT)
                    kill_at = now + INTERRUPT_GRACE
            if kill_at is not None and now >= kill_at:
                process.kill()
                break
            for limit in (None if timed_out else time_limit, kill_at):
                if limit is not None:
                    left = max(limit - now, 0)
                    timeout = left if timeout is None else min(timeout, left)
            for fd in readable(selector, timeout, exited):
                data = os.read(fd, 65536 if fd != done else STATUS_LINE)
                if fd == done:
                    said = (said + data)[-STATUS_LINE:]
                    status = status_of(said, number)
                    if status is not None or not data:
                        for fd in pipes:
                            output.drain(fd)
                    if status is not None:
                        return status[0], timed_out, status[1]
                    if not data:
                        selector.unregister(done)
                elif data:
                    output.forward(fd, data)
                else:
                    selector.unregister(fd)
                    pipes.remove(fd)
    finally:
        selector.close()
        if exited is not None:
            os.close(exited)
    with contextlib.suppress(ChildProcessError):
        process.wait()
    for fd in pipes:
        output.drain(fd)
    return (process.returncode if done is None else None), timed_out, None


def status_of(said, number):
    """(status, bytes written) from the kernel's last complete line for call `number`, if
    there is one; lines for other calls (written by the code itself) do not count."""
    for line in reversed(said.split(b"\n")[:-1]):
        words = line.split()
        if (
            len(words) == 3
            and all(w.isdigit() and len(w) <= 20 for w in words)
            and int(words[0]) == number
        ):
            return min(int(words[1]), 255), int(words[2])
    return None


def reap_group(process):
    """Reap the script and what its process group left, now killed."""
    with contextlib.suppress(ChildProcessError, OSError, subprocess.TimeoutExpired):
        process.wait(timeout=5)
    end = time.monotonic() + 5
    while time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-process.pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def reap_orphans(session):
    """Reap every child of this process that ended (orphans become its children), so none
    holds a pid; the kernel's end is recorded, not lost. The kernel's own children are its
    to reap (its code's `wait()`): until it does, or ends, they hold theirs."""
    kernel = session["kernel"]
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if kernel is not None and pid == kernel["process"].pid:
            kernel["process"].returncode = (
                -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            )
