"""What every benchmark entry point shares: one fresh process per backend, rows back as JSON, a markdown table.

KERAS_BACKEND is read once, when keras is imported, so each backend runs in a
process of its own: `run_in_backend` starts ``python -m MODULE --worker
BACKEND --worker-out FILE ...`` with the backend set (and the thread caps of
``--threads``) and returns the list of row dicts the worker wrote to FILE.
`markdown_table` renders rows under named columns; `write_outputs` writes the
rows as JSON and the table as markdown beside it, headed by the date, the
command that reproduces it and the CPU or GPU it ran on.
"""

import datetime
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile

from benchmarks.measure import thread_env


def log(message):
    print(message, file=sys.stderr, flush=True)


def add_worker_arguments(parser):
    """The hidden options a worker process is started with."""
    import argparse

    parser.add_argument("--worker", choices=("jax", "tensorflow", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)


def run_in_backend(backend, module, argv, threads=None):
    """The rows `python -m module --worker backend --worker-out FILE *argv` wrote, or [] (with a log line) on failure."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "rows.json")
        command = [sys.executable, "-m", module, "--worker", backend, "--worker-out", out, *argv]
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", **thread_env(threads)}
        completed = subprocess.run(command, env=env)
        if completed.returncode != 0 or not os.path.exists(out):
            log(f"[{backend}] FAILED (exit status {completed.returncode}); no rows for this backend")
            return []
        with open(out) as handle:
            return json.load(handle)


def write_rows(rows, path):
    with open(path, "w") as handle:
        json.dump(rows, handle)


def markdown_table(rows, columns):
    """`columns`: (header, key or function of the row, alignment ":" for right or "" for left)."""
    header = "| " + " | ".join(title for title, _, _ in columns) + " |"
    rule = "|" + "|".join("---:" if align == ":" else "---" for _, _, align in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [value(row) if callable(value) else row.get(value, "") for _, value, _ in columns]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(table, rows, out, command_module, argv, note=""):
    """JSON rows at `out`, the table at `out`.md, each headed by the date and the command; the table printed."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    command = f"python -m {command_module} " + " ".join(shlex.quote(a) for a in argv)
    text = f"{datetime.date.today().isoformat()} — `{command}`\n\n" + (f"{note}\n\n" if note else "") + table
    out.with_suffix(".md").write_text(text)
    print(text)
    log(f"wrote {out}, {out.with_suffix('.md')}")
    return out
