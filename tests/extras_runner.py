"""Run ``resnet50`` commands in this process with some modules hidden, as if not installed.

Usage: ``python extras_runner.py MODULE,MODULE,... '[["classify", "x.jpg"], ...]'``. Prints one
JSON list: per command its argv, exit code and stderr. A ``serve`` command is stopped with
SIGTERM once ``/v2/health/ready`` answers (it must come last). Used by ``test_extras.py``.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import json
import os
import signal
import sys
import threading
import time
import traceback
import urllib.request

HIDDEN = {name for name in sys.argv[1].split(",") if name}


class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None


sys.meta_path.insert(0, Hide())


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


def main() -> None:
    from resnet50.cli import main as resnet50

    results = []
    for argv in json.loads(sys.argv[2]):
        if argv[0] == "serve":  # if it fails to start instead, this process ends before the watcher acts
            port = int(argv[argv.index("--port") + 1])
            threading.Thread(target=stop_when_ready, args=(port,), daemon=True).start()
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = resnet50(argv)
            except SystemExit as exc:
                code = exc.code
            except BaseException:
                code = "raised"
                err.write(traceback.format_exc())
        results.append({"argv": argv, "code": code, "stderr": err.getvalue()})
    still_imported = sorted(name for name in sys.modules if name.partition(".")[0] in HIDDEN)
    print(json.dumps({"results": results, "hidden_but_imported": still_imported}))


if __name__ == "__main__":
    main()
