"""focusbridge's stacking engine: read -> align -> fuse -> write (see pipeline.py)."""
__version__ = "0.1.0"

from .errors import StackError  # noqa: E402
from .pipeline import StackResult, stack  # noqa: E402

__all__ = ["stack", "StackResult", "StackError", "__version__"]
