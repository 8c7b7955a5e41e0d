"""Run training scripts and collect the final loss each prints (``final loss: X``), for the
TensorFlow-versus-opencann comparison of the corpus.

    python run_scripts.py JOBS.json RESULTS.json

JOBS.json is a list of ``{"id", "dir", "script", "timeout"}``. TensorFlow and opencann.tf are imported
once here; each script then runs in a forked child (two at a time), in its own folder, as ``__main__``,
so a job costs its training time rather than TensorFlow's import. RESULTS.json maps id -> ``{"rc",
"loss", "tail"}``.
"""
from __future__ import annotations

import json
import os
import re
import runpy
import select
import signal
import sys
import time

PARALLEL = 2
LOSS = re.compile(r"final loss:\s*([-+0-9.eE]+|nan|inf)")


def child(job: dict, fd: int) -> None:
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(job["dir"])
    sys.path.insert(0, job["dir"])
    sys.argv = [job["script"]]
    code = 0
    try:
        runpy.run_path(job["script"], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start(job: dict) -> dict:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        child(job, write)
    os.close(write)
    return {"job": job, "pid": pid, "fd": read, "out": b"", "deadline": time.monotonic() + job["timeout"]}


def finish(run: dict, status: int | None) -> dict:
    text = run["out"].decode(errors="replace")
    losses = LOSS.findall(text)
    rc = os.waitstatus_to_exitcode(status) if status is not None else 124
    return {"rc": rc, "loss": float(losses[-1]) if losses else None, "tail": text[-3000:]}


def main(jobs_path: str, results_path: str) -> int:
    import tensorflow  # noqa: F401  (imported once, before the children fork)

    import opencann.tf  # noqa: F401

    jobs = json.load(open(jobs_path))
    results, running = {}, []
    while jobs or running:
        while jobs and len(running) < PARALLEL:
            running.append(start(jobs.pop(0)))
        ready, _, _ = select.select([r["fd"] for r in running], [], [], 0.5)
        for run in list(running):
            if run["fd"] in ready:
                chunk = os.read(run["fd"], 65536)
                if chunk:
                    run["out"] += chunk
                    continue
                _, status = os.waitpid(run["pid"], 0)
            elif time.monotonic() > run["deadline"]:
                os.kill(run["pid"], signal.SIGKILL)
                os.waitpid(run["pid"], 0)
                status = None
            else:
                continue
            os.close(run["fd"])
            running.remove(run)
            results[run["job"]["id"]] = finish(run, status)
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
