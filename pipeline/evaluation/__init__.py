"""What the evaluate stage measures: the offline metric networks (nets.py), the metrics
(metrics.py), a tokenizer's reconstruction and the prior's generation metrics
(reconstruction.py), and the figures (plots.py)."""
