"""Process lifetime: children that must not outlive the process that started them."""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> bool:
    """Have the kernel kill this process when its parent ends (Linux: PR_SET_PDEATHSIG);
    False where that is not available (the process then outlives a killed parent)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc
        return False
    return True
