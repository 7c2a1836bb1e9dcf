"""Hugging Face Llama checkpoints (+ LoRA) to GGUF, the format the runtime serves."""
