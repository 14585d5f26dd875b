"""Hugging Face model directories: one weight table and one config translation per family."""
