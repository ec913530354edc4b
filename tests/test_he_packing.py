"""Packed homomorphic encryption (clara_fl.fl.he_packing and the HE filters, aggregator and generator built on
FLARE's): the layout, and the whole encrypt -> aggregate -> update -> decrypt path on the job's CKKS context
(clara-fl's parameters through FLARE's HEBuilder), run without FLARE."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from clara_fl.fl.he_packing import (
    MAX_SITES,
    PACKED_PREFIX,
    RAW_WEIGHT_SUM_META_KEY,
    WEIGHT_SUM_META_KEY,
    WEIGHT_SUM_TARGET,
    PackedLayout,
    decrypt_packed,
    deserialize_packed,
    encrypt_packed,
    pack_plain,
    select_layers,
    serialize_packed,
    slot_count,
    unpack,
    used_weight,
    value_bound,
)

ts = pytest.importorskip("tenseal")

TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def contexts() -> tuple[object, object, bytes]:
    """(server's public context, sites' secret context, the public one serialized), as provisioning makes them."""
    from clara_fl.fl.jobs.he_context import tenseal_contexts

    server, client = tenseal_contexts()
    return ts.context_from(server), ts.context_from(client), server


def state_dict(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    """A small network's tensors: one spans several ciphertexts, some are tiny, one is an integer buffer."""
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": (rng.standard_normal((16, 8, 3, 3, 3)) * scale).astype(np.float32),  # 3456 values
        "conv.bias": (rng.standard_normal(16) * scale).astype(np.float32),
        "fc.weight": (rng.standard_normal((40, 250)) * scale).astype(np.float32),  # 10000 values
        "norm.num_batches_tracked": np.array(seed, dtype=np.int64),
    }


def test_packing_fills_each_ciphertext_and_unpacking_restores_every_tensor_exactly() -> None:
    params = state_dict(0)
    layout = PackedLayout.of(params, list(params), chunk_size=4096)

    chunks = pack_plain(params, layout)
    restored = unpack(chunks, layout)

    assert len(chunks) == 4 == -(-layout.total // 4096), "13473 values in 4096-value chunks, not one per tensor"
    assert all(k.startswith(PACKED_PREFIX) for k in chunks)
    for name, value in params.items():
        assert restored[name].shape == value.shape and restored[name].dtype == value.dtype
        assert np.array_equal(restored[name], value)


def test_a_layout_survives_plain_metadata_and_a_malformed_one_is_refused() -> None:
    params = state_dict(0)
    layout = PackedLayout.of(params, ["fc.weight", "conv.bias"], chunk_size=4096)

    assert PackedLayout.from_meta(layout.to_meta()) == layout
    with pytest.raises(ValueError, match="not a packed HE layout"):
        PackedLayout.from_meta({"names": ["a"], "shapes": [[2]]})


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (None, ["conv.weight", "conv.bias", "fc.weight", "norm.num_batches_tracked"]),
        ("^conv\\.", ["conv.weight", "conv.bias"]),
        (["fc.weight", "conv.bias"], ["conv.bias", "fc.weight"]),
    ],
    ids=["all", "regex", "names_in_model_order"],
)
def test_layer_selection_follows_flares_encrypt_layers_rule(selection: object, expected: list[str]) -> None:
    assert select_layers(list(state_dict(0)), selection) == expected  # type: ignore[arg-type]


def test_a_selection_that_matches_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="matches none"):
        select_layers(list(state_dict(0)), "decoder")


def test_a_ciphertext_is_sent_without_the_context_and_read_back_under_the_receivers_own(contexts) -> None:
    server, client, server_bytes = contexts
    params = state_dict(1)
    layout = PackedLayout.of(params, list(params), slot_count(client))

    sent = serialize_packed(encrypt_packed(client, params, layout))

    assert slot_count(client) == 1024
    # the bytes carry no context: TenSEAL needs the receiver's to read them
    assert all(isinstance(b, bytes) for b in sent.values())
    assert all(ts.ckks_vector_from(server, b).size() <= 1024 for b in sent.values())
    decrypted = decrypt_packed(client, sent, layout)
    assert max(float(np.max(np.abs(decrypted[k] - params[k]))) for k in params) < TOLERANCE


def test_a_site_sends_under_3_bytes_per_float32_byte_seeded_at_half_an_unseeded_ciphertext(contexts) -> None:
    _, client, _ = contexts
    params = {"w": np.random.default_rng(0).standard_normal(1024 * 8).astype(np.float32)}
    layout = PackedLayout.of(params, ["w"], slot_count(client))

    sent = encrypt_packed(client, params, layout)

    seeded = sum(len(b) for b in sent.values())
    unseeded = sum(len(ts.ckks_vector(client, c).serialize()) for c in pack_plain(params, layout).values())
    assert seeded < 3 * params["w"].nbytes
    assert seeded < 0.55 * unseeded


def test_the_server_adds_but_cannot_multiply_under_its_context(contexts) -> None:
    server, client, _ = contexts
    params = {"w": np.linspace(-1.0, 1.0, 1024)}
    layout = PackedLayout.of(params, ["w"], slot_count(client))
    [chunk] = deserialize_packed(server, encrypt_packed(client, params, layout)).values()

    total = chunk + chunk + chunk

    # three fresh ciphertexts' noise: the division by the weight sum (>= 3 here) brings it under 1e-3
    decrypted = np.asarray(ts.ckks_vector_from(client, total.serialize()).decrypt())
    assert np.max(np.abs(decrypted - 3 * params["w"])) < 3 * TOLERANCE
    with pytest.raises(ValueError, match="scale out of bounds"):
        chunk * 0.5  # no level to rescale into: any weighing must happen at the sites


def test_a_sum_is_divided_by_its_weight_sum_after_decryption(contexts) -> None:
    _, client, _ = contexts
    params = {"w": np.linspace(-2.0, 2.0, 3000)}
    layout = PackedLayout.of(params, ["w"], slot_count(client))

    decrypted = decrypt_packed(client, encrypt_packed(client, params, layout, scale=40.0), layout, divisor=40.0)

    assert float(np.max(np.abs(decrypted["w"] - params["w"]))) < TOLERANCE
    with pytest.raises(ValueError, match="must be positive"):
        decrypt_packed(client, encrypt_packed(client, params, layout), layout, divisor=0.0)


def test_the_value_bound_is_a_quarter_of_the_modulus_over_the_scale(contexts) -> None:
    server, client, _ = contexts

    assert value_bound(client) == value_bound(server) == 2.0 ** (36 - 2) / 2.0**20


def test_decrypting_with_the_servers_public_context_is_refused(contexts) -> None:
    server, client, _ = contexts
    params = state_dict(1)
    layout = PackedLayout.of(params, list(params), slot_count(client))

    with pytest.raises(ValueError, match="secret key"):
        decrypt_packed(server, serialize_packed(encrypt_packed(client, params, layout)), layout)


def _received(decryptor, sent) -> tuple[object, dict[str, np.ndarray]]:
    """A site's FL context after its decryptor took the task's model ``sent``, and the model it took."""
    from nvflare.apis.dxo import from_shareable
    from nvflare.apis.fl_context import FLContext

    site_ctx = FLContext()
    shareable = copy.deepcopy(sent)  # each site gets its own copy of the task data
    decrypted = decryptor.process_dxo(from_shareable(shareable), shareable, site_ctx)
    return site_ctx, dict((decrypted or from_shareable(shareable)).data)


def _site_result(encryptor, site_ctx, site: str, diff: dict[str, np.ndarray], steps: int):
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.app_common.app_constant import AppConstants

    dxo = DXO(DataKind.WEIGHT_DIFF, data={k: v.copy() for k, v in diff.items()})
    dxo.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, steps)
    site_ctx.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    encrypted = encryptor.process_dxo(dxo, dxo.to_shareable(), site_ctx).to_shareable()
    encrypted.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    encrypted.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    return encrypted


def _he_parts(contexts, encrypt_layers, weights):
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_context import FLContext

    from clara_fl.fl.server.he import HEInTimeAccumulateWeightedAggregator, HEModelShareableGenerator
    from clara_fl.fl.site.he_filters import HEModelDecryptor, HEModelEncryptor

    server, client, _ = contexts
    encryptor = HEModelEncryptor(encrypt_layers=encrypt_layers, aggregation_weights=weights)
    encryptor.tenseal_context = client
    if encryptor.encrypt_layers is None:
        encryptor.encrypt_layers = [True]  # what FLARE's START_RUN sets
    aggregator = HEInTimeAccumulateWeightedAggregator(aggregation_weights=weights)
    aggregator.tenseal_context = server
    generator = HEModelShareableGenerator()
    generator.tenseal_context = server
    decryptor = HEModelDecryptor()
    decryptor.tenseal_context = client
    aggregator.handle_event(EventType.START_RUN, FLContext())
    return encryptor, aggregator, generator, decryptor


AGGREGATION_WEIGHTS = {"site-1": 2.0, "site-2": 1.0, "site-3": 0.5}
STEPS_BY_ROUND = ({"site-1": 3, "site-2": 7, "site-3": 5}, {"site-1": 6, "site-2": 2, "site-3": 5})


def test_the_first_round_weighs_by_aggregation_weights_alone() -> None:
    assert used_weight(2.0, steps=7.0, previous_raw_sum=None) == 2.0


def test_a_later_round_weighs_by_steps_times_aggregation_weight_over_the_previous_raw_sum() -> None:
    raw = {"site-1": 2.0 * 6, "site-2": 1.0 * 2, "site-3": 0.5 * 5}

    used = {site: used_weight(AGGREGATION_WEIGHTS[site], STEPS_BY_ROUND[1][site], 15.5) for site in raw}

    assert used == pytest.approx({site: r * WEIGHT_SUM_TARGET / 15.5 for site, r in raw.items()})
    assert sum(used.values()) == pytest.approx(WEIGHT_SUM_TARGET * sum(raw.values()) / 15.5)
    with pytest.raises(ValueError, match="must be positive"):
        used_weight(1.0, 3.0, 0.0)


@pytest.mark.integration  # FLARE's aggregator stack imports in a few seconds
@pytest.mark.parametrize("encrypt_layers", [None, "^fc\\."], ids=["all_layers", "some_layers"])
def test_two_he_rounds_give_the_aggregation_weighted_then_the_fedavg_model_within_1e_3(
    contexts, encrypt_layers
) -> None:
    parts = _he_parts(contexts, encrypt_layers, AGGREGATION_WEIGHTS)
    base = state_dict(100)
    server_ctx, sent = _first_model(parts[2], base)
    rules = (AGGREGATION_WEIGHTS, {s: AGGREGATION_WEIGHTS[s] * n for s, n in STEPS_BY_ROUND[1].items()})
    expected = base

    for round_number, steps in enumerate(STEPS_BY_ROUND):
        diffs = {site: state_dict(10 * round_number + i, scale=0.01) for i, site in enumerate(steps)}
        sent, _ = _he_round(parts, sent, server_ctx, diffs, steps)
        expected = _weighted_mean(expected, diffs, rules[round_number])

    _, decrypted = _received(parts[3], sent)
    for name, value in expected.items():
        got = np.asarray(decrypted[name], dtype=np.float64).reshape(value.shape)
        if np.issubdtype(base[name].dtype, np.integer):
            assert got == pytest.approx(np.rint(value), abs=1)
        else:
            assert float(np.max(np.abs(got - value))) < TOLERANCE, name


@pytest.mark.integration
def test_a_round_states_its_weight_sums_and_the_next_rounds_weights_sum_to_the_target_times_the_raw_ratio(
    contexts,
) -> None:
    parts = _he_parts(contexts, None, AGGREGATION_WEIGHTS)
    server_ctx, sent = _first_model(parts[2], {"w": np.zeros(8)})
    raw_sums = [sum(AGGREGATION_WEIGHTS[s] * n for s, n in steps.items()) for steps in STEPS_BY_ROUND]  # 15.5, 16.5

    metas = []
    for steps in STEPS_BY_ROUND:
        sent, aggregated = _he_round(parts, sent, server_ctx, {s: {"w": np.ones(8)} for s in steps}, steps)
        metas.append(aggregated.meta)

    assert metas[0][WEIGHT_SUM_META_KEY] == pytest.approx(sum(AGGREGATION_WEIGHTS.values()))
    assert [m[RAW_WEIGHT_SUM_META_KEY] for m in metas] == pytest.approx(raw_sums)
    assert metas[1][WEIGHT_SUM_META_KEY] == pytest.approx(WEIGHT_SUM_TARGET * raw_sums[1] / raw_sums[0])


@pytest.mark.integration
def test_a_site_refuses_in_one_line_values_whose_share_could_wrap_a_sum_of_max_sites_shares(contexts) -> None:
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_context import FLContext

    from clara_fl.fl.site.he_filters import RECEIVED_MODEL_PROP

    encryptor, *_ = _he_parts(contexts, None, None)
    site_ctx = FLContext()
    site_ctx.set_prop(RECEIVED_MODEL_PROP, {"w": np.full(4, 300.0)}, private=True, sticky=False)
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": np.zeros(4, dtype=np.float32)})
    dxo.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 3)  # first round: weight 1, share 300 >= 16384 / 64

    with pytest.raises(ValueError, match="reach 300 .*beyond the 256 one of up to 64 sites") as refused:
        encryptor.process_dxo(dxo, dxo.to_shareable(), site_ctx)
    assert "\n" not in str(refused.value)


@pytest.mark.integration
def test_the_server_fails_the_round_rather_than_add_more_than_max_sites_shares(contexts, monkeypatch) -> None:
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.app_constant import AppConstants

    from clara_fl.fl.site.he_filters import RECEIVED_MODEL_PROP

    encryptor, aggregator, _, _ = _he_parts(contexts, None, None)
    panics: list[str] = []
    monkeypatch.setattr(aggregator, "system_panic", lambda reason, fl_ctx: panics.append(reason))
    server_ctx = FLContext()
    server_ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    sites = [f"site-{i}" for i in range(MAX_SITES + 1)]
    results = []
    for site in sites:
        site_ctx = FLContext()
        site_ctx.set_prop(RECEIVED_MODEL_PROP, {"w": np.zeros(4)}, private=True, sticky=False)
        results.append(_site_result(encryptor, site_ctx, site, {"w": np.ones(4)}, 1))

    accepted = [aggregator.accept(result, server_ctx) for result in results]

    assert accepted == [True] * MAX_SITES + [False]
    assert len(panics) == 1 and f"{sites[-1]}: a round adds at most {MAX_SITES} HE shares" in panics[0]
    assert "\n" not in panics[0]


@pytest.mark.integration
def test_the_sum_is_serialized_once_and_becomes_the_global_model_without_reading_the_model_it_replaces(
    contexts,
) -> None:
    from nvflare.apis.dxo import from_shareable
    from nvflare.app_common.abstract.model import ModelLearnableKey
    from nvflare.app_common.app_constant import AppConstants

    encryptor, aggregator, generator, decryptor = _he_parts(contexts, None, AGGREGATION_WEIGHTS)
    server_ctx, sent = _first_model(generator, state_dict(100))
    for i, (site, n) in enumerate(STEPS_BY_ROUND[0].items()):
        site_ctx, _ = _received(decryptor, sent)
        assert aggregator.accept(_site_result(encryptor, site_ctx, site, state_dict(i, scale=0.01), n), server_ctx)
    # FLARE's generator reads the replaced model's chunks under the context: these are no ciphertext
    replaced = {f"{PACKED_PREFIX}000000": b"not a ciphertext"}
    server_ctx.get_prop(AppConstants.GLOBAL_MODEL)[ModelLearnableKey.WEIGHTS] = replaced

    aggregated = aggregator.aggregate(server_ctx)
    learnable = generator.shareable_to_learnable(aggregated, server_ctx)

    floating = [k for k, v in state_dict(0).items() if np.issubdtype(v.dtype, np.floating)]
    layout = PackedLayout.of(state_dict(0), floating, slot_count(contexts[1]))
    sums = {k: v for k, v in from_shareable(aggregated).data.items() if k.startswith(PACKED_PREFIX)}
    assert sorted(sums) == layout.keys and all(isinstance(v, bytes) for v in sums.values())
    assert all(learnable[ModelLearnableKey.WEIGHTS][k] is v for k, v in sums.items())


@pytest.mark.integration
def test_a_packed_global_model_of_bytes_is_saved_as_it_is_without_the_serialize_filter(monkeypatch) -> None:
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable

    from clara_fl.fl.he_packing import LAYOUT_META_KEY
    from clara_fl.fl.server.he import HEClaraModelPersistor

    persistor = HEClaraModelPersistor(filter_id="he_serialize_filter")
    saved: list[dict[str, object]] = []
    monkeypatch.setattr(persistor, "save_model", lambda ml, fl_ctx: saved.append(dict(ml[ModelLearnableKey.WEIGHTS])))
    params = state_dict(0)
    layout = PackedLayout.of(params, ["fc.weight"], chunk_size=1024)
    weights = {**{k: b"ciphertext" for k in layout.keys}, "conv.bias": params["conv.bias"]}
    model = make_model_learnable(dict(weights), {LAYOUT_META_KEY: layout.to_meta()})

    persistor.save(model, FLContext())  # no engine: the filter's lookup would fail

    assert len(saved) == 1 and all(saved[0][k] is v for k, v in weights.items())
    assert all(model[ModelLearnableKey.WEIGHTS][k] is v for k, v in weights.items())


@pytest.mark.integration
def test_an_update_without_the_model_it_was_trained_from_is_refused(contexts) -> None:
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_context import FLContext

    encryptor, *_ = _he_parts(contexts, None, None)
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": np.zeros(4, dtype=np.float32)})
    dxo.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 3)

    with pytest.raises(ValueError, match="no global model recorded for this task"):
        encryptor.process_dxo(dxo, dxo.to_shareable(), FLContext())


def _he_round(parts, sent, server_ctx, diffs: dict[str, dict[str, np.ndarray]], steps: dict[str, int]):
    """One round: every site decrypts ``sent``, encrypts its update, the server adds; the next model to send and
    the aggregated DXO."""
    from nvflare.apis.dxo import from_shareable

    encryptor, aggregator, generator, decryptor = parts
    for site, n in steps.items():
        site_ctx, _ = _received(decryptor, sent)
        assert aggregator.accept(_site_result(encryptor, site_ctx, site, diffs[site], n), server_ctx)
    aggregated = aggregator.aggregate(server_ctx)
    learnable = generator.shareable_to_learnable(aggregated, server_ctx)
    return generator.learnable_to_shareable(learnable, server_ctx), from_shareable(aggregated)


def _first_model(generator, base: dict[str, np.ndarray]):
    """The server's FL context holding the plain initial model ``base``, and the task data it sends."""
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.abstract.model import make_model_learnable
    from nvflare.app_common.app_constant import AppConstants

    server_ctx = FLContext()
    server_ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    server_ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable({k: v.copy() for k, v in base.items()}, {}))
    return server_ctx, generator.learnable_to_shareable(server_ctx.get_prop(AppConstants.GLOBAL_MODEL), server_ctx)


def _weighted_mean(base, diffs, weights: dict[str, float]) -> dict[str, np.ndarray]:
    """Plain numpy: ``base`` plus the mean of the sites' updates weighted by ``weights``."""
    total = sum(weights.values())
    return {
        name: value + sum(w * diffs[s][name].astype(np.float64) for s, w in weights.items()) / total
        for name, value in base.items()
    }


@pytest.mark.integration
def test_eight_sites_of_1000_steps_with_values_up_to_5_aggregate_within_1e_3_of_plain_fedavg(contexts) -> None:
    rng = np.random.default_rng(7)
    # weighed raw, each share (1000 x 5) passes a site's own check, but the sum (~38000: values of one sign
    # fill the constant coefficient) passes the 2^35 / 2^20 = 32768 at which a CKKS value wraps around
    steps = {f"site-{i}": 1000 for i in range(1, 9)}
    base = {"w": rng.uniform(4.4, 4.6, 1500)}
    parts = _he_parts(contexts, None, None)
    server_ctx, sent = _first_model(parts[2], base)
    expected = base

    for _ in range(2):
        diffs = {site: {"w": rng.uniform(0.0, 0.4, 1500)} for site in steps}
        sent, _ = _he_round(parts, sent, server_ctx, diffs, steps)
        expected = _weighted_mean(expected, diffs, {s: float(n) for s, n in steps.items()})

    _, decrypted = _received(parts[3], sent)
    assert float(np.max(np.abs(decrypted["w"] - expected["w"]))) < TOLERANCE


@pytest.mark.integration
def test_a_packed_global_model_is_checkpointed_as_uint8_tensors_and_read_back_as_the_same_bytes(tmp_path: Path) -> None:
    import os

    import torch
    from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable

    from clara_fl.fl.he_packing import LAYOUT_META_KEY
    from clara_fl.fl.server.he import HEClaraModelPersistor
    from tests.test_server_resume import context

    persistor = HEClaraModelPersistor(filter_id="he_serialize_filter")
    persistor.model = torch.nn.Linear(3, 1)
    persistor._ckpt_save_path = str(tmp_path / "FL_global_model.pt")
    persistor._best_ckpt_save_path = str(tmp_path / "best_FL_global_model.pt")
    persistor.log_dir = str(tmp_path)
    persistor.load_model(context(tmp_path))  # the plain initial model, as the first round starts from it
    params = state_dict(0)
    layout = PackedLayout.of(params, ["fc.weight"], chunk_size=4)
    rounds = []
    for r in range(2):  # a chunk's size changes from round to round
        chunks = {k: os.urandom(20_000 + 7 * r + i) for i, k in enumerate(layout.keys)}
        rounds.append(chunks)
        model = make_model_learnable({**chunks, "conv.bias": params["conv.bias"]}, {LAYOUT_META_KEY: layout.to_meta()})
        persistor.save(model, context(tmp_path))

    read = persistor.get_model("FL_global_model.pt", context(tmp_path))[ModelLearnableKey.WEIGHTS]

    assert {k: read[k] for k in layout.keys} == rounds[1]
    np.testing.assert_array_equal(read["conv.bias"], params["conv.bias"])
    stored = torch.load(tmp_path / "FL_global_model.pt", weights_only=True)["model"]
    assert all(isinstance(stored[k], torch.Tensor) and stored[k].dtype == torch.uint8 for k in layout.keys)
    assert os.path.getsize(tmp_path / "FL_global_model.pt") < 1.1 * sum(len(v) for v in rounds[1].values())
