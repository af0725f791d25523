"""nsvq-pipeline: drift-aware vector-quantized image tokenizers.

The core (``pipeline.models``, ``pipeline.quantizers``, ``pipeline.training``) needs torch
alone; orchestration and tracking (Prefect, MLflow, DVC) live in ``stages/`` and
``pipeline/tracking.py``. Importing this package has no side effects.
"""
__version__ = "0.1.0"
