"""Risk score of publishing a cycle: one number and the reasons behind it.

Pure so that `verify`, the dashboard and the simulator agree on what "safe" means.
"""

from __future__ import annotations

FAILED_POINTS = 20
BLOCKED_POINTS = 5
UNMET_RDEP_POINTS = 15
CRITICAL_FLOOR = 50
MAX_SCORE = 100
#: A score below this is safe to finalize (the seed's rule of thumb).
SAFE_BELOW = 15


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def risk_score(failed: list[str], blocked: list[str], unmet_rdeps: list[str],
               critical_failed: list[str]) -> tuple[int, list[str]]:
    """Score 0–100 (under :data:`SAFE_BELOW` = 15 is safe) and one human reason per term.

    Formula (each list is de-duplicated first)::

        score = 20·|failed| + 5·|blocked| + 15·|unmet_rdeps|
        if critical_failed (critical packages failed or blocked): score = max(score, 50)
        score = min(score, 100)

    A failed package is worse than a blocked one (it is the cause; blocked ones follow it); an
    unmet runtime dependency breaks installs of what *was* built; a critical package (toolchain,
    libc, the profile's @system) missing makes the release unsafe whatever else is fine.
    """
    failed, blocked = sorted(set(failed)), sorted(set(blocked))
    unmet, critical = sorted(set(unmet_rdeps)), sorted(set(critical_failed))
    score = 0
    reasons: list[str] = []
    for items, points, label in ((failed, FAILED_POINTS, "failed"),
                                 (blocked, BLOCKED_POINTS, "blocked by a failed dependency"),
                                 (unmet, UNMET_RDEP_POINTS, "unmet runtime dependencies")):
        if items:
            score += points * len(items)
            reasons.append(f"{len(items)} {label} (+{points} each): {_names(items)}")
    if critical:
        if score < CRITICAL_FLOOR:
            score = CRITICAL_FLOOR
        reasons.append(f"critical packages missing (score ≥ {CRITICAL_FLOOR}): {_names(critical)}")
    return min(score, MAX_SCORE), reasons
