"""The tutor's runtime: llama.cpp language model, Whisper speech, tutor modes."""
