"""The one capped exponential back-off of the operator: how long to wait after n failures.

Pure: no clock, no state. Every retry in the operator (a failed pass, a lost
watch, the Docker event stream, a crashing service, a failing action) asks
this function for its wait and keeps its own count of failures.
"""

from __future__ import annotations

from typing import Final

# base * 2**30 passes any cap in use; a bounded exponent keeps a long failure
# streak from overflowing the float conversion.
_MAX_EXPONENT: Final = 30


def exponential(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after ``failures`` failures in a row: 0 for none, then base, 2*base, ... up to cap."""
    if failures <= 0:
        return 0.0
    return float(min(base * 2.0 ** min(failures - 1, _MAX_EXPONENT), cap))
