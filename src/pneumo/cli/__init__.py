"""One module per command: parse arguments or compose Hydra, call the library, print."""
