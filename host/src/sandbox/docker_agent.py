# The exec agent of a Docker sandbox: the container's main process (under
# the engine's init) when the image has python3. The server sends one JSON
# request per line on the container's stdin and reads JSON replies, one per
# line, from its stdout. An exec through the agent costs a fork, not an
# engine round trip (create, start, inspect) of `docker exec`.
#
# Requests: {"id": N, "op": "ping"}
#           {"id": N, "op": "exec", "argv": [...], "env": {...}, "root": "/workspace",
#            "cwd": "rel/dir", "stdin": "<base64>" | null, "timeout": seconds}
# Replies:  {"id": N, "pong": true}
#           {"id": N, "stream": "out" | "err", "data": "<base64>"}   (any number)
#           {"id": N, "exit": code, "timed_out": bool}               (last)
#           {"id": N, "error": "invalid_path" | "file_not_found" | "not_found"
#                              | "internal", "message": "..."}       (last)
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time

OUT = sys.stdout.buffer
OUT_LOCK = threading.Lock()


def send(message):
    line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
    with OUT_LOCK:
        OUT.write(line)
        OUT.flush()


class Refused(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


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
            chunk = pipe.read1(65536)
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
            child = subprocess.Popen(
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
        workers = [
            threading.Thread(target=pump, args=(rid, child.stdout, "out"), daemon=True),
            threading.Thread(target=pump, args=(rid, child.stderr, "err"), daemon=True),
        ]
        if data is not None:
            workers.append(threading.Thread(target=feed, args=(child.stdin, data), daemon=True))
        for worker in workers:
            worker.start()
        timed_out = False
        try:
            code = child.wait(timeout=request["timeout"])
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(child.pid)
            code = child.wait()
        # Whatever the command left running in its group goes with it.
        kill_group(child.pid)
        deadline = time.monotonic() + 0.2
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        # Shell convention: death by signal N is 128 + N.
        send({"id": rid, "exit": 128 - code if code < 0 else code, "timed_out": timed_out})
    except Refused as refused:
        send({"id": rid, "error": refused.code, "message": str(refused)})
    except Exception as error:  # noqa: BLE001 - every request gets a last reply
        send({"id": rid, "error": "internal", "message": "%s: %s" % (type(error).__name__, error)})


def main():
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
