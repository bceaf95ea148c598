"""The fabric benchmark as a PNG: bus bandwidth against message size, one panel per op."""

from __future__ import annotations

from pathlib import Path


def plot_busbw(timings: list[dict], path: Path, title: str) -> Path:
    """Write the plot atomically to ``path`` (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = list(dict.fromkeys(t["op"] for t in timings))
    fig, axes = plt.subplots(1, len(ops), figsize=(4.5 * len(ops), 3.8), squeeze=False, sharey=True)
    for ax, op in zip(axes[0], ops):
        for scope in dict.fromkeys(t["scope"] for t in timings):
            rows = [t for t in timings if t["op"] == op and t["scope"] == scope]
            ax.plot([r["bytes"] for r in rows], [r["busbw_gbs"] for r in rows], marker="o", label=scope)
            expected = next((r["expected_busbw_gbs"] for r in rows if r.get("expected_busbw_gbs")), None)
            if expected:
                ax.axhline(expected, linestyle="--", linewidth=0.8, color=ax.lines[-1].get_color())
        ax.set_xscale("log", base=2)
        ax.set_title(op)
        ax.set_xlabel("message size (bytes)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("busbw (GB/s); dashed: expected")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
