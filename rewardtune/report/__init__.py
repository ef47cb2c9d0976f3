"""The paper's analysis made visible: statistics over sampled rewards, plots, the HTML report.

    stats.py    pure functions: best-of-N, likelihood reranking, distribution summaries, the codec ceiling
    plots.py    matplotlib (Agg) figures: reward distribution, best-of-N, reward-risk progression
    gallery.py  greedy outputs of each run on the same val images, drawn by the task's `visualize`
    html.py     `write_report(run_dirs, out_path)`: one self-contained HTML file
"""
