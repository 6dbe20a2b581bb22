"""The build timeline as a self-contained SVG (no plotting library: a few hundred rectangles).

One panel per policy on a shared time axis; one row per node, as tall as the node has cores;
each build is a bar spanning the cores it held (lowest free cores first), coloured by its
4-core duration, with a tooltip. A dashed line marks the lower bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from .timeline import Build
from .workload import NodeSpec

PX_PER_CORE = 3
MIN_ROW = 14
WIDTH = 1400
LEFT = 110
RIGHT = 20
PANEL_GAP = 46


def _colour(d4: float) -> str:
    """Short builds pale blue, hour-long ones deep red (log scale, 10 s … 8 h)."""
    x = min(1.0, max(0.0, math.log10(max(d4, 10.0)) - 1.0) / (math.log10(28800.0) - 1.0))
    hue = 210 - 210 * x
    return f"hsl({hue:.0f},70%,{70 - 25 * x:.0f}%)"


def _lanes(builds: list[Build], cores: int) -> list[tuple[Build, list[tuple[int, int]]]]:
    """Give each build concrete cores of its node: [(first core, count)] runs, lowest first."""
    free_at = [0.0] * max(cores, max((b.cores for b in builds), default=1))
    out = []
    for b in sorted(builds, key=lambda b: (b.start, -b.cores, b.name)):
        idle = [i for i, t in enumerate(free_at) if t <= b.start + 1e-6][: b.cores]
        if len(idle) < b.cores:  # rounding at the same instant: take the soonest free ones
            idle = sorted(range(len(free_at)), key=lambda i: (free_at[i], i))[: b.cores]
        for i in idle:
            free_at[i] = b.end
        runs: list[tuple[int, int]] = []
        for i in sorted(idle):
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((i, 1))
        out.append((b, runs))
    return out


def _ticks(span: float) -> tuple[float, str]:
    """A tick step giving 6–15 ticks, and the unit to label them in."""
    for step in (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200):
        if span / step <= 15:
            return float(step), "h" if step >= 3600 else "min"
    return 86400.0, "h"


def timeline_svg(panels: Sequence[tuple[str, list[Build]]], fleet: list[NodeSpec],
                 durations: dict[str, float], lower_bound: float, title: str) -> str:
    span = max([lower_bound] + [b.end for _, builds in panels for b in builds]) or 1.0
    scale = (WIDTH - LEFT - RIGHT) / span
    rows = [max(MIN_ROW, n.cores * PX_PER_CORE) for n in fleet]
    panel_h = sum(rows) + 4 * len(rows)
    height = 40 + len(panels) * (panel_h + PANEL_GAP) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{LEFT}" y="20" font-size="14">{escape(title)}</text>']
    step, unit = _ticks(span)
    y = 40
    for label, builds in panels:
        out.append(f'<text x="{LEFT}" y="{y + 12}" font-weight="bold">{escape(label)}</text>')
        y += 18
        top = y
        for node, row in zip(fleet, rows):
            name = f"{node.node_id} {node.cores}c{' sweeper' if node.sweeper else ''}"
            out.append(f'<text x="4" y="{y + row / 2 + 4:.0f}">{escape(name)}</text>')
            out.append(f'<rect x="{LEFT}" y="{y}" width="{WIDTH - LEFT - RIGHT}" '
                       f'height="{row}" fill="#f4f4f4" stroke="#ccc"/>')
            mine = [b for b in builds if b.node_id == node.node_id]
            unit_h = row / max(node.cores, 1)
            for b, runs in _lanes(mine, node.cores):
                tip = (f"{b.name}: {b.cores} cores, {b.start:.0f}–{b.end:.0f} s "
                       f"({b.end - b.start:.0f} s)")
                x, w = LEFT + b.start * scale, max(0.5, (b.end - b.start) * scale)
                for first, count in runs:
                    out.append(f'<rect x="{x:.1f}" y="{y + first * unit_h:.1f}" width="{w:.1f}" '
                               f'height="{count * unit_h:.1f}" fill="{_colour(durations[b.name])}" '
                               f'stroke="#fff" stroke-width="0.3"><title>{escape(tip)}'
                               f'</title></rect>')
            y += row + 4
        lb_x = LEFT + lower_bound * scale
        out.append(f'<line x1="{lb_x:.1f}" y1="{top - 4}" x2="{lb_x:.1f}" y2="{y}" '
                   f'stroke="#000" stroke-dasharray="4 3"><title>lower bound '
                   f'{lower_bound:.0f} s</title></line>')
        t = 0.0
        while t <= span:
            x = LEFT + t * scale
            label_t = t / 3600 if unit == "h" else t / 60
            out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#000"/>'
                       f'<text x="{x:.1f}" y="{y + 15}" text-anchor="middle">'
                       f'{label_t:g}{unit}</text>')
            t += step
        y += PANEL_GAP - 18
    out.append(f'<text x="{LEFT}" y="{height - 8}">bars: one build over the cores it held; '
               'colour: its 4-core duration (blue short … red hours); dashed: lower bound</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
