"""Benchmarks: the tutor against raw llama-cpp-python and openai-whisper, side by side."""
