"""The one exception type the CLI turns into a clean, non-zero exit, and the file-system faults
that become one."""

from __future__ import annotations

import errno
from pathlib import Path


class TextclfError(Exception):
    """A problem the user can fix: the message names the file/row/field and the fix.

    The CLI prints the message (no traceback) and exits with status 1.
    """


_WRITE_ACCESS = ("give your user write access to {parent} (`ls -ld {parent}`), or run from a "
                 "checkout you own")
# The machine's faults a user fixes outside textclf: errno -> what to do about it.
_FILESYSTEM_FIXES = {
    errno.ENOSPC: "free space on the disk that holds it (`df -h {parent}`)",
    errno.EDQUOT: "free space within your disk quota, or raise the quota",
    errno.EROFS: "run from a writable checkout, or remount that file system read-write (it is "
                 "mounted read-only)",
    errno.EACCES: _WRITE_ACCESS,
    errno.EPERM: _WRITE_ACCESS,
    errno.ENAMETOOLONG: "move the project to a shorter directory (the path is longer than the "
                        "file system allows)",
    errno.EFBIG: "raise the limit on file size this process may write (`ulimit -f`)",
}


def filesystem_error(exc: OSError, stage: str) -> TextclfError | None:
    """The one-paragraph error for a file-system fault, or None for any other OSError."""
    fix = _FILESYSTEM_FIXES.get(exc.errno or 0)
    if fix is None:
        return None
    path = Path(exc.filename) if exc.filename else None
    parent = path.parent if path else Path(".")
    reason = exc.strerror or errno.errorcode[exc.errno or 0]
    return TextclfError(
        f"textclf {stage}: {reason}: {path or 'a file it writes'}. To fix it, "
        f"{fix.format(parent=parent)}; then re-run `dvc repro {stage}`. No output was left "
        "half-written: every output is written under a temporary name and renamed into place "
        "only once complete."
    )
