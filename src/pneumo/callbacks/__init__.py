"""Callbacks Lightning does not ship, one per file; the training entry point adds the ones
every run needs (``pneumo.training.build.build``), the config the ones a user may change."""
