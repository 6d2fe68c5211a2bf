# The exec agent of a Docker sandbox: the container's PID 1 when the image has
# python3. The server sends one JSON request per line on the container's stdin
# and reads JSON replies, one per line, from its stdout. An exec through the
# agent costs a fork, not an engine round trip (create, start, inspect) of
# `docker exec`.
#
# The commands it runs share its uid, so the agent protects its channel by
# what the kernel grants a PID 1 that is not dumpable:
# - non-dumpable: `/proc/1/fd/*`, `/proc/1/mem`, `/proc/1/environ` and ptrace
#   are refused to every process of the container (same uid or not), so no
#   command can open the agent's stdin or stdout;
# - PID 1 of its PID namespace: SIGKILL and SIGSTOP sent from inside are never
#   delivered, nor is any signal it has no handler for (it installs none, and
#   puts SIGINT back to the default);
# - its stdio never reaches a command: each child gets pipes or /dev/null as
#   fds 0-2 and every other fd is closed (close_fds).
# As PID 1 it also reaps the orphans the container's processes leave; one
# reaper thread owns every wait, so no status is lost to a race between waits.
#
# Requests: {"id": "<hex>", "op": "ping"}
#           {"id": "<hex>", "op": "exec", "argv": [...], "env": {...}, "root": "/workspace",
#            "cwd": "rel/dir", "stdin": "<base64>" | null, "timeout": seconds}
# Replies:  {"id": "<hex>", "pong": true}
#           {"id": "<hex>", "stream": "out" | "err", "data": "<base64>"}  (any number; at
#                                                    most CHUNK bytes each, newline or not)
#           {"id": "<hex>", "exit": code, "timed_out": bool}              (last)
#           {"id": "<hex>", "error": "invalid_path" | "file_not_found" | "not_found"
#                                   | "internal", "message": "..."}      (last)
import os
import signal

PR_SET_DUMPABLE = 4
# The main process of a container without the agent (NO_AGENT_LOOP in
# docker_agent.rs): a shell that sleeps and reaps orphans.
NO_AGENT_LOOP = "while :; do sleep 3600; done"


def made_non_dumpable():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except Exception:  # noqa: BLE001 - a python3 without ctypes
        return False


# First of all, before any request (and so any command) exists. An agent that
# cannot protect its channel does not serve: it becomes the no-agent main
# process, with no stdio, and the server uses the engine's exec.
if not made_non_dumpable():
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.execvp("sh", ["sh", "-c", NO_AGENT_LOOP, "wharf-no-agent"])
signal.signal(signal.SIGINT, signal.SIG_DFL)

import base64  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

OUT = sys.stdout.buffer
OUT_LOCK = threading.Lock()
# Largest output chunk per reply: its line stays far below the server's cap.
CHUNK = 65536


def send(message):
    line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
    with OUT_LOCK:
        OUT.write(line)
        OUT.flush()


class Refused(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def exit_code(status):
    """Shell convention: exit status N, or 128 + N for death by signal N."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 255


class Children:
    """The agent's own children and their exit statuses. The reaper thread is
    the only caller of wait: it reaps every child, orphans included, and
    records the statuses of those spawned here."""

    def __init__(self):
        self.changed = threading.Condition()
        self.statuses = {}  # pid -> None while running, then its wait status

    def spawn(self, argv, **options):
        # Under the lock, so the reaper cannot reap the child before it is known.
        with self.changed:
            child = subprocess.Popen(argv, close_fds=True, **options)
            self.statuses[child.pid] = None
            self.changed.notify_all()
        return child

    def wait(self, child, timeout):
        """The child's exit code, or None when `timeout` (seconds; None: no
        limit) passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            while self.statuses[child.pid] is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self.changed.wait(remaining)
            code = exit_code(self.statuses.pop(child.pid))
        # Known to Popen too, so it never waits for the pid itself.
        child.returncode = code
        return code

    def reap_forever(self):
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                # No child right now: a spawn wakes this up; orphans handed to
                # PID 1 meanwhile wait at most a second.
                with self.changed:
                    self.changed.wait(1.0)
                continue
            except InterruptedError:
                continue
            with self.changed:
                if pid in self.statuses:
                    self.statuses[pid] = status
                    self.changed.notify_all()


CHILDREN = Children()


def resolve_cwd(root, rel):
    path = os.path.realpath(os.path.join(root, rel or "."))
    if path != root and not path.startswith(root.rstrip("/") + "/"):
        raise Refused("invalid_path", "path %r escapes the sandbox workspace" % rel)
    if not os.path.isdir(path):
        raise Refused("file_not_found", "%s: no such directory" % rel)
    return path


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def pump(rid, pipe, stream):
    try:
        while True:
            chunk = pipe.read1(CHUNK)
            if not chunk:
                break
            send({"id": rid, "stream": stream, "data": base64.b64encode(chunk).decode()})
    except (OSError, ValueError):
        pass


def feed(pipe, data):
    try:
        pipe.write(data)
    except OSError:
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def run(request):
    rid = request["id"]
    try:
        cwd = resolve_cwd(request["root"], request.get("cwd"))
        env = dict(os.environ)
        env.update(request.get("env") or {})
        stdin = request.get("stdin")
        data = base64.b64decode(stdin) if stdin is not None else None
        try:
            child = CHILDREN.spawn(
                request["argv"],
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise Refused("not_found", "program %r not found in the sandbox" % request["argv"][0])
        try:
            workers = [
                threading.Thread(target=pump, args=(rid, child.stdout, "out"), daemon=True),
                threading.Thread(target=pump, args=(rid, child.stderr, "err"), daemon=True),
            ]
            if data is not None:
                workers.append(threading.Thread(target=feed, args=(child.stdin, data), daemon=True))
            for worker in workers:
                worker.start()
            timed_out = False
            code = CHILDREN.wait(child, request["timeout"])
            if code is None:
                timed_out = True
                kill_group(child.pid)
                code = CHILDREN.wait(child, None)
        finally:
            # Whatever the command left running in its group goes with it.
            kill_group(child.pid)
        deadline = time.monotonic() + 0.2
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        send({"id": rid, "exit": code, "timed_out": timed_out})
    except Refused as refused:
        send_error(rid, refused.code, str(refused))
    except Exception as error:  # noqa: BLE001 - every request gets a last reply
        send_error(rid, "internal", "%s: %s" % (type(error).__name__, error))


# Error texts echo what the caller sent (a program name, a path): cut them so
# that no reply comes near the server's line cap, which would drop the
# connection and every exec in flight on it.
ERROR_TEXT_MAX = 1000


def send_error(rid, code, message):
    if len(message) > ERROR_TEXT_MAX:
        message = message[:ERROR_TEXT_MAX] + "..."
    send({"id": rid, "error": code, "message": message})


def main():
    threading.Thread(target=CHILDREN.reap_forever, daemon=True).start()
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        if request.get("op") == "ping":
            send({"id": request.get("id"), "pong": True})
            continue
        try:
            threading.Thread(target=run, args=(request,), daemon=True).start()
        except RuntimeError as error:
            send({"id": request.get("id"), "error": "internal", "message": str(error)})
    # Input closed: keep the container alive; a later attach may come.
    while True:
        time.sleep(3600)


main()
