"""focusbridge's stacking engine: read -> align -> fuse -> write (see pipeline.py)."""
__version__ = "0.1.0"

from .errors import StackError  # noqa: E402

__all__ = ["stack", "StackResult", "StackError", "__version__"]


def __getattr__(name):
    # the engine (numpy, OpenCV) loads on first use, so `focusbridge` can take charge of
    # Ctrl-C and SIGTERM within milliseconds of starting
    if name in ("stack", "StackResult"):
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'pybridge' has no attribute {name!r}")
