"""Importers: other tools' models in, a spec and weights in llmspec's naming out."""
