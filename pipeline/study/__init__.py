"""Studies over the pipeline: Prefect flows that queue DVC experiments and gather their
metrics into one table (DESIGN: "Sweeps ... are a Prefect flow that queues and runs DVC
experiments and gathers their metrics into one table").

- budget.py: the params every cell shares (default: a small train_vq budget);
- cells.py: one cell = one ``dvc exp run --temp -n study-<method>-k<K> -S ...``;
- table.py: ``dvc exp show --json`` -> reports/study/methods.csv and methods.md;
- flow.py: the ``methods_study`` flow; __main__.py: ``python -m pipeline.study``.
"""
