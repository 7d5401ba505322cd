"""The policy file writer (nanofly.policy.file) against torch's own reader and writer."""
from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from nanofly.policy.actor import Actor, load_policy
from nanofly.policy.file import ActorWeights, PolicyFileError, save_policy, torch_file_bytes


def _payload():
    rng = np.random.default_rng(3)
    return {"format": "x", "n": 7, "f": 0.25, "flags": [True, False, None], "t": (1, "a"),
            "w": rng.standard_normal((64, 146)).astype(np.float32),
            "nested": {"b": rng.standard_normal(64).astype(np.float32),
                       "i64": np.arange(-3, 9, dtype=np.int64).reshape(3, 4),
                       "u8": np.arange(5, dtype=np.uint8), "f64": np.linspace(0, 1, 3),
                       "scalar": np.array(2.5, dtype=np.float32), "empty": np.zeros((0, 4), np.float32)},
            "strided": rng.standard_normal((8, 6)).astype(np.float32)[::2, 1:]}


def _same(a, b):
    """Structural equality with tensors compared by dtype, shape and bits."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and a.is_contiguous() and torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def _to_torch(obj):
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_torch(v) for v in obj)
    return obj


@pytest.mark.parametrize("options", [{"weights_only": True}, {"weights_only": False},
                                     {"weights_only": True, "mmap": True}])
def test_torch_load_reads_what_torch_save_would_have_written(tmp_path, options):
    ours, theirs = tmp_path / "ours.pt", tmp_path / "theirs.pt"
    ours.write_bytes(torch_file_bytes(_payload()))
    torch.save(_to_torch(_payload()), theirs)
    expected = torch.load(theirs, map_location="cpu", **options)
    got = torch.load(ours, map_location="cpu", **options)
    assert _same(expected, got)
    assert not _same(expected, {**got, "n": 8})  # the comparison can fail


def test_archive_has_torch_records_and_aligned_storages(tmp_path):
    ours, theirs = tmp_path / "ours.pt", tmp_path / "theirs.pt"
    ours.write_bytes(torch_file_bytes(_payload()))
    torch.save(_to_torch(_payload()), theirs)

    def records(path):
        with zipfile.ZipFile(path) as z:
            return {i.filename.split("/", 1)[1]: i for i in z.infolist()}

    mine, torchs = records(ours), records(theirs)
    assert set(mine) == set(torchs)
    raw = ours.read_bytes()
    with zipfile.ZipFile(ours) as z:
        for name, info in mine.items():
            assert info.compress_type == zipfile.ZIP_STORED
            name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
            extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, name
            if name.startswith("data/") or name in ("version", "byteorder"):
                # storages are raw bytes, so they match torch's record for record
                assert z.read(info) == zipfile.ZipFile(theirs).read(torchs[name]), name


def test_same_payload_same_bytes():
    assert torch_file_bytes(_payload()) == torch_file_bytes(_payload())
    assert torch_file_bytes(_payload()) != torch_file_bytes({**_payload(), "n": 8})


def test_numpy_scalars_become_python_numbers(tmp_path):
    path = tmp_path / "p.pt"
    path.write_bytes(torch_file_bytes({"m": {"rate": np.float32(0.5), "n": np.int64(3)},
                                       "l": [np.bool_(True)]}))
    got = torch.load(path, weights_only=True)
    assert got == {"m": {"rate": 0.5, "n": 3}, "l": [True]}
    assert type(got["m"]["n"]) is int and type(got["l"][0]) is bool


def test_unsupported_dtype_is_refused():
    with pytest.raises(PolicyFileError, match="complex64"):
        torch_file_bytes({"z": np.zeros(3, dtype=np.complex64)})


def _weights(seed=0, sizes=(146, 64, 64, 4)):
    rng = np.random.default_rng(seed)
    state = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        state[f"net.{2 * i}.weight"] = rng.uniform(-0.1, 0.1, (fan_out, fan_in)).astype(np.float32)
        state[f"net.{2 * i}.bias"] = rng.uniform(-0.1, 0.1, fan_out).astype(np.float32)
    return ActorWeights(list(sizes), state)


def test_save_weights_load_actor_round_trip(tmp_path):
    weights = _weights()
    path = save_policy(tmp_path / "p.pt", weights, observation={"dim": 146}, action={"dim": 4},
                       vehicle={"preset": "crazyflie_paper"}, metrics={"hover": {"success_rate": 0.97}})
    actor, payload = load_policy(path)
    assert payload["metrics"]["hover"]["success_rate"] == 0.97
    for name, values in actor.state_dict().items():
        assert np.array_equal(values.numpy(), weights.state_dict[name])
    obs = np.random.default_rng(1).standard_normal((5, 146)).astype(np.float32)
    with torch.no_grad():
        expected = Actor.from_weights(weights)(torch.from_numpy(obs)).numpy()
        assert np.array_equal(actor(torch.from_numpy(obs)).numpy(), expected)
    # a torch Actor saves the same tensors as its weights
    again = save_policy(tmp_path / "q.pt", Actor.from_weights(weights), observation={"dim": 146},
                        action={"dim": 4}, vehicle={"preset": "crazyflie_paper"})
    _, payload2 = load_policy(again)
    assert _same(payload["actor"], payload2["actor"])


def test_nan_weights_are_refused_and_nothing_is_written(tmp_path):
    weights = _weights()
    weights.state_dict["net.2.bias"][3] = np.nan
    with pytest.raises(PolicyFileError, match="net.2.bias"):
        save_policy(tmp_path / "p.pt", weights, observation={}, action={}, vehicle={})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("edit, message", [
    (lambda w: w.state_dict.pop("net.4.bias"), "do not match layer_sizes"),
    (lambda w: w.state_dict.update({"net.6.weight": np.zeros((4, 4), np.float32)}),
     "do not match layer_sizes"),
    (lambda w: w.state_dict.update({"net.2.weight": np.zeros((64, 63), np.float32)}),
     r"'net.2.weight' has shape \(64, 63\)"),
    (lambda w: setattr(w, "activation", "relu"), "activation 'relu'"),
])
def test_weights_that_do_not_match_layer_sizes_are_refused(tmp_path, edit, message):
    weights = _weights()
    edit(weights)
    with pytest.raises(PolicyFileError, match=message):
        save_policy(tmp_path / "p.pt", weights, observation={}, action={}, vehicle={})
    assert list(tmp_path.iterdir()) == []


def test_saving_does_not_import_torch(tmp_path):
    code = ("import sys, numpy as np\n"
            "from nanofly.policy.file import ActorWeights, save_policy\n"
            "w = ActorWeights([3, 2], {'net.0.weight': np.ones((2, 3), np.float32), "
            "'net.0.bias': np.zeros(2, np.float32)})\n"
            f"save_policy({str(tmp_path / 'p.pt')!r}, w, observation={{}}, action={{}}, vehicle={{}})\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    actor, _ = load_policy(tmp_path / "p.pt")
    assert actor.layer_sizes == [3, 2]
