"""A run's config: composed as ``pneumo-train`` composes it, read as plain data, and objects
built from its nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from pneumo.errors import PneumoError


def compose_config(overrides: list[str], output_dir: str | Path, config_name: str = "train") -> DictConfig:
    """Compose a config in code exactly as ``pneumo-train`` would, writing into ``output_dir``.

    For notebooks, tests and benchmarks: ``train(compose_config(["experiment=quickstart"], "runs/a"))``.
    """
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pneumo.conf", version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra  # the task function never sees it either
    return cfg


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every non-null entry of a config group such as ``callbacks``."""
    return [instantiate_node(c) for c in (group or {}).values() if c is not None]


def instantiate_node(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting a ``PneumoError`` from a constructor through as itself
    (Hydra would wrap it in a many-line ``InstantiationException``)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, PneumoError):
            raise err.__cause__ from None
        raise


def plain(node: DictConfig) -> dict[str, Any]:
    """A config node as resolved plain data."""
    plain = OmegaConf.to_container(node, resolve=True)
    assert isinstance(plain, dict)  # a DictConfig's container is a dict
    return {str(k): v for k, v in plain.items()}
