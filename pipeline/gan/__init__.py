"""Adversarial refinement (refine_gan, NSVQ's third phase): the patch discriminator, the VQGAN
losses and the training recipe."""
