"""Bar charts drawn on the server as SVG: no script, no chart library, readable without colour
(each bar carries its count as a tooltip, and the table beside it the totals)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

from outbox.console.activity import Minute

WIDTH, HEIGHT, PAD = 600, 120, 18


def bars(
    minutes: Sequence[Minute], series: Sequence[str], *, label: str, colours: Sequence[str]
) -> Markup:
    """One bar per minute, ``series`` (fields of :class:`Minute`) stacked, oldest on the left."""
    totals = [sum(getattr(m, name) for name in series) for m in minutes]
    top = max(totals, default=0) or 1
    step = WIDTH / max(len(minutes), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT + PAD}" role="img" '
        f'aria-label="{escape(label)}" preserveAspectRatio="none">',
        f'<line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" class="axis"/>',
        f'<text x="0" y="{HEIGHT + PAD - 4}" class="tick">-{len(minutes)}m</text>',
        f'<text x="{WIDTH}" y="{HEIGHT + PAD - 4}" class="tick" text-anchor="end">now</text>',
    ]
    for i, minute in enumerate(minutes):
        y = float(HEIGHT)
        counts = ", ".join(f"{getattr(minute, name):,} {name}" for name in series)
        parts.append(f"<g><title>{minute.start:%H:%M} UTC: {escape(counts)}</title>")
        for name, colour in zip(series, colours, strict=True):
            value = getattr(minute, name)
            if not value:
                continue
            height = HEIGHT * value / top
            y -= height
            parts.append(
                f'<rect x="{i * step + 0.5:.1f}" y="{y:.1f}" width="{max(step - 1, 1):.1f}" '
                f'height="{height:.1f}" fill="{colour}"/>'
            )
        parts.append("</g>")
    # the scale last, over the bars, so a tall bar never hides it
    parts.append(f'<text x="4" y="12" class="tick scale">{top:,}/min</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
