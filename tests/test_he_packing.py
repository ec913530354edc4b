"""Packed homomorphic encryption (clara_fl.fl.he_packing and the HE filters, aggregator and generator built on
FLARE's): the layout, and the whole encrypt -> aggregate -> update -> decrypt path on the job's CKKS context
(clara-fl's parameters through FLARE's HEBuilder), run without FLARE."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from clara_fl.fl.he_packing import (
    PACKED_PREFIX,
    PackedLayout,
    decrypt_packed,
    deserialize_packed,
    encrypt_packed,
    pack_plain,
    select_layers,
    serialize_packed,
    slot_count,
    unpack,
    value_bound,
)

ts = pytest.importorskip("tenseal")

SITES = {"site-1": 3, "site-2": 7, "site-3": 5}  # steps each site ran this round
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


def _plain_fedavg(base, diffs, weights) -> dict[str, np.ndarray]:
    total = sum(weights[s] * n for s, n in SITES.items())
    return {
        name: value + sum(weights[s] * n * diffs[s][name].astype(np.float64) for s, n in SITES.items()) / total
        for name, value in base.items()
    }


@pytest.mark.integration  # FLARE's aggregator stack imports in a few seconds
@pytest.mark.parametrize("encrypt_layers", [None, "^fc\\."], ids=["all_layers", "some_layers"])
def test_two_he_rounds_give_the_plain_weighted_fedavg_model_within_1e_3(contexts, encrypt_layers) -> None:
    from nvflare.apis.dxo import from_shareable
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.abstract.model import make_model_learnable
    from nvflare.app_common.app_constant import AppConstants

    from clara_fl.fl.he_packing import WEIGHT_SUM_META_KEY

    weights = {"site-1": 2.0, "site-2": 1.0, "site-3": 0.5}
    encryptor, aggregator, generator, decryptor = _he_parts(contexts, encrypt_layers, weights)
    server_ctx = FLContext()
    server_ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    base = state_dict(100)
    server_ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable({k: v.copy() for k, v in base.items()}, {}))
    sent = generator.learnable_to_shareable(server_ctx.get_prop(AppConstants.GLOBAL_MODEL), server_ctx)
    expected = base

    for round_number in range(2):
        diffs = {site: state_dict(10 * round_number + i, scale=0.01) for i, site in enumerate(SITES)}
        for site, steps in SITES.items():
            site_ctx, received = _received(decryptor, sent)
            for name, value in expected.items():
                assert np.max(np.abs(np.asarray(received[name], dtype=np.float64).ravel() - value.ravel())) < 1e-3
            result = _site_result(encryptor, site_ctx, site, diffs[site], steps)
            assert all(
                isinstance(v, bytes) for k, v in from_shareable(result).data.items() if k.startswith(PACKED_PREFIX)
            )
            assert aggregator.accept(result, server_ctx)
        aggregated = aggregator.aggregate(server_ctx)
        assert from_shareable(aggregated).get_meta_prop(WEIGHT_SUM_META_KEY) == sum(
            weights[s] * n for s, n in SITES.items()
        )
        learnable = generator.shareable_to_learnable(aggregated, server_ctx)
        sent = generator.learnable_to_shareable(learnable, server_ctx)
        expected = _plain_fedavg(expected, diffs, weights)

    _, decrypted = _received(decryptor, sent)
    for name, value in expected.items():
        got = np.asarray(decrypted[name], dtype=np.float64).reshape(value.shape)
        if np.issubdtype(base[name].dtype, np.integer):
            assert got == pytest.approx(np.rint(value), abs=1)
        else:
            assert float(np.max(np.abs(got - value))) < TOLERANCE, name


@pytest.mark.integration
def test_a_site_refuses_to_encrypt_weights_its_context_cannot_hold(contexts) -> None:
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_context import FLContext

    from clara_fl.fl.site.he_filters import RECEIVED_MODEL_PROP

    encryptor, *_ = _he_parts(contexts, None, None)
    site_ctx = FLContext()
    site_ctx.set_prop(RECEIVED_MODEL_PROP, {"w": np.ones(4)}, private=True, sticky=False)
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": np.zeros(4, dtype=np.float32)})
    dxo.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 20000)  # 20000 x 1.0 > 2^14

    with pytest.raises(ValueError, match="beyond the 1.638e\\+04 the HE context's modulus holds"):
        encryptor.process_dxo(dxo, dxo.to_shareable(), site_ctx)


@pytest.mark.integration
def test_an_update_without_the_model_it_was_trained_from_is_refused(contexts) -> None:
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_context import FLContext

    encryptor, *_ = _he_parts(contexts, None, None)
    dxo = DXO(DataKind.WEIGHT_DIFF, data={"w": np.zeros(4, dtype=np.float32)})
    dxo.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 3)

    with pytest.raises(ValueError, match="no global model recorded for this task"):
        encryptor.process_dxo(dxo, dxo.to_shareable(), FLContext())
