"""Training and inference: the LightningModule, optimiser, losses, callbacks, loggers, test-time
wrappers and the train / evaluate / predict pipeline behind the entry scripts."""
