"""Mutation testing (cosmic-ray) of the modules that guard against sample loss, each against
its own fast unit tests only (docs/reliability.md, "Mutation run").

Every run works on a scratch copy of the tree (cosmic-ray edits the module on disk), so the
worktree is never left mutated, whatever interrupts it. On a shared 2-core machine a whole
module takes long: `--max N` keeps a seeded random sample of N mutants (the others are
recorded as skipped), so a run finishes; `--max 0` runs them all.

    python tools/mutate.py [--module session,outbox] [--max 60] [--seed 1] [--out build/mutate]

Per module it writes `<out>/<module>.sqlite` (the cosmic-ray session: `cr-report` reads it)
and `<out>/<module>.md` (counts and every surviving mutant's diff), and prints the counts.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    module: str            # path in the repo
    tests: tuple[str, ...]  # the fast unit tests that guard it
    timeout_s: float


TARGETS = {
    "session": Target("gateway/session.py", ("tests/test_session.py",), 60),
    "ingest": Target("gateway/ingest.py",
                     ("tests/test_store_ingest.py", "tests/test_ingest_schedule.py"), 90),
    "outbox": Target("gateway/outbox.py", ("tests/test_outbox.py",), 60),
    "flash_log": Target("firmware/flash_log.py", ("tests/test_flash_log.py",), 120),
}


def scratch_copy(dest: Path) -> None:
    """The tracked files as they are in the worktree now (edits included), plus the
    node_modules link (the MicroPython VM some tests start)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if not src.is_file():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    if (REPO / "node_modules").exists():
        os.symlink((REPO / "node_modules").resolve(), dest / "node_modules")


def test_command(target: Target) -> str:
    return shlex.join([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                       *target.tests])


def write_config(path: Path, target: Target) -> None:
    path.write_text(
        "[cosmic-ray]\n"
        f"module-path = {target.module!r}\n"
        f"timeout = {target.timeout_s}\n"
        "excluded-modules = []\n"
        f"test-command = {test_command(target)!r}\n"
        "\n[cosmic-ray.distributor]\nname = \"local\"\n")


def sample_down(session: Path, keep: int, seed: int) -> tuple[int, int]:
    """Mark all but a seeded random `keep` of the mutants skipped; (total, kept)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        jobs = sorted(item.job_id for item in db.pending_work_items)
        if keep <= 0 or keep >= len(jobs):
            return len(jobs), len(jobs)
        chosen = set(random.Random(seed).sample(jobs, keep))
        for job in jobs:
            if job not in chosen:
                db.set_result(job, WorkResult(worker_outcome=WorkerOutcome.SKIPPED,
                                              output="not in this run's sample (--max)"))
        return len(jobs), keep


@dataclass
class Counts:
    total: int = 0
    run: int = 0
    killed: int = 0
    timeouts: int = 0
    survived: int = 0
    incompetent: int = 0


def summarise(session: Path, module: str) -> tuple[Counts, list[str]]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    counts, survivors = Counts(), []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            counts.total += 1
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            counts.run += 1
            if result.worker_outcome != WorkerOutcome.NORMAL:
                counts.incompetent += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                counts.survived += 1
                mutation = item.mutations[0]
                survivors.append(
                    f"### {mutation.operator_name} at line {mutation.start_pos[0]}"
                    f"\n\n```diff\n{(result.diff or '').strip()}\n```\n")
            elif result.output == "timeout":
                counts.timeouts += 1
            else:
                counts.killed += 1
        counts.total += db.num_work_items - counts.total   # still pending (interrupted)
    return counts, survivors


def run_module(name: str, target: Target, out: Path, keep: int, seed: int) -> Counts:
    cosmic = [sys.executable, "-m", "cosmic_ray.cli"]
    with tempfile.TemporaryDirectory(prefix=f"dermtwin-mutate-{name}-") as scratch_dir:
        scratch = Path(scratch_dir)
        scratch_copy(scratch)
        env = {**os.environ, "PYTHONPATH": str(scratch)}
        baseline = subprocess.run(shlex.split(test_command(target)), cwd=scratch, env=env,
                                  capture_output=True, text=True)
        if baseline.returncode != 0:
            raise SystemExit(f"mutate {name}: the unmutated tests fail; fix them first:\n"
                             + baseline.stdout[-2000:])
        config = scratch / "cosmic-ray.toml"
        write_config(config, target)
        session = out / f"{name}.sqlite"
        session.unlink(missing_ok=True)
        subprocess.run([*cosmic, "init", str(config), str(session)], cwd=scratch, env=env,
                       check=True)
        total, kept = sample_down(session, keep, seed)
        print(f"{name}: {total} mutants, running {kept}", flush=True)
        started = time.monotonic()
        subprocess.run([*cosmic, "exec", str(config), str(session)], cwd=scratch, env=env,
                       check=True)
        elapsed = time.monotonic() - started
    counts, survivors = summarise(session, name)
    report = (f"# Mutation run: {target.module}\n\n"
              f"tests: {' '.join(target.tests)}; {counts.total} mutants, {counts.run} run "
              f"(seed {seed}), {elapsed:.0f} s\n\n"
              f"killed {counts.killed}, timeouts {counts.timeouts}, survived {counts.survived}, "
              f"incompetent {counts.incompetent}\n\n## Survivors\n\n" + "\n".join(survivors))
    (out / f"{name}.md").write_text(report)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", default=",".join(TARGETS),
                        help=f"comma-separated, of: {', '.join(TARGETS)}")
    parser.add_argument("--max", type=int, default=60,
                        help="mutants per module, a seeded random sample (0: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "mutate")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.module.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"--module: unknown {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    args.out.mkdir(parents=True, exist_ok=True)
    print("| module | mutants | run | killed | timeouts | survived | incompetent |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        c = run_module(name, TARGETS[name], args.out.resolve(), args.max, args.seed)
        print(f"| {TARGETS[name].module} | {c.total} | {c.run} | {c.killed} | {c.timeouts} | "
              f"{c.survived} | {c.incompetent} |", flush=True)
    print(f"survivors' diffs: {args.out}/<module>.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
