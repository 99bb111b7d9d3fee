"""SET-ITOP from scratch: a truly sparse MLP that explores its connectivity, in NumPy + scipy.sparse.

tinyitop's specification too (tests/test_from_scratch.py: same seed, same masks and R_s). In order:
  1. every weight matrix is a CSR matrix holding only the active connections (no dense mask);
  2. backprop computes the weight gradient only at those connections;
  3. every Delta T iterations each layer drops its smallest weights, grows as many at random (SET);
  4. the ITOP rate R_s, the fraction of all weights ever active, grows with every update; "reliable"
     R_s counts a grown weight once it survives the next prune (Liu et al. 2021)."""
import argparse
import gzip
import math
import os
import zlib

import numpy as np
import scipy.sparse as sp


# ---- random draws (the test replaces these two with tinyitop's, to hand both the same numbers) ----
def random_positions(rng, numel, k, excluded=()):
    """k distinct flat positions (row * n_in + col) in [0, numel), none in `excluded`; sorted."""
    allowed = np.setdiff1d(np.arange(numel), excluded)
    return np.sort(rng.choice(allowed, size=k, replace=False))


def uniform(rng, size, bound):
    return rng.uniform(-bound, bound, size).astype(np.float32)


# ---- the sparse network -----------------------------------------------------------------------------
def layer_densities(shapes, density):
    """Erdos-Renyi: layer l's density is eps (n_in + n_out) / (n_in n_out), one eps for `density` overall."""
    numel, raw, dense = [o * i for o, i in shapes], [(o + i) / (o * i) for o, i in shapes], set()
    while True:        # eps * raw_l * numel_l over the sparse layers = what the dense ones leave
        eps = (density * sum(numel) - sum(numel[l] for l in dense)) / sum(
            raw[l] * numel[l] for l in range(len(shapes)) if l not in dense)
        too_dense = [l for l in range(len(shapes)) if l not in dense and eps * raw[l] > 1]   # made dense
        if not too_dense:
            return [1.0 if l in dense else eps * raw[l] for l in range(len(shapes))]
        dense.add(max(too_dense, key=lambda l: raw[l]))


def csr(shape, positions, values):
    """A CSR matrix (n_out, n_in) with `values` at the sorted flat `positions`."""
    return sp.csr_matrix((values, np.divmod(positions, shape[1])), shape=shape)      # (rows, cols) = divmod


def flat_positions(W):
    """The nonzeros' flat positions row * n_in + col, in CSR order (sorted)."""
    return np.repeat(np.arange(W.shape[0]), np.diff(W.indptr)) * W.shape[1] + W.indices


def sparse_mlp(sizes, sparsity, rng):
    """[{W: CSR (n_out, n_in), b: (n_out,), vW: W's momentum (nnz,)}] per layer, PyTorch's init."""
    shapes = [(n_out, n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    layers = []
    for (n_out, n_in), density in zip(shapes, layer_densities(shapes, 1 - sparsity)):
        positions = random_positions(rng, n_out * n_in, max(1, round(density * n_out * n_in)))
        weights = uniform(rng, positions.size, 1.0) * (1 / math.sqrt(n_in))     # U(-1, 1) scaled
        layers.append({"W": csr((n_out, n_in), positions, weights), "b": uniform(rng, n_out, 1 / math.sqrt(n_in)),
                       "vW": np.zeros(positions.size, np.float32)})
    return layers


def forward(layers, x):
    """x (N, n_in) -> logits (N, 10); keeps each layer's input for backward."""
    for i, layer in enumerate(layers):
        layer["x"] = x
        x = (layer["W"] @ x.T).T + layer["b"]          # CSR (out, in) @ (in, N) -> (out, N) -> (N, out)
        x = np.maximum(x, 0) if i < len(layers) - 1 else x          # ReLU, except on the logits
    return x


def loss_and_grad(logits, labels):
    """Mean softmax cross-entropy and its gradient (softmax - onehot) / N."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n, dlogits = len(labels), np.exp(log_probs)
    dlogits[np.arange(n), labels] -= 1
    return -log_probs[np.arange(n), labels].mean(), dlogits / n


def backward(layers, dout):
    """Fills each layer's dW (values at its nonzeros only, CSR order) and db."""
    for i in reversed(range(len(layers))):
        layer, W = layers[i], layers[i]["W"]
        rows = np.repeat(np.arange(W.shape[0]), np.diff(W.indptr))     # row of each nonzero
        # dL/dW[r, c] = sum_n dout[n, r] * x[n, c], computed only where W has a connection: (nnz,)
        layer["dW"] = np.einsum("kn,kn->k", dout.T[rows], layer["x"].T[W.indices])
        layer["db"] = dout.sum(axis=0)
        if i > 0:
            dout = (W.T @ dout.T).T * (layer["x"] > 0)     # through W, then the previous ReLU
    return layers


def sgd_step(layers, lr, momentum=0.9, weight_decay=5e-4):
    """Nesterov SGD with weight decay (PyTorch's), on the CSR values in place."""
    for layer in layers:
        for p, g, v in ((layer["W"].data, "dW", "vW"), (layer["b"], "db", "vb")):   # value, grad, velocity
            grad = layer[g] + weight_decay * p
            layer[v] = momentum * layer.get(v, 0) + grad
            p -= lr * (grad + momentum * layer[v])


# ---- SET: prune the smallest, grow at random; the explored set gives R_s --------------------------
def prune_and_grow(layer, rate, rng):
    """Drop k = ceil(rate * nnz) smallest |w|, grow k random new connections at 0 (their momentum
    too); returns (kept, grown) flat positions."""
    W = layer["W"]
    k = math.ceil(rate * W.nnz)
    kept_slots = np.sort(np.argpartition(np.abs(W.data), k)[k:])          # the nnz - k largest |w|
    kept = flat_positions(W)[kept_slots]
    grown = random_positions(rng, W.shape[0] * W.shape[1], k, excluded=kept)
    order = np.argsort(np.concatenate([kept, grown]))
    values = np.concatenate([W.data[kept_slots], np.zeros(k, np.float32)])[order]
    velocity = np.concatenate([layer["vW"][kept_slots], np.zeros(k, np.float32)])[order]
    layer["W"], layer["vW"] = csr(W.shape, np.concatenate([kept, grown])[order], values), velocity
    return kept, grown


def prune_rate_at(step, total_steps, prune_rate=0.5, final=0.005):
    """Cosine decay of the fraction pruned at each update, from `prune_rate` to `final`."""
    return final + 0.5 * (prune_rate - final) * (1 + math.cos(math.pi * step / total_steps))


class ExploredSet:
    """Union of all masks a layer ever had (for R_s), and which grown weights survived a prune."""
    def __init__(self, W):
        self.ever = np.zeros(W.shape[0] * W.shape[1], bool)       # one flag per possible weight
        self.ever[flat_positions(W)] = True
        self.reliable, self.pending = self.ever.copy(), np.zeros_like(self.ever)   # the initial mask is reliable

    def record_update(self, kept, grown):
        self.reliable[kept] |= self.pending[kept]     # grown at the last update and survived this prune
        self.pending = np.zeros_like(self.pending)
        self.pending[grown] = self.ever[grown] = True


def rs(explored):
    """R_s and reliable R_s: explored (reliably explored) weights / all weights of the sparse layers."""
    total = sum(e.ever.size for e in explored)
    return sum(e.ever.sum() for e in explored) / total, sum(e.reliable.sum() for e in explored) / total


def train(data, hidden=(512, 256), sparsity=0.9, epochs=3, batch_size=128, lr=0.05, update_interval=100,
          prune_rate=0.5, init_rng=None, grow_rng=None, data_rng=None, on_update=print):
    """Trains SET-ITOP; returns (layers, per-epoch mean training losses)."""
    (x, y), (test_x, test_y) = data
    layers = sparse_mlp([x.shape[1], *hidden, 10], sparsity, init_rng)
    explored = [ExploredSet(layer["W"]) for layer in layers]
    total_steps, step, losses = epochs * math.ceil(len(x) / batch_size), 0, []
    for epoch in range(epochs):
        epoch_lr = lr * 0.1 ** ((epoch >= max(1, epochs // 2)) + (epoch >= max(1, int(0.75 * epochs))))
        order, loss_sum = data_rng.permutation(len(x)), 0.0
        for start in range(0, len(x), batch_size):
            step, batch = step + 1, order[start:start + batch_size]
            loss, dlogits = loss_and_grad(forward(layers, x[batch]), y[batch])     # forward, loss
            sgd_step(backward(layers, dlogits), epoch_lr)                           # backward, step
            loss_sum += loss * len(batch)
            if step % update_interval == 0 and step < total_steps:                  # topology update
                for layer, e in zip(layers, explored):
                    if layer["W"].nnz < layer["W"].shape[0] * layer["W"].shape[1]:  # a dense layer stays
                        e.record_update(*prune_and_grow(layer, prune_rate_at(step, total_steps, prune_rate), grow_rng))
                on_update(step, layers, *rs(explored))
        losses.append(loss_sum / len(x))
        accuracy = (forward(layers, test_x).argmax(axis=1) == test_y).mean()
        print(f"epoch {epoch + 1}: train loss {losses[-1]:.4f}, test accuracy {accuracy:.4f}")
    return layers, losses


def load_data(fashion="/usr/share/datasets/fashion-mnist"):
    """Fashion-MNIST (Debian's package), else a synthetic set: ((x, y), (test_x, test_y)), float32, int labels."""
    def idx(name, offset):
        with gzip.open(os.path.join(fashion, name)) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    def images(name):           # (N, 784) in [0, 1], then normalised by the set's mean and std
        return (idx(name, 16).reshape(-1, 784) / np.float32(255) - np.float32(0.286)) / np.float32(0.353)
    if os.path.isdir(fashion):
        return ((images("train-images-idx3-ubyte.gz"), idx("train-labels-idx1-ubyte.gz", 8).astype(int)),
                (images("t10k-images-idx3-ubyte.gz"), idx("t10k-labels-idx1-ubyte.gz", 8).astype(int)))
    print(f"{fashion} not found (apt-get install dataset-fashion-mnist): a synthetic set instead")
    rng = np.random.default_rng(0)
    prototypes, labels = rng.normal(size=(10, 784)).astype(np.float32), rng.integers(0, 10, 12000)
    x = prototypes[labels] + 3 * rng.normal(size=(12000, 784)).astype(np.float32)
    return (x[:10000], labels[:10000]), (x[10000:], labels[10000:])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="It takes no options.")
    parser.error = lambda message: parser.exit(2, f"error: {message} (see --help)\n")    # one line, no usage
    parser.parse_args()
    try:
        data, rng = load_data(), np.random.default_rng(0)
    except (OSError, EOFError, ValueError, zlib.error) as err:      # a damaged or truncated data file
        parser.exit(2, f"error: cannot read Fashion-MNIST ({type(err).__name__}: {err}): reinstall its package\n")
    print(f"SET-ITOP: MLP {data[0][0].shape[1]}-512-256-10, sparsity 0.9 (ERK), 3 epochs of {len(data[0][0])} images")
    train(data, init_rng=rng, grow_rng=rng, data_rng=rng, on_update=lambda step, layers, rs_now, reliable: print(
        f"iteration {step:5d}: topology updated, R_s {rs_now:.4f} (reliable {reliable:.4f}), density "
        f"{sum(l['W'].nnz for l in layers) / sum(np.prod(l['W'].shape) for l in layers):.4f}"))
