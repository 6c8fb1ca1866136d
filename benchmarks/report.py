"""Result rows -> markdown table and bar chart."""

import statistics

IMPL_ORDER = ("keras", "native", "native_compiled")


def _native_reference(rows, backend):
    """The row keras is compared with: the eager loop on torch, the jit/XLA loop elsewhere."""
    for row in rows:
        if row["backend"] == backend and row["impl"] == "native":
            return row
    return None


def paired_ratio(keras_row, native_row):
    """Median over the timed epochs of keras' epoch time ÷ the native epoch run right after it (interleaved)."""
    pairs = [k / n for k, n in zip(keras_row["step_ms_all"], native_row["step_ms_all"]) if n > 0]
    return statistics.median(pairs) if pairs else None


def ratio(rows, row):
    """The paired keras ÷ native ratio of `row` (a keras row) within its own run, else None."""
    reference = _native_reference([r for r in rows if r.get("run", 0) == row.get("run", 0)], row["backend"])
    if reference is None or row["impl"] != "keras":
        return None
    return paired_ratio(row, reference)


def markdown_table(rows):
    """One line per (backend, impl); with several runs, the median step time and every run's ratio."""
    header = (
        "| backend | impl | model | loss | batch | step ms (median of runs; spread within a run) | samples/s "
        "| compile s | peak MB | keras ÷ native per run (median of paired epochs) | threads | device | settings |\n"
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---|---|---|\n"
    )
    groups = {}
    for row in rows:
        groups.setdefault((row["backend"], row["impl"]), []).append(row)
    lines = []
    for (backend, impl), group in sorted(groups.items(), key=lambda item: (item[0][0], IMPL_ORDER.index(item[0][1]))):
        first = group[0]
        step_ms = statistics.median(row["step_ms"] for row in group)
        spread = max(row["step_ms_spread"] for row in group)
        ratios = [ratio(rows, row) for row in group]
        ratios = [value for value in ratios if value is not None]
        ratio_text = ", ".join(f"{value:.3f}" for value in ratios)
        if len(ratios) > 1:
            ratio_text += f" (median {statistics.median(ratios):.3f})"
        lines.append(
            f"| {backend} | {impl} | {first['model']} | {first['loss']} | {first['batch_size']} "
            f"| {step_ms:.3f} ± {spread:.3f} | {first['batch_size'] * 1000 / step_ms:.0f} "
            f"| {statistics.median(row['compile_s'] for row in group):.2f} "
            f"| {max(row['peak_memory_mb'] for row in group):.0f} | {ratio_text} "
            f"| {first.get('threads', '')} | {first['device']} | {first.get('settings', '')} |"
        )
    return header + "\n".join(lines) + "\n"


def bar_chart(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in rows if row.get("run", 0) == 0]  # the first run's bars
    backends = sorted({row["backend"] for row in rows})
    impls = [impl for impl in IMPL_ORDER if any(row["impl"] == impl for row in rows)]
    width = 0.8 / max(len(impls), 1)
    figure, axes = plt.subplots(figsize=(7, 4))
    for offset, impl in enumerate(impls):
        positions, heights, errors = [], [], []
        for index, backend in enumerate(backends):
            for row in rows:
                if row["backend"] == backend and row["impl"] == impl:
                    positions.append(index + (offset - (len(impls) - 1) / 2) * width)
                    heights.append(row["step_ms"])
                    errors.append(row["step_ms_spread"])
        axes.bar(positions, heights, width, yerr=errors, capsize=3, label=impl)
    axes.set_xticks(range(len(backends)), backends)
    axes.set_ylabel("ms per training step (median, bars: spread)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
