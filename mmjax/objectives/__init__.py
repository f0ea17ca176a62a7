"""Training objectives for vision-language pre-training (contrastive, MLM, captioning)."""
