"""Where the preprocessing models come from: a local folder, or a Hugging Face Hub repo (only the files needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import WanAnimateError


def resolve_model_folder(source: str | Path, allow_patterns: list[str], what: str) -> Path:
    """A local folder as is; otherwise a hub repo id, downloaded (cache and ``HF_HUB_OFFLINE`` respected) with
    only the files ``allow_patterns`` selects.

    Args:
        source: A folder, or a repo id ``owner/name``.
        allow_patterns: Globs of the repo files to download.
        what: The model's name in error messages ("person detector").

    Raises:
        WanAnimateError: Neither a folder nor a repo id, or the download failed.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(source).count("/") != 1:
        raise WanAnimateError(f"The {what} '{source}' is neither a folder nor a Hugging Face repo id (owner/name).")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(source), allow_patterns=allow_patterns))
    except Exception as error:  # network, auth or missing repo: the user can fix each of them
        raise WanAnimateError(
            f"Could not download the {what} '{source}' from the Hugging Face Hub ({error}). Check the network "
            "connection and the repo id, or pass a local folder."
        ) from error


def default_device() -> str:
    """CUDA when available, else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"
