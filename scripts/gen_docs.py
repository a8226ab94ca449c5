"""Check or rewrite the generated blocks of the docs (plug-in tables, config reference).

    python scripts/gen_docs.py            # exit 1 and name the stale files if the docs drifted
    python scripts/gen_docs.py --write    # rewrite them from the code

The blocks sit between ``<!-- generated: KEY -->`` and ``<!-- end generated -->`` in README.md
and docs/*.md; ``orchestration/docs_reference.py`` makes their contents.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing the project

from orchestration.docs_reference import FIX_COMMAND, stale_files  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the stale blocks")
    args = parser.parse_args()
    stale = stale_files(ROOT, write=args.write)
    names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
    if args.write:
        print(f"rewrote {names}" if stale else "generated docs already up to date")
        return 0
    if stale:
        print(f"generated docs out of date: {names}; run `{FIX_COMMAND}`", file=sys.stderr)
        return 1
    print("generated docs up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
