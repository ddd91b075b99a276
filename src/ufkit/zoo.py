"""The shared model zoo: the fine-tuned checkpoints that several chapters use, cached and trained on demand.

* :func:`load_teacher`: MiniLM-L6-H384 fine-tuned on SST-2, the baseline of chapter 0 and the teacher of later
  chapters (:func:`teacher_config`);
* :func:`load_small_classifier`: its first layers, fine-tuned the same way, a small model for chapter 5.

Each is cached under :func:`ufkit.config.cache_dir` and reused only when its recipe (settings, the starting model's
files, the training data) is unchanged (:func:`ufkit.cache.load_or_make`).
"""

from __future__ import annotations

from .training import TrainConfig

TEACHER_NAME = "minilm-l6-sst2"


def teacher_config() -> TrainConfig:
    """Hyper-parameters of the baseline/teacher fine-tune (the same at both sizes; smoke trains on less data).

    One epoch at a peak learning rate of 1e-4: the small 6-layer model wants a larger step than BERT-base's usual
    2e-5..5e-5 (chapter 0 shows the comparison that chose it).
    """
    return TrainConfig(learning_rate=1e-4, epochs=1.0, batch_size=32, warmup_ratio=0.1, seed=42)


def load_teacher(retrain: bool = False, progress: bool = True, cfg: TrainConfig | None = None):
    """MiniLM-L6-H384 fine-tuned on SST-2: the baseline of chapter 0 and the teacher of later chapters.

    Cached in ``ufkit.config.cache_dir() / "minilm-l6-sst2"``; trained on the whole SST-2 training split at full
    size and on :func:`ufkit.config.baseline_size` ``.n_train`` sentences at smoke size.

    Args:
        retrain: ignore a cached checkpoint.
        cfg: other hyper-parameters than :func:`teacher_config` (cached in a folder of their own).

    Returns:
        ``(model, tokenizer, info)`` as :func:`ufkit.training.load_or_finetune`.
    """
    from . import config
    from .training import load_or_finetune

    folder = config.cache_dir() / TEACHER_NAME
    if cfg is not None and cfg != teacher_config():
        folder = folder.with_name(f"{TEACHER_NAME}-{cfg.mixed_precision}-lr{cfg.learning_rate:g}")
    return load_or_finetune(folder, cfg=cfg or teacher_config(), n_train=config.baseline_size().n_train,
                            retrain=retrain, progress=progress)



SMALL_MODEL_NAME = "minilm-l2-sst2"


def load_small_classifier(num_hidden_layers: int = 2, holdout: int = 2000, n_train: int | None = None,
                          progress: bool = True):
    """The first ``num_hidden_layers`` layers of MiniLM-L6-H384, fine-tuned on SST-2: a model int8 can break.

    The packaged MiniLM encoder is truncated (:func:`ufkit.surgery.truncate_layers`) and fine-tuned with the
    teacher's recipe (:func:`teacher_config`) on the SST-2 training split minus ``holdout`` seeded
    sentences, which are returned as a labeled split the model never saw, for the safety net's budget. Cached in
    ``ufkit.config.cache_dir() / "minilm-l{N}-sst2"`` ("load if present, else train").

    Args:
        n_train: fine-tune on this many of the remaining training sentences (None: all).

    Returns:
        ``(model, tokenizer, info, heldout)``; ``heldout`` is a `datasets.Dataset` with ``text`` and ``label``.
    """
    from datasets import DatasetDict
    from transformers import AutoModel

    from . import config
    from .cache import fingerprint, load_or_make
    from .data import TaskData, load_sst2
    from .models import _quiet_transformers, default_model_path, load_model, save_model
    from .surgery import truncate_layers
    from .training import load_or_finetune

    task = load_sst2()
    split = task["train"].train_test_split(test_size=holdout, seed=0)

    def make_base():
        _, tokenizer = load_model(None)
        with _quiet_transformers():
            encoder = AutoModel.from_pretrained(default_model_path(), local_files_only=True)
        return (truncate_layers(encoder, num_hidden_layers), tokenizer), {}

    base = config.cache_dir() / f"minilm-l{num_hidden_layers}-base"
    load_or_make(base, {"model_id": fingerprint(default_model_path()), "num_hidden_layers": num_hidden_layers},
                 make_base, save=lambda obj, folder: save_model(obj[0], obj[1], folder), load=lambda folder: None)
    trimmed = TaskData(DatasetDict(train=split["train"], validation=task["validation"]), task.label_names,
                       f"{task.source} (train minus {holdout} held-out sentences)")
    model, tokenizer, info = load_or_finetune(config.cache_dir() / f"minilm-l{num_hidden_layers}-sst2",
                                              model_name=str(base), task=trimmed, cfg=teacher_config(),
                                              n_train=n_train, progress=progress)
    return model, tokenizer, info, split["test"]



