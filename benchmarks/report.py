"""Result rows -> markdown table and bar chart."""

IMPL_ORDER = ("keras", "native", "native_compiled")


def _native_reference(rows, backend):
    """The row keras is compared with: the eager loop on torch, the jit/XLA loop elsewhere."""
    for row in rows:
        if row["backend"] == backend and row["impl"] == "native":
            return row
    return None


def ratio(rows, row):
    reference = _native_reference(rows, row["backend"])
    if reference is None or row["impl"] != "keras":
        return None
    return row["step_ms"] / reference["step_ms"]


def host_overhead_ms(rows, row):
    """keras' step time minus the native loop's: the per-step cost of everything around the model."""
    reference = _native_reference(rows, row["backend"])
    if reference is None or row["impl"] != "keras":
        return None
    return row["step_ms"] - reference["step_ms"]


def markdown_table(rows):
    header = (
        "| backend | impl | model | loss | batch | step ms (median ± spread) | samples/s "
        "| compile s | peak MB | keras / native | host ms/step (keras − native) | threads | device | settings |\n"
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|\n"
    )
    lines = []
    for row in sorted(rows, key=lambda r: (r["backend"], IMPL_ORDER.index(r["impl"]))):
        keras_ratio, overhead = ratio(rows, row), host_overhead_ms(rows, row)
        lines.append(
            f"| {row['backend']} | {row['impl']} | {row['model']} | {row['loss']} | {row['batch_size']} "
            f"| {row['step_ms']:.3f} ± {row['step_ms_spread']:.3f} | {row['samples_per_s']:.0f} "
            f"| {row['compile_s']:.2f} | {row['peak_memory_mb']:.0f} "
            f"| {'' if keras_ratio is None else f'{keras_ratio:.3f}'} "
            f"| {'' if overhead is None else f'{overhead:+.3f}'} "
            f"| {row.get('threads', '')} | {row['device']} | {row.get('settings', '')} |"
        )
    return header + "\n".join(lines) + "\n"


def bar_chart(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
