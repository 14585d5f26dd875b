"""Stage 6, export: a built model to a verified artifact. The pipeline, the graph wrappers with
the artifact's contracts, the parity gate, quantization, the model card, signing, and the graph
rewrites (``rewrites/``)."""
