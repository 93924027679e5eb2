"""Run ``resnet50`` commands in this process with some modules hidden, as if not installed.

Usage: ``python extras_runner.py MODULE,MODULE,... '[["classify", "x.jpg"], ...]'``. Prints one
JSON list: per command its argv, exit code and what reached file descriptor 2. A ``serve`` command is stopped with
SIGTERM once ``/v2/health/ready`` answers (it must come last). Used by ``tests/core/test_extras.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

HIDDEN = {name for name in sys.argv[1].split(",") if name}
# As if not installed: ``import name`` raises ModuleNotFoundError and ``importlib.util.find_spec``
# answers None (the documented meaning of a None entry in sys.modules).
for name in HIDDEN:
    sys.modules[name] = None


def stop_when_ready(port: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)


def run(resnet50, argv: list[str]) -> tuple[object, str]:
    """``resnet50(argv)`` with file descriptor 2 captured: what the command, its libraries and
    native code write there (``serve`` points Python's stderr at the descriptor it found)."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture, contextlib.redirect_stdout(io.StringIO()):
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        try:
            code = resnet50(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            code = "raised"
            sys.stderr.write(traceback.format_exc())
        finally:
            sys.stderr.flush()
            sys.stderr = sys.__stderr__  # serve points it elsewhere; the next command writes to fd 2 again
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return code, capture.read().decode("utf-8", "replace")


def main() -> None:
    from resnet50.cli import main as resnet50

    results = []
    for argv in json.loads(sys.argv[2]):
        if argv[0] == "serve":  # if it fails to start instead, this process ends before the watcher acts
            port = int(argv[argv.index("--port") + 1])
            threading.Thread(target=stop_when_ready, args=(port,), daemon=True).start()
        code, err = run(resnet50, argv)
        results.append({"argv": argv, "code": code, "stderr": err})
    still_imported = sorted(n for n, m in sys.modules.items() if m is not None and n.partition(".")[0] in HIDDEN)
    print(json.dumps({"results": results, "hidden_but_imported": still_imported}))


if __name__ == "__main__":
    main()
