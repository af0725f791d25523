"""The transformer prior over token grids (train_prior): the GPT model and its training,
sampling and likelihood."""
