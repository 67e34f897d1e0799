"""Dataset loader of the ``gsm8k_local`` lm_eval task: the JSONL files beside this file.

lm_eval resolves ``data_files`` of a ``json`` dataset against the working
directory; loading through ``custom_dataset`` and this file's own location keeps
the task runnable from any directory, and needs no network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

_HERE = Path(__file__).resolve().parent


def load_local_gsm8k(**_metadata: Any) -> datasets.DatasetDict:
    """Return the ``train`` (few-shot) and ``test`` splits as a ``DatasetDict``.

    lm_eval calls this with the task's ``metadata`` and ``dataset_kwargs`` as
    keyword arguments; none of them changes what is loaded.
    """
    files = {split: str(_HERE / f"{split}.jsonl") for split in ("train", "test")}
    return datasets.load_dataset("json", data_files=files)
