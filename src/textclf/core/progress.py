"""Progress bars for the long loops (tokenizing, the teacher's fits, training epochs).

A live bar with rate and ETA when stderr is a terminal; nothing at all otherwise (CI logs,
`dvc repro > log`), where the stages print their own one-line summaries: tqdm's `disable=None`
decides by `isatty()` on the stream the bar would draw on.
"""

from __future__ import annotations

import sys
from typing import Any


def progress(total: int, desc: str, unit: str, shown: bool = True) -> Any:
    """A tqdm bar over ``total`` ``unit``s; advance it with ``.update(n)``, close it (or use it
    as a context manager) when done. ``shown`` False (e.g. a non-zero DDP rank) hides it."""
    from tqdm import tqdm

    # The stream is looked up per call, so a caller's redirected stderr is the one tested.
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, mininterval=1.0,
                dynamic_ncols=True, file=sys.stderr, leave=False,
                disable=None if shown else True)
