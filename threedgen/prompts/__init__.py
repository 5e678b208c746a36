"""Prompt processing: view-dependent prompts, negative prompts and the embedding cache."""
