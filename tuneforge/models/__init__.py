"""Loading Hugging Face models and tokenizers, the bundled default model, and tiny models for tests."""
