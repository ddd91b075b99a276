import json

import pytest
import torch

from ufkit import UfkitError
from ufkit.data import load_local
from ufkit.training import TrainConfig, load_or_finetune


def test_finetune_then_load_from_cache(tiny_model_dir, tiny_tsv_dir, tmp_path):
    task = load_local(tiny_tsv_dir)
    cfg = TrainConfig(max_steps=3, batch_size=4, learning_rate=1e-3)
    out = tmp_path / "ckpt"
    model, tok, info = load_or_finetune(out, model_name=str(tiny_model_dir), task=task, cfg=cfg, progress=False)
    assert info["steps"] == 3 and info["recipe"]["n_train"] == 12
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "cache_info.json").read_text())["steps"] == 3
    # trained weights differ from the start
    from safetensors.torch import load_file

    init = load_file(tiny_model_dir / "model.safetensors")
    trained = load_file(out / "model.safetensors")
    assert not torch.equal(init["classifier.weight"], trained["classifier.weight"])
    # second call loads the cache and does not train
    again, _, info2 = load_or_finetune(out, model_name=str(tiny_model_dir), task=task, cfg=cfg)
    assert info2 == info
    batch = tok(["great fun"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, again(**batch).logits)
    # other settings make the cache stale: it trains again
    _, _, info3 = load_or_finetune(out, model_name=str(tiny_model_dir), task=task,
                                   cfg=TrainConfig(max_steps=2, batch_size=4), progress=False)
    assert info3["steps"] == 2


def test_seeded_training_is_reproducible(tiny_model_dir, tiny_tsv_dir, tmp_path):
    task = load_local(tiny_tsv_dir)
    cfg = TrainConfig(max_steps=2, batch_size=4, seed=7)
    a, tok, _ = load_or_finetune(tmp_path / "a", model_name=str(tiny_model_dir), task=task, cfg=cfg, progress=False)
    b, _, _ = load_or_finetune(tmp_path / "b", model_name=str(tiny_model_dir), task=task, cfg=cfg, progress=False)
    batch = tok(["dull and long"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(a(**batch).logits, b(**batch).logits)


def test_config_validation():
    with pytest.raises(UfkitError, match="batch_size"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(UfkitError, match="learning_rate"):
        TrainConfig(learning_rate=0).validate()
