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
#                                   | "internal" | ..., "message": "..."} (last)
#
# File requests (paths relative to "root", the workspace; see Resolver):
#   {"op": "read", "root", "path"}   -> {"size": n}, then {"data": "<base64>"} chunks of at
#                                       most CHUNK bytes, then {"done": true} (last)
#   {"op": "cancel", "target": "<id of a read>"}   stops that read; no reply
#   {"op": "list", "root", "path"}   -> {"entries": [[name, kind, size], ...]} batches,
#                                       then {"done": true}; kind: f, d, l or o
#   {"op": "mkdir", "root", "path"}  -> {"done": true}
#   {"op": "remove", "root", "path", "recursive": bool} -> {"done": true}
#   {"op": "write_open", "root", "path", "handle", "tmp"} -> {"done": true}
#   {"op": "write_chunk", "handle", "data": "<base64>"}  no reply (errors wait for the commit)
#   {"op": "write_commit", "handle", "size": n | null}   -> {"written": n, "done": true}
#   {"op": "write_abort", "handle"}                       -> {"done": true}
# The write requests of one handle are handled in order on the reading thread
# (they never block: the temporary file is a regular file the agent created);
# everything else runs on a thread of its own.
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
import collections  # noqa: E402
import errno  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import stat  # noqa: E402
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


# ---------------------------------------------------------------- file requests
#
# The agent is PID 1: a path that led it out of the workspace could open its
# own stdio (/proc/self/fd/*), its memory or environment. So paths are never
# handed to the kernel whole. Resolver walks them one name at a time from an
# fd of the workspace root, each step relative to the directory reached so
# far with O_NOFOLLOW: `..` above the root and symlinks leading out of it
# are refused, and a directory swapped for a symlink between two steps is
# caught, not followed. Symlinks that stay inside are followed as the kernel
# would (at most MAX_SYMLINKS).

O_PATH = getattr(os, "O_PATH", 0o10000000)
DIR_FLAGS = O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_SYMLINKS = 40
# Largest JSON of one batch of directory entries.
LIST_BATCH_BYTES = 65536


def names_of(path):
    return [part for part in path.split("/") if part not in ("", ".")]


def escape_refused(rel):
    return Refused("invalid_path", "path %r escapes the sandbox workspace" % rel)


def walk(root, rel, follow_last=True, create_dirs=False):
    """(fd of the parent directory, last name, whether a symlink named it) of
    `rel` under `root`; the name is None when the path is a directory already
    reached (the root). The caller closes the fd. With `follow_last`, a last
    name that is a symlink is followed; without, it is the name itself. With
    `create_dirs`, missing directories are made (the last one too)."""
    stack = [os.open(root, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
    parts = collections.deque(names_of(rel))
    links = 0
    from_link = False
    try:
        while parts:
            part = parts.popleft()
            if part == "..":
                if len(stack) == 1:
                    raise escape_refused(rel)
                os.close(stack.pop())
                continue
            last = not parts
            try:
                st = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
            except FileNotFoundError:
                if create_dirs:
                    try:
                        os.mkdir(part, 0o777, dir_fd=stack[-1])
                    except FileExistsError:
                        pass
                    parts.appendleft(part)
                    continue
                if last:
                    return stack.pop(), part, from_link
                raise Refused("file_not_found", "%s: no such directory" % rel)
            if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise Refused("invalid_path", "path %r has too many symlinks" % rel)
                target = os.readlink(part, dir_fd=stack[-1])
                if target.startswith("/"):
                    inside = root.rstrip("/") + "/"
                    if target != root and not target.startswith(inside):
                        raise Refused("invalid_path", "path %r escapes the sandbox through a symlink" % rel)
                    for fd in stack[1:]:
                        os.close(fd)
                    del stack[1:]
                    target = target[len(root):]
                parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
                from_link = last
                continue
            if last and not (create_dirs and stat.S_ISDIR(st.st_mode)):
                if create_dirs:
                    raise Refused("exists", "%s exists and is not a directory" % rel)
                return stack.pop(), part, from_link
            if not stat.S_ISDIR(st.st_mode):
                raise Refused("not_directory", "%s: a parent is not a directory" % rel)
            try:
                stack.append(os.open(part, DIR_FLAGS, dir_fd=stack[-1]))
            except OSError:
                raise Refused("invalid_path", "path %r changed while it was resolved" % rel)
        return stack.pop(), None, from_link
    finally:
        for fd in stack:
            os.close(fd)


def open_in(parent, name, flags, rel):
    """Opens `name` in `parent` without following a symlink there (one swapped
    in after the walk is refused)."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=parent)
    except FileNotFoundError:
        raise Refused("file_not_found", "%s: no such file or directory" % rel)
    except NotADirectoryError:
        raise Refused("not_directory", "%s is not a directory" % rel)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise Refused("invalid_path", "path %r changed while it was resolved" % rel)
        if error.errno in (errno.ENXIO, errno.EOPNOTSUPP):
            raise Refused("not_regular", "%s is not a regular file" % rel)
        raise


READS = {}  # id of a read in progress -> its cancel event
READS_LOCK = threading.Lock()


def file_read(request):
    rid, rel = request["id"], request["path"]
    parent, name, _ = walk(request["root"], rel)
    try:
        if name is None:
            raise Refused("is_directory", "%s is a directory" % rel)
        # O_NONBLOCK: a FIFO opens at once (and is refused below) instead of waiting for a writer.
        fd = open_in(parent, name, os.O_RDONLY | os.O_NONBLOCK, rel)
    finally:
        os.close(parent)
    cancelled = threading.Event()
    with READS_LOCK:
        READS[rid] = cancelled
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise Refused("is_directory", "%s is a directory" % rel)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not_regular", "%s is not a regular file" % rel)
        size = st.st_size
        send({"id": rid, "size": size})
        left = size
        while left > 0 and not cancelled.is_set():
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:
                raise Refused("changed", "%s shrank while it was read" % rel)
            send({"id": rid, "data": base64.b64encode(chunk).decode()})
            left -= len(chunk)
        send({"id": rid, "done": True})
    finally:
        with READS_LOCK:
            READS.pop(rid, None)
        os.close(fd)


def cancel_read(request):
    with READS_LOCK:
        event = READS.get(request.get("target"))
    if event is not None:
        event.set()


def printable(name):
    """A file name as JSON can carry it: bytes that are not UTF-8 become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def file_list(request):
    rid, rel = request["id"], request["path"]
    parent, name, _ = walk(request["root"], rel)
    try:
        fd = open_in(parent, name or ".", os.O_RDONLY | os.O_DIRECTORY, rel)
    finally:
        os.close(parent)
    try:
        batch, batch_bytes = [], 0
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    kind = "l"
                elif stat.S_ISDIR(st.st_mode):
                    kind = "d"
                elif stat.S_ISREG(st.st_mode):
                    kind = "f"
                else:
                    kind = "o"
                item = [printable(entry.name), kind, st.st_size]
                batch.append(item)
                batch_bytes += len(json.dumps(item))
                if batch_bytes >= LIST_BATCH_BYTES:
                    send({"id": rid, "entries": batch})
                    batch, batch_bytes = [], 0
        if batch:
            send({"id": rid, "entries": batch})
        send({"id": rid, "done": True})
    finally:
        os.close(fd)


def file_mkdir(request):
    parent, _, _ = walk(request["root"], request["path"], create_dirs=True)
    os.close(parent)
    send({"id": request["id"], "done": True})


def remove_tree(parent, name):
    """Removes the directory `name` of `parent` and everything under it,
    never following a symlink (each level is opened relative to the last)."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        with os.scandir(fd) as entries:
            children = [entry.name for entry in entries]
        for child in children:
            try:
                os.unlink(child, dir_fd=fd)
            except IsADirectoryError:
                remove_tree(fd, child)
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def file_remove(request):
    rel = request["path"]
    parent, name, _ = walk(request["root"], rel, follow_last=False)
    try:
        if name is None:
            raise Refused("invalid_path", "cannot remove the workspace root")
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            raise Refused("file_not_found", "%s: no such file or directory" % rel)
        if stat.S_ISDIR(st.st_mode):
            if request.get("recursive"):
                remove_tree(parent, name)
            else:
                try:
                    os.rmdir(name, dir_fd=parent)
                except OSError as error:
                    if error.errno == errno.ENOTEMPTY:
                        raise Refused("not_empty", "%s is a non-empty directory; remove it recursively" % rel)
                    raise
        else:
            os.unlink(name, dir_fd=parent)
    finally:
        os.close(parent)
    send({"id": request["id"], "done": True})


class Upload:
    """A file being written: a temporary file beside the target, renamed over
    it when the server commits."""

    def __init__(self, parent, name, tmp, fd, rel):
        self.parent, self.name, self.tmp, self.fd, self.rel = parent, name, tmp, fd, rel
        self.written = 0
        self.error = None

    def write(self, data):
        if self.error is not None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            self.written += len(data)
        except OSError as error:
            self.error = "writing %s: %s" % (self.rel, error.strerror)

    def close(self, keep):
        os.close(self.fd)
        if not keep:
            try:
                os.unlink(self.tmp, dir_fd=self.parent)
            except OSError:
                pass
        os.close(self.parent)


UPLOADS = collections.OrderedDict()  # handle -> Upload
# Uploads open at once; past it the oldest is dropped (its server went away).
MAX_UPLOADS = 32


def write_open(request):
    rel = request["path"]
    while len(UPLOADS) >= MAX_UPLOADS:
        UPLOADS.popitem(last=False)[1].close(False)
    parent, name, from_link = walk(request["root"], rel)
    try:
        if name is None:
            raise Refused("is_directory", "%s is a directory" % rel)
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise Refused("is_directory", "%s is a directory" % rel)
        except FileNotFoundError:
            if from_link:
                raise Refused("invalid_path", "path %r is a symlink to nowhere inside the sandbox" % rel)
        fd = os.open(
            request["tmp"], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=parent
        )
    except BaseException:
        os.close(parent)
        raise
    UPLOADS[request["handle"]] = Upload(parent, name, request["tmp"], fd, rel)
    send({"id": request["id"], "done": True})


def write_chunk(request):
    upload = UPLOADS.get(request["handle"])
    if upload is not None:
        upload.write(base64.b64decode(request["data"]))


def write_commit(request):
    upload = UPLOADS.pop(request["handle"], None)
    if upload is None:
        raise Refused("internal", "no upload in progress under this handle")
    keep = False
    try:
        if upload.error is not None:
            raise Refused("internal", upload.error)
        size = request.get("size")
        if size is not None and size != upload.written:
            raise Refused(
                "size_mismatch",
                "upload of %s ended after %d of %d announced bytes; the file is unchanged"
                % (upload.rel, upload.written, size),
            )
        try:
            os.rename(upload.tmp, upload.name, src_dir_fd=upload.parent, dst_dir_fd=upload.parent)
        except IsADirectoryError:
            raise Refused("is_directory", "%s is a directory" % upload.rel)
        keep = True
    finally:
        upload.close(keep)
    send({"id": request["id"], "written": upload.written, "done": True})


def write_abort(request):
    upload = UPLOADS.pop(request["handle"], None)
    if upload is not None:
        upload.close(False)
    send({"id": request["id"], "done": True})


# Requests handled on the reading thread, in the order they came: one upload's
# chunks must be written in order, and none of them can block.
IN_ORDER = {
    "write_open": write_open,
    "write_chunk": write_chunk,
    "write_commit": write_commit,
    "write_abort": write_abort,
    "cancel": cancel_read,
}
# Requests each on a thread of their own.
THREADED = {
    "read": file_read,
    "list": file_list,
    "mkdir": file_mkdir,
    "remove": file_remove,
}


def serve(handler, request):
    """Runs one file request; any failure is its last reply."""
    try:
        handler(request)
    except Refused as refused:
        send_error(request.get("id"), refused.code, str(refused))
    except OSError as error:
        send_error(request.get("id"), "internal", "%s: %s" % (request.get("path"), error.strerror))
    except Exception as error:  # noqa: BLE001 - every request gets a last reply
        send_error(request.get("id"), "internal", "%s: %s" % (type(error).__name__, error))


def unknown_op(request):
    raise Refused("internal", "unknown request %r" % request.get("op"))


def main():
    threading.Thread(target=CHILDREN.reap_forever, daemon=True).start()
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        op = request.get("op")
        if op == "ping":
            send({"id": request.get("id"), "pong": True})
            continue
        if op in IN_ORDER:
            # Serialised by this loop: no reply may be written by two threads at once
            # for one upload, and chunks stay in order.
            serve(IN_ORDER[op], request)
            continue
        target = run if op == "exec" else functools.partial(serve, THREADED.get(op, unknown_op))
        try:
            threading.Thread(target=target, args=(request,), daemon=True).start()
        except RuntimeError as error:
            send({"id": request.get("id"), "error": "internal", "message": str(error)})
    # Input closed: keep the container alive; a later attach may come.
    while True:
        time.sleep(3600)


main()
