"""``pymap-deliver install-contrib``: put the systemd units, the example
configuration, the man pages, shell completions and the MTA snippets in
place, under ``--root`` (a chroot, a package's staging folder; default ``/``).

Every file it writes is recorded with its checksum in
``/var/lib/pymap-deliver/installed-files``. On a later run a file is
replaced only if it is still what was installed; a file the operator edited
(or one that was there before) is kept, the new version is written beside it
as ``FILE.new``, and the command says so. ``--force`` replaces it anyway,
keeping the operator's version as ``FILE.old``.

In the units, ``/opt/pymap-deliver/bin/`` becomes the folder this
pymap-deliver runs from (``--bin-dir``): the environment shared with pymap.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

from pymap_admin.outcomes import ExitStatus

__all__ = ["Plan", "main", "plan"]

#: The install path the contrib units name, replaced by the real one.
EXAMPLE_BIN_DIR = "/opt/pymap-deliver/bin/"
DOC_NAME = "pymap-deliver"


@dataclass(frozen=True)
class Plan:
    """One file: where it goes (an absolute path on the target system) and
    what it will contain."""

    target: PurePosixPath
    content: bytes
    mode: int = 0o644


PROG = "pymap-deliver install-contrib"


class _NoContrib(Exception):
    """Neither a wheel's share folder nor a checkout's contrib folder."""


def _share() -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """The shipped ``share/`` folder; from a checkout, one generated now."""
    from ._share import build_share, shipped_share

    shipped = shipped_share()
    if shipped is not None:
        return shipped, None
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "contrib").is_dir():
        raise _NoContrib("this installation has no contrib files")
    from importlib.metadata import version

    temporary = tempfile.TemporaryDirectory(prefix="pymap-deliver-share-")
    build_share(Path(temporary.name) / "share", checkout / "contrib", version("pymap-deliver"))
    return Path(temporary.name) / "share", temporary


def _files(folder: Path) -> Iterator[Path]:
    return (path for path in sorted(folder.rglob("*")) if path.is_file())


def plan(share: Path, *, prefix: str, sysconfdir: str, bin_dir: str) -> list[Plan]:
    """Every file to install, from a ``share/`` folder (see ``_share.py``)."""
    prefix_path, etc = PurePosixPath(prefix), PurePosixPath(sysconfdir)
    doc = prefix_path / "share" / "doc" / DOC_NAME
    bin_prefix = bin_dir.rstrip("/") + "/"
    files: list[Plan] = []
    contrib = share / "contrib"
    for unit in _files(contrib / "systemd"):
        text = unit.read_text().replace(EXAMPLE_BIN_DIR, bin_prefix)
        text = text.replace("file:///usr/local/share/doc/pymap-deliver/", f"file://{doc}/")
        if unit.suffix in (".service", ".socket"):
            files.append(Plan(etc / "systemd" / "system" / unit.name, text.encode()))
        else:  # drop-ins: examples, not active until the operator copies one
            files.append(Plan(doc / "systemd" / unit.name, text.encode()))
    for example in _files(contrib / "pymap-deliver"):
        # The example configuration, beside the file pymap-deliver reads
        # (/etc/pymap-deliver/pymap-deliver.conf) but not as it: that file,
        # once there, is read by every start, and is the operator's.
        files.append(Plan(etc / "pymap-deliver" / f"{example.name}.example",
                          example.read_bytes(), 0o640))
    for path in _files(contrib):
        relative = path.relative_to(contrib)
        if relative.parts[0] not in ("systemd", "pymap-deliver"):
            files.append(Plan(doc / relative, path.read_bytes()))
    for path in _files(share / "doc"):
        files.append(Plan(doc / path.name, path.read_bytes()))
    for page in _files(share / "man"):
        section = page.suffix.removeprefix(".")
        files.append(Plan(prefix_path / "share" / "man" / f"man{section}" / page.name,
                          page.read_bytes()))
    completion_dirs = {"bash": prefix_path / "share" / "bash-completion" / "completions",
                       "zsh": prefix_path / "share" / "zsh" / "site-functions"}
    for shell, folder in completion_dirs.items():
        for script in _files(share / "completion" / shell):
            files.append(Plan(folder / script.name, script.read_bytes()))
    return files


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _on_root(root: Path, target: PurePosixPath) -> Path:
    return root / str(target).lstrip("/")


class Installer:
    MANIFEST = PurePosixPath("/var/lib/pymap-deliver/installed-files")

    def __init__(self, root: Path, *, force: bool, dry_run: bool, out: TextIO) -> None:
        self.root, self.force, self.dry_run, self.out = root, force, dry_run, out
        self.manifest_path = _on_root(root, self.MANIFEST)
        try:
            self.manifest: dict[str, str] = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            self.manifest = {}
        self.kept: list[Path] = []

    def say(self, what: str, path: Path, extra: str = "") -> None:
        print(f"{what:10} {path}{extra}", file=self.out)

    def install(self, item: Plan) -> None:
        path = _on_root(self.root, item.target)
        key = str(item.target)
        try:
            current: bytes | None = path.read_bytes()
        except FileNotFoundError:
            current = None
        if current == item.content:
            self.say("unchanged", path)
            self.manifest[key] = _digest(item.content)
            return
        if current is None:
            self.say("install", path)
        elif self.manifest.get(key) == _digest(current):
            self.say("update", path)
        elif self.force:
            self.say("replace", path, f" (your version kept as {path.name}.old)")
            if not self.dry_run:
                os.replace(path, path.with_name(path.name + ".old"))
        else:
            new = path.with_name(path.name + ".new")
            self.say("KEPT", path, f" (changed here; the new version is {new.name})")
            self.kept.append(path)
            self._write(new, item)
            return
        self._write(path, item)
        self.manifest[key] = _digest(item.content)

    def _write(self, path: Path, item: Plan) -> None:
        if self.dry_run:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target and renamed: never a half-written unit.
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(item.content)
        temporary.chmod(item.mode)
        os.replace(temporary, path)

    def finish(self) -> None:
        if self.dry_run:
            return
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        self.manifest_path.write_text(json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Install the systemd units, example configuration, man pages, shell "
                    "completions and MTA snippets. Files you changed are kept (the new "
                    "version is written beside them as FILE.new).")
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="install into this folder as if it were / (default: /)")
    parser.add_argument("--prefix", default="/usr/local",
                        help="for man pages, completions and documentation (default: /usr/local)")
    parser.add_argument("--sysconfdir", default="/etc",
                        help="for the units and the example configuration (default: /etc)")
    parser.add_argument("--bin-dir", default=sysconfig.get_path("scripts"),
                        help="where pymap-deliver and pymap are installed, written into the "
                             "units (default: this environment's, %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="replace files you changed (keeping yours as FILE.old)")
    parser.add_argument("--dry-run", action="store_true", help="only say what would be done")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    stream, errors = out or sys.stdout, err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help; or a mistake, which argparse has reported
        return ExitStatus.OK if exc.code in (0, None) else ExitStatus.USAGE
    try:
        share, temporary = _share()
    except _NoContrib as exc:
        print(f"{PROG}: {exc}", file=errors)
        return ExitStatus.SOFTWARE
    try:
        installer = Installer(args.root, force=args.force, dry_run=args.dry_run, out=stream)
        for item in plan(share, prefix=args.prefix, sysconfdir=args.sysconfdir,
                         bin_dir=args.bin_dir):
            installer.install(item)
        installer.finish()
    except OSError as exc:
        print(f"{PROG}: {exc}", file=errors)
        return ExitStatus.CANTCREAT
    finally:
        if temporary is not None:
            temporary.cleanup()
    if installer.kept:
        print(f"{len(installer.kept)} file(s) kept as you changed them; compare with the .new "
              "version, or run again with --force", file=stream)
    print("next: systemctl daemon-reload; systemctl enable --now pymap.service "
          "pymap-deliver.socket", file=stream)
    return ExitStatus.OK
