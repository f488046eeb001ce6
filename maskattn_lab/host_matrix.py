"""Run the test suite against other ComfyUI releases and print a compatibility table.

    python scripts/host_matrix.py --comfyui-git /path/to/ComfyUI.git v0.3.60 v0.3.59 ...
    python scripts/host_matrix.py --comfyui-git ... --tiers ops,host 0.3.48 0.3.55

Each host is the release's own tree (``git archive`` of the commit that a tag or a
"ComfyUI version 0.3.NN" commit names) in a temporary folder, with this repo linked into
its custom_nodes/, and the suite runs against it through ``COMFYUI_PATH`` in this venv
(the packages of the pinned host's requirements: an older release may want others,
which the table would show as failures). Prints one row per host: version, commit,
commit date, passed / failed, and the first failures. CI stays on the pinned host.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from . import cli
from .host import PACKAGE, REPO

log = logging.getLogger(__name__)
TIERS = ("ops", "host", "e2e")
UNUSED_LARGE_FILE = "comfy/text_encoders/llama_tokenizer/tokenizer.json"
SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed|errors?)\b.*?) in [\d.]+s")


def release_commit(git: Path, version: str) -> str:
    """The commit of a release: a tag (v0.3.60 / 0.3.60), else the newest commit whose
    subject is that release's version bump ("ComfyUI version 0.3.60" and its variants)."""
    number = version.lstrip("v")
    for ref in (f"v{number}", number):
        found = subprocess.run(["git", "-C", str(git), "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"],
                               capture_output=True, text=True)
        if found.returncode == 0:
            return found.stdout.strip()
    pattern = rf"^ComfyUI (version )?v?{re.escape(number)}\.?$"
    found = subprocess.run(["git", "-C", str(git), "log", "--all", "-E", "--format=%H %s", f"--grep={pattern}"],
                           capture_output=True, text=True, check=True)
    commits = [line.split()[0] for line in found.stdout.splitlines()]
    if not commits:
        raise SystemExit(f"{version}: no tag and no 'ComfyUI version {number}' commit in {git}")
    return commits[0]


def unpack(git: Path, commit: str, into: Path, exclude: list[str]) -> Path:
    """The host's tree at ``commit`` in ``into``/ComfyUI, this repo in its custom_nodes/."""
    host = into / "ComfyUI"
    host.mkdir(parents=True)
    pathspec = [".", *(f":(exclude){path}" for path in exclude)]
    archive = subprocess.Popen(["git", "-C", str(git), "archive", commit, "--", *pathspec], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(host)], stdin=archive.stdout, check=True)
    if archive.wait():
        raise SystemExit(f"git archive {commit} failed")
    (host / "custom_nodes").mkdir(exist_ok=True)
    (host / "custom_nodes" / PACKAGE).symlink_to(REPO)
    return host


def run_suite(host: Path, tiers: list[str], timeout: float, log_file: Path) -> tuple[str, list[str], float]:
    """(pytest's summary, the failing tests, seconds) against ``host``; pytest's whole
    output goes to ``log_file``."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             *[str(REPO / "tests" / t) for t in tiers]],
                            cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "COMFYUI_PATH": str(host)})
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text(result.stdout + result.stderr)
    lines = result.stdout.splitlines()
    summary = next((m.group(1) for line in reversed(lines) if (m := SUMMARY.search(line))), f"exit {result.returncode}")
    failures = [line.split(" ", 1)[1].split(" - ")[0] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return summary, failures, time.monotonic() - started


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("versions", nargs="+", help="releases to test, e.g. 0.3.60 (or v0.3.60)")
    p.add_argument("--comfyui-git", type=Path, required=True, help="a git clone of Comfy-Org/ComfyUI with its history")
    p.add_argument("--tiers", default=",".join(TIERS), help=f"test tiers to run, of {', '.join(TIERS)}")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one host's suite may take")
    p.add_argument("--logs", type=Path, default=REPO / "output" / "host_matrix",
                   help="folder for each host's whole pytest output (<version>.log)")
    p.add_argument("--exclude", action="append", default=[UNUSED_LARGE_FILE],
                   help="paths left out of each host's tree (a snapshot may lack large files; SDXL needs none)")
    args = p.parse_args(argv)
    cli.setup_logging()
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    if unknown := [t for t in tiers if t not in TIERS]:
        p.error(f"--tiers: unknown {unknown}; of {TIERS}")
    measured = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    rows = ["| host | commit | commit date | tiers | result | first failures | measured |", "|---|---|---|---|---|---|---|"]
    for version in args.versions:
        commit = release_commit(args.comfyui_git, version)
        date = subprocess.run(["git", "-C", str(args.comfyui_git), "log", "-1", "--format=%cs", commit],
                              capture_output=True, text=True, check=True).stdout.strip()
        with tempfile.TemporaryDirectory(prefix=f"comfyui-{version}-") as folder:
            host = unpack(args.comfyui_git, commit, Path(folder), args.exclude)
            log.info("%s (%s): running %s", version, commit[:8], ", ".join(tiers))
            summary, failures, seconds = run_suite(host, tiers, args.timeout, args.logs / f"{version}.log")
        log.info("%s: %s (%.0f s)", version, summary, seconds)
        shown = "; ".join(failures[:3]) + (f" (+{len(failures) - 3})" if len(failures) > 3 else "")
        rows.append(f"| {version.lstrip('v')} | {commit[:8]} | {date} | {'+'.join(tiers)} | {summary} | "
                    f"{shown or '-'} | {measured} |")
    print("\n".join(rows))
    return 0
