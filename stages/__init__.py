"""One module per DVC stage: read params, run the work as a Prefect flow, write outputs."""
