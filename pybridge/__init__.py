"""focusbridge: focus stacking for darktable users (see docs/ARCHITECTURE.md for the layers)."""

from .errors import FocusbridgeError

__all__ = ["stack", "StackOptions", "StackResult", "FocusbridgeError", "__version__"]


def __getattr__(name):
    if name == "__version__":  # one definition: pyproject.toml; importlib.metadata is slow to
        # load (tens of ms), and a command that writes no version (check) should not pay it
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("focusbridge")
        except PackageNotFoundError:  # pragma: no cover - run from a bare source tree
            found = "0+unknown"
        globals()["__version__"] = found
        return found
    # the engine (numpy, OpenCV) loads on first use, so `focusbridge` can take charge of
    # Ctrl-C and SIGTERM within milliseconds of starting
    if name in ("stack", "StackResult", "StackOptions"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'pybridge' has no attribute {name!r}")
