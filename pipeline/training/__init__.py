"""The one training loop every training stage uses (pretrain, train_vq, refine_gan, train_prior),
split by concern:

- ``setup.py``: ``setup_training``, the set-up every training stage shares (device, model on it,
  optimizer, batches, Trainer) from its params section, in one call;
- ``loop.py``: ``Trainer``, the loop (metrics on the device, progress, checkpoints, resume);
- ``checkpoint.py``: checkpoint files (fingerprint, RNG states, atomic writes);
- ``batches.py``: ``BatchSource``, batches (random crop + flip) as a pure function of (seed, step,
  rank), from the device or from DataLoader workers reading the prepared shards;
- ``device.py``: device choice, precision (autocast), host-to-device copies, torch.compile;
- ``optim.py``: the optimizer step and Adam from params.

Needs torch alone (tqdm for the progress bar when installed).
"""
