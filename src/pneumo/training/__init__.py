"""Training as a library: compose a config, check its settings once, build the DataModule,
network, LightningModule and Trainer, fit, and describe the run. Commands, tests and scripts
call it."""
