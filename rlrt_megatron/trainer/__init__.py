"""The RL trainer: the loop, its configuration, metrics, checkpoint/resume and pre-emption."""
