"""Drain benchmark with a py-spy breakdown: a thin wrapper over :mod:`deltaforge.benchkit`.

    python bench/drain.py --rows 100000 [--workload oltp|bulk] [--rounds 3] [--no-processor] [--py-spy stacks.txt]

The throughput figures come from ``deltaforge bench --phases drain`` (same code); this
script adds one profiled engine run: ``py-spy record`` attached to the ``deltaforge run``
subprocess while it drains the backlog, and prints the share of samples per pipeline
stage (:data:`deltaforge.benchkit.drain.PYSPY_RULES`). Without ``--py-spy`` it is exactly
``deltaforge bench --phases drain --rows N --rounds R``.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workload", choices=("oltp", "bulk"), default="oltp")
    ap.add_argument("--no-processor", action="store_true", help="profile the pipeline without its JS processor")
    ap.add_argument("--py-spy", dest="pyspy", default=None, help="raw py-spy stacks of one engine run go here")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)

    if not args.pyspy:
        from deltaforge.cli import main as cli

        extra = ["--json", args.json_path] if args.json_path else []
        return int(cli.main(["bench", "--phases", "drain", "--rows", str(args.rows), "--rounds", str(args.rounds),
                             "--workload", args.workload, *extra], standalone_mode=False) or 0)

    from deltaforge.benchkit import open_env, write_backlog
    from deltaforge.benchkit.drain import run_engine
    from deltaforge.errors import DeltaForgeError

    try:
        with open_env() as env:
            backlog = write_backlog(env, args.rows, workload=args.workload)
            env.flush_redis()
            res = run_engine(env, backlog, processors=not args.no_processor, pyspy_out=args.pyspy)
    except DeltaForgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    spy = res.pop("pyspy")
    print(f"profiled run: {res['events_per_s']:,.0f} events/s while sampled, {res['cpu_us_per_event']} CPU-µs/event, "
          f"{spy['samples']} samples (all threads) -> {args.pyspy}")
    for stage, pct in spy["share_pct"].items():
        print(f"  {pct:5.1f}%  {stage}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"run": res, "pyspy": spy}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
