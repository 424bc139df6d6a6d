"""Real text to classify, on any Debian machine: the short descriptions of Debian's packages (``apt-cache
dumpavail``: every package of the archive the machine's apt lists know, about 63,000 on bookworm; the installed
ones of ``/var/lib/dpkg/status`` where the lists are empty), each labelled by its archive section. Bytes are the
tokens (id = the byte's value, 0 pads), so no tokenizer is needed."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

SECTIONS = ("libdevel", "perl", "python", "utils")  # four sections of comparable size, each with its own wording


def packages() -> list[tuple[str, str]]:
    """(section, short description) of every package with both."""
    try:
        text = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    if text.count("\nPackage: ") < 1000:
        text = Path("/var/lib/dpkg/status").read_text(errors="replace")
    out = []
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if "Section" in fields and "Description" in fields:
            out.append((fields["Section"].rsplit("/", 1)[-1], fields["Description"]))
    return out


def write(path: Path, *, per_class: int = 1500, length: int = 48, seed: int = 0) -> Path:
    """An .npz for ``data=arrays``: ``train_x`` (N x ``length`` int64 byte ids), ``train_y``, ``classes``; the
    validation and test splits are carved by the data module."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    by_section = {s: sorted({d for sec, d in packages() if sec == s}) for s in SECTIONS}
    for label, section in enumerate(SECTIONS):
        texts = by_section[section]
        for i in rng.permutation(len(texts))[:per_class]:
            ids = np.frombuffer(texts[i].lower().encode()[:length], np.uint8).astype(np.int64)
            rows.append(np.pad(ids, (0, length - len(ids))))
            labels.append(label)
    order = rng.permutation(len(rows))
    np.savez(path, train_x=np.stack(rows)[order], train_y=np.asarray(labels, np.int64)[order],
             classes=np.asarray(SECTIONS))
    return path
