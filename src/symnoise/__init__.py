"""symnoise: instruction fine-tuning with noisy embeddings."""
