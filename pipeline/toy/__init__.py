"""Toy drift demos (the NS-VQ paper's supplementary experiments), fast on a CPU.

Three non-stationary 2-D latent streams (streams.py: translation, expand_shrink, split);
``run_toy`` trains one quantizer method on one stream and records the dead-code fraction,
quantization error and perplexity over time (runner.py); ``python -m pipeline.toy`` runs
streams x methods and writes CSVs and plots under reports/toy/ (report.py, __main__.py;
flow.py wraps it as a Prefect flow). Everything but flow.py needs torch alone (plus
matplotlib for the figures).
"""
from .runner import ToyConfig, ToyResult, WindowUsage, run_toy
from .streams import STREAMS, sample, stream_batches

__all__ = ["STREAMS", "ToyConfig", "ToyResult", "WindowUsage", "run_toy", "sample", "stream_batches"]
