"""Image folders for ``data=image_folder`` from data sets this machine has, as a user would lay them out.

    python3 -m uv run --locked python benchmarks/data/image_folders.py fashion-mnist DIR [--limit N]
    python3 -m uv run --locked python benchmarks/data/image_folders.py emoji DIR [--size 32]

``fashion-mnist``: Fashion-MNIST (Debian's ``dataset-fashion-mnist``) written out as PNG files,
``DIR/train/<class>/<index>.png`` (60,000) and ``DIR/test/<class>/<index>.png`` (10,000), the same pixels as the
idx files; class folders named ``0-T-shirt_top`` ... ``9-Ankle_boot`` so that sorted they keep the labels' order.
``--limit N`` writes the first N training and N // 6 test images only (small folders for tests and benchmarks).

``emoji``: a colour set of 9 classes: every fully-qualified emoji of Unicode's ``emoji-test.txt`` (Debian's
``unicode-data``) without a skin-tone modifier, drawn with Google's Noto Color Emoji font (Debian's
``fonts-noto-color-emoji``) at its 109-pixel bitmap size on white and resized to ``--size`` (bilinear), filed under
its Unicode group: ``DIR/train/<group>/<codepoints>.png``, 1,870 RGB images (Activities 85 ... People & Body 363).
No split folders beyond ``train``: the engine carves validation and test with its seed. The groups are Unicode's
own labels, not ours, and the task is hard enough to leave room for compression to cost accuracy.

Both write into a temporary folder first and rename it into place: a folder is complete or absent.
"""
from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
SKIN_TONES = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}
ENTRY = re.compile(r"^([0-9A-F ]+?)\s*;\s*fully-qualified\s*#")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def _into_place(target: Path, write) -> Path:
    """``write(tmp)`` fills a temporary folder beside ``target``, then it is renamed to ``target``."""
    if target.exists():
        raise SystemExit(f"{target} exists; give a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(target)
    return target


def fashion_mnist(target: Path, limit: int | None = None) -> Path:
    """Fashion-MNIST's train and test images as PNG files in class folders (``limit``: the first N of train)."""
    from search.data import CLASSES, DEBIAN_ROOT, locate, read_idx
    from search.data.fashion_mnist import FILES

    folder = locate(DEBIAN_ROOT, None)

    def write(tmp: Path) -> None:
        for split, n in (("train", limit), ("test", None if limit is None else max(1, limit // 6))):
            images = read_idx(folder / FILES[f"{split}_images"])[:n]
            labels = read_idx(folder / FILES[f"{split}_labels"])[:n]
            for label, name in enumerate(CLASSES):
                (tmp / split / f"{label}-{_slug(name)}").mkdir(parents=True)
            for i, (image, label) in enumerate(zip(images, labels)):
                Image.fromarray(image, mode="L").save(tmp / split / f"{label}-{_slug(CLASSES[label])}" / f"{i:05d}.png")

    return _into_place(target, write)


def emoji_entries() -> list[tuple[str, str]]:
    """(group, code points) of every fully-qualified emoji without a skin-tone modifier, in the file's order."""
    if not EMOJI_TEST.is_file() or not EMOJI_FONT.is_file():
        raise SystemExit("emoji needs Debian's unicode-data and fonts-noto-color-emoji: "
                         "apt-get install -y unicode-data fonts-noto-color-emoji")
    group, out = None, []
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        m = ENTRY.match(line)
        if m and group != "Component":
            points = m.group(1).split()
            if not SKIN_TONES & {int(p, 16) for p in points}:
                out.append((group, "_".join(points)))
    return out


def emoji(target: Path, size: int = 32) -> Path:
    """The emoji glyphs as ``size`` x ``size`` RGB PNG files, one folder per Unicode group."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.truetype(str(EMOJI_FONT), 109)  # the font's one bitmap size
    entries = emoji_entries()

    def write(tmp: Path) -> None:
        for group, points in entries:
            text = "".join(chr(int(p, 16)) for p in points.split("_"))
            canvas = Image.new("RGB", (160, 136), "white")
            ImageDraw.Draw(canvas).text((0, 0), text, font=font, embedded_color=True)
            box = _ink_box(canvas)
            glyph = canvas.crop(box) if box else canvas
            side = max(glyph.size)
            square = Image.new("RGB", (side, side), "white")
            square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
            folder = tmp / "train" / _slug(group)
            folder.mkdir(parents=True, exist_ok=True)
            square.resize((size, size), Image.BILINEAR).save(folder / f"{points}.png")

    return _into_place(target, write)


def _ink_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The box of the pixels that are not white."""
    array = np.asarray(image)
    ys, xs = np.nonzero((array < 250).any(axis=2))
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["fashion-mnist", "emoji"])
    parser.add_argument("target", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="fashion-mnist: the first N training images only")
    parser.add_argument("--size", type=int, default=32, help="emoji: the side in pixels")
    args = parser.parse_args()
    if args.which == "fashion-mnist":
        out = fashion_mnist(args.target, args.limit)
    else:
        out = emoji(args.target, args.size)
    n = sum(1 for _ in out.rglob("*.png"))
    print(f"{out}: {n} PNG files in {len(list((out / 'train').iterdir()))} class folders")


if __name__ == "__main__":
    main()
