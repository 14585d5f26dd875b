"""Stage 2, estimates from a spec alone (no torch): parameters, memory, FLOPs and training
time (``llmspec estimate``), and the memory checks that build and train make before they
allocate anything."""
