"""The leaf fast feedforward layer (Belcak & Wattenhofer 2023, arXiv:2308.14711) and the FFF-BERT classes: every
form against the one-token-at-a-time reference, soft routing's limit, gradients, argument checks, the native op's
own checks, and tiny FFF-BERT classifiers that save, load, report hidden states and export to ONNX."""

from __future__ import annotations

import shutil

import pytest
import torch

from ufkit.fff.leaf import (LeafFFF, check_leaf_args, leaf_fff_forward, leaf_fff_masked, leaf_fff_reference,
                            leaf_fff_soft, leaf_route, leaf_soft_weights, n_leaves)

H_IN, H_OUT, WIDTH = 13, 11, 5  # odd sizes


pytestmark = pytest.mark.usefixtures("one_thread")


def make_case(depth: int, tokens: int, *, seed: int = 0, h_in: int = H_IN, h_out: int = H_OUT, width: int = WIDTH,
              dtype=torch.float32):
    """``(x (tokens, h_in), router_weight, router_bias, w1, b1, w2, b2)`` with random values."""
    gen = torch.Generator().manual_seed(seed)
    L = n_leaves(depth)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    return (r(tokens, h_in), r(L - 1, h_in), r(L - 1), r(L, width, h_in) * 0.3, r(L, width), r(L, h_out, width) * 0.3,
            r(L, h_out))


def native_available() -> bool:
    from ufkit.fff.leaf import _native_op

    return _native_op() is not None


def need_native() -> None:
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the native extension cannot be built")
    assert native_available(), "the native extension's leaf_fff op did not build"


# ---- the forms -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("tokens", [0, 1, 2, 7, 33])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_every_form_equals_the_reference(depth, tokens, activation):
    args = make_case(depth, tokens, seed=100 * depth + tokens)
    expected = leaf_fff_reference(*args, depth, activation)
    assert expected.shape == (tokens, H_OUT)
    got = {"masked": leaf_fff_masked(*args, depth, activation),
           "torch": leaf_fff_forward(*args, depth, activation, backend="torch")}
    if native_available():
        got["native"] = leaf_fff_forward(*args, depth, activation, backend="native")
    for name, y in got.items():
        assert y.shape == expected.shape, name
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5, msg=name)


def test_native_backend_equals_the_reference():
    need_native()
    for depth in (1, 2, 3):
        for tokens in (0, 1, 5, 65):
            args = make_case(depth, tokens, seed=depth * 7 + tokens)
            torch.testing.assert_close(leaf_fff_forward(*args, depth, backend="native"),
                                       leaf_fff_reference(*args, depth), atol=1e-5, rtol=1e-5)


def test_native_small_and_large_leaves_in_one_call():
    """The native op takes a SIMD path for leaves with few tokens and GEMMs for crowded ones; a skewed route mixes
    both in one call (and odd widths exercise the vector tails)."""
    need_native()
    for depth, tokens in ((1, 300), (2, 200), (3, 150)):
        args = list(make_case(depth, tokens, seed=depth + 11))
        args[2] = args[2] + 3.0 * torch.arange(args[2].numel()).float()  # push most tokens right: one crowded leaf
        torch.testing.assert_close(leaf_fff_forward(*args, depth, backend="native"),
                                   leaf_fff_reference(*args, depth), atol=1e-5, rtol=1e-5)


def test_leading_dimensions_are_kept():
    x, *weights = make_case(2, 15, seed=3)
    x = x.reshape(3, 5, H_IN)
    expected = leaf_fff_reference(x, *weights, 2)
    assert expected.shape == (3, 5, H_OUT)
    for y in (leaf_fff_masked(x, *weights, 2), leaf_fff_forward(x, *weights, 2, backend="torch"),
              leaf_fff_forward(x, *weights, 2)):
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    assert leaf_route(x, weights[0], weights[1], 2).shape == (3, 5)


def test_the_route_walks_the_heap():
    """Depth 2 by hand: router 0 decides left (1) or right (2); router 1 or 2 then picks the leaf."""
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    router_weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # root on x0, its children on x1
    leaf = leaf_route(x, router_weight, torch.zeros(3), 2)
    assert leaf.tolist() == [3, 2, 1, 0]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_soft_weights_sum_to_one_and_tend_to_the_hard_route(depth):
    x, router_weight, router_bias, *_ = make_case(depth, 200, seed=depth, dtype=torch.float64)
    p = leaf_soft_weights(x, router_weight, router_bias, depth)
    assert p.shape == (200, n_leaves(depth)) and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(200, dtype=torch.float64))
    # keep the tokens whose router logits are all clear of 0, then make the logits huge
    z = x @ router_weight.t() + router_bias
    x = x[(z.abs() > 0.05).all(-1)]
    assert len(x) > 10
    hard = torch.nn.functional.one_hot(leaf_route(x, router_weight, router_bias, depth), n_leaves(depth))
    p = leaf_soft_weights(x, router_weight * 1e4, router_bias * 1e4, depth)
    torch.testing.assert_close(p, hard.double(), atol=1e-12, rtol=0)


def test_soft_form_with_huge_logits_equals_the_hard_form():
    depth = 2
    x, rw, rb, *weights = make_case(depth, 100, seed=5, dtype=torch.float64)
    x = x[((x @ rw.t() + rb).abs() > 0.05).all(-1)]
    torch.testing.assert_close(leaf_fff_soft(x, rw * 1e4, rb * 1e4, *weights, depth),
                               leaf_fff_reference(x, rw, rb, *weights, depth))


def test_gradients_masked_reach_the_leaves_soft_reaches_the_routers():
    depth = 2
    params = [t.requires_grad_() for t in make_case(depth, 17, seed=9)[1:]]
    x = make_case(depth, 17, seed=10)[0]
    leaf_fff_masked(x, *params, depth).square().sum().backward()
    names = ("router_weight", "router_bias", "w1", "b1", "w2", "b2")
    grads = dict(zip(names, (p.grad for p in params)))
    for name in ("w1", "b1", "w2", "b2"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert grads["router_weight"] is None and grads["router_bias"] is None  # the route is a hard choice
    for p in params:
        p.grad = None
    leaf_fff_soft(x, *params, depth).square().sum().backward()
    for name, p in zip(names, params):
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_masked_form_follows_a_given_leaf():
    depth = 2
    x, *weights = make_case(depth, 9, seed=11)
    leaf = torch.arange(9) % n_leaves(depth)
    y = leaf_fff_masked(x, *weights, depth, leaf=leaf)
    rw, rb, w1, b1, w2, b2 = weights
    for t in range(9):
        l = int(leaf[t])
        expected = w2[l] @ torch.nn.functional.gelu(w1[l] @ x[t] + b1[l]) + b2[l]
        torch.testing.assert_close(y[t], expected, atol=1e-5, rtol=1e-5)


# ---- argument checks -----------------------------------------------------------------------------------------


def _bad(name, depth=2):
    args = dict(zip(("x", "router_weight", "router_bias", "w1", "b1", "w2", "b2"), make_case(depth, 4)))
    args["depth"], args["activation"] = depth, "gelu"
    if name == "x":
        args["x"] = args["x"][:, :-1]  # H_in no longer matches w1: w1 is named, as the first to disagree
        return args, "w1"
    if name in ("router_weight", "router_bias", "b1", "b2"):
        args[name] = args[name][..., :-1]
    elif name == "w1":
        args[name] = args[name][:-1]
    elif name == "w2":
        args[name] = args[name][..., :-1]
    elif name == "dtype":
        args["b1"] = args["b1"].double()
        return args, "b1"
    elif name == "int":
        args["x"] = args["x"].long()
        return args, "x"
    elif name == "depth":
        args["depth"] = 0
    elif name == "activation":
        args["activation"] = "tanh"
    elif name == "tensor":
        args["w2"] = args["w2"].tolist()
        return args, "w2"
    return args, name


@pytest.mark.parametrize("name", ["x", "router_weight", "router_bias", "w1", "b1", "w2", "b2", "dtype", "int",
                                  "depth", "activation", "tensor"])
def test_check_leaf_args_names_the_argument(name):
    args, named = _bad(name)
    with pytest.raises(ValueError, match=named):
        check_leaf_args(**args)
    for fn in (leaf_fff_reference, leaf_fff_masked, leaf_fff_soft, leaf_fff_forward):
        with pytest.raises(ValueError, match=named):
            fn(**args)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        leaf_fff_forward(*make_case(1, 2), 1, backend="cuda")


@pytest.mark.parametrize("bad", ["x-strided", "w1-dtype", "b2-dtype", "router_weight-strided", "w2-dims"])
def test_native_op_checks_its_inputs(bad):
    need_native()
    depth = 2
    args = dict(zip(("x", "router_weight", "router_bias", "w1", "b1", "w2", "b2"), make_case(depth, 6)))
    name, problem = bad.split("-")
    if problem == "strided":
        args[name] = args[name].t().contiguous().t()  # same values, transposed strides
        assert not args[name].is_contiguous()
        message = f"{name} must be contiguous"
    elif problem == "dtype":
        args[name] = args[name].double()
        message = f"{name} must be float32"
    else:
        args[name] = args[name].flatten(1)
        message = f"{name} must be 3-d"
    with pytest.raises(ValueError, match=message):
        torch.ops.ufkit_native.leaf_fff(*args.values(), depth, 0)


# ---- the module ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_module_train_and_eval_agree(backend):
    torch.manual_seed(0)
    ffn = LeafFFF(H_IN, H_OUT, depth=3, leaf_width=WIDTH, backend=backend)
    x = torch.randn(2, 9, H_IN)
    y_train = ffn.train()(x)
    assert y_train.requires_grad
    y_eval = ffn.eval()(x)
    assert not y_eval.requires_grad
    torch.testing.assert_close(y_train.detach(), y_eval, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_eval, leaf_fff_reference(x, *ffn._params(), 3), atol=1e-5, rtol=1e-5)
    assert ffn.route(x).shape == (2, 9)


def test_module_soft_training_form_and_checks():
    torch.manual_seed(0)
    ffn = LeafFFF(H_IN, H_OUT, depth=2, leaf_width=WIDTH, training_form="soft")
    x = torch.randn(5, H_IN)
    torch.testing.assert_close(ffn.train()(x), leaf_fff_soft(x, *ffn._params(), 2))
    with pytest.raises(ValueError, match="depth"):
        LeafFFF(H_IN, H_OUT, depth=0, leaf_width=WIDTH)
    with pytest.raises(ValueError, match="leaf_width"):
        LeafFFF(H_IN, H_OUT, depth=2, leaf_width=0)
    with pytest.raises(ValueError, match="training_form"):
        LeafFFF(H_IN, H_OUT, depth=2, leaf_width=WIDTH, training_form="hard")
    with pytest.raises(ValueError, match="activation"):
        LeafFFF(H_IN, H_OUT, depth=2, leaf_width=WIDTH, activation="tanh")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the argument checks' shape comparisons
def test_traced_modules_run_the_plain_forms():
    """Under a TorchScript trace the leaf FFF and UltraFastBERT's FFF avoid their kernels, so the trace holds
    plain tensor ops that run at other sizes."""
    from ufkit.fff.bert import BiasedFFF, NoFeedforward

    torch.manual_seed(0)
    for ffn in (LeafFFF(H_IN, H_IN, depth=2, leaf_width=WIDTH), BiasedFFF(H_IN, depth=3), NoFeedforward(H_IN)):
        ffn.eval()
        with torch.no_grad():
            for p in ffn.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            traced = torch.jit.trace(ffn, torch.randn(2, 3, H_IN), check_trace=False)
            x = torch.randn(4, 7, H_IN)
            torch.testing.assert_close(traced(x), ffn(x), atol=1e-5, rtol=1e-5, msg=type(ffn).__name__)


# ---- FFF-BERT ------------------------------------------------------------------------------------------------


KIND_ARGS = {"leaf": {"depth": 2, "leaf_width": 8}, "fff": {"depth": 3}, "none": {}}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from ufkit.models import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


def tiny_fff_bert(tokenizer, kind, layers=(0, 1)):
    """A tiny BertForSequenceClassification (hidden 32, 2 layers) with ``kind`` in ``layers``, weights jittered so
    that no part of it is at its initial value (the no-feedforward bias starts at 0)."""
    from transformers import BertConfig, BertForSequenceClassification

    from ufkit.fff.bert import apply_fff, fff_spec

    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    model = apply_fff(BertForSequenceClassification(config).eval(), fff_spec(kind, layers, **KIND_ARGS[kind]))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def batch(tokenizer, texts=("a good movie", "a long and dull one , really long", "ok")):
    return dict(tokenizer(list(texts), padding=True, return_tensors="pt"))


@pytest.mark.parametrize("kind", ["leaf", "fff", "none"])
def test_apply_fff_saves_and_loads(kind, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from ufkit.fff.bert import (FFF_KEY, BiasedFFF, FffBertConfig, FffBertForSequenceClassification,
                                NoFeedforward, feedforward_modules)

    model = tiny_fff_bert(tokenizer, kind, layers=[1])
    assert type(model) is FffBertForSequenceClassification and isinstance(model.config, FffBertConfig)
    expected_type = {"leaf": LeafFFF, "fff": BiasedFFF, "none": NoFeedforward}[kind]
    assert list(feedforward_modules(model)) == [1] and isinstance(feedforward_modules(model)[1], expected_type)
    assert isinstance(model.bert.encoder.layer[0].intermediate.dense, torch.nn.Linear)  # layer 0 stays dense
    assert getattr(model.config, FFF_KEY)["kind"] == kind
    b = batch(tokenizer)
    with torch.no_grad():
        expected = model(**b).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is FffBertForSequenceClassification
    assert isinstance(feedforward_modules(loaded)[1], expected_type)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**b).logits, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["leaf", "none"])
def test_hidden_states_after_apply_fff(kind, tokenizer, tmp_path):
    """transformers 5 records hidden states with hooks keyed by the model's class; the swapped class must be known
    to it (``ufkit.structure.swap_classes``), else ``output_hidden_states`` comes back empty."""
    from transformers import AutoModelForSequenceClassification

    model = tiny_fff_bert(tokenizer, kind)
    b = batch(tokenizer)
    with torch.no_grad():
        out = model(**b, output_hidden_states=True)
    assert out.hidden_states is not None and len(out.hidden_states) == 3
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        again = loaded(**b, output_hidden_states=True)
    assert again.hidden_states is not None and len(again.hidden_states) == 3
    torch.testing.assert_close(again.hidden_states[-1], out.hidden_states[-1], atol=1e-6, rtol=0)


def test_fff_spec_and_apply_fff_checks(tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    from ufkit.fff.bert import apply_fff, fff_spec

    with pytest.raises(ValueError, match="kind"):
        fff_spec("moe", [0])
    with pytest.raises(ValueError, match="layers"):
        fff_spec("none", [])
    with pytest.raises(ValueError, match="depth"):
        fff_spec("leaf", [0], leaf_width=4)
    with pytest.raises(ValueError, match="leaf_width"):
        fff_spec("leaf", [0], depth=2)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64)
    with pytest.raises(ValueError, match="layers"):
        apply_fff(BertForSequenceClassification(config), fff_spec("none", [2]))


@pytest.mark.parametrize("kind", ["leaf", "fff", "none"])
def test_onnx_export_matches_pytorch(kind, tokenizer, tmp_path):
    """The TorchScript exporter (what `ufkit quantize` uses) traces the plain forms; ONNX Runtime's fp32 logits
    match PyTorch's (which run the kernels) to 1e-4, at the traced batch and at another shape."""
    pytest.importorskip("onnxruntime")
    from ufkit.quantization.onnx import OnnxClassifier, export_onnx

    model = tiny_fff_bert(tokenizer, kind)
    info = export_onnx(model, tokenizer, tmp_path / "model.onnx")
    assert info["max_abs_diff"] <= 1e-4
    b = batch(tokenizer, ["one two three four five six seven eight nine ten eleven twelve", "a", "b c", "d", "e"])
    b = {k: v for k, v in b.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    got = torch.as_tensor(OnnxClassifier(tmp_path / "model.onnx", threads=1)(**b).logits)
    with torch.no_grad():
        torch.testing.assert_close(got, model(**b).logits, atol=1e-4, rtol=0)


def test_fff_runs_with_torchao_int8_weights(tokenizer):
    """`ufkit quantize`'s torchao_int8 variant turns every nn.Linear's weight into an int8 tensor subclass, the FFF's
    own included; the kernels cannot read those, so the FFF runs its training form on them."""
    pytest.importorskip("torchao")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    from ufkit.fff.bert import feedforward_modules

    model = tiny_fff_bert(tokenizer, "fff")
    b = batch(tokenizer)
    with torch.no_grad():
        expected = model(**b).logits
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    assert type(feedforward_modules(model)[0].linear_in.weight) is not torch.nn.Parameter
    with torch.no_grad():
        got = model(**b).logits
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0)


def test_early_exit_flops_count_the_fast_feedforward(tokenizer):
    """FastBERT's FLOPs (chapter 2's counting) use each layer's visited neurons once FFF layers replace the dense ones."""
    from ufkit.early_exit import EarlyExitModel
    from ufkit.fff.bert import feedforward_modules

    model = tiny_fff_bert(tokenizer, "leaf")
    ee = EarlyExitModel(model, tokenizer=tokenizer)
    per_token = [m.flops_per_token() for m in feedforward_modules(model).values()]
    assert ee.feedforward_flops == round(sum(per_token) / len(per_token))
    h = model.config.hidden_size
    assert ee.layer_flops(10, linear_only=True) == 10 * (8 * h * h + ee.feedforward_flops)
