"""What training and scoring both run: checkpoints, calibration, model input, compute settings and the scoring pass."""
