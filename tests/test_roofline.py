"""Speed-of-light formulas against hand-computed values, the hardware table, and the per-row columns."""

import math

import pandas as pd
import pytest

from perfkit import hardware, roofline
from perfkit.errors import UsageError

# llama3-8b by hand: embedding 128256·4096 = 525,336,576 (and as many in the untied lm_head);
# per layer q 4096·4096 + k,v 2·4096·1024 + o 4096·4096 + MLP 3·4096·14336 + norms 2·4096 = 218,112,000.
LLAMA3_EMBED = 128256 * 4096
LLAMA3_LAYER = 4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096
LLAMA3_PARAMS = 2 * LLAMA3_EMBED + 32 * LLAMA3_LAYER + 4096


def test_hand_parameter_count_is_the_built_models():
    from perfkit.models import count_params

    assert LLAMA3_LAYER == 218_112_000 and LLAMA3_PARAMS == 8_030_261_248
    for name in ("llama3-8b", "llama2-13b", "mistral-7b", "tiny-llama3-8b", "tiny-mistral-7b"):
        assert roofline.arch(name).params == count_params(name), name


def test_weight_bytes():
    assert roofline.weight_bytes("llama3-8b", "bfloat16") == 16_060_522_496
    assert round(roofline.weight_bytes("llama3-8b", "bfloat16") / 1e9, 2) == 16.06
    assert roofline.weight_bytes("llama3-8b", "float32") == 2 * 16_060_522_496
    assert round(roofline.weight_bytes("llama2-13b", "bfloat16") / 1e9, 2) == 26.03
    # A decode step reads all but the embedding table (one row per token is read, not the table).
    assert roofline.decode_weight_bytes("llama3-8b", "bfloat16") == 16_060_522_496 - 2 * LLAMA3_EMBED


def test_kv_cache_bytes_per_token():
    assert roofline.kv_bytes_per_token("llama3-8b", "bfloat16") == 128 * 1024  # 2·32 layers·8 kv heads·128·2 B
    assert roofline.kv_bytes_per_token("llama2-13b", "bfloat16") == 800 * 1024  # 2·40·40·128·2 B
    assert roofline.kv_bytes_per_token("mistral-7b", "bfloat16") == 128 * 1024
    assert roofline.kv_bytes_per_token("llama2-13b", "float32") == 1600 * 1024


def test_decode_bound_by_hand():
    # B=1, I=128, O=128: steps 1..127 attend to 129..255 positions, 192 on average.
    assert roofline.mean_decode_context(128, 128) == 192.0
    step = roofline.decode_bytes_per_step("llama3-8b", "bfloat16", 1, 128, 128)
    assert step == 15_009_849_344 + 192 * 131_072 == 15_035_015_168
    h100 = hardware.by_name("H100 SXM")
    assert roofline.decode_bound_ms(step, h100.mem_bw_bytes_s) == pytest.approx(4.48806, rel=1e-5)
    # The KV cache scales with batch: B=64 reads 64 caches per step.
    step64 = roofline.decode_bytes_per_step("llama3-8b", "bfloat16", 64, 128, 128)
    assert step64 - step == 63 * 192 * 131_072


def test_decode_context_with_sliding_window():
    # I=4090, O=11, window 4096: steps attend to 4091..4096, then 4096 four times.
    expected = (4091 + 4092 + 4093 + 4094 + 4095 + 4096 + 4 * 4096) / 10
    assert roofline.mean_decode_context(4090, 11, 4096) == expected
    assert math.isnan(roofline.mean_decode_context(16, 1))  # no decode step


def test_prefill_flops_by_hand():
    linear = 2 * 2048 * 32 * (LLAMA3_LAYER - 2 * 4096)  # norms are not matrix work
    lm_head = 2 * 4096 * 128256  # last position only
    attention = 4 * 32 * 32 * 128 * (2048 * 2049 // 2)  # QKᵀ and AV over causal keys
    flops = roofline.prefill_flops("llama3-8b", 1, 2048)
    assert flops == linear + lm_head + attention
    assert flops / 1e12 == pytest.approx(29.68, abs=0.01)
    assert roofline.prefill_bound_ms(flops, hardware.by_name("H100 SXM").bf16_flops) == pytest.approx(30.01, abs=0.01)
    assert roofline.prefill_flops("llama3-8b", 4, 2048) == 4 * flops
    # Mistral's window caps the keys each query sees: I=5000 > 4096.
    m = roofline.arch("mistral-7b")
    keys = 4096 * 4097 // 2 + (5000 - 4096) * 4096
    attn = 4 * 32 * 32 * 128 * keys
    assert (roofline.prefill_flops("mistral-7b", 1, 5000)
            == 2 * 5000 * 32 * (m.layer_params - 2 * 4096) + 2 * 4096 * 32000 + attn)


def test_unknown_peak_is_nan_never_a_guess():
    assert math.isnan(roofline.decode_bound_ms(1e9, None))
    assert math.isnan(roofline.decode_bound_ms(1e9, float("nan")))
    assert math.isnan(roofline.prefill_bound_ms(1e9, 0))
    assert math.isnan(roofline.fraction(float("nan"), 3.0))


@pytest.mark.parametrize("device_name,expected", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", None),
    ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA H200 NVL", None),
    ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
    ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"),
    ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L40", None),
    ("NVIDIA L4", "L4"),
    ("AMD EPYC 7B13", None),
    (None, None),
])
def test_hardware_lookup(device_name, expected):
    spec = hardware.lookup(device_name)
    assert (spec.name if spec else None) == expected


def test_hardware_peaks_are_dense():
    h100 = hardware.by_name("H100 SXM")
    assert h100.mem_bw_bytes_s == 3.35e12 and h100.bf16_flops == 989e12 and h100.matrix_flops("bfloat16") == 989e12
    assert hardware.by_name("H100 PCIe").bf16_flops == 756e12
    assert hardware.by_name("H200 SXM").mem_bw_bytes_s == 4.8e12
    assert hardware.by_name("A100 40GB").mem_bw_bytes_s == 1.555e12
    assert hardware.by_name("A100 80GB SXM").mem_bw_bytes_s == 2.039e12
    assert hardware.by_name("L40S").mem_bw_bytes_s == 864e9 and hardware.by_name("L40S").bf16_flops == 362e12
    assert hardware.by_name("L4").mem_bw_bytes_s == 300e9 and hardware.by_name("L4").bf16_flops == 121e12
    assert math.isnan(h100.matrix_flops("int8"))
    with pytest.raises(UsageError, match="unknown hardware"):
        hardware.by_name("TPU v5")


def test_hardware_yaml_override(tmp_path, monkeypatch):
    f = tmp_path / "hw.yaml"
    f.write_text("- name: RTX 4090\n  match: ['RTX 4090']\n  mem_bw_bytes_s: 1.008e12\n  bf16_flops: 165.2e12\n")
    monkeypatch.setenv("PERFKIT_HARDWARE", str(f))
    spec = hardware.lookup("NVIDIA GeForce RTX 4090")
    assert spec.name == "RTX 4090" and spec.mem_bw_bytes_s == 1.008e12
    assert math.isnan(spec.fp32_flops)  # not given: unknown, not guessed
    assert hardware.lookup("NVIDIA H100 PCIe").name == "H100 PCIe"  # the built-in table is still there
    f.write_text("- name: broken\n")
    with pytest.raises(UsageError, match="mem_bw_bytes_s"):
        hardware.lookup("anything")


def _row(**kw):
    base = dict(model="llama3-8b", dtype="bfloat16", batch=1, input_len=128, output_len=128, status="ok",
                device_name="NVIDIA H100 80GB HBM3", ttft_ms=20.0, tpot_ms=6.0)
    base.update(kw)
    return base


def test_add_speed_of_light_columns():
    probe = {"device_name": "NVIDIA H100 80GB HBM3", "copy_bandwidth_bytes_s": 3.0e12,
             "matmul_flops": {"bfloat16": 700e12}}
    df = pd.DataFrame([
        _row(),
        _row(device_name="Some Unknown GPU"),
        _row(model="/no/such/checkpoint"),
        _row(device_name="AMD EPYC 7B13", dtype="float32"),
    ])
    out = roofline.add_speed_of_light(df, probe=probe)
    assert list(out.columns[: len(df.columns)]) == list(df.columns) and len(out) == 4
    h100 = out.iloc[0]
    step = 15_035_015_168
    assert h100["hw_name"] == "H100 SXM"
    assert h100["decode_bound_ms"] == pytest.approx(step / 3.35e12 * 1e3)
    assert h100["mbu_spec"] == pytest.approx(step / 3.35e12 * 1e3 / 6.0)
    assert h100["mbu_probed"] == pytest.approx(step / 3.0e12 * 1e3 / 6.0)
    flops = roofline.prefill_flops("llama3-8b", 1, 128)
    assert h100["mfu_spec"] == pytest.approx(flops / 989e12 * 1e3 / 20.0)
    assert h100["mfu_probed"] == pytest.approx(flops / 700e12 * 1e3 / 20.0)
    assert h100["decode_gb_s"] == pytest.approx(step / 6e-3 / 1e9)
    # Unknown device: the work is known, the bounds are not; the probe belongs to another device.
    unknown = out.iloc[1]
    assert pd.isna(unknown["hw_name"]) and unknown["prefill_flops"] == flops
    for col in ("decode_bound_ms", "mbu_spec", "mbu_probed", "mfu_spec", "mfu_probed"):
        assert math.isnan(unknown[col]), col
    assert all(math.isnan(out.iloc[2][c]) for c in ("weight_bytes", "mbu_spec"))
    # A CPU row with a CPU probe gets probed fractions and no spec ones.
    cpu_probe = {"device_name": "AMD EPYC 7B13", "copy_bandwidth_bytes_s": 20e9, "matmul_flops": {"float32": 1e11}}
    cpu = roofline.add_speed_of_light(df, probe=[probe, cpu_probe]).iloc[3]
    assert math.isnan(cpu["mbu_spec"])
    assert cpu["mbu_probed"] == pytest.approx(roofline.decode_bytes_per_step("llama3-8b", "float32", 1, 128, 128)
                                              / 20e9 * 1e3 / 6.0)


def test_add_speed_of_light_fixed_hardware_and_failed_rows():
    df = pd.DataFrame([_row(device_name="whatever", status="oom", ttft_ms=float("nan"), tpot_ms=float("nan"))])
    out = roofline.add_speed_of_light(df, hardware="L4")
    assert out.iloc[0]["hw_name"] == "L4"
    assert out.iloc[0]["decode_bound_ms"] == pytest.approx(15_035_015_168 / 300e9 * 1e3)
    assert math.isnan(out.iloc[0]["mbu_spec"])  # nothing was measured


def test_probe_files_are_loaded(tmp_path):
    import json

    (tmp_path / "probes").mkdir()
    rec = {"device_name": "X", "copy_bandwidth_bytes_s": 1e9, "matmul_flops": {}}
    (tmp_path / "probes" / "a.json").write_text(json.dumps(rec))
    assert roofline.load_probe(tmp_path) == [rec]
    assert roofline.load_probe(tmp_path / "probes" / "a.json") == [rec]


def test_a_grace_hopper_is_not_taken_for_an_h200():
    from perfkit.hardware import lookup

    assert lookup("NVIDIA GH200 480GB") is None  # unknown, not a guess
    assert lookup("NVIDIA H200").name == "H200 SXM"


def test_a_registry_models_numbers_are_those_of_its_transformers_config():
    """arch() reads registry entries directly (no transformers config on the results path): the same numbers."""
    from perfkit.models import model_config
    from perfkit.registry import REGISTRY

    for name in REGISTRY:
        c = model_config(name)
        got = roofline.arch(name)
        assert (got.layers, got.hidden, got.heads, got.kv_heads, got.head_dim, got.intermediate, got.vocab,
                got.sliding_window, got.tied) == (
            c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads, c.intermediate_size,
            c.vocab_size, getattr(c, "sliding_window", None), bool(c.tie_word_embeddings)), name


@pytest.mark.parametrize("window", [None, 1, 7, 64])
def test_the_closed_form_context_sums_equal_summing_position_by_position(window):
    for input_len in (1, 5, 63, 64, 65, 200):
        keys = sum(min(n, window or n) for n in range(1, input_len + 1))
        assert roofline._windowed_sum(input_len, window) == keys
        for output_len in (2, 3, 50):
            steps = [min(input_len + k, window or input_len + k) for k in range(1, output_len)]
            assert roofline.mean_decode_context(input_len, output_len, window) == pytest.approx(sum(steps) / len(steps))
