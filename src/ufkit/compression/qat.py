"""Quantization-aware training for ONNX Runtime's dynamic int8 quantization.

Post-training int8 (the deployment chapter's ``onnx_int8_dynamic``) rounds weights the model never trained with;
quantization-aware training (Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018; for BERT, Zafrir et al., "Q8BERT", EMC2 workshop at NeurIPS 2019)
fine-tunes with the rounding simulated in the forward pass ("fake quantization": quantize, then dequantize, in
float32) and passes gradients straight through it (Bengio, Léonard & Courville 2013), so the weights settle where
rounding hurts least. Afterwards the plain float32 model goes through the same export and ORT quantization as any
other; QAT only changes which float weights it starts from.

What is simulated is what ORT's ``quantize_dynamic`` does to the ORT-optimized graph (``onnx_int8_dynamic``),
read off the quantized graph:

* every MatMul and Gemm, i.e. every ``nn.Linear`` of the model, the pooler and the classifier included, runs as
  ``MatMulInteger`` (or ``QAttention`` for the fused query/key/value): weights int8, symmetric
  (``[-127, 127]``, scale ``max|W| / 127``), one scale per tensor (or per output channel); the fused Q, K and V
  weights are one tensor, so they share one scale. Inputs are uint8, asymmetric, one scale and zero point per
  tensor computed at run time from that call's min and max (``DynamicQuantizeLinear``; the range always contains
  0). Biases, softmax, GELU and LayerNorm stay float32.
* the fused embedding node (``QEmbedLayerNormalization``) stores the word, position and token-type tables and the
  embedding LayerNorm's weight and bias in uint8, asymmetric, per tensor (weight-only: the lookups are exact).

torchao's QAT API (``torchao.quantization.qat``, 0.18) cannot express this: ``IntxFakeQuantizeConfig`` takes
per-token, per-channel (``PerAxis(0)``) or per-group granularity but not per-tensor, so neither ORT's per-tensor
activations nor its per-tensor weights fit, and its symmetric int8 scale is ``max|W| / 127.5`` over ``[-128,
127]`` where ORT uses ``max|W| / 127`` over ``[-127, 127]``. The few lines here use
``torch.fake_quantize_per_tensor_affine`` / ``torch.fake_quantize_per_channel_affine`` instead, whose backward is
the straight-through estimator.

Public functions and classes:

* :func:`fake_quant_uint8`: ORT's dynamic per-tensor uint8 rounding, simulated;
* :class:`FakeQuantLinear`: an ``nn.Linear`` that computes as ORT's int8 MatMul would;
* :func:`prepare_qat`, :func:`convert_qat`: swap the fake-quantized layers in and out, in place;
* :func:`qat_finetune`, :func:`load_or_qat`: fine-tune with them (optionally distilling from precomputed teacher
  logits), and its cached form.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from .common import CompressionError

#: ORT's signed int8 range for symmetric weights (``quant_utils.ONNX_INT_TYPE_SYMMETRIC_RANGE``)
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
#: ``DynamicQuantizeLinear``'s uint8 range, also used for the embedding tables
UINT8_QMIN, UINT8_QMAX = 0, 255


def _safe_scale(scale: torch.Tensor) -> torch.Tensor:
    """ORT's rule for an all-zero range: scale 1 (everything quantizes to the zero point)."""
    return torch.where(scale > torch.finfo(torch.float32).tiny, scale, torch.ones_like(scale))


def fake_quant_uint8(x: torch.Tensor) -> torch.Tensor:
    """Fake-quantize to uint8, asymmetric, one scale and zero point for the whole tensor, from its own min and max.

    ``scale = (max(x, 0) - min(x, 0)) / 255`` and ``zero_point = round(-min(x, 0) / scale)``, as ONNX's
    ``DynamicQuantizeLinear`` does for activations and ORT's quantizer for the embedding tables; rounding is half
    to even in both. Gradient: straight through (1 inside the range, which here is all of ``x``).

    Args:
        x (`torch.FloatTensor` of any shape).

    Returns:
        a tensor of ``x``'s shape and dtype whose values lie on the uint8 grid.
    """
    lo = x.detach().amin().float().clamp(max=0)
    hi = x.detach().amax().float().clamp(min=0)
    scale = _safe_scale((hi - lo) / (UINT8_QMAX - UINT8_QMIN))
    zero_point = torch.round(-lo / scale).clamp(UINT8_QMIN, UINT8_QMAX).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, UINT8_QMIN, UINT8_QMAX)


class _FakeQuantUint8(nn.Module):
    """A parametrization: the weight as the int8 embedding node stores it (see :func:`fake_quant_uint8`)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quant_uint8(weight)


class FakeQuantLinear(nn.Linear):
    """``nn.Linear`` computed as ONNX Runtime's dynamic int8 MatMul computes it, in float32 (fake quantization).

    Forward: the input is fake-quantized with :func:`fake_quant_uint8` (per tensor, from this call's min and max),
    the weight to int8 symmetric (``scale = max|W| / 127``, zero point 0) per tensor, or per output channel with
    ``per_channel=True``; then ``F.linear`` with the float bias. With ``scale_group`` (per tensor only) the scale is
    ``max|W|`` over the group's weights: ORT fuses query, key and value into one weight with one scale.
    Gradients pass straight through both roundings (Bengio et al. 2013; Jacob et al., CVPR 2018).

    Shapes:
        input `(..., in_features)`, output `(..., out_features)`; weight `(out_features, in_features)`.

    Use :meth:`from_linear` to wrap an existing layer (the parameters are shared, not copied).
    """

    per_channel: bool = False
    scale_group: tuple = ()

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, per_channel: bool = False) -> "FakeQuantLinear":
        """A FakeQuantLinear holding ``linear``'s own weight and bias parameters."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.per_channel = bool(per_channel)
        new.scale_group = ()
        new.train(linear.training)
        return new

    def weight_scale(self) -> torch.Tensor:
        """The int8 weight scale: a scalar (per tensor) or `(out_features,)` (per channel), float32."""
        w = self.weight.detach().float()
        if self.per_channel:
            return _safe_scale(w.abs().amax(dim=1) / WEIGHT_QMAX)
        absmax = w.abs().amax()
        for other in self.scale_group:
            absmax = torch.maximum(absmax, other.weight.detach().float().abs().amax())
        return _safe_scale(absmax / WEIGHT_QMAX)

    def quantized_weight(self) -> torch.Tensor:
        """The weight on its int8 grid (fake-quantized, straight-through gradient), `(out_features, in_features)`."""
        scale = self.weight_scale()
        if self.per_channel:
            zero = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
            return torch.fake_quantize_per_channel_affine(self.weight, scale, zero, 0, WEIGHT_QMIN, WEIGHT_QMAX)
        zero = torch.zeros((), dtype=torch.int32, device=scale.device)
        return torch.fake_quantize_per_tensor_affine(self.weight, scale, zero, WEIGHT_QMIN, WEIGHT_QMAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(fake_quant_uint8(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        granularity = "per channel" if self.per_channel else "per tensor"
        shared = f", scale shared by {len(self.scale_group) + 1}" if self.scale_group else ""
        return f"{super().extra_repr()}, int8 weights {granularity}{shared}, uint8 dynamic inputs"


def _is_prepared(model: nn.Module) -> bool:
    return any(isinstance(m, FakeQuantLinear) or parametrize.is_parametrized(m) for m in model.modules())


def prepare_qat(model: nn.Module, *, per_channel: bool = False, embeddings: bool = True) -> nn.Module:
    """Make ``model`` compute as ORT's dynamic int8 quantization of its optimized graph will, in place.

    Every ``nn.Linear`` becomes a :class:`FakeQuantLinear` (encoder, pooler and classifier: ORT quantizes them
    all); in each attention block ``query``, ``key`` and ``value`` share one weight scale (per tensor), as in ORT's
    fused ``QAttention``. With ``embeddings`` the word, position and token-type tables and the embedding LayerNorm's
    weight and bias are fake-quantized to uint8 per tensor (weight-only), as in ``QEmbedLayerNormalization``.
    The parameters stay the same tensors, so an optimizer built before or after sees the same ones.

    Args:
        model: a float32 BERT-family classifier (``BertForSequenceClassification``).
        per_channel: one weight scale per output channel (``onnx_int8_dynamic_per_channel``) instead of per tensor.
        embeddings: also simulate the embedding node's uint8 storage.

    Returns:
        the same model.

    Raises:
        CompressionError: ``model`` is not an ``nn.Module``, is already prepared, or has no Linear layer.
    """
    if not isinstance(model, nn.Module):
        raise CompressionError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if _is_prepared(model):
        raise CompressionError("model is already prepared for QAT (call convert_qat first)")
    linears = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    if not linears:
        raise CompressionError(f"model ({type(model).__name__}) has no nn.Linear layer to quantize")
    modules = dict(model.named_modules())
    swapped = {}
    for name, linear in linears:
        parent_name, _, child = name.rpartition(".")
        fq = FakeQuantLinear.from_linear(linear, per_channel=per_channel)
        setattr(modules[parent_name] if parent_name else model, child, fq)
        swapped[name] = fq
    if not per_channel:
        for name, module in model.named_modules():
            group = [getattr(module, n, None) for n in ("query", "key", "value")]
            if all(isinstance(m, FakeQuantLinear) for m in group):
                for m in group:
                    m.scale_group = tuple(o for o in group if o is not m)
    if embeddings:
        base = getattr(model, "base_model", model)
        emb = getattr(base, "embeddings", None)
        for module in (emb.modules() if emb is not None else ()):
            if isinstance(module, nn.Embedding):
                parametrize.register_parametrization(module, "weight", _FakeQuantUint8())
            elif isinstance(module, nn.LayerNorm):
                for tensor in ("weight", "bias"):
                    if getattr(module, tensor, None) is not None:
                        parametrize.register_parametrization(module, tensor, _FakeQuantUint8())
    return model


def convert_qat(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_qat` in place: plain ``nn.Linear`` layers and embeddings with the trained float32
    weights (not rounded), ready for the deployment chapter's ONNX export and ORT int8 quantization.

    Returns:
        the same model.

    Raises:
        CompressionError: ``model`` was not prepared.
    """
    if not isinstance(model, nn.Module) or not _is_prepared(model):
        raise CompressionError("model is not prepared for QAT (prepare_qat was not called on it)")
    modules = dict(model.named_modules())
    for name, module in list(modules.items()):
        if isinstance(module, FakeQuantLinear):
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            linear.weight, linear.bias = module.weight, module.bias
            linear.train(module.training)
            parent_name, _, child = name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, child, linear)
        elif parametrize.is_parametrized(module):
            for tensor in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, tensor, leave_parametrized=False)
    return model


def qat_finetune(model, tokenizer, train_ds, cfg=None, *, teacher_logits=None, temperature: float = 2.0,
                 alpha: float = 0.5, per_channel: bool = False, embeddings: bool = True, progress: bool = True):
    """Quantization-aware fine-tuning, in place: :func:`prepare_qat`, ``train_loop``, :func:`convert_qat`.

    Training runs in float32 whatever ``cfg.mixed_precision`` says: fake quantization under bf16 autocast would
    round to bf16 before the int8 grid, which ORT never does. With ``teacher_logits`` the loss is ``alpha *
    kd_loss + (1 - alpha) * CE`` (:func:`ufkit.distill.kd_loss`, Hinton et al. 2015), otherwise cross-entropy. The
    model is converted back even if training fails.

    Args:
        model: a fine-tuned float32 classifier (the starting point; QAT from scratch is not the use).
        tokenizer: pads the batches.
        train_ds (`datasets.Dataset`): ``text`` (tokenised here when needed) or :func:`ufkit.data.tokenize` output, and ``label``.
        cfg (:class:`ufkit.training.TrainConfig`): hyper-parameters; a small learning rate (1e-5 to 3e-5) and a
            short run suffice, since the model is already trained.
        teacher_logits (`numpy.ndarray` or `torch.FloatTensor` of shape `(len(train_ds), num_labels)`): the
            teacher's logits per training row, in ``train_ds``'s order; None trains on the labels.
        temperature, alpha: distillation temperature (``> 0``) and weight (in ``[0, 1]``).
        per_channel, embeddings: see :func:`prepare_qat`; match the ORT variant you will deploy.

    Returns:
        ``(model, history)``: the float32 model with plain Linear layers (eval mode) and ``train_loop``'s history
        plus ``per_channel`` and ``embeddings``.

    Raises:
        CompressionError: a ``train_ds`` without text or labels, or an empty one, bad ``teacher_logits``, ``temperature`` or
            ``alpha``, or a model already prepared.
        UfkitError: a bad ``cfg``.
    """
    from ..training import TrainConfig, train_loop
    from .sparsity import _check_kd, _objective, _teacher_tensor

    temperature, alpha = _check_kd(temperature, alpha)
    cfg = dataclasses.replace(cfg or TrainConfig(), mixed_precision="no")
    cfg.validate()
    teacher = _teacher_tensor(teacher_logits, len(train_ds), getattr(model.config, "num_labels", None))
    trainee, loader, loss_fn = _objective(model, tokenizer, train_ds, cfg, teacher, temperature, alpha)
    prepare_qat(model, per_channel=per_channel, embeddings=embeddings)
    try:
        history = train_loop(trainee, loader, loss_fn, cfg, desc="quantization-aware training", progress=progress)
    finally:
        convert_qat(model)
        model.eval()
    history.update({"per_channel": bool(per_channel), "embeddings": bool(embeddings)})
    return model, history


def load_or_qat(folder, *, model, tokenizer, train_ds, cfg=None, teacher_logits=None, temperature: float = 2.0,
                alpha: float = 0.5, per_channel: bool = False, embeddings: bool = True, retrain: bool = False,
                progress: bool = True):
    """:func:`qat_finetune` through :func:`ufkit.cache.load_or_make`: load the QAT checkpoint in ``folder`` if it
    was made from the same recipe, else train a copy of ``model`` and save it there.

    The recipe holds every setting (``cfg.recipe()`` with ``mixed_precision="no"``, ``per_channel``,
    ``embeddings``, the distillation settings), the starting model's weights (:func:`ufkit.cache.fingerprint_model`),
    the training data and a hash of the teacher logits. ``model`` itself is never changed.

    Args:
        folder: the checkpoint folder (``save_pretrained`` layout, safetensors) plus ``cache_info.json``.
        retrain: train again even when a current copy exists.
        others: as for :func:`qat_finetune`.

    Returns:
        ``(model, tokenizer, info)``: the float32 QAT classifier as :func:`ufkit.models.load_model` loads it (to
        be exported and quantized like any other), its tokenizer, and the cache info.

    Raises:
        CompressionError, UfkitError: see :func:`qat_finetune`.
    """
    from ..cache import load_or_make_model
    from ..training import TrainConfig
    from .sparsity import _check_kd, _teacher_tensor, _training_recipe

    temperature, alpha = _check_kd(temperature, alpha)
    cfg = dataclasses.replace(cfg or TrainConfig(), mixed_precision="no")
    cfg.validate()
    teacher = _teacher_tensor(teacher_logits, len(train_ds), getattr(model.config, "num_labels", None))
    recipe = {"method": "quantization-aware training for ORT dynamic int8 (Jacob et al. 2018)",
              "per_channel": bool(per_channel), "embeddings": bool(embeddings),
              **_training_recipe(model, train_ds, cfg, teacher, temperature, alpha)}

    def make():
        student = copy.deepcopy(model)
        student, history = qat_finetune(student, tokenizer, train_ds, cfg, teacher_logits=teacher,
                                        temperature=temperature, alpha=alpha, per_channel=per_channel,
                                        embeddings=embeddings, progress=progress)
        return (student, tokenizer), history

    return load_or_make_model(folder, recipe, make, retrain=retrain)
