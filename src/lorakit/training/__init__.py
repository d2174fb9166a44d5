"""The training run: its config, the loop, evaluation, checkpoints and the models it loads."""
