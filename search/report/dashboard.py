"""``python -m search.report.dashboard [overrides]``: optuna-dashboard, live, on the storage of a study.

The same overrides as the search find the study (``experiment=``, ``study.name=``, ``results_dir=``,
``study.storage=``). It listens on ``dashboard.host`` (127.0.0.1: this machine only) and ``dashboard.port``
(0 = any free port), prints the URL of the study's page, and stops cleanly on Ctrl-C or SIGTERM.

The objectives appear under the study's metric names, which carry their units (``accuracy`` as a fraction,
``size_bytes``, ``latency_ms``); a study without a dashboard note gets one that spells out units, directions,
the cost model and the hypervolume reference point.
"""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from omegaconf import DictConfig

from ..cli import entry

if TYPE_CHECKING:  # imported where used: a mistyped override is answered before PyTorch loads (search/cli.py)
    import optuna

__all__ = ["objectives_note", "serve"]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass  # one line per request would bury the URL


def objectives_note(study: optuna.Study) -> str:
    """Markdown for the dashboard's study note: what each objective is, in which unit (from its class)."""
    from objectives import objective_class

    from ..results.front import MARGIN

    cost = study.user_attrs.get("cost_model") or {}
    device = ", ".join(f"{k} {v}" for k, v in cost.items()) or "see the study's config.yaml"
    rows = []
    for name in study.metric_names or []:
        spec = objective_class(name)
        what = " ".join((spec.__doc__ or "").split("\n\n")[0].split())
        rows.append(f"| {name} | {spec.unit} | {spec.direction} | {what} |")
    return "\n".join([
        "## Objectives", "", "| objective | unit | direction | what |", "|---|---|---|---|", *rows, "",
        f"Latency: {device}.", "",
        f"Hypervolume reference point (report.html): {MARGIN:g} x the uncompressed baseline's value of each objective "
        "measured against it (size, latency, ...), 0 for accuracy. Written by `python -m search.report.dashboard`.",
    ])


def _add_note(study: optuna.Study) -> None:
    from optuna_dashboard import get_note, save_note

    if not get_note(study).strip():
        save_note(study, objectives_note(study))


def _address(cfg: DictConfig) -> tuple[str, int]:
    d = cfg.get("dashboard") or {}
    host, port = d.get("host", "127.0.0.1"), d.get("port", 8080)
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f"dashboard.host must be a host name or IP address such as 127.0.0.1, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"dashboard.port must be an integer in [0, 65535] (0 = any free port), got {port!r}")
    return host, port


def serve(cfg: DictConfig, *, say: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C or SIGTERM; every input is checked before the port is opened."""
    from ..storage._optuna import study_id
    from .data import locate, plain_name

    host, port = _address(cfg)
    name = plain_name(cfg.study.name, "study.name")
    study, url = locate(name, results_dir=cfg.results_dir, storage=cfg.study.storage or None)
    from optuna_dashboard import wsgi

    from ..storage.backends import backend

    try:
        httpd = make_server(host, port, wsgi(backend(url)), server_class=_Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise ValueError(f"dashboard.host/port: cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    _add_note(study)
    shown = f"[{host}]" if ":" in host else host
    say(f"optuna-dashboard for study {name!r} ({url}):")
    say(f"  http://{shown}:{httpd.server_port}/dashboard/studies/{study_id(url, name)}")
    say("Ctrl-C (or SIGTERM) stops it.")
    sys.stdout.flush()
    # Ctrl-C and SIGTERM both shut the server down from another thread (shutdown() waits for
    # serve_forever to return). Installed explicitly: a process started with SIGINT ignored (as some
    # parents do) would otherwise never see Ctrl-C.
    def stop(*_: object) -> None:
        threading.Thread(target=httpd.shutdown).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        httpd.server_close()
    say("dashboard stopped")


def main() -> None:
    entry(serve)


if __name__ == "__main__":
    main()
