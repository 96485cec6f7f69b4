"""Copy a SQLite study database into ``docs/studies/`` the way the repository keeps real studies.

The copy has no checkpoints (a trial that was stopped and re-queued then starts its epochs
over when the study is resumed from the copy) and is vacuumed, in SQLite's rollback-journal
mode, so it is small and opens as one file. The source is read through SQLite's backup API,
so it may be copied while a search writes to it.

Usage: python tools/commit_study.py SOURCE.db [--into docs/studies]
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
from pathlib import Path

from cifar_search.checkpoints import TABLE


def copy_study(source: Path, into: Path) -> Path:
    """Write ``into/<source's name>`` without checkpoints, vacuumed; return its path."""
    into.mkdir(parents=True, exist_ok=True)
    target = into / source.name
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    writer = sqlite3.connect(partial)
    with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as reader:
        reader.backup(writer)
    writer.execute(f"DELETE FROM {TABLE.name}")
    writer.commit()
    writer.execute("PRAGMA journal_mode=DELETE")
    writer.execute("VACUUM")
    writer.close()
    partial.replace(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--into", type=Path, default=Path("docs/studies"))
    args = parser.parse_args()
    target = copy_study(args.source, args.into)
    print(f"{target}: {target.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
