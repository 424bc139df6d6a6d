"""The data a search scores trials on: a data module (``BaseDataModule``, one per ``conf/data/`` option) yields
fixed, seeded train / validation / test splits (``Splits``) with their classes, normalisation and fingerprint."""
from __future__ import annotations

from typing import Any

from ._base import BaseDataModule, Splits, check, digest
from ._stream import Streamed, feed
from .arrays import ArraysData
from .custom import CustomData
from .fashion_mnist import CLASSES, DEBIAN_ROOT, MEAN, STD, FashionMNISTData, load, locate, read_idx
from .image_folder import ImageFolderData
from .torchvision_data import TorchvisionData

__all__ = ["BaseDataModule", "Splits", "Streamed", "feed", "FashionMNISTData", "ImageFolderData", "ArraysData",
           "TorchvisionData", "CustomData",
           "build", "located", "check", "upgraded", "FROM_DATA",
           "digest", "load", "locate", "read_idx", "CLASSES", "DEBIAN_ROOT", "MEAN", "STD"]

FROM_DATA = ("num_classes", "channels")  # data.* keys that setup fills from the splits where null
LEGACY = "search.data.FashionMNISTData"  # a study config written before data options names no _target_


def upgraded(stored: Any) -> Any:
    """A study's stored ``data`` section as the engine writes it now: one written before the data options (no
    ``_target_``) was Fashion-MNIST's, with its 10 classes and 1 channel; any other section as it is."""
    if not isinstance(stored, dict) or "_target_" in stored:
        return stored
    return {"_target_": LEGACY, **stored, "num_classes": stored.get("num_classes", 10),
            "channels": stored.get("channels", 1)}


def located(path: str, *, key: str) -> Any:
    """The object a dotted ``path`` names (``package.module.name``): the longest importable module, then attributes;
    one ValueError naming ``key`` where it cannot be found."""
    import importlib

    parts = path.split(".") if isinstance(path, str) else []
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as exc:
            if exc.name and not ".".join(parts[:cut]).startswith(exc.name):
                raise ValueError(f"{key}: importing {'.'.join(parts[:cut])!r} failed ({exc})") from exc
            continue
        except Exception as exc:  # noqa: BLE001 - the user's module fails on import: its first line
            why = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"{key}: importing {'.'.join(parts[:cut])!r} failed ({type(exc).__name__}: {why})") \
                from exc
        for i, name in enumerate(parts[cut:], start=cut):
            if not hasattr(obj, name):
                raise ValueError(f"{key}: cannot import {path!r} ({'.'.join(parts[:i])} has no {name!r})")
            obj = getattr(obj, name)
        return obj
    raise ValueError(f"{key}: cannot import {path!r} (no module of that name; it must be importable: on PYTHONPATH "
                     "or in the working folder)")


def build(data_cfg: Any) -> BaseDataModule:
    """The data module of ``cfg.data``: its ``_target_`` (a ``BaseDataModule`` class) built with the other keys as
    keywords, or, where ``_target_`` names a plain function (``data=custom``), a ``CustomData`` that calls it. A key
    left ``???``, a target that cannot be imported or built, or one that is neither is one ValueError."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
    unset = [k for k, v in settings.items() if v == "???"]
    if unset:
        raise ValueError(f"data.{unset[0]}: not set; give it on the command line, e.g. data.{unset[0]}=...")
    target = settings.setdefault("_target_", LEGACY)
    cls = located(target, key="data._target_")
    if not isinstance(cls, type):
        if not callable(cls):
            raise ValueError(f"data._target_: {target!r} is neither a search.data.BaseDataModule class nor a "
                             "function returning the splits")
        settings["_target_"], settings["function"] = f"{__name__}.CustomData", target
    elif not issubclass(cls, BaseDataModule):
        raise ValueError(f"data._target_: {target!r} is not a search.data.BaseDataModule")
    try:
        return instantiate(settings, _convert_="all")
    except Exception as exc:  # the constructors' own messages name their keys
        cause = exc.__cause__ or exc
        raise ValueError(str(cause).splitlines()[0] if str(cause) else repr(cause)) from exc
