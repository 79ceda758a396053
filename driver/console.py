"""Windows console control events → the same graceful stop as SIGTERM.

A HostProcess (job) container is stopped by hcsshim with CTRL_SHUTDOWN_EVENT
to its processes, and the job is terminated 5 s later.  CPython turns only
Ctrl+C and Ctrl+Break into signals; CTRL_CLOSE / CTRL_SHUTDOWN end the
process as soon as the console handlers return, so without a handler of our
own in-flight NodeStage/NodeUnstage calls die half way.

The handler asks the event loop to stop (thread-safe: Windows calls it on a
thread of its own) and, for the events that end the process on return,
holds that thread until the drain has finished or its time is up.  The
handler's logic is plain Python; only :func:`set_console_ctrl_handler`
touches the Win32 API, so tests inject a registration function instead.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

# wincon.h
CTRL_C_EVENT = 0
CTRL_BREAK_EVENT = 1
CTRL_CLOSE_EVENT = 2
CTRL_LOGOFF_EVENT = 5
CTRL_SHUTDOWN_EVENT = 6

# Events after which the process ends as soon as the handler returns.
_ENDING = frozenset({CTRL_CLOSE_EVENT, CTRL_SHUTDOWN_EVENT})
_HANDLED = frozenset({CTRL_C_EVENT, CTRL_BREAK_EVENT, *_ENDING})

Handler = Callable[[int], bool]
# Registers a handler; returns the function that unregisters it.
Registrar = Callable[[Handler], Callable[[], None]]


class ConsoleStop:
    """The console control handler: stop gracefully on C/BREAK/CLOSE/SHUTDOWN.

    ``request_stop`` must be thread-safe.  ``stopped`` is set once the drain
    has finished; ``wait`` bounds how long an ending event is held.
    """

    def __init__(
        self, request_stop: Callable[[], None], stopped: threading.Event, wait: float
    ) -> None:
        self._request_stop = request_stop
        self._stopped = stopped
        self._wait = wait
        self.events: list[int] = []

    def __call__(self, event: int) -> bool:
        if event not in _HANDLED:
            return False  # CTRL_LOGOFF (a user logs off) is no reason to stop: next handler
        self.events.append(event)
        self._request_stop()
        if event in _ENDING:
            # Returning lets Windows end the process: only once the drain is done.
            self._stopped.wait(self._wait)
        return True


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    _HandlerRoutine = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)

    def set_console_ctrl_handler(handler: Handler) -> Callable[[], None]:
        """SetConsoleCtrlHandler(handler, TRUE); the result removes it again."""
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.SetConsoleCtrlHandler.argtypes = [_HandlerRoutine, wintypes.BOOL]
        kernel32.SetConsoleCtrlHandler.restype = wintypes.BOOL

        def routine(event: int) -> bool:
            try:
                return handler(event)
            except Exception:  # noqa: BLE001 - never raise into Windows' thread
                return False

        callback = _HandlerRoutine(routine)  # referenced below: must outlive the registration
        if not kernel32.SetConsoleCtrlHandler(callback, True):
            raise ctypes.WinError(ctypes.get_last_error())

        def remove() -> None:
            kernel32.SetConsoleCtrlHandler(callback, False)

        return remove

    default_registrar: Registrar | None = set_console_ctrl_handler
else:
    default_registrar = None
