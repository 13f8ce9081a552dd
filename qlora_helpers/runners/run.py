"""`python -m qlora_helpers.runners.run --profile demo`: run the notebook series headless (see runner.py)."""
from __future__ import annotations

import argparse
import ast
import sys
import time

from . import profiles, runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlora_helpers.runners.run", description=__doc__)
    parser.add_argument("--profile", default="demo",
                        help=f"parameter set: {', '.join(profiles.PROFILES)} (default: demo)")
    parser.add_argument("--run-dir", help="where executed notebooks, HTML and results go (default: runs/<profile>)")
    parser.add_argument("--notebooks", nargs="+", metavar="NAME",
                        help="only these notebooks (stems or numbers, e.g. 01 04); default: all four")
    parser.add_argument("--force", action="store_true", help="rerun notebooks whose outputs are complete")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training notebook parameter, e.g. --set max_train_samples=2000")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ValueError as error:
        parser.error(str(error))

    start = time.perf_counter()
    try:
        runner.run(args.profile, run_dir=args.run_dir, force=args.force, notebooks=args.notebooks,
                   overrides=overrides, echo=lambda line: print(line, flush=True))
    except runner.RunnerError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: finished notebooks are kept, the one running left no file
        print("\ninterrupted: notebooks already finished are kept; the same command resumes (training from "
              "its last checkpoint).", file=sys.stderr, flush=True)
        return 130
    run_dir = args.run_dir or runner.default_run_dir(args.profile)
    print(f"\nall notebooks complete in {time.perf_counter() - start:.0f} s; executed notebooks and HTML in {run_dir}")
    print(runner.comparison_text(run_dir))
    return 0


def parse_overrides(items: list[str]) -> dict:
    """KEY=VALUE pairs; VALUE is read as a Python literal (2000, 1e-3, None, "text") or else kept as text."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: use KEY=VALUE, e.g. --set epochs=1")
        try:
            overrides[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key.strip()] = text
    return overrides


if __name__ == "__main__":
    sys.exit(main())
