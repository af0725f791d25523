"""The papers' claims tested on the demo data (README, "Do the papers' claims hold here?").

- specs.py: each claim's grid (methods, K, arms, code dims) and the budget its cells share;
- flow.py: the ``claim_study`` flow (the methods study's cells and waves, pipeline/study);
- report.py: reports/claims/<claim>/{cells,summary}.csv and the table in <claim>.md;
- __main__.py: ``python -m pipeline.claims list | run <claim>``.
"""
