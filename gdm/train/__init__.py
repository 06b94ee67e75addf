"""Training: diffusion UNet, noisy classifier and the evaluator, with exact resume."""
