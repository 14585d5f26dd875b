"""Looking at a model without changing it: estimates from a spec, evaluation on a corpus,
attention maps, and ``verify`` for artifacts."""
