"""nsvq-pipeline: drift-aware vector-quantized image tokenizers.

The core (``pipeline.models``, ``quantizers``, ``kernels``, ``training``, ``gan``, ``prior``
and the recipes) needs torch alone; orchestration and tracking (Prefect, MLflow, DVC) live in
``stages/``, ``pipeline/tracking.py`` and the studies (``pipeline.study``, ``pipeline.toy``).
The README's "Architecture" section maps every module. Importing this package has no side
effects.
"""
__version__ = "0.1.0"
