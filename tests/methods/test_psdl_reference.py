"""Self-checks of ``tests/psdl_reference.py`` (the authors' PSDL in NumPy/sklearn).

Each check compares the reference with something computed independently here
(scipy's DCT, scikit-learn's OMP called directly, hand-written statistics and
Mahalanobis distances, hand pooling) or with a property the algorithm must have.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.fft
from psdl_reference import (
    approx_ksvd,
    bicubic_resize_np,
    dct_init,
    fit_location,
    fit_official,
    n_nonzero_coefs,
    official_channels,
    official_maps,
    omp_codes,
    score_official,
)
from sklearn.linear_model import orthogonal_mp


def _toy(seed=0, n=200, m=16, k_true=3, noise=0.01):
    """Signals with a planted 3-sparse code in a random orthonormal basis."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(m, m)))
    codes = np.zeros((m, n))
    for j in range(n):
        idx = rng.choice(m, k_true, replace=False)
        codes[idx, j] = rng.normal(size=k_true)
    return (basis @ codes).T + noise * rng.normal(size=(n, m))


@pytest.mark.parametrize("d", [2, 3, 5, 8])
def test_dct_init_is_orthonormal_kron_of_scipy_idct(d):
    dictionary = dct_init(d)
    assert dictionary.shape == (d * d, d * d)
    np.testing.assert_allclose(dictionary.T @ dictionary, np.eye(d * d), atol=1e-12)
    # scipy's orthonormal inverse DCT-II as a matrix: idct(e_k) is column k.
    idct = scipy.fft.idct(np.eye(d), type=2, norm="ortho", axis=0)
    np.testing.assert_allclose(dictionary, np.kron(idct, idct), atol=1e-12)
    # Atom 0 is the constant image; atom 1 varies along the fast (column) index.
    np.testing.assert_allclose(dictionary[:, 0], np.full(d * d, 1.0 / d), atol=1e-12)
    atom1 = dictionary[:, 1].reshape(d, d)
    np.testing.assert_allclose(atom1, np.tile(atom1[0], (d, 1)), atol=1e-12)


def test_sparsity_is_pythons_round():
    assert n_nonzero_coefs(9) == 2  # round(2.25)
    assert n_nonzero_coefs(16) == 4
    assert n_nonzero_coefs(25) == 6  # round(6.25)
    assert n_nonzero_coefs(100, 0.125) == 12  # round(12.5): half to even
    assert n_nonzero_coefs(36, 0.125) == 4  # round(4.5): half to even
    with pytest.raises(ValueError):
        n_nonzero_coefs(10)


def test_omp_codes_of_every_iteration_are_sklearn_orthogonal_mp():
    signals = np.random.default_rng(1).normal(size=(30, 9))
    seen = []

    def callback(it, coded, dictionary, codes):
        seen.append((coded, dictionary, codes))

    init = dct_init(3)
    approx_ksvd(signals, init, 2, 3, callback=callback)
    previous = init
    for coded, dictionary, codes in seen:
        direct = orthogonal_mp(
            previous, signals.T, n_nonzero_coefs=2, tol=None, precompute=True
        ).T
        np.testing.assert_allclose(coded, direct, rtol=0, atol=1e-12)
        assert np.all(np.count_nonzero(coded, axis=1) == 2)
        # The sweep keeps each code's support and changes its values.
        np.testing.assert_array_equal(codes != 0, coded != 0)
        assert not np.allclose(codes, coded)
        previous = dictionary
    np.testing.assert_array_equal(init, dct_init(3))  # the init is not modified


def test_atoms_are_unit_norm_after_each_update():
    signals = _toy(seed=2, n=60)
    norms = []
    approx_ksvd(
        signals,
        dct_init(4),
        4,
        6,
        callback=lambda it, coded, d, c: norms.append(np.linalg.norm(d, axis=0)),
    )
    assert len(norms) == 6
    np.testing.assert_allclose(np.array(norms), 1.0, atol=1e-12)


def test_last_atom_of_a_sweep_is_one_power_step_on_its_residual():
    """Atom K-1 is updated last, when every other atom and code row is final: it
    must be E g/||E g|| with E the residual of its users without it and g its OMP
    coefficients, and its new coefficients E^T d (Rubinstein et al. 2008)."""
    signals = _toy(seed=10, n=80)
    seen = []
    approx_ksvd(
        signals, dct_init(4), 4, 2, callback=lambda *args: seen.append(args[1:])
    )
    for coded, dictionary, codes in seen:
        k = dictionary.shape[1] - 1
        users = np.nonzero(coded[:, k])[0]
        assert len(users) > 0
        others = np.delete(np.arange(dictionary.shape[1]), k)
        residual = signals[users].T - dictionary[:, others] @ codes[users][:, others].T
        atom = residual @ coded[users, k]
        atom /= np.linalg.norm(atom)
        np.testing.assert_allclose(dictionary[:, k], atom, atol=1e-12)
        np.testing.assert_allclose(codes[users, k], residual.T @ atom, atol=1e-12)


def test_ksvd_error_decreases_on_a_well_posed_toy():
    """The approximate sweep is block-coordinate descent (per atom: best unit atom
    for the old coefficients, then the best coefficients for it), so the error
    after a sweep never exceeds the error of the OMP codes it started from: checked
    strictly. A fixed-sparsity OMP may pick a worse support than the previous
    sweep's codes, so the error across iterations is NOT guaranteed monotone; it is
    checked over the first five iterations for this seed only, plus a large overall
    drop."""
    signals = _toy(seed=0)
    omp_errors = []
    state = {"dictionary": dct_init(4)}

    def callback(it, coded, dictionary, codes):
        residual = coded @ state["dictionary"].T - signals
        omp_errors.append(np.sqrt(np.mean(residual**2)))
        state["dictionary"] = dictionary

    _, _, errors = approx_ksvd(signals, dct_init(4), 4, 20, callback=callback)
    assert errors.shape == (20,)
    assert np.all(errors <= np.array(omp_errors) * (1 + 1e-12))
    assert np.all(np.diff(errors[:5]) <= 0)
    assert errors[-1] < 0.5 * errors[0]


def test_fit_and_score_match_a_hand_computation():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(20, 2, 2, 9))
    train[..., 0] += 3.0
    test = rng.normal(size=(5, 2, 2, 9))
    fitted = fit_official(train, n_iter=20)
    assert fitted["n_nonzero"] == 2
    assert fitted["dictionary"].shape == (2, 2, 9, 9)
    assert fitted["fitted"].all()
    scores = score_official(fitted, test)
    assert scores.shape == (5, 2, 2)
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0)

    # Location (1, 0), by hand: same K-SVD, then statistics and distances.
    signals = train[:, 1, 0]
    dictionary, codes, _ = approx_ksvd(signals, dct_init(3), 2, 20)
    np.testing.assert_allclose(fitted["dictionary"][1, 0], dictionary, atol=1e-12)
    feats = np.stack(
        [
            np.abs(codes).sum(1),
            ((codes @ dictionary.T - signals) ** 2).sum(1),
        ],
        axis=1,
    )
    mean = feats.mean(0)
    centred = feats - mean
    cov = centred.T @ centred / (len(feats) - 1) + 0.01 * np.eye(2)
    np.testing.assert_allclose(fitted["mean"][1, 0], mean, rtol=1e-12)
    np.testing.assert_allclose(fitted["cov"][1, 0], cov, rtol=1e-12)

    test_codes = orthogonal_mp(dictionary, test[:, 1, 0].T, n_nonzero_coefs=2).T
    test_feats = np.stack(
        [
            np.abs(test_codes).sum(1),
            ((test_codes @ dictionary.T - test[:, 1, 0]) ** 2).sum(1),
        ],
        axis=1,
    )
    inv = np.linalg.inv(cov)
    delta = test_feats - mean
    expected = np.sqrt(np.einsum("bi,ij,bj->b", delta, inv, delta))
    np.testing.assert_allclose(scores[:, 1, 0], expected, rtol=1e-10)


def test_stats_omp_recodes_with_the_final_dictionary():
    signals = _toy(seed=4, n=40, m=9)
    ksvd = fit_location(signals, n_iter=5, stats="ksvd")
    fresh = fit_location(signals, n_iter=5, stats="omp")
    np.testing.assert_array_equal(ksvd["dictionary"], fresh["dictionary"])
    codes = omp_codes(fresh["dictionary"], signals.T, 2)
    l1 = np.abs(codes).sum(0)
    np.testing.assert_allclose(fresh["mean"][0], l1.mean(), rtol=1e-12)
    assert not np.allclose(ksvd["mean"], fresh["mean"])
    with pytest.raises(ValueError):
        fit_location(signals, stats="other")


def test_fit_official_subset_of_locations():
    train = np.random.default_rng(5).normal(size=(12, 2, 3, 4))
    fitted = fit_official(train, n_iter=2, locations=[(0, 2)])
    assert fitted["fitted"].sum() == 1 and fitted["fitted"][0, 2]
    assert np.isnan(fitted["mean"][1, 1]).all()
    scores = score_official(fitted, train[:3])
    assert np.isfinite(scores[:, 0, 2]).all()
    assert np.isnan(scores[:, 1, 1]).all()


def _pool(x, k):
    n, h, w, c = x.shape
    out = np.zeros((n, h // k, w // k, c))
    for i in range(h // k):
        for j in range(w // k):
            out[:, i, j] = x[:, i * k : (i + 1) * k, j * k : (j + 1) * k].mean((1, 2))
    return out


def test_official_channels():
    rng = np.random.default_rng(6)
    single = rng.normal(size=(2, 3, 3, 10))
    np.testing.assert_array_equal(
        official_channels(single, multi=False), single[..., :9]
    )
    np.testing.assert_array_equal(
        official_channels({3: single}, multi=False), single[..., :9]
    )
    # C = 5 + 4 + 3 = 12 -> d = 3, surplus 3 taken from the end of layer1.
    f1 = rng.normal(size=(2, 9, 9, 5))  # odd size: avg_pool2d floors
    f2 = rng.normal(size=(2, 4, 4, 4))
    f3 = rng.normal(size=(2, 2, 2, 3))
    out = official_channels({1: f1, 2: f2, 3: f3}, multi=True)
    assert out.shape == (2, 2, 2, 9)
    np.testing.assert_allclose(out[..., :3], f3)
    np.testing.assert_allclose(out[..., 3:7], _pool(f2, 2))
    np.testing.assert_allclose(out[..., 7:], _pool(f1[..., :2], 4))
    same = {1: f1[:, :2, :2], 2: f2[:, :2, :2], 3: f3}
    out = official_channels(same, multi=True)
    np.testing.assert_array_equal(
        out, np.concatenate([f3, f2[:, :2, :2], f1[:, :2, :2, :2]], axis=-1)
    )


def test_bicubic_is_pytorchs():
    # PyTorch's x2 bicubic (a = -0.75, align_corners=False): output 2i+1 sits at
    # t = 0.25 past input i, output 2i at t = 0.75 past input i-1; Keys' weights
    # with a = -0.75 (worked by hand) for distances 1.25, 0.25, 0.75, 1.75 are
    # -0.10546875, 0.87890625, 0.26171875, -0.03515625. An impulse at input 3 thus
    # reaches outputs 3..10 with these weights, mirrored.
    x = np.zeros((1, 8, 1))
    x[0, 3, 0] = 1.0
    up = bicubic_resize_np(x, (16, 1))[0, :, 0]
    half = [-0.03515625, -0.10546875, 0.26171875, 0.87890625]
    np.testing.assert_allclose(up[3:11], half + half[::-1], atol=1e-15)
    np.testing.assert_array_equal(up[:3], 0.0)
    np.testing.assert_array_equal(up[11:], 0.0)
    maps = np.random.default_rng(7).normal(size=(2, 5, 6))
    np.testing.assert_allclose(bicubic_resize_np(maps, (5, 6)), maps, atol=1e-15)
    np.testing.assert_allclose(
        bicubic_resize_np(np.full((1, 4, 4), 2.5), (13, 9)), 2.5, atol=1e-14
    )


def test_official_maps():
    maps = np.random.default_rng(8).normal(size=(3, 7, 7))
    out = official_maps(maps, 56, backend="numpy")
    assert out.shape == (3, 56, 56)
    assert out.min() == 0.0 and out.max() == 1.0
    # Min-max is over the whole batch, not per image.
    assert min(out[i].max() for i in range(3)) < 1.0
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.interpolate(
        torch.tensor(maps[:, None]),
        size=(56, 56),
        mode="bicubic",
        align_corners=False,
    )[:, 0].numpy()
    np.testing.assert_allclose(bicubic_resize_np(maps, (56, 56)), expected, atol=1e-12)
    np.testing.assert_allclose(
        official_maps(maps, 56, backend="torch"), out, atol=1e-12
    )


def test_matches_sparselandtools_when_installed():
    pytest.importorskip("sparselandtools")
    from sparselandtools.dictionaries import DCTDictionary
    from sparselandtools.learning import ApproximateKSVD
    from sparselandtools.pursuits import OrthogonalMatchingPursuit

    logging.disable(logging.INFO)  # sparselandtools logs every iteration
    try:
        signals = _toy(seed=9, n=50, m=9).astype(np.float32)
        np.testing.assert_array_equal(DCTDictionary(3, 3).matrix, dct_init(3))
        learner = ApproximateKSVD(DCTDictionary(3, 3), OrthogonalMatchingPursuit, 2)
        dictionary, codes = learner.fit(signals.T, 5)
        ours, our_codes, _ = approx_ksvd(signals, dct_init(3), 2, 5)
        np.testing.assert_allclose(dictionary.matrix, ours, atol=1e-12)
        np.testing.assert_allclose(codes.T, our_codes, atol=1e-12)
    finally:
        logging.disable(logging.NOTSET)
