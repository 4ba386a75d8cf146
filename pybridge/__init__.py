"""focusbridge: focus stacking for darktable users (see docs/ARCHITECTURE.md for the layers)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("focusbridge")  # one definition: pyproject.toml
except PackageNotFoundError:  # pragma: no cover - run from a bare source tree
    __version__ = "0+unknown"

from .errors import FocusbridgeError  # noqa: E402

__all__ = ["stack", "StackOptions", "StackResult", "FocusbridgeError", "__version__"]


def __getattr__(name):
    # the engine (numpy, OpenCV) loads on first use, so `focusbridge` can take charge of
    # Ctrl-C and SIGTERM within milliseconds of starting
    if name in ("stack", "StackResult", "StackOptions"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'pybridge' has no attribute {name!r}")
