"""The from-scratch equality test catches every algorithmic slip: each mutation below, applied to a
copy of demos/itop_from_scratch.py, must make tests/test_from_scratch.py's comparison fail (and the
file as shipped passes it, in test_from_scratch.py itself)."""
import pytest

from test_from_scratch import FILE, SETTINGS, SETTINGS_DENSE_LAST, assert_trains_as, from_scratch
from tinyitop import backend as B

# name -> (text in the file, its mutation, the settings under which the slip shows)
MUTATIONS = {
    "prune the largest |w|": ('np.argpartition(np.abs(W.data), k)[k:]', 'np.argpartition(-np.abs(W.data), k)[k:]',
                              SETTINGS),
    "grow into occupied positions": ('allowed = np.setdiff1d(np.arange(numel), excluded)',
                                     'allowed = np.arange(numel)', SETTINGS),
    "R_s over one layer only": ('total = sum(e.ever.size for e in explored)\n    return sum(e.ever.sum() for e in explored)',
                                'total = sum(e.ever.size for e in explored[:1])\n    return sum(e.ever.sum() for e in explored[:1])',
                                SETTINGS),
    "every grown weight counted reliable": ('self.pending[grown] = self.ever[grown] = True',
                                            'self.pending[grown] = self.ever[grown] = self.reliable[grown] = True',
                                            SETTINGS),
    "no momentum reset for grown weights": ('velocity = np.concatenate([layer["vW"][kept_slots], np.zeros(k, np.float32)])',
                                            'velocity = np.concatenate([layer["vW"][kept_slots], layer["vW"][:k]])',
                                            SETTINGS),
    "the dense-layer guard dropped": ('if layer["W"].nnz < layer["W"].shape[0] * layer["W"].shape[1]:', 'if True:',
                                      SETTINGS_DENSE_LAST),
    "a linear prune rate instead of the cosine": (
        'return final + 0.5 * (prune_rate - final) * (1 + math.cos(math.pi * step / total_steps))',
        'return final + (prune_rate - final) * (1 - step / total_steps)', SETTINGS),
    "an update on the last iteration": ('if step % update_interval == 0 and step < total_steps:',
                                        'if step % update_interval == 0:', SETTINGS_DENSE_LAST),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_the_equality_test_fails_on_each_slip(tmp_path, monkeypatch, name):
    if B.name != "numpy":
        pytest.skip("the from-scratch file is NumPy + scipy.sparse; compared on the NumPy backend")
    original, mutated, settings = MUTATIONS[name]
    with open(FILE, encoding="utf-8") as f:
        source = f.read()
    assert source.count(original) == 1, f"the file no longer holds {original!r}: update this mutation"
    copy = tmp_path / "itop_from_scratch_mutated.py"
    copy.write_text(source.replace(original, mutated))
    with pytest.raises(AssertionError):
        assert_trains_as(from_scratch(str(copy)), settings, tmp_path, monkeypatch)
