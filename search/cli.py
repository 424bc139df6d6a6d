"""The one entry-point helper every command of the engine uses (``python -m search``, ``search.pick``,
``search.report``, ``search.report.dashboard``, ``search.hardware``).

The config is composed from ``conf/`` with Hydra's compose API and every override checked first: an unknown
config option, an unknown key, a value of the wrong type or a value where a config section belongs is one line
on stderr naming the key, the value and what is allowed, with exit status 2, before anything runs. Bad input the
task itself finds (a ``ValueError``, ``FileNotFoundError`` or ``LookupError``) is one line and exit 2 as well.
Hydra's own flags (``--help``, ``--cfg job``, ``--multirun`` ...) hand the command to ``hydra.main`` unchanged.
"""
from __future__ import annotations

import difflib
import importlib
import logging.config
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, ListConfig, OmegaConf

from ._checks import BAD_INPUT, CONF

# Hydra's flags that take the next word as their value (``--cfg job``, ``-cn other``)
_VALUED_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                 "-cd", "--experimental-rerun"}
# Hydra's ``hydra/job_logging: stdout``: what a task logs goes to stdout as bare messages.
_LOGGING = {"version": 1, "formatters": {"simple": {"format": "%(message)s"}},
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "simple", "stream": "ext://sys.stdout"}},
            "root": {"level": "INFO", "handlers": ["console"]}, "disable_existing_loggers": False}


def register_full_space() -> None:
    """``space=full``: every knob of ``conf/space/knob/``, so a knob added there is in it with no other edit.
    Kept in Hydra's ConfigStore (composed like a file of ``conf/space/``); overrides work as on any space:
    ``space=full space.knobs.kmeans.bits=[3,4]``."""
    from hydra.core.config_store import ConfigStore

    knobs = sorted(p.stem for p in (CONF / "space" / "knob").glob("*.yaml"))
    ConfigStore.instance().store(group="space", name="full", node={
        "defaults": [{f"knob@knobs.{k}": k} for k in knobs] + ["_self_"], "name": "full"})


register_full_space()


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2 (bad input)."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def options(group: str) -> list[str]:
    """The options of a config group (``conf/<group>/*.yaml``)."""
    from hydra.core.config_store import ConfigStore

    folder = CONF / group.replace(".", "/")
    found = {p.stem for p in folder.glob("*.yaml")} if folder.is_dir() else set()
    stored = ConfigStore.instance().repo
    for part in group.split("/"):
        stored = stored.get(part, {}) if isinstance(stored, dict) else {}
    found |= {name.removesuffix(".yaml") for name in stored if name.endswith(".yaml")}
    return sorted(found)


def _is_group(key: str) -> bool:
    return (CONF / key.split("@")[0].replace(".", "/")).is_dir()


def _parse(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    out = []
    for text in overrides:
        try:
            out.extend(parser.parse_overrides([text]))
        except OverrideParseException as exc:
            raise ValueError(f"{text}: not a valid override ({str(exc).splitlines()[0]}); write key=value or "
                             "group=option") from exc
    return out


def _compose(overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _composition_error(exc: Exception, parsed: list[Any]) -> str:
    """Hydra's multi-line composition error as one line naming the key, the value and what is allowed."""
    text = str(exc)
    for o in parsed:
        key = o.key_or_group
        if _is_group(key) and f"'{key.replace('.', '/')}/{o.value()}'" in text:
            return f"{key}={o.value()}: no such option; available: {', '.join(options(key))}"
        if f"Could not override '{key}'" in text or f"Key '{key.rsplit('.', 1)[-1]}' is not in struct" in text \
                and f"full_key: {key}" in text:
            return _unknown_key(key, o.value())
    return text.strip().splitlines()[0]


def _unknown_key(key: str, value: Any) -> str:
    """``key`` is not in the config: name the first part of it that is not, the closest key there, and the keys."""
    try:
        node: Any = _compose([])
    except Exception:  # noqa: BLE001 - the message stays useful without the suggestion
        node = None
    parts, seen = key.split("."), []
    for part in parts:
        if not isinstance(node, DictConfig) or part not in node:
            break
        node, seen = node[part], [*seen, part]
    where = ".".join(seen)
    keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    missing = parts[len(seen)] if len(seen) < len(parts) else parts[-1]
    close = difflib.get_close_matches(missing, keys, n=1)
    prefix = f"{where}." if where else ""
    hint = f"; did you mean {prefix}{close[0]}{key[len(prefix) + len(missing):]}?" if close else ""
    listed = f"keys of {where}" if where else "top-level keys"
    return f"{key}={value}: no such key{hint} ({listed}: {', '.join(keys)}; add a new key with +{key}=...)"


def _type_error(key: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot replace ``default`` at ``key`` (None if it can)."""
    if default is None or value is None:
        return None
    if isinstance(default, DictConfig):
        if isinstance(value, dict):
            return None
        hint = [f"{g}={value}" for g in ("experiment", "model", "data", "space", "hardware", "sampler")
                if str(value) in options(g)]
        if "name" in default:
            hint.append(f"{key}.name={value}")
        return (f"{key}={value}: {key} is a config section (keys: {', '.join(map(str, default.keys()))}), not a "
                f"value" + (f"; did you mean {' or '.join(hint)}?" if hint else ""))
    if isinstance(default, ListConfig):
        return None if isinstance(value, (list, tuple)) else f"{key}={value}: must be a list, e.g. {key}=[a,b]"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"{key}={value}: must be true or false (default {default})"
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{key}={value}: must be an integer (default {default})"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"{key}={value}: must be a number (default {default})"
    return None


def _searched_list(key: str) -> bool:
    """Whether ``key`` takes a list of its values, searched per trial (``distill.temperature=[2,4,8]``:
    ``Distillation.SEARCHABLE``)."""
    from .pipeline import Distillation

    section, _, name = key.rpartition(".")
    return section == "distill" and name in Distillation.SEARCHABLE


def _takes_text(base: DictConfig, key: str) -> bool:
    """Whether the constructor ``key``'s section names (its ``_target_``) declares ``key`` may be a string as well
    as what its default is: ``hardware.host_lock`` is true, false or a lock file path (``bool | str``)."""
    import inspect

    from hydra.utils import get_object

    section, _, name = key.rpartition(".")
    target = OmegaConf.select(base, f"{section}._target_", default=None) if section else None
    try:
        parameter = inspect.signature(get_object(target)).parameters.get(name) if target else None
    except Exception:  # noqa: BLE001 - a target that does not import is reported when it is built
        return False
    annotation = "" if parameter is None else str(parameter.annotation)  # a string under postponed evaluation
    return "str" in annotation.replace(" ", "").split("|")


def compose_checked(overrides: Sequence[str]) -> DictConfig:
    """The config of ``overrides``; a ValueError with one line naming the key, the value and what is allowed for
    an unknown option or key, a wrong type, or a value where a config section belongs."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    parsed = _parse(overrides)
    try:
        cfg = _compose(overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ValueError(_composition_error(exc, parsed)) from exc
    groups = [o.input_line for o in parsed if _is_group(o.key_or_group)]
    values = [o for o in parsed if not _is_group(o.key_or_group) and not o.is_delete() and not o.is_add()
              and not o.key_or_group.startswith("hydra.")]
    if values:
        base = _compose(groups)
        for o in values:
            default = OmegaConf.select(base, o.key_or_group, default=None)
            value = o.value()
            if isinstance(value, (list, tuple)) and _searched_list(o.key_or_group) and value:
                why = next(filter(None, (_type_error(o.key_or_group, v, default) for v in value)), None)
            else:
                why = _type_error(o.key_or_group, value, default)
            if why and isinstance(o.value(), str) and _takes_text(base, o.key_or_group):
                why = None
            if why:
                raise ValueError(why)
    return cfg


def entry(task: Callable[..., Any] | str, *, actions: Sequence[str] = (), defaults: Sequence[str] = (),
          argv: Sequence[str] | None = None) -> None:
    """Compose the config from the command line (``argv``, default ``sys.argv[1:]``) and run ``task(cfg)``, or
    ``task(action, cfg)`` when the command takes a first word from ``actions``; bad input: one line, exit 2.
    ``defaults`` are overrides this command implies unless the command line sets the same key. ``task`` may be
    named (``"search.run:run"``): it is imported once the command line has passed, so a typo is answered in half a
    second rather than after PyTorch and ONNX Runtime have loaded (four seconds)."""
    args = list(sys.argv[1:] if argv is None else argv)
    action = None
    if actions:
        action = args.pop(0) if args else ""
        if action not in actions:
            prog = Path(sys.argv[0]).parent.name if argv is None else "search"
            fail(f"usage: python -m search.{prog} {{{'|'.join(actions)}}} [overrides]; the first word must be one of "
                 f"{list(actions)}, got {action!r}")
    given = {a.split("=", 1)[0].lstrip("+~") for a in args}
    args = [d for d in defaults if d.split("=", 1)[0] not in given] + args
    flag_values = {i + 1 for i, a in enumerate(args) if a in _VALUED_FLAGS}  # `--cfg job`: "job" is no override
    overrides = [a for i, a in enumerate(args) if not a.startswith("-") and i not in flag_values]
    try:
        cfg = compose_checked(_not_swept(overrides))  # a sweep's values are Hydra's to expand, job by job
    except ValueError as exc:
        fail(str(exc))
    if isinstance(task, str):
        module, _, name = task.partition(":")
        task = getattr(importlib.import_module(module), name)
    run = (lambda c: task(action, c)) if actions else task
    if len(overrides) < len(args):  # Hydra's own flags: its app, its behaviour
        _hydra_main(run, [a for a in args])
        return
    logging.config.dictConfig(_LOGGING)
    try:
        run(cfg)
    except BAD_INPUT as exc:
        fail(str(exc))


def _not_swept(overrides: Sequence[str]) -> list[str]:
    """``overrides`` less the sweeps of a ``--multirun`` (``sampler=tpe,nsga2``, ``range(...)``): what can be
    checked before Hydra runs the jobs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 - compose_checked says what is wrong with it, in one line
        return list(overrides)
    return [o for o, p in zip(overrides, parsed) if not p.is_sweep_override()]


def sweep_study_name(name: str, overrides: Sequence[str]) -> str:
    """The study of one job of a ``--multirun`` sweep: ``name`` and the job's overrides (``fashion-mnist-cnn-
    sampler_nsga2``) less the keys a resume may change (``study.RESUMABLE``: run length, outputs), every character but letters, digits, ``.``, ``_`` and ``-`` read ``_``: a plain folder name
    that a later command line can give back as ``study.name=...`` or in ``report.studies=[...]``."""
    import re

    from .loop.study import RESUMABLE

    def setting(o: str) -> bool:  # not how long it runs or where it writes (a rerun with more trials resumes it)
        key = o.split("=", 1)[0].lstrip("+~")
        return not any(key == k or key.startswith(f"{k}.") for k in RESUMABLE)

    kept = [o for o in overrides if setting(o)]
    return "-".join([name, *(re.sub(r"[^A-Za-z0-9._-]", "_", o) for o in sorted(kept))])


def _job_study(cfg: DictConfig) -> None:
    """In a ``--multirun`` sweep, each job searches its own study (``sweep_study_name``), unless the command names
    ``study.name`` or sets ``study.share=true``: else every job would resume one study with another setting."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    hc = HydraConfig.get()
    task = list(hc.overrides.task)
    named = any(o.split("=", 1)[0].lstrip("+~") == "study.name" for o in task)
    if hc.mode != RunMode.MULTIRUN or named or cfg.study.get("share"):
        return
    with open_dict(cfg):
        cfg.study.name = sweep_study_name(str(cfg.study.name), task)


def _hydra_main(run: Callable[[DictConfig], Any], args: list[str]) -> None:
    import hydra

    def app(cfg: DictConfig) -> None:
        try:
            _job_study(cfg)
            run(cfg)
        except BAD_INPUT as exc:
            fail(str(exc))

    saved = sys.argv
    sys.argv = [saved[0], *args]  # hydra.main reads the command line from sys.argv; restored below
    try:
        hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")(app)()
    finally:
        sys.argv = saved
