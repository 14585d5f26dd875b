"""Stage 5, training: the corpora and their collators (numpy only, which evaluation also uses),
the objectives, the loop, checkpoints and the torchrun cluster."""
