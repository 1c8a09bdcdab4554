"""docs/performance.svg from bench/results.json: one bar per figure, how many times better
than its baseline (value/baseline, inverted where lower is better), on a log scale; bars
left of the 1x line are worse than the baseline. Plain SVG, no plotting library. Also
prints the figures as the markdown table docs/performance.md holds.

    python bench/plot_results.py [results.json] [out.svg]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
ROW_PX, LABEL_PX, PLOT_PX, PAD_PX = 22, 330, 420, 12
DECADES = (-2, 3)            # 0.01x .. 1000x


def better_factor(f: dict) -> float:
    return f["ratio"] if f["better"] == "higher" else 1 / f["ratio"]


def x_of(factor: float) -> float:
    lo, hi = DECADES
    d = min(max(math.log10(factor), lo), hi)
    return LABEL_PX + (d - lo) / (hi - lo) * PLOT_PX


def render(figures: dict[str, dict], title: str) -> str:
    height = PAD_PX * 6 + ROW_PX * (len(figures) + 1)
    width = LABEL_PX + PLOT_PX + 90
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{PAD_PX}" y="{PAD_PX + 10}" font-weight="bold">{escape(title)}</text>']
    top = PAD_PX * 4 + 6
    for d in range(DECADES[0], DECADES[1] + 1):
        x = x_of(10.0 ** d)
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - PAD_PX}" '
                   f'stroke="{"black" if d == 0 else "#ddd"}"/>')
        out.append(f'<text x="{x:.1f}" y="{top - 8}" text-anchor="middle" fill="#555">'
                   f'{10.0 ** d:g}x</text>')
    for i, (name, f) in enumerate(figures.items()):
        y = top + ROW_PX * i + 4
        factor = better_factor(f)
        x0, x1 = sorted((x_of(1.0), x_of(factor)))
        colour = "#2a7" if factor >= 1 else "#c44"
        out.append(f'<text x="{LABEL_PX - 8}" y="{y + 12}" text-anchor="end">'
                   f'{escape(name)}</text>')
        out.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" '
                   f'height="{ROW_PX - 8}" fill="{colour}"/>')
        out.append(f'<text x="{LABEL_PX + PLOT_PX + 6}" y="{y + 12}">{factor:.3g}x</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def markdown_table(figures: dict[str, dict]) -> str:
    rows = ["| figure | value | baseline | ratio | better |", "|---|---:|---:|---:|---|"]
    for name, f in figures.items():
        rows.append(f"| `{name}` | {f['value']:.4g} {f['unit']} | {f['baseline']:.4g} "
                    f"{f['unit']} | {f['ratio']:.3g}x | {f['better']} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else ROOT / "bench" / "results.json"
    dst = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "performance.svg"
    results = json.loads(src.read_text())
    m = results["machine"]
    title = (f"times better than the baseline ({m['cpus']} CPUs, {m['processor']}, "
             f"Python {m['python']}, {m['date']})")
    dst.write_text(render(results["figures"], title))
    print(markdown_table(results["figures"]))
    print(f"{len(results['figures'])} figures -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
