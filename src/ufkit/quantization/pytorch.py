"""PyTorch runners for the bf16 and ``torch.compile`` variants: bf16 autocast, inductor, compiled at load time.

:class:`TorchClassifier` wraps a Hugging Face sequence classifier so that it runs under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (``pytorch_bf16``; oneDNN runs the bf16 matrix products on
AVX512-BF16 or AMX tiles), under ``torch.compile`` (``torch_compile_fp32``), or both (``torch_compile_bf16``).
A variant folder stores the classifier as ``pytorch_fp32`` does (safetensors, fp32) and a marker that says
``autocast`` and ``compile``; :func:`~ufkit.quantization.variants.load_variant` builds the runner from them, so the
compiled code is made on the machine that runs it.

``torch.compile`` on torch 2.13, CPU, checked on the tiny test model: ``torch.compile(core, dynamic=True,
options={"freezing": True})``.

* ``dynamic=True`` makes sizes symbolic from the first call. One graph then serves every batch size of 2 or more
  and every sentence length; batch size 1 gets a second graph (dynamo specialises dimensions of size 0 and 1).
  That is two compilations per model, never one per new sentence length, and BERT's forward has no graph break.
  (Without it, dynamo compiles the first shape statically and recompiles when a second one arrives.)
* ``freezing`` lets inductor treat the weights as constants: it folds them and prepacks them for oneDNN, the
  recommended CPU inference setting. It applies under ``torch.inference_mode``/``no_grad``, which is how ufkit
  calls models. Several compiled models in one process each keep their own weights (checked).

Compilation happens at the first call of each graph; :attr:`TorchClassifier.warmup_per_shape` tells the benchmark
to call it once on every batch shape before timing, and the time that takes is reported as ``compile_s``.

Sources: PyTorch's ``torch.compile`` and ``torch.autocast`` documentation; the inductor CPU backend's
``freezing`` option (``torch._inductor.config``).
"""

from __future__ import annotations

import torch
from torch import nn

#: What ``torch.compile`` is given (``dynamic`` and inductor ``options``), recorded in each compiled variant's marker.
COMPILE_SETTINGS = {"dynamic": True, "options": {"freezing": True}}


class _Core(nn.Module):
    """The classifier's forward as a function of the batch tensors, returning float32 logits (what is compiled)."""

    def __init__(self, model: nn.Module, bf16: bool):
        super().__init__()
        self.model, self.bf16 = model, bf16

    def forward(self, **inputs) -> torch.Tensor:
        if self.bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = self.model(**inputs).logits
        else:
            logits = self.model(**inputs).logits
        return logits.float()


def cast_linear_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Store every ``nn.Linear``'s weight and bias in ``dtype``, in place; embeddings and LayerNorms stay float32.

    Under bf16 autocast a linear layer casts an fp32 weight to bf16 on every call; casting once at load time gives
    the same numbers without that cost.

    Returns:
        ``model``.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.to(dtype)
    return model


class TorchClassifier(nn.Module):
    """A Hugging Face sequence classifier under bf16 autocast and/or ``torch.compile``, called like the classifier.

    ``clf(input_ids=..., attention_mask=..., token_type_ids=...)`` (or ``clf(batch_dict)``) takes
    ``torch.LongTensor`` of shape ``(batch, seq_len)`` and returns a ``SequenceClassifierOutput`` whose ``.logits``
    is float32 of shape ``(batch, num_labels)``. Threads are torch's intra-op threads (set by the caller, as for
    ``pytorch_fp32``).

    Args:
        model: the classifier (put in eval mode; with ``bf16`` its linear weights become bf16, in place).
        bf16: run under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
        compile: compile with :data:`COMPILE_SETTINGS` (lazily: at the first call of each graph).
    """

    def __init__(self, model: nn.Module, *, bf16: bool = False, compile: bool = False):
        super().__init__()
        model.eval()
        if bf16:
            cast_linear_weights(model, torch.bfloat16)
        self.core = _Core(model, bf16)
        self.bf16, self.compiled = bool(bf16), bool(compile)
        self._fn = (torch.compile(self.core, dynamic=COMPILE_SETTINGS["dynamic"],
                                  options=dict(COMPILE_SETTINGS["options"])) if compile else self.core)

    @property
    def config(self):
        """The wrapped classifier's ``PretrainedConfig``."""
        return self.core.model.config

    @property
    def warmup_per_shape(self) -> bool:
        """True when the first call of a new batch shape compiles (call each shape once before timing)."""
        return self.compiled

    def forward(self, batch: dict | None = None, **inputs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        batch = {**(batch or {}), **inputs}
        return SequenceClassifierOutput(logits=self._fn(**batch))

    def extra_repr(self) -> str:
        return f"bf16={self.bf16}, compiled={self.compiled}"
