"""The Hydra config tree (a package, so it ships inside the wheel: ``initialize_config_module("rlhf.conf")``)."""
