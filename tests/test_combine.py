"""Combining adapters (lorakit.combine.math, lorakit.combine.api) against PEFT's add_weighted_adapter.

Layer by layer: PEFT builds the adapters and combines them; our maths on the same (A, B, scaling) must give the
same update B'·A' (the factors of an SVD are unique only up to signs, so the products are compared)."""
from __future__ import annotations

import warnings

import pytest
import torch
import transformers

import lorakit
from helpers import inputs, logits, peft_model, randomize_lora, tiny_model
from lorakit.combine.config import COMBINATION_TYPES, MERGES, SVD_TYPES, CombineConfig
from lorakit.combine.math import combine_layer, dare_tensor, elected_sign_mask, magnitude_prune_tensor, merge_tensors

peft = pytest.importorskip("peft")
from peft.tuners.lora import LoraLayer  # noqa: E402
from peft.utils import merge_utils  # noqa: E402

WEIGHTS = [0.7, -0.3, 0.5]


def layer_factors(layer, names, weights):
    """[(A, B, scaling)] and weights of the adapters present at a PEFT LoRA layer (Linear or Embedding)."""
    factors, kept = [], []
    for name, w in zip(names, weights):
        if name in layer.lora_A:
            factors.append((layer.lora_A[name].weight.data, layer.lora_B[name].weight.data, layer.scaling[name]))
        elif name in layer.lora_embedding_A:
            factors.append((layer.lora_embedding_A[name].data, layer.lora_embedding_B[name].data,
                            layer.scaling[name]))
        else:
            continue
        kept.append(w)
    return factors, kept


def new_factors(layer, name="new"):
    if name in layer.lora_A:
        return layer.lora_A[name].weight.data, layer.lora_B[name].weight.data
    return layer.lora_embedding_A[name].data, layer.lora_embedding_B[name].data


def max_layer_difference(model, names, weights, combination_type, **options) -> float:
    """PEFT's add_weighted_adapter on `model`, then ours layer by layer: the largest |ΔW_peft - ΔW_ours|."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.add_weighted_adapter(names, weights, "new", combination_type=combination_type, **options)
    rank, worst, layers = model.peft_config["new"].r, 0.0, 0
    for _, layer in model.named_modules():
        if not isinstance(layer, LoraLayer) or ("new" not in layer.lora_A and "new" not in layer.lora_embedding_A):
            continue
        factors, kept = layer_factors(layer, names, weights)
        A, B = combine_layer(combination_type if len(names) > 1 else "linear", factors, kept, rank,
                             density=options.get("density"), sign_method=options.get("majority_sign_method", "total"),
                             svd_clamp=options.get("svd_clamp"))
        peft_A, peft_B = new_factors(layer)
        assert A.shape == peft_A.shape and B.shape == peft_B.shape
        assert layer.scaling["new"] == 1.0
        worst = max(worst, (B @ A - peft_B @ peft_A).abs().max().item())
        layers += 1
    assert layers > 0
    return worst


DETERMINISTIC = [t for t in COMBINATION_TYPES if not t.startswith("dare")]


RANKS = {"2-equal": [4, 4], "3-equal": [4, 4, 4], "3-unequal": [2, 4, 6]}
# every deterministic type on 2 and 3 adapters; unequal ranks where PEFT allows them (the error is tested below)
CASES = [(t, ranks) for t in DETERMINISTIC for ranks in RANKS if t not in MERGES or ranks != "3-unequal"]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("combination_type,ranks", CASES)
def test_layers_equal_peft(kind, combination_type, ranks):
    model, names = peft_model(kind, RANKS[ranks])
    options = {"density": 0.5} if combination_type not in ("linear", "cat", "svd") else {}
    assert max_layer_difference(model, names, WEIGHTS[:len(names)], combination_type, **options) < 1e-5


@pytest.mark.parametrize("combination_type,options", [
    ("ties", {"density": 0.3, "majority_sign_method": "frequency"}),
    ("magnitude_prune", {"density": 0.8}),
    ("svd", {"svd_rank": 3, "svd_clamp": 0.9}),
    ("ties_svd", {"density": 0.4, "svd_rank": 2, "majority_sign_method": "frequency"}),
    ("cat", {}),
])
def test_different_targets_and_options_equal_peft(combination_type, options):
    """Adapters on different layers (the union is adapted; a layer holds only the adapters present there)."""
    model, names = peft_model("llama", [4, 4], [["q_proj", "v_proj"], ["q_proj", "k_proj"]])
    assert max_layer_difference(model, names, [1.0, 0.5], combination_type, **options) < 1e-5


@pytest.mark.parametrize("combination_type", ["linear", "svd", "cat", "ties"])
def test_embedding_layers_equal_peft(combination_type):
    model, names = peft_model("llama", [4, 4], [["embed_tokens", "q_proj"]] * 2)
    with torch.no_grad():  # PEFT's init False leaves the embedding's B at 0
        for name, p in model.named_parameters():
            if "lora_embedding_B" in name:
                p.normal_()
    options = {"density": 0.5} if combination_type == "ties" else {}
    assert max_layer_difference(model, names, [0.6, 0.9], combination_type, **options) < 1e-5
    assert "new" in model.base_model.model.model.embed_tokens.lora_embedding_A


def test_one_adapter_is_linear_and_scales_exactly():
    """One adapter: PEFT turns any type into linear; its update is then w·s·B·A (sqrt split on both sides)."""
    model, names = peft_model("llama", [4])
    assert max_layer_difference(model, names, [0.6], "svd") < 1e-5
    A, B = torch.randn(4, 9), torch.randn(7, 4)
    A2, B2 = combine_layer("linear", [(A, B, 2.0)], [-0.6], 4)
    torch.testing.assert_close(B2 @ A2, -1.2 * B @ A)


# --- the merges of task tensors, against peft.utils.merge_utils ----------------------------------------------

def task_tensors(n=3, shape=(16, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("method", ["total", "frequency"])
def test_merges_equal_peft_merge_utils(method):
    tensors, weights = task_tensors(), [0.7, -0.3, 0.5]
    w = torch.tensor(weights)
    torch.testing.assert_close(merge_tensors("linear", tensors, weights, None, method),
                               merge_utils.task_arithmetic(tensors, w), rtol=0, atol=0)
    torch.testing.assert_close(merge_tensors("magnitude_prune", tensors, weights, 0.3, method),
                               merge_utils.magnitude_prune(tensors, w, 0.3), rtol=0, atol=0)
    torch.testing.assert_close(merge_tensors("ties", tensors, weights, 0.3, method),
                               merge_utils.ties(tensors, w, 0.3, method), rtol=0, atol=0)


@pytest.mark.parametrize("merge", ["dare_linear", "dare_ties"])
def test_dare_equals_peft_with_the_same_seed(merge):
    """PEFT draws from torch's global generator; seeded alike, our generator draws the same masks."""
    tensors, weights = task_tensors(), [0.7, -0.3, 0.5]
    torch.manual_seed(5)
    theirs = (merge_utils.dare_linear(tensors, torch.tensor(weights), 0.4) if merge == "dare_linear" else
              merge_utils.dare_ties(tensors, torch.tensor(weights), 0.4, "total"))
    ours = merge_tensors(merge, tensors, weights, 0.4, "total", torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    again = merge_tensors(merge, tensors, weights, 0.4, "total", torch.Generator().manual_seed(5))
    assert torch.equal(ours, again)


def test_dare_keeps_density_and_rescales():
    tensor = torch.rand(200, 300) + 0.5  # no zeros
    dropped = dare_tensor(tensor, 0.3, torch.Generator().manual_seed(0))
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01  # 60,000 Bernoulli(0.3) draws: sd 0.0019
    torch.testing.assert_close(dropped[kept], tensor[kept] / 0.3)


def test_magnitude_prune_keeps_the_largest():
    tensor = torch.tensor([[0.1, -5.0, 2.0], [-0.2, 3.0, 0.05]])
    assert torch.equal(magnitude_prune_tensor(tensor, 0.5), torch.tensor([[0.0, -5.0, 2.0], [0.0, 3.0, 0.0]]))
    assert torch.equal(magnitude_prune_tensor(tensor, 1.0), tensor)


def test_sign_election_by_hand():
    stacked = torch.tensor([[1.0, -1.0, 0.0], [-3.0, -1.0, 2.0], [1.0, 2.0, 0.0]])  # (n=3, 3)
    # total: sums (-1, 0, 2) -> signs (-, +, +); frequency: counts (+1, -1, +1) -> (+, -, +)
    assert elected_sign_mask(stacked, "total").tolist() == [[False, False, False], [True, False, True],
                                                            [False, True, False]]
    assert elected_sign_mask(stacked, "frequency").tolist() == [[True, True, False], [False, True, True],
                                                                [True, False, False]]


def test_cat_is_exact_for_any_ranks():
    g = torch.Generator().manual_seed(0)
    factors = [(torch.randn(r, 10, generator=g), torch.randn(8, r, generator=g), s) for r, s in ((2, 0.5), (5, 2.0))]
    A, B = combine_layer("cat", factors, [0.7, -1.5], 9)
    assert A.shape == (9, 10) and B.shape == (8, 9)  # padded to the new rank with zeros
    expected = sum(w * s * B_i @ A_i for (A_i, B_i, s), w in zip(factors, [0.7, -1.5]))
    torch.testing.assert_close(B @ A, expected)


def test_svd_of_full_rank_is_exact_and_pads_beyond_the_layer():
    g = torch.Generator().manual_seed(0)
    factors = [(torch.randn(3, 5, generator=g), torch.randn(4, 3, generator=g), 1.0) for _ in range(2)]
    A, B = combine_layer("svd", factors, [1.0, 1.0], 6)  # rank 6 > min(4, 5): zero directions beyond 4
    assert A.shape == (6, 5) and B.shape == (4, 6) and not A[4:].any()
    torch.testing.assert_close(B @ A, sum(B_i @ A_i for A_i, B_i, _ in factors), atol=1e-5, rtol=1e-5)


def test_equal_rank_types_say_which_types_take_any_ranks():
    factors = [(torch.randn(2, 6), torch.randn(5, 2), 1.0), (torch.randn(4, 6), torch.randn(5, 4), 1.0)]
    for merge in MERGES:
        with pytest.raises(ValueError, match=r"needs adapters of equal rank \(got ranks \[2, 4\]\).*cat, svd and"):
            combine_layer(merge, factors, [1.0, 1.0], 4, density=0.5)
    for combination_type in ("cat", *SVD_TYPES):
        A, B = combine_layer(combination_type, factors, [1.0, 1.0], 6, density=0.5,
                             generator=torch.Generator().manual_seed(0))
        assert A.shape == (6, 6) and B.shape == (5, 6)


@pytest.mark.parametrize("options,message", [
    ({"combination_type": "mean"}, "combination_type 'mean' is not one of linear"),
    ({"combination_type": "ties"}, r"'ties' needs density in \(0, 1\]"),
    ({"combination_type": "dare_ties_svd", "density": 0.0}, "needs density"),
    ({"combination_type": "ties", "density": 0.5, "majority_sign_method": "majority"}, "majority_sign_method 'major"),
    ({"svd_clamp": 1.5}, "svd_clamp is a quantile"),
    ({"svd_rank": 0}, "svd_rank must be a positive integer"),
])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        CombineConfig(**options)


# --- the model-level function: lorakit adapters combined, logits against PEFT's combined model ---------------

def both_models(kind: str, ranks: list[int], tmp_path, targets=None):
    """PEFT's model with adapters a0, a1, ... (random A and B) and a lorakit model that loaded the same files."""
    theirs, names = peft_model(kind, ranks, targets)
    with torch.no_grad():  # PEFT's init False leaves an embedding's B at 0
        for name, p in theirs.named_parameters():
            if "lora_embedding_B" in name:
                p.normal_()
    theirs.save_pretrained(tmp_path)  # PEFT's layout: one sub-directory per adapter name
    ours = tiny_model(kind)
    for name in names:
        lorakit.load_adapter(ours, tmp_path / name, name=name)
    return theirs, ours, names


def combined_logits(theirs, ours, names, weights, combination_type, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.add_weighted_adapter(names, weights, "new", combination_type=combination_type, **options)
    theirs.set_adapter("new")
    modules_from = names[0] if isinstance(ours, transformers.BertForSequenceClassification) else None
    lorakit.add_weighted_adapter(ours, names, weights, "new", combination_type=combination_type,
                                 modules_from=modules_from, **options)
    assert lorakit.active_adapters(ours) == (names[0],)  # added inactive, as PEFT does
    lorakit.set_adapter(ours, "new")
    return logits(theirs, inputs()), logits(ours, inputs())


MODEL_CASES = [("linear", "2-equal"), ("ties", "3-equal"), ("magnitude_prune", "2-equal"), ("cat", "3-unequal"),
               ("svd", "3-unequal"), ("ties_svd", "2-equal"), ("magnitude_prune_svd", "3-unequal")]


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("combination_type,ranks", MODEL_CASES)
def test_combined_model_logits_equal_peft(kind, combination_type, ranks, tmp_path):
    theirs, ours, names = both_models(kind, RANKS[ranks], tmp_path)
    options = {"density": 0.5} if combination_type not in ("linear", "cat", "svd") else {}
    expected, got = combined_logits(theirs, ours, names, WEIGHTS[:len(names)], combination_type, **options)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, logits(tiny_model(kind), inputs()), atol=1e-4)  # the combination acts


@pytest.mark.parametrize("combination_type", ["linear", "cat", "svd", "ties"])
def test_embedding_adapters_combined_logits_equal_peft(combination_type, tmp_path):
    theirs, ours, names = both_models("llama", [4, 4], tmp_path, [["embed_tokens", "v_proj"], ["embed_tokens"]])
    options = {"density": 0.5} if combination_type == "ties" else {}
    expected, got = combined_logits(theirs, ours, names, [0.6, -0.9], combination_type, **options)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("combination_type", ["dare_linear", "dare_ties", "dare_ties_svd"])
def test_dare_model_equals_peft_with_the_same_draws(combination_type, tmp_path, monkeypatch):
    """PEFT draws DARE's masks from torch's global generator, after its new adapter's init drew from it too; given
    PEFT a generator of the same seed as ours (patched into its random_pruning), the combinations are equal."""
    theirs_generator = torch.Generator().manual_seed(7)

    def peft_random_pruning(tensor, density, rescale):
        kept = torch.bernoulli(torch.full_like(tensor, density), generator=theirs_generator)
        return tensor * kept / density if rescale else tensor * kept

    monkeypatch.setattr(merge_utils, "random_pruning", peft_random_pruning)
    theirs, ours, names = both_models("llama", [4, 4], tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.add_weighted_adapter(names, [0.8, 0.6], "new", combination_type=combination_type, density=0.4)
    theirs.set_adapter("new")
    lorakit.add_weighted_adapter(ours, names, [0.8, 0.6], "new", combination_type=combination_type, density=0.4,
                                 generator=torch.Generator().manual_seed(7))
    lorakit.set_adapter(ours, "new")
    torch.testing.assert_close(logits(ours, inputs()), logits(theirs, inputs()), rtol=1e-5, atol=1e-5)


def test_rslora_adapters_combine_without_peft_overscaling(tmp_path):
    """PEFT keeps use_rslora in the new config: scaling alpha / sqrt(r') = sqrt(r') multiplies the combined update.
    Ours has scaling 1: a single adapter with weight 1 gives back exactly its own logits."""
    model = tiny_model("llama")
    lorakit.add_lora(model, lorakit.LoraConfig(r=4, alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"]),
                     name="a")
    randomize_lora(model)
    own = logits(model, inputs())
    lorakit.add_weighted_adapter(model, ["a"], [1.0], "same", combination_type="svd")
    lorakit.set_adapter(model, "same")
    assert lorakit.adapter_config(model, "same").use_rslora is False
    torch.testing.assert_close(logits(model, inputs()), own, rtol=1e-5, atol=1e-5)


def test_model_level_errors(tmp_path):
    _, ours, names = both_models("llama", [2, 4], tmp_path)
    with pytest.raises(ValueError, match=r"'ties' needs adapters of equal rank \(got ranks \[2, 4\]\)"):
        lorakit.add_weighted_adapter(ours, names, [1.0, 1.0], "new", combination_type="ties", density=0.5)
    with pytest.raises(ValueError, match="no adapter named 'zz' on this model"):
        lorakit.add_weighted_adapter(ours, ["a0", "zz"], [1.0, 1.0], "new")
    with pytest.raises(ValueError, match="already holds an adapter named 'a1'"):
        lorakit.add_weighted_adapter(ours, names, [1.0, 1.0], "a1")
    with pytest.raises(ValueError, match=r"1 weight\(s\) for 2 adapter\(s\)"):
        lorakit.add_weighted_adapter(ours, names, [1.0], "new")
    assert lorakit.adapter_names(ours) == names  # nothing was added


def test_heads_need_modules_from_when_several_adapters_train_them(tmp_path):
    theirs, ours, names = both_models("bert", [4, 4], tmp_path)
    with torch.no_grad():  # give a1 its own head
        ours.classifier.modules_to_save["a1"].weight.add_(1.0)
    with pytest.raises(ValueError, match=r"\['a0', 'a1'\] each train their own 'classifier'.*modules_from=NAME"):
        lorakit.add_weighted_adapter(ours, names, [1.0, 1.0], "new", combination_type="cat")
    lorakit.add_weighted_adapter(ours, names, [1.0, 1.0], "new", combination_type="cat", modules_from="a1")
    copies = ours.classifier.modules_to_save
    assert torch.equal(copies["new"].weight, copies["a1"].weight)
    assert not torch.equal(copies["new"].weight, copies["a0"].weight)


def test_dora_adapters_are_refused():
    model = tiny_model("llama")
    lorakit.add_lora(model, lorakit.LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]), name="d")
    with pytest.raises(ValueError, match="'d' is a DoRA adapter"):
        lorakit.add_weighted_adapter(model, ["d"], [1.0], "new")


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "nf4"])
def test_cat_with_unit_weights_equals_the_adapters_summed(quantized):
    """cat is exact: weights 1 give the model of set_adapter([a, b]) (different ranks and layers), QLoRA too."""
    model = tiny_model("llama")
    if quantized:
        lorakit.quantize_model(model, lorakit.QuantConfig(kind="nf4", block_size=32))
    lorakit.add_lora(model, lorakit.LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]), name="a")
    lorakit.add_lora(model, lorakit.LoraConfig(r=4, alpha=16, target_modules=["v_proj", "o_proj"]), name="b")
    randomize_lora(model)
    summed = logits(lorakit.set_adapter(model, ["a", "b"]), inputs())
    lorakit.add_weighted_adapter(model, ["a", "b"], [1.0, 1.0], "ab", combination_type="cat")
    torch.testing.assert_close(logits(lorakit.set_adapter(model, "ab"), inputs()), summed, rtol=1e-5, atol=1e-5)
    assert lorakit.adapter_config(model, "ab").r == 6
