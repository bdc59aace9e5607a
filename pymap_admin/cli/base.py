"""What every command shares: streams, settings, output, failure handling.

A command is a small class: ``execute`` builds the request, calls the
client, renders the answer and returns the exit status. Output keeps the
published client's protobuf text format (``bearer_token: "…"``), or is one
JSON object with ``--json``. An expected failure is one line on stderr
(with ``--debug``, the traceback too) and exit status 1.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Generic, NamedTuple, TextIO, TypeVar

from ..errors import AdminError, ConfigurationError
from ..outcomes import ExitStatus
from .args import PROG, GlobalOptions, Options

if TYPE_CHECKING:
    from ..client import AdminClient
    from ..settings import ConnectionSettings

__all__ = ["Command", "Field", "OfflineCommand", "Streams", "Symbol", "ask_secret",
           "read_secret_file", "text_format", "write_private"]

_O = TypeVar("_O", bound="tuple[Any, ...]")

class Symbol(str):
    """An enum value: printed without quotes (``status: SERVING``)."""


#: A rendered field: a scalar, or a nested message as a list of fields.
#: Repeated fields are repeated names.
Field = tuple[str, "str | int | bool | float | list[Field] | None"]

#: Failures a user can cause or meet: one line, no traceback.
EXPECTED: tuple[type[BaseException], ...] = (AdminError, OSError, ValueError, EOFError)


class Streams(NamedTuple):
    stdout: TextIO
    stderr: TextIO
    stdin: IO[Any]

    def binary_stdin(self) -> IO[bytes]:
        stream = getattr(self.stdin, "buffer", self.stdin)
        return stream


def dumps(data: dict[str, Any]) -> str:
    import json  # only with --json: a delivery need not load it

    return json.dumps(data, sort_keys=True)


def _escape(value: str) -> str:
    """Protobuf text-format escaping, as the published client prints strings."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if char in "\"'\\":
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


def text_format(fields: Sequence[Field], indent: int = 0) -> str:
    """Fields in protobuf text format; None values are left out."""
    pad = "  " * indent
    lines = []
    for name, value in fields:
        if value is None:
            continue
        if isinstance(value, list):
            lines.append(f"{pad}{name} {{\n{text_format(value, indent + 1)}{pad}}}\n")
        elif isinstance(value, Symbol):
            lines.append(f"{pad}{name}: {value}\n")
        elif isinstance(value, bool):
            lines.append(f"{pad}{name}: {'true' if value else 'false'}\n")
        elif isinstance(value, int | float):
            lines.append(f"{pad}{name}: {value}\n")
        else:
            lines.append(f'{pad}{name}: "{_escape(value)}"\n')
    return "".join(lines)


def result_fields(response: str) -> list[Field]:
    """The ``result { response: "…" }`` block the published client prints."""
    return [("result", [("response", response)])] if response else []


def result_message(response: str) -> dict[str, Any]:
    """``result=`` for a response message: only when there is something to say."""
    if not response:
        return {}
    from ..grpc.admin_pb2 import Result

    return {"result": Result(response=response.encode("utf-8"))}


def ask_secret(command: Command[Any], prompt: str) -> str:
    """A password typed on the terminal, without echo. Without a terminal
    (a script, a pipe) say how to give it instead of reading stdin."""
    stdin = command.streams.stdin
    if not (hasattr(stdin, "isatty") and stdin.isatty()):
        raise ValueError("no terminal to ask the password on: use --password-file FILE "
                         "(or --no-password)")
    import getpass

    return getpass.getpass(prompt, stream=command.streams.stderr)


def read_secret_file(path: Path) -> str:
    """The first line of a password file, without its line ending."""
    try:
        with path.open(encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read password file {path}: {exc}") from exc


def write_private(path: Path, text: str) -> None:
    """Write a secret: folder created 0700 if missing, file 0600 (also when
    it existed with wider permissions), replaced atomically."""
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = folder / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class Command(Generic[_O]):
    """One command: ``execute`` returns the exit status."""

    def __init__(self, options: Options, streams: Streams) -> None:
        self.name = options.command
        self.globals: GlobalOptions = options.globals
        self.options: _O = options.options
        self.streams = streams

    # --- running ----------------------------------------------------------

    def run(self) -> int:
        try:
            return asyncio.run(self.execute())
        except EXPECTED as exc:
            return self.fail(exc)
        except KeyboardInterrupt:
            self.error("interrupted")
            return ExitStatus.INTERRUPTED

    async def execute(self) -> int:
        raise NotImplementedError

    def settings(self) -> ConnectionSettings:
        from ..settings import load_settings

        return load_settings(self.globals.connection(), config_file=self.globals.config)

    def client(self) -> AdminClient:
        """A client for one operator command: the admin token as configured
        (a one-off command is not worth a login token in pymap's store)."""
        from ..client import AdminClient

        return AdminClient(self.settings(), login_tokens=False)

    # --- output -------------------------------------------------------------

    def print(self, text: str) -> None:
        self.streams.stdout.write(text)

    def error(self, message: str) -> None:
        print(f"{PROG}: {self.name}: {message}", file=self.streams.stderr)

    def emit(self, fields: Sequence[Field] | Any, data: dict[str, Any]) -> None:
        """The answer: a response message in protobuf's own text format (as
        the published client prints it), ``fields`` for what is not a
        server's response (token show), or ``data`` as JSON."""
        if self.globals.json:
            self.print(dumps(data) + "\n")
        elif hasattr(fields, "ListFields"):
            from google.protobuf import text_format as protobuf_text

            self.print(protobuf_text.MessageToString(fields))  # type: ignore[arg-type]
        else:
            # The published client print()s the message, which adds a blank
            # line; ours ends with the last field.
            self.print(text_format(fields))

    def describe(self, exc: BaseException) -> str:
        if isinstance(exc, OSError) and exc.filename is not None:
            return f"{exc.strerror or exc}: {exc.filename}"
        return " ".join(str(exc).split()) or type(exc).__name__

    def error_data(self, exc: BaseException) -> dict[str, Any]:
        return {"type": type(exc).__name__, "key": getattr(exc, "key", None),
                "message": self.describe(exc)}

    def fail(self, exc: BaseException, status: int = ExitStatus.FAILURE) -> int:
        """An expected failure: one line on stderr (and the traceback with
        --debug); with --json also ``{"error": …}`` on stdout."""
        if self.globals.debug:
            import traceback

            traceback.print_exception(exc, file=self.streams.stderr)
        self.error(self.describe(exc))
        if self.globals.json:
            self.print(dumps({"error": self.error_data(exc)}) + "\n")
        return status



class OfflineCommand(Command[_O]):
    """A command that needs no server (``save-args``, the ``token``
    actions), so no event loop either: ``act`` returns the exit status."""

    def run(self) -> int:
        try:
            return self.act()
        except (OSError, ValueError, ConfigurationError) as exc:
            return self.fail(exc)

    def act(self) -> int:
        raise NotImplementedError
