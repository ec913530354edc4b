"""Packed homomorphic encryption (clara_fl.fl.he_packing and the HE filters, aggregator and generator built on
FLARE's): the layout, and the whole encrypt -> aggregate -> update -> decrypt path on the job's CKKS context (FLARE's
HEBuilder parameters), run without FLARE."""

from __future__ import annotations

import numpy as np
import pytest

from clara_fl.fl.he_packing import (
    PACKED_PREFIX,
    PackedLayout,
    decrypt_packed,
    encrypt_packed,
    pack_plain,
    select_layers,
    serialize_packed,
    slot_count,
    unpack,
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

    assert slot_count(client) == 4096
    assert all(isinstance(b, bytes) and len(b) < len(server_bytes) for b in sent.values())
    # the bytes carry no context: TenSEAL needs the receiver's to read them
    decrypted = decrypt_packed(client, sent, layout)
    assert max(float(np.max(np.abs(decrypted[k] - params[k]))) for k in params) < TOLERANCE


def test_decrypting_with_the_servers_public_context_is_refused(contexts) -> None:
    server, client, _ = contexts
    params = state_dict(1)
    layout = PackedLayout.of(params, list(params), 4096)

    with pytest.raises(ValueError, match="secret key"):
        decrypt_packed(server, serialize_packed(encrypt_packed(client, params, layout)), layout)


def _site_result(encryptor, site: str, diff: dict[str, np.ndarray], steps: int):
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.app_constant import AppConstants

    dxo = DXO(DataKind.WEIGHT_DIFF, data={k: v.copy() for k, v in diff.items()})
    dxo.set_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, steps)
    shareable = dxo.to_shareable()
    site_ctx = FLContext()
    site_ctx.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    encrypted = encryptor.process_dxo(dxo, shareable, site_ctx).to_shareable()
    encrypted.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    encrypted.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    return encrypted


@pytest.mark.integration  # FLARE's aggregator stack imports in a few seconds
@pytest.mark.parametrize("encrypt_layers", [None, "^fc\\."], ids=["all_layers", "some_layers"])
def test_the_he_aggregated_global_model_is_the_plain_weighted_mean_within_1e_3(contexts, encrypt_layers) -> None:
    from nvflare.apis.dxo import from_shareable
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.abstract.model import make_model_learnable
    from nvflare.app_common.app_constant import AppConstants

    from clara_fl.fl.server.he import HEInTimeAccumulateWeightedAggregator, HEModelShareableGenerator
    from clara_fl.fl.site.he_filters import HEModelDecryptor, HEModelEncryptor

    server, client, _ = contexts
    weights = {"site-1": 2.0, "site-2": 1.0, "site-3": 0.5}
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
    server_ctx = FLContext()
    server_ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    base = state_dict(100)
    server_ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable({k: v.copy() for k, v in base.items()}, {}))
    diffs = {site: state_dict(i, scale=0.01) for i, site in enumerate(SITES)}
    aggregator.handle_event(EventType.START_RUN, server_ctx)

    for site, steps in SITES.items():
        result = _site_result(encryptor, site, diffs[site], steps)
        assert all(isinstance(v, bytes) for k, v in from_shareable(result).data.items() if k.startswith(PACKED_PREFIX))
        assert aggregator.accept(result, server_ctx)
    learnable = generator.shareable_to_learnable(aggregator.aggregate(server_ctx), server_ctx)
    sent = generator.learnable_to_shareable(learnable, server_ctx)
    received = from_shareable(sent)
    decrypted = decryptor.process_dxo(received, sent, FLContext())
    assert decrypted is not None

    total = sum(weights[s] * n for s, n in SITES.items())
    for name, value in base.items():
        mean = sum(weights[s] * n * diffs[s][name].astype(np.float64) for s, n in SITES.items()) / total
        expected = value + mean
        got = np.asarray(decrypted.data[name], dtype=np.float64).reshape(value.shape)
        if np.issubdtype(value.dtype, np.integer):
            assert got == pytest.approx(np.rint(expected), abs=1)
        else:
            assert float(np.max(np.abs(got - expected))) < TOLERANCE, name
