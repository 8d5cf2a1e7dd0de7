"""`discorep study`: every method and ablation over seeds, with baselines and a Markdown report."""
