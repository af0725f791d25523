"""Networks: the VQ-VAE autoencoder (autoencoder.py) and saving/loading it (io.py)."""
