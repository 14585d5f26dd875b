"""Stage 5, training: the data and the objectives' collators (numpy only, which evaluation also
uses), the settings, the loop, its optimizer and precision, checkpoints, progress reporting and
the torchrun cluster; and fine-tuning with LoRA (instruction data, the adapters, the run)."""
