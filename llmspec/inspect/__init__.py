"""Stage 7, looking at a model without changing it: ``verify`` for artifacts (its file checks
and its graph properties), evaluation on a corpus, attention maps. Estimates from a spec alone
come earlier, in :mod:`llmspec.estimates`, because build and train check memory with them."""
