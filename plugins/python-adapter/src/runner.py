# The runner of the Wharf `python` adapter: `python3 -c <this file>`, with a
# JSON payload on stdin: {"code", "stdin", "report"}.
#
# It runs `code` as the module `__main__` (like `python3 -c`), with `stdin` as
# sys.stdin, and its own stdout and stderr. What the adapter needs beyond the
# output goes to `report`, a file the adapter named with a random token and
# reads afterwards, never to stdout or stderr, so nothing the code prints can
# pose as a result:
#   {"result": <JSON>}                 the code set a global `result`
#   {"result_error": "..."}            `result` is not JSON (or too large)
#   {"compile_error": {...}}           the code does not compile; nothing ran
#   {"exception": {...}}               the code raised (the traceback is on stderr)
import io
import json
import linecache
import os
import sys
import traceback

RESULT_MAX_BYTES = 1048576
FILENAME = "<code>"


def _frame_line(tb):
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _main():
    payload = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    report_fd = os.open(
        payload["report"], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    code = payload["code"]
    sys.stdin = io.TextIOWrapper(io.BytesIO((payload.get("stdin") or "").encode("utf-8")))
    # Tracebacks show the code's own lines.
    linecache.cache[FILENAME] = (len(code), None, code.splitlines(True), FILENAME)
    report = {}
    status = 0
    try:
        compiled = compile(code, FILENAME, "exec")
    except SyntaxError as error:
        traceback.print_exception(type(error), error, None)
        report["compile_error"] = {
            "type": type(error).__name__,
            "message": str(error.msg),
            "line": error.lineno,
            "column": error.offset,
            "text": (error.text or "").rstrip("\n")[:500],
        }
        status = 1
    else:
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        sys.argv = ["-c"]
        try:
            exec(compiled, namespace)
        except SystemExit as exit_:
            if exit_.code is None:
                status = 0
            elif isinstance(exit_.code, int):
                status = exit_.code
            else:
                print(exit_.code, file=sys.stderr)
                status = 1
        except BaseException as error:  # noqa: BLE001 - the code's failure is reported, not ours
            # Skip the runner's own frame.
            traceback.print_exception(type(error), error, error.__traceback__.tb_next)
            report["exception"] = {
                "type": type(error).__name__,
                "message": str(error)[:2000],
                "line": _frame_line(error.__traceback__),
            }
            status = 1
        if "result" in namespace:
            try:
                text = json.dumps(namespace["result"], allow_nan=False)
            except (TypeError, ValueError, RecursionError) as error:
                report["result_error"] = "result is not JSON: %s" % error
            else:
                if len(text) > RESULT_MAX_BYTES:
                    report["result_error"] = "result is %d bytes of JSON; at most %d are returned" % (
                        len(text),
                        RESULT_MAX_BYTES,
                    )
                else:
                    report["result"] = json.loads(text)
    data = json.dumps(report).encode("utf-8")
    while data:
        data = data[os.write(report_fd, data):]
    os.close(report_fd)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream has nothing to flush
            pass
    return status


sys.exit(_main())
