"""Files inside a model folder: a checkpoint's index, a config or a caller names them, and no name may lead out.

Conversion reads and `push_model` uploads only files that `file_in_folder` accepts, so a crafted folder (a shard
named `../x` or `/etc/passwd`, a link to `~/.cache/huggingface/token`) cannot make hf_vit read or publish another
file.
"""

from pathlib import Path


def _root(folder: Path) -> Path:
    """The folder that links may point into: `folder`, or for a snapshot in the Hugging Face cache the repo folder,
    whose `blobs/` hold the files that the snapshot's links point to."""
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
        return folder.parent.parent
    return folder


def file_in_folder(folder: str | Path, name: str) -> Path:
    """`folder / name`, or a ValueError naming the file when the name is absolute, climbs out with `..`, or is (or
    passes through) a link whose target lies outside the folder. The file need not exist."""
    folder = Path(folder)
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"{name!r} leads outside {folder}")
    path = folder / name
    target = path.resolve()
    if not target.is_relative_to(_root(folder)):
        raise ValueError(f"{name!r} is a link to {target}, outside {folder}")
    return path
