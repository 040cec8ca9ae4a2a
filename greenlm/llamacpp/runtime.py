"""The llama.cpp library as greenlm uses it: an optional import with one clear error, and its log captured.

llama.cpp reports why a load or a quantization failed only through its log callback; we collect those lines
while a call runs so the error a user sees says what llama.cpp said, and nothing else reaches the terminal.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from greenlm.errors import GreenlmError

EXTRA_HINT = "pip install 'greenlm[llamacpp]' (compiles llama.cpp once, about 8 minutes)"
_LOG_LEVEL_ERROR = 4  # ggml_log_level: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continuation
_lock = threading.RLock()
_backend_ready = False
_active: LogCapture | None = None  # where llama.cpp's log lines go now; None: to logging at debug level
_callback = None  # the ctypes callback must stay referenced while llama.cpp holds it
# A Ctrl-C that Python delivered inside our log callback. ctypes would print it as "Exception ignored" and
# drop it, and the export or measurement would carry on; we keep it and raise it once llama.cpp returns.
_interrupted = False
log = logging.getLogger("greenlm.llamacpp")


def import_llama_cpp() -> Any:
    """The `llama_cpp` module with its backend initialised, or a GreenlmError saying how to install it."""
    global _backend_ready
    try:
        import llama_cpp
    except ImportError:
        raise GreenlmError(
            f"the llama.cpp engine needs the llama-cpp-python package, which is not installed: {EXTRA_HINT}"
        ) from None
    except (OSError, RuntimeError) as exc:  # the package is there but its shared library does not load
        raise GreenlmError(
            f"llama-cpp-python is installed but its library does not load ({str(exc).splitlines()[0][:160]}): "
            "reinstall it with " + EXTRA_HINT
        ) from None
    if not _backend_ready:
        with _lock:
            if not _backend_ready:
                _install_log_callback(llama_cpp)
                llama_cpp.llama_backend_init()
                _backend_ready = True
    return llama_cpp


def _install_log_callback(lib) -> None:
    """Replace llama-cpp-python's callback (which prints everything to stderr unless a `Llama` object set it
    quiet) with one that feeds the active capture, or Python logging at debug level."""
    global _callback

    @lib.llama_log_callback
    def callback(level, text, _user_data):
        global _interrupted
        try:
            message = (text or b"").decode("utf-8", errors="replace")
            if _active is not None:
                _active._add(int(level), message)
            elif message.strip():
                log.debug("%s", message.rstrip())
        except KeyboardInterrupt:
            _interrupted = True
        except BaseException:  # a Python error must never cross back into C
            pass

    _callback = callback
    lib.llama_log_set(callback, ctypes.c_void_p(0))


def raise_pending_interrupt() -> None:
    """Raise the KeyboardInterrupt that arrived while llama.cpp was calling back, if one did. Called after
    every llama.cpp call that logs (see `captured_log`, and the engine's decode loop)."""
    global _interrupted
    if _interrupted:
        _interrupted = False
        raise KeyboardInterrupt


def llama_cpp_status() -> dict:
    """Whether llama.cpp is usable here, its version and CPU features, or why not (never raises)."""
    try:
        lib = import_llama_cpp()
    except GreenlmError as exc:
        return {"usable": False, "reason": str(exc)}
    return {
        "usable": True,
        "version": getattr(lib, "__version__", "unknown"),
        "gpu_offload": bool(lib.llama_supports_gpu_offload()),
        "system_info": lib.llama_print_system_info().decode(errors="replace").strip(),
    }


class LogCapture:
    """Lines llama.cpp logged while a `captured_log()` block ran."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []
        self._partial = ""
        self._level = 0

    def _add(self, level: int, text: str) -> None:
        if level == 5:  # continuation of the previous message
            level = self._level
        self._level = level
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            if line.strip():
                self.lines.append((level, line.strip()))

    def errors(self) -> list[str]:
        return [line for level, line in self.lines if level == _LOG_LEVEL_ERROR]

    def reason(self, default: str = "llama.cpp gave no reason") -> str:
        """The root cause: the first error line with words in it (later ones say "failed to load model"),
        else the last line logged."""
        errors = [e for e in self.errors() if any(c.isalpha() for c in e)]
        if errors:
            return errors[0].replace("llama_model_load: error loading model: ", "")
        return self.lines[-1][1] if self.lines else default


@contextmanager
def captured_log() -> Iterator[LogCapture]:
    """Collect what llama.cpp logs during the block (one block at a time per process). A Ctrl-C pressed
    during the block is raised when it ends."""
    global _active
    import_llama_cpp()
    with _lock:
        previous, _active = _active, LogCapture()
        try:
            yield _active
        finally:
            _active = previous
            raise_pending_interrupt()


@contextmanager
def vocab_only_model(lib, path) -> Iterator[Any]:
    """The llama.cpp model of GGUF `path` loaded vocabulary-only (no weights: cheap), freed on exit."""
    params = lib.llama_model_default_params()
    params.vocab_only = True
    with captured_log() as captured:
        model = lib.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise GreenlmError(f"llama.cpp cannot read the vocabulary of {path}: {captured.reason()}")
    try:
        yield model
    finally:
        lib.llama_model_free(model)


def new_context(lib, model, params, what: str, hint: str = ""):
    """A llama.cpp context for `model`, or one GreenlmError line: what could not be created, llama.cpp's
    reason, then `hint` (what to change)."""
    with captured_log() as captured:
        ctx = lib.llama_init_from_model(model, params)
    if not ctx:
        raise GreenlmError(f"llama.cpp cannot create {what}: {captured.reason()}{hint}")
    return ctx
