"""focusbridge metadata: merged EXIF/XMP on stacked outputs (``exif.merge``), batch lens
rewriting with dry-run and undo (``exif.lens``, ``exif.undo``), exiftool through pyexiftool
(``exif.tool``), and the ``meta`` / ``lens`` commands (``exif.cli``).  See docs/metadata.md."""
