"""pneumo-eval's report: figures with intervals, flow between splits, the threshold's origin,
the model card, plots and comparisons."""
