"""``python -m exif meta|lens ...``: the metadata commands without pybridge's CLI."""

import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main())
