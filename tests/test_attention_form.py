"""The attention form of the VT module (`attention_impl="sdpa"`) against the reference form.

Each attention step (filter and recurrent tokenizers under every numerics, the paper and mhsa
transformers, the projector) gives the reference form's output within float tolerance, on NCHW and
channels_last maps; every VT model has the same parameters, state dict, initial weights and counted
MACs in both forms; the attention maps still come out (from the reference form). The CUDA
counterparts are in tests/test_gpu.py.

Tolerance: max |sdpa - reference| / max |reference| over each module's output. Measured here
(fp32, 1 thread): at most 3.0e-6 over the modules and models below (tokenizers 7e-7, transformer
2e-7, projector 2e-6); TOL leaves a margin for other
BLAS builds and kernel orders.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.measure.complexity import count_executed, measure_complexity
from models import build_model, token_attention
from models.layers import NUMERICS, pixel_rows
from models.projector import Projector
from models.tokenizers import FilterTokenizer, RecurrentTokenizer, Tokenizer
from models.transformer import MHSATransformer, PaperTransformer
from models.vt import attention_form

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TOL = 1e-5
LAYOUTS = (torch.contiguous_format, torch.channels_last)
TINY = {"stem": "cifar", "width": 0.25, "num_classes": 10}  # stage-4 maps of C = 64 channels, 8x8 at 32x32
FUSED_CPU_KERNEL = "_scaled_dot_product_flash_attention_for_cpu"


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def _both_forms(module, *inputs):
    """The module's output in the reference form and in the attention form (eval, no grad)."""
    module.eval()
    with torch.no_grad():
        with attention_form(module, "reference"):
            ref = module(*inputs)
        with attention_form(module, "sdpa"):
            fast = module(*inputs)
    return ref, fast


def _map(batch: int, channels: int, layout, scale: float = 2.0) -> torch.Tensor:
    return (torch.randn(batch, channels, 5, 7) * scale).contiguous(memory_format=layout)


# --------------------------------------------------------------------------------------------- modules ---

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("token_channels", [32, 48])  # 32 = C: no adapter; 48: the adapter C -> C_T
@pytest.mark.parametrize("numerics", NUMERICS)
def test_filter_tokenizer(numerics, token_channels, layout):
    torch.manual_seed(0)
    tokenizer = FilterTokenizer(32, token_channels, 6, numerics=numerics)
    (ref, attention), (fast, none) = _both_forms(tokenizer, _map(2, 32, layout))
    assert attention.shape == (2, 6, 35) and none is None  # the fused kernel forms no map
    assert fast.shape == ref.shape == (2, 6, token_channels)
    assert _relative_error(fast, ref) <= TOL


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("refresh", ["all", "half"])
@pytest.mark.parametrize("numerics", NUMERICS)
def test_recurrent_tokenizer(numerics, refresh, layout):
    torch.manual_seed(0)
    tokenizer = RecurrentTokenizer(32, 48, 6, refresh=refresh, numerics=numerics)
    x, tokens_in = _map(2, 32, layout), torch.randn(2, 6, 48)
    (ref, _), (fast, none) = _both_forms(tokenizer, x, tokens_in)
    assert none is None and fast.shape == ref.shape == (2, 6, 48)
    assert _relative_error(fast, ref) <= TOL
    if refresh == "half":  # the kept half passes through untouched in both forms
        assert torch.equal(fast[:, :3], tokens_in[:, 3:]) and torch.equal(ref[:, :3], tokens_in[:, 3:])


@pytest.mark.parametrize("numerics", NUMERICS)
def test_paper_transformer(numerics):
    torch.manual_seed(0)
    transformer = PaperTransformer(48, numerics=numerics)
    ref, fast = _both_forms(transformer, torch.randn(3, 6, 48) * 2)
    assert _relative_error(fast, ref) <= TOL


def test_mhsa_attention_form_is_the_written_out_attention():
    """mhsa runs SDPA in both forms: held here to softmax(Q K^T / sqrt(d_head)) V written out."""
    torch.manual_seed(0)
    transformer = MHSATransformer(64, heads=4, groups=2, attention_impl="sdpa").eval()
    tokens = torch.randn(2, 6, 64)
    q, k, v = (transformer._split(proj(tokens)) for proj in (transformer.query, transformer.key, transformer.value))
    attention = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    mixed = tokens + (attention @ v).transpose(1, 2).reshape(2, 6, 64)
    want = mixed + transformer.ff(mixed)
    ref, fast = _both_forms(transformer, tokens)
    assert _relative_error(fast, want) <= TOL and _relative_error(ref, want) <= TOL


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("token_channels, groups", [(32, 1), (48, 1), (48, 4)])  # 32 = C: no value map
@pytest.mark.parametrize("numerics", NUMERICS)
def test_projector(numerics, token_channels, groups, layout):
    torch.manual_seed(0)
    projector = Projector(32, token_channels, channels=16, groups=groups, numerics=numerics)
    x, tokens = _map(2, 32, layout), torch.randn(2, 6, token_channels)
    ref, fast = _both_forms(projector, x, tokens)
    assert fast.shape == ref.shape == x.shape
    assert _relative_error(fast - x, ref - x) <= TOL  # the projected term itself, not hidden by the residual


def test_pixel_rows_is_a_view_of_a_channels_last_map():
    x = _map(2, 32, torch.channels_last)
    rows = pixel_rows(x)
    assert rows.shape == (2, 35, 32) and rows.data_ptr() == x.data_ptr() and rows.is_contiguous()
    nchw = pixel_rows(x.contiguous())
    assert torch.equal(nchw, rows) and nchw.stride(-1) == 1


# ---------------------------------------------------------------------------------------------- models ---

def _module_outputs(model, x) -> dict[str, torch.Tensor]:
    """Every tokenizer's tokens, transformer's and projector's output, and the model's output."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, out):
            outputs[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        return hook

    kinds = (Tokenizer, PaperTransformer, MHSATransformer, Projector)
    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            outputs["output"] = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _twins(name: str, **options):
    """The model in both forms, built under one seed: (reference, sdpa). The `fused` form: test_token_attention_kernel.py."""
    models = []
    for impl in ("reference", "sdpa"):
        torch.manual_seed(0)
        models.append(build_model(name, attention_impl=impl, **options).eval())
    return models


def _assert_same_weights(reference, sdpa) -> None:
    want, got = reference.state_dict(), sdpa.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


def _assert_same_outputs(reference, sdpa, x) -> None:
    want, got = _module_outputs(reference, x), _module_outputs(sdpa, x)
    assert got.keys() == want.keys() and len(want) > 3
    for key in want:
        assert _relative_error(got[key], want[key]) <= TOL, key


def _assert_forms_agree(model, x) -> None:
    """One built model run in each form (`attention_form`): every module's output within TOL."""
    with attention_form(model, "reference"):
        want = _module_outputs(model, x)
    with attention_form(model, "sdpa"):
        got = _module_outputs(model, x)
    assert got.keys() == want.keys() and len(want) > 3
    for key in want:
        assert _relative_error(got[key], want[key]) <= TOL, key


# tokenizer options (first module; later ones recurrent unless recurrent=False), C_T = C = 64 (no adapter, no
# value map: `centered` adds the tokens' deviations) and C_T = 32 (adapter and value map).
TOKENIZER_CASES = [
    {"tokenizer": "filter"},
    {"tokenizer": "filter", "refresh": "half"},
    {"tokenizer": "filter", "recurrent": False},
    {"tokenizer": "pooling"},
    {"tokenizer": "clustering"},
]


@pytest.mark.parametrize("token_channels", [64, 32])
@pytest.mark.parametrize("transformer", ["paper", "mhsa", "none"])
@pytest.mark.parametrize("numerics", NUMERICS)
@pytest.mark.parametrize("tokenizer", TOKENIZER_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_vt_resnet_every_choice(tokenizer, numerics, transformer, token_channels):
    options = {"transformer": transformer}
    if transformer == "mhsa":
        options |= {"heads": 4, "kqv_groups": 2}
    torch.manual_seed(0)
    model = build_model("vt_resnet18", **TINY, token_channels=token_channels, numerics=numerics, last_projector=True,
                        **tokenizer, **options).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    _assert_forms_agree(model, x)
    _assert_forms_agree(model, x.contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize("options", [{}, {"tokenizer": "clustering", "transformer": "mhsa", "refresh": "half"}])
def test_both_forms_build_the_same_weights(options):
    """Same parameters, state-dict keys and initial weights (the same RNG draws) in both forms."""
    reference, sdpa = _twins("vt_resnet18", **TINY, token_channels=32, **options)
    _assert_same_weights(reference, sdpa)
    assert sdpa.vt.blocks[0].tokenizer.attention_impl == "sdpa" and sdpa.vt.blocks[0].projector.attention_impl == "sdpa"
    assert reference.vt.blocks[1].tokenizer.attention_impl == "reference"


@pytest.mark.parametrize("options", [{}, {"transformer": "mhsa", "num_tokens": 4}, {"numerics": "iccv"}],
                         ids=["default", "mhsa", "iccv"])
def test_vt_fpn(options):
    reference, sdpa = _twins("vt_fpn_r50", num_classes=5, **options)
    _assert_same_weights(reference, sdpa)
    _assert_same_outputs(reference, sdpa, torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))


def test_gradients_match():
    """Training runs the attention form too: every parameter's gradient is the reference one's."""
    reference, sdpa = _twins("vt_resnet18", **TINY, token_channels=32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    grads = []
    for model in (reference, sdpa):
        model.train()
        F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    want, got = grads
    vt_grads = [n for n in want if n.startswith("vt.")]
    assert vt_grads and all(want[n] is not None and want[n].abs().max() > 0 for n in vt_grads)
    for name in want:
        assert (got[name] - want[name]).abs().max() <= 1e-4 * want[name].abs().max() + 1e-12, name


@pytest.mark.slow
def test_compiled_attention_form_gives_the_reference_outputs():
    """The grid's compiled cells run the attention form under torch.compile (inductor), NCHW and channels_last."""
    reference, sdpa = _twins("vt_resnet18", **TINY, token_channels=32)
    compiled = torch.compile(sdpa)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(x)
        for layout in LAYOUTS:
            assert _relative_error(compiled(x.contiguous(memory_format=layout)), want) <= TOL, layout


def test_cpu_bf16_autocast_stays_close():
    reference, sdpa = _twins("vt_resnet18", **TINY, token_channels=32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = reference(x).float(), sdpa(x).float()
    assert torch.isfinite(got).all() and ((got - want).norm() / want.norm()).item() < 3e-2


# -------------------------------------------------------------------------------------------- counting ---

@pytest.mark.parametrize("name, size", [("vt_resnet18", 64), ("vt_resnet50", 64), ("vt_fpn_r50", 64)])
def test_counted_macs_are_the_reference_forms(name, size):
    """Executed and traced MACs are identical in both forms; the attention form did run the fused kernel."""
    reference, sdpa = (measure_complexity(model, size) for model in _twins(name))
    assert (sdpa.gmacs, sdpa.gmacs_traced) == (reference.gmacs, reference.gmacs_traced)
    assert sdpa.stage_gmacs == reference.stage_gmacs and sdpa.params_m == reference.params_m
    assert sdpa.executed_by_operator_gmacs.get(FUSED_CPU_KERNEL, 0) > 0
    assert FUSED_CPU_KERNEL not in reference.executed_by_operator_gmacs
    assert not sdpa.unsupported_ops


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("vt_resnet18", 224), ("vt_resnet50", 224), ("vt_fpn_r50", 473)])
def test_counted_macs_at_the_papers_sizes(name, size):
    reference, sdpa = (measure_complexity(model, size) for model in _twins(name))
    assert (sdpa.gmacs, sdpa.gmacs_traced) == (reference.gmacs, reference.gmacs_traced)


def test_the_fused_kernel_takes_every_step_whose_query_and_value_widths_match():
    """On CPU the fused kernel needs equal query and value widths: VT-ResNet-18's tokenizers and projector
    (C = d = 256) take it; the paper transformer (d = C_T / 2 against C_T) runs SDPA's math form."""
    _, sdpa = _twins("vt_resnet18")
    _, _, by_op = count_executed(sdpa, torch.randn(1, 3, 224, 224))
    # 2 tokenizers (L x HW x (C + C)) + 1 projector (HW x L x (d + C)) at L = 16, HW = 196, C = d = 256
    assert by_op[FUSED_CPU_KERNEL] == 3 * 16 * 196 * 512


# ----------------------------------------------------------------------------------- maps and options ---

def test_token_attention_gives_the_reference_maps_and_restores_the_form():
    reference, sdpa = _twins("vt_resnet18", **TINY, token_channels=32)
    x = torch.randn(2, 3, 32, 32)
    want, got = token_attention(reference, x), token_attention(sdpa, x)
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        assert g.shape == w.shape == (2, 16, 8, 8) and torch.equal(g, w)
    assert {m.attention_impl for m in sdpa.modules() if hasattr(m, "attention_impl")} == {"sdpa"}


def test_attention_impl_is_checked_and_applies_only_to_vt_models():
    with pytest.raises(ValueError, match="unknown attention_impl 'flash'; choose from reference, sdpa, fused"):
        build_model("vt_resnet18", attention_impl="flash")
    with pytest.raises(ValueError, match="do not apply to 'resnet18'"):
        build_model("resnet18", attention_impl="sdpa")
    with pytest.raises(ValueError, match="unknown attention_impl"):
        with attention_form(build_model("vt_resnet18", **TINY, token_channels=32), "flash"):
            pass


def test_the_cpu_study_grid_pairs_both_forms_with_one_baseline():
    """experiments/speed_attention_cpu.yaml: each VT cell in both forms, named explicitly, beside its
    registry baseline at the same latency settings (the report pairs them; `--set` a channels_last axis
    adds both sides)."""
    from pathlib import Path

    from bench.pipeline.grid import load_grid
    from models import model_facts

    grid = Path(__file__).resolve().parents[1] / "experiments" / "speed_attention_cpu.yaml"

    def settings(config):
        lat = config["latency"]
        return (config["input_size"], lat["batch_size"], lat.get("compile"), lat.get("channels_last"))

    for overrides in ([], [("axes.channels_last", [False, True])]):
        cells = [cell.config for cell in load_grid(grid, overrides=overrides).cells]
        baselines = {(c["model"], settings(c)) for c in cells if not model_facts(c["model"]).baseline}
        vt = [c for c in cells if model_facts(c["model"]).baseline]
        forms = {}
        for c in vt:
            assert (model_facts(c["model"]).baseline, settings(c)) in baselines, c
            forms.setdefault((c["model"], settings(c)), set()).add(c["model_args"]["attention_impl"])
        assert set(map(frozenset, forms.values())) == {frozenset({"reference", "sdpa"})}
        assert {m for m, _ in forms} == {"vt_resnet18", "vt_resnet50", "vt_fpn_r50"}
        assert len(vt) == 2 * len(baselines) and len(cells) == (27 if not overrides else 51)
