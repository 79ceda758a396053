"""Run fixed PowerShell scripts on a Windows node and read their JSON answer.

The rules, all enforced here:

* The script text is a constant of the calling module.  Every input (remote
  path, user, password, ...) travels in an environment variable of the child
  process; nothing is ever formatted into the script, so no input can be
  parsed as PowerShell.
* The command line is ``powershell.exe -NoLogo -NoProfile -NonInteractive
  -Mta -Command <script>``: no profile, no prompt that could wait forever, a
  multithreaded apartment for the CIM-based SMB cmdlets.  Scripts use single
  quotes only, so Windows command-line quoting cannot alter them.
* At most ``max_concurrent`` PowerShell processes run at once (upstream found
  that many concurrent spawns fail with 0xC0000142, STATUS_DLL_INIT_FAILED).
  A process that overruns its timeout (or whose caller is cancelled) is
  killed, and its slot is given back only once it has really ended.
* Scripts answer on stdout with one line of JSON (``ConvertTo-Json
  -Compress``): ``{"ok": true, "result": {...}}``, or ``{"ok": false,
  "error": {...}}`` with the exception's Windows error code where one can be
  found (``FullyQualifiedErrorId`` "Windows System Error 1219,...", CIM
  ``error_Code``, an HRESULT 0x8007xxxx, ``NativeErrorCode``).
  :func:`map_windows_error` turns that into a domain error.
* Secrets never reach argv, logs or error texts: they are only in the child's
  environment, and every text taken from the child is scrubbed of them.

The process is started through a :class:`ProcessSpawner`, so tests replace
the Windows host with a fake that interprets ``CSI_OP`` (the operation's name,
always passed in the environment) instead of parsing script text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from driver import failures
from driver.errors import (
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Unavailable,
)
from driver.failures import Failure
from driver.log import get_logger
from driver.redact import scrub

log = get_logger("node.powershell")

# Flags of every call; the script follows "-Command".
POWERSHELL_FLAGS: tuple[str, ...] = ("-NoLogo", "-NoProfile", "-NonInteractive", "-Mta")
OP_VARIABLE = "CSI_OP"
# Our inputs all start with this; stale ones inherited from the parent are dropped.
ENV_PREFIX = "CSI_"
DEFAULT_MAX_CONCURRENT = 3
DEFAULT_TIMEOUT = 60.0
_KILL_WAIT = 10.0  # seconds to wait for a killed process to be reaped
_MAX_TEXT = 600  # characters of a child's text kept in an error message

# Every script is wrapped in this: errors stop the script, and whatever goes
# wrong is caught and reported as JSON with the best Windows error code.
# ``$result`` is set by the body.  Single quotes only (see the module doc).
SCRIPT_PROLOGUE = """\
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
try {
    [Console]::OutputEncoding = New-Object -TypeName System.Text.UTF8Encoding -ArgumentList $false
} catch { }
try {
"""
SCRIPT_EPILOGUE = """\
    @{ ok = $true; result = $result } | ConvertTo-Json -Compress -Depth 5
} catch {
    $failure = $_
    $exception = $failure.Exception
    $code = $null
    if ([string]$failure.FullyQualifiedErrorId -match 'Windows System Error (\\d+)') {
        $code = [long]$Matches[1]
    }
    if ($null -eq $code -and $null -ne $exception.PSObject.Properties['ErrorData']) {
        try {
            $code = [long]$exception.ErrorData.CimInstanceProperties['error_Code'].Value
        } catch { }
    }
    $native = $null
    if ($null -ne $exception.PSObject.Properties['NativeErrorCode']) {
        $native = [string]$exception.NativeErrorCode
    }
    @{
        ok = $false
        error = @{
            Code = $code
            HResult = $exception.HResult
            NativeErrorCode = $native
            FullyQualifiedErrorId = [string]$failure.FullyQualifiedErrorId
            Type = $exception.GetType().FullName
            Message = [string]$exception.Message
        }
    } | ConvertTo-Json -Compress -Depth 5
}
"""


def wrap_script(body: str) -> str:
    """The full script text for a body that sets ``$result``."""
    lines = "".join(f"    {line}\n" if line else "\n" for line in body.strip("\n").split("\n"))
    return SCRIPT_PROLOGUE + lines + SCRIPT_EPILOGUE


class SpawnedProcess(Protocol):
    """The part of :class:`asyncio.subprocess.Process` the runner uses."""

    @property
    def returncode(self) -> int | None: ...

    async def communicate(self) -> tuple[bytes, bytes]: ...

    def kill(self) -> None: ...

    async def wait(self) -> int: ...


class ProcessSpawner(Protocol):
    """Start a process from an argument list with exactly ``env`` as environment."""

    async def __call__(self, argv: Sequence[str], *, env: Mapping[str, str]) -> SpawnedProcess: ...


async def spawn_process(argv: Sequence[str], *, env: Mapping[str, str]) -> SpawnedProcess:
    """The real spawner: no shell, stdin closed, stdout/stderr captured."""
    return await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def powershell_executable() -> str:
    """Windows PowerShell 5.1 by absolute path (PATH of a HostProcess
    container is not to be trusted for a tool we run as SYSTEM)."""
    root = os.environ.get("SYSTEMROOT") or r"C:\Windows"
    return root.rstrip("\\") + r"\System32\WindowsPowerShell\v1.0\powershell.exe"


# --------------------------------------------------------------------------- errors

# Win32 error code → (failure, short explanation).  Codes from winerror.h; the
# failures are the vocabulary every adapter shares (``driver.failures``).
_WINDOWS_ERRORS: dict[int, tuple[Failure, str]] = {
    2: (Failure.PATH_MISSING, "file not found"),
    3: (Failure.PATH_MISSING, "path not found"),
    5: (
        Failure.DENIED,
        "access denied (check the share permissions of the user; with requirePrivacy the "
        "server must support SMB 3 encryption)",
    ),
    51: (Failure.UNREACHABLE, "the remote computer is not available"),
    53: (Failure.UNREACHABLE, "network path not found: server unreachable or name not resolved"),
    58: (Failure.UNREACHABLE, "the server cannot perform the requested operation (SMB dialect?)"),
    59: (Failure.UNREACHABLE, "unexpected network error"),
    64: (Failure.UNREACHABLE, "the network name is no longer available"),
    67: (Failure.SHARE_MISSING, "the share does not exist on the server (bad network name)"),
    85: (Failure.EXISTS, "the local device name is already in use"),
    86: (Failure.AUTH_FAILED, "logon failure: wrong password"),
    121: (Failure.UNREACHABLE, "the semaphore timeout period expired (server not answering)"),
    1202: (Failure.EXISTS, "the mapping is already remembered"),
    1203: (Failure.UNREACHABLE, "no network provider accepted the path"),
    1219: (
        Failure.CONFLICT,
        "another connection to this server uses different credentials: every volume of one "
        "SMB server on a node must use the same user (check Get-SmbGlobalMapping for stale "
        "mappings of that server)",
    ),
    1222: (Failure.UNREACHABLE, "the network is not present or not started"),
    1231: (Failure.UNREACHABLE, "the network location cannot be reached"),
    1232: (Failure.UNREACHABLE, "the network location cannot be reached (host unreachable)"),
    1244: (Failure.AUTH_FAILED, "the user has not been authenticated"),
    1272: (Failure.DENIED, "the server requires authentication; guest access is blocked"),
    1311: (Failure.UNREACHABLE, "no logon servers available to service the logon request"),
    1312: (
        Failure.AUTH_FAILED,
        "a specified logon session does not exist: the user name needs a domain "
        "(DOMAIN\\user, or server\\user for a local account of the server)",
    ),
    1326: (Failure.AUTH_FAILED, "logon failure: unknown user name or bad password"),
    1327: (Failure.AUTH_FAILED, "account restriction"),
    1328: (Failure.AUTH_FAILED, "account logon time restriction"),
    1330: (Failure.AUTH_FAILED, "the password of the account has expired"),
    1331: (Failure.AUTH_FAILED, "the account is disabled"),
    1909: (Failure.AUTH_FAILED, "the account is locked out"),
    1314: (
        Failure.DENIED,
        "a required privilege is not held (symlinks need SeCreateSymbolicLinkPrivilege: run "
        "as NT AUTHORITY\\SYSTEM in a HostProcess container)",
    ),
    1450: (Failure.NO_SPACE, "insufficient system resources"),
    2250: (Failure.PATH_MISSING, "the network connection does not exist"),
}
_FQID_CODE = re.compile(r"Windows System Error (\d+)")
_STATUS_DLL_INIT_FAILED = 0xC0000142


def windows_error_code(error: Mapping[str, Any]) -> int | None:
    """The Win32 error code of a script's error object, where there is one."""
    code = _integer(error.get("Code"))
    if code is not None and code > 0:
        return code
    found = _FQID_CODE.search(str(error.get("FullyQualifiedErrorId") or ""))
    if found:
        return int(found.group(1))
    hresult = _integer(error.get("HResult"))
    if hresult is not None:
        unsigned = hresult & 0xFFFFFFFF
        if unsigned >> 16 == 0x8007:  # HRESULT_FROM_WIN32
            return unsigned & 0xFFFF
    native = str(error.get("NativeErrorCode") or "")
    if native.isdigit() and int(native) > 0:
        return int(native)
    return None


def map_windows_error(
    error: Mapping[str, Any], *, what: str, secrets: Iterable[str] = ()
) -> DriverError:
    """A domain error for a script's error object; secrets scrubbed."""
    message = _quote(str(error.get("Message") or "").strip(), secrets)
    kind = str(error.get("Type") or "error")
    return map_windows_code(windows_error_code(error), message, what=what, unknown=kind)


def map_windows_code(
    code: int | None, message: str, *, what: str, unknown: str = "error"
) -> DriverError:
    """A domain error for a Win32 error code (``message`` must be scrubbed
    already).  Unknown codes are Internal, naming the code."""
    if code is not None and code in _WINDOWS_ERRORS:
        failure, meaning = _WINDOWS_ERRORS[code]
        detail = f"Windows error {code}: {meaning}"
        if message:
            detail += f"; {message}"
        return failures.error(failure, what, detail)
    detail = f"Windows error {code}" if code is not None else unknown
    return Internal(f"{what}: {detail}: {message or 'no message'}")


def _integer(value: object) -> int | None:
    """A JSON number that is an integer (``true`` is no error code)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _quote(text: str, secrets: Iterable[str]) -> str:
    """A child's text as an error message may quote it: clipped, secrets scrubbed."""
    clipped = text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "..."
    return scrub(clipped, secrets)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").lstrip("\ufeff")


def parse_output(stdout: str) -> dict[str, Any] | None:
    """The last line of stdout that is a JSON object, or None."""
    for raw in reversed(stdout.splitlines()):
        line = raw.strip().lstrip("\ufeff")
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


# --------------------------------------------------------------------------- runner


class PowerShell:
    """Runs fixed scripts, bounded in number and time."""

    def __init__(
        self,
        spawner: ProcessSpawner | None = None,
        *,
        executable: str | None = None,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        timeout: float = DEFAULT_TIMEOUT,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._spawn: ProcessSpawner = spawner if spawner is not None else spawn_process
        self._executable = executable or powershell_executable()
        self._slots = asyncio.Semaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self.timeout = timeout
        self._base_env = dict(os.environ if base_env is None else base_env)

    def argv(self, script: str) -> list[str]:
        return [self._executable, *POWERSHELL_FLAGS, "-Command", script]

    def environment(self, op: str, inputs: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in self._base_env.items() if not k.upper().startswith(ENV_PREFIX)}
        for key, value in inputs.items():
            if not key.startswith(ENV_PREFIX):
                raise ValueError(f"script input {key!r} must start with {ENV_PREFIX}")
            if "\x00" in value:
                raise InvalidArgument(f"{key}: NUL is not allowed")
            env[key] = value
        env[OP_VARIABLE] = op
        return env

    async def run(
        self,
        op: str,
        script: str,
        *,
        env: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        time_limit: float | None = None,
        what: str = "",
    ) -> dict[str, Any]:
        """Run ``script`` with ``env`` as inputs; return its ``result`` object.

        ``secrets`` are the input values that must not appear in any text this
        raises or logs.  Raises DeadlineExceeded on timeout (the process is
        killed), the mapped domain error when the script reports one.
        """
        what = what or op
        secret_list = [s for s in secrets if s]
        limit = self.timeout if time_limit is None else time_limit
        argv = self.argv(script)
        child_env = self.environment(op, env or {})
        started = time.monotonic()
        async with self._slots:
            try:
                proc = await self._spawn(argv, env=child_env)
            except FileNotFoundError:
                raise FailedPrecondition(
                    f"{what}: {self._executable} not found (is this a Windows node?)"
                ) from None
            except OSError as exc:
                raise Unavailable(f"{what}: cannot start PowerShell: {exc.strerror}") from None
            try:
                stdout_b, stderr_b = await asyncio.wait_for(proc.communicate(), limit)
            except TimeoutError:
                await self._kill(proc)
                log.warning("powershell timed out", op=op, seconds=limit)
                raise DeadlineExceeded(
                    f"{what}: PowerShell did not finish within {limit:g}s and was killed"
                ) from None
            except BaseException:  # cancelled: do not leave the process behind
                await asyncio.shield(self._kill(proc))
                raise
        elapsed = time.monotonic() - started
        returncode = proc.returncode
        stdout, stderr = _decode(stdout_b), _decode(stderr_b)
        answer = parse_output(stdout)
        log.debug("powershell finished", op=op, returncode=returncode, seconds=round(elapsed, 3))
        if answer is None:
            raise self._no_answer(what, returncode, stdout, stderr, secret_list)
        if answer.get("ok") is True:
            result = answer.get("result")
            return result if isinstance(result, dict) else {}
        error = answer.get("error")
        mapped = map_windows_error(
            error if isinstance(error, dict) else {}, what=what, secrets=secret_list
        )
        log.info("powershell reported an error", op=op, error=mapped.message)
        raise mapped

    @staticmethod
    def _no_answer(
        what: str, returncode: int | None, stdout: str, stderr: str, secrets: list[str]
    ) -> DriverError:
        if returncode is not None and returncode & 0xFFFFFFFF == _STATUS_DLL_INIT_FAILED:
            return Unavailable(
                f"{what}: PowerShell failed to start (0xC0000142, too many processes at once?)"
            )
        text = _quote((stderr.strip() or stdout.strip()) or "no output", secrets)
        return Internal(f"{what}: PowerShell exited with {returncode} without an answer: {text}")

    @staticmethod
    async def _kill(proc: SpawnedProcess) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        # Hold the slot until the process is really gone (bounded, never forever).
        with contextlib.suppress(TimeoutError, ProcessLookupError):
            await asyncio.wait_for(proc.wait(), _KILL_WAIT)
