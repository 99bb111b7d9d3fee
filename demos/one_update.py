"""Watch one prune-and-grow step of dynamic sparse training on a matrix small enough to see whole.

A tiny MLP 8-6-3 whose first layer fc1 (6 outputs x 8 inputs, density 0.3 = 14 weights) is a CSR
matrix. It trains a few steps on synthetic data so the weights differ, then the library
(tinyitop/topology.py) updates it twice; each update is printed in five parts: the CSR arrays and
the mask, the prune, the growth, values and momentum after, and the explored set with R_s.
Every number printed is read from the library's own state (topology, explore, optim): nothing
below re-implements the update.

    python demos/one_update.py                       # SET: random growth
    python demos/one_update.py --growth gradient     # RigL: grow where |dense gradient| is largest
    python demos/one_update.py --growth unexplored   # ITOP Appendix F: never-explored positions first
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from tinyitop import backend as B  # noqa: E402
from tinyitop.options import Parser, seed  # noqa: E402
from tinyitop.threads import thread_count  # noqa: E402
from tinyitop.data import make_synthetic, normalise  # noqa: E402
from tinyitop.explore import Exploration  # noqa: E402
from tinyitop.losses import SoftmaxCrossEntropy  # noqa: E402
from tinyitop.models import mlp  # noqa: E402
from tinyitop.optim import SGD  # noqa: E402
from tinyitop.topology import TopologyUpdater, prune_count, sparse_layers  # noqa: E402

LAYER = "fc1"
STEPS_BETWEEN_UPDATES = 20     # Delta T, in iterations
TOTAL_STEPS = 200              # the cosine prune-rate schedule runs over this many iterations
SEED = 24                      # a seed where, at the second update, two of fc1's grown weights survive
                               # the prune and become reliably explored (with most seeds none or one does)


def mask_grid(shape, active, explored, marks=None):
    """Rows of '#' (active), 'o' (explored, inactive now), '.' (never explored); `marks` overrides
    chosen positions with a letter (e.g. 'x' pruned, '+' grown)."""
    rows, cols = shape
    grid = np.full(rows * cols, ".")
    grid[explored] = "o"
    grid[active] = "#"
    for letter, positions in (marks or {}).items():
        grid[positions] = letter
    return ["    " + " ".join(grid[r * cols:(r + 1) * cols]) for r in range(rows)]


def _rc(position, cols):
    return f"({position // cols},{position % cols})"


class Narrator:
    """Prints what the library did and keeps the facts as numbers (the test reads them)."""

    def __init__(self, model, optimizer, exploration, updater, out=print):
        self.model, self.optimizer, self.exploration, self.updater, self.out = (
            model, optimizer, exploration, updater, out)
        self.layer = sparse_layers(model)[LAYER]
        self.weight = self.layer.weight

    def state(self):
        """Host copies of the layer as it is now: positions, values, momentum, explored set."""
        explored = self.exploration.sets[LAYER]
        return {"positions": B.to_host(self.weight.flat_positions()).copy(),
                "values": B.to_host(self.weight.data).copy(),
                "momentum": B.to_host(self.optimizer.velocity[f"{LAYER}.weight"]).copy(),
                "explored": B.to_host(explored.positions).astype(np.int64).copy(),
                "reliable": B.to_host(explored.positions[explored.reliable]).astype(np.int64).copy(),
                "rs": self.exploration.rs(), "rs_reliable": self.exploration.rs_reliable(),
                "rs_layer": self.exploration.rs_per_layer()[LAYER],
                "rs_reliable_layer": self.exploration.rs_reliable_per_layer()[LAYER]}

    def show_csr(self, title):
        csr = self.weight.csr
        before = self.state()
        self.out(f"\n{title}: {LAYER} is a {self.weight.shape[0]}x{self.weight.shape[1]} CSR matrix, "
                 f"nnz {self.weight.nnz} (density {self.weight.density:.3f})")
        self.out(f"  indptr  {B.to_host(csr.indptr).tolist()}   (row r's nonzeros are indptr[r]:indptr[r+1])")
        self.out(f"  indices {B.to_host(csr.indices).tolist()}   (their columns)")
        self.out(f"  data    [{', '.join(f'{v:.3f}' for v in B.to_host(csr.data).tolist())}]   (their values)")
        self.out("  mask  (# active, o explored but inactive now, . never explored):")
        for line in mask_grid(self.weight.shape, before["positions"], before["explored"]):
            self.out(line)
        return before

    def update(self, step, number):
        """One training step at an update step, then the topology update, narrated; returns the facts."""
        before = self.show_csr(f"Update {number}, before (iteration {step})")
        dense_grad = self.layer.dense_grad
        scores = None if dense_grad is None else np.abs(B.to_host(dense_grad)).reshape(-1).copy()
        rate = self.updater.maybe_update(step)                       # the library does the update
        self.exploration.record_updates(self.updater.last_update)    # and the explored sets grow
        source, kept, grown = (B.to_host(a) for a in self.updater.last_update[LAYER])
        after = self.state()
        k = prune_count(rate, before["positions"].size)
        pruned = np.setdiff1d(before["positions"], kept)
        self.show_prune(step, rate, k, before, pruned)
        self.show_growth(k, before, after, kept, grown, pruned, scores)
        self.show_values(before, after, source)
        confirmed = self.show_explored(before, after)
        return {"step": step, "rate": rate, "k": k, "before": before, "after": after, "pruned": pruned,
                "kept": kept, "grown": grown, "source": source, "confirmed": confirmed, "scores": scores}

    def show_prune(self, step, rate, k, before, pruned):
        cols = self.weight.shape[1]
        self.out(f"\n  1. prune rate p = {rate:.4f} (cosine from P = {self.updater.prune_rate} at "
                 f"iteration {step} of {self.updater.total_steps}); k = ceil(p * nnz) = "
                 f"ceil({rate:.4f} * {before['positions'].size}) = {k}")
        magnitude = dict(zip(before["positions"].tolist(), np.abs(before["values"]).tolist()))
        ranked = sorted(magnitude.items(), key=lambda item: item[1])
        self.out("     |w| from smallest, the k pruned marked x:")
        self.out("     " + "  ".join(f"{'x' if p in set(pruned.tolist()) else ' '}{_rc(p, cols)} {m:.3f}"
                                     for p, m in ranked))

    def show_growth(self, k, before, after, kept, grown, pruned, scores):
        cols = self.weight.shape[1]
        candidates = self.weight.numel - kept.size
        self.out(f"\n  2. grow k = {k} among the {candidates} positions inactive after pruning "
                 f"(a just-pruned one may come back, as a new zero weight), by '{self.updater.growth}':")
        if self.updater.growth == "random":
            self.out("     drawn uniformly at random (SET)")
        elif self.updater.growth == "gradient":
            candidates_scores = sorted(((s, p) for p, s in enumerate(scores) if p not in set(kept.tolist())),
                                       reverse=True)[:k + 3]
            self.out("     the largest |dL/dw| of this minibatch's dense gradient among them (RigL); top scores:")
            self.out("     " + "  ".join(f"{'+' if p in set(grown.tolist()) else ' '}{_rc(p, cols)} {s:.4f}"
                                         for s, p in candidates_scores))
        else:
            never = self.weight.numel - before["explored"].size
            self.out(f"     {never} positions were never explored: drawn from those first (ITOP, Appendix F)"
                     + ("" if never >= k else f"; the other {k - never} among the rest"))
        self.out(f"     grown: {' '.join(_rc(p, cols) for p in grown.tolist())}")
        self.out("  mask after (x pruned and not regrown, + grown):")
        marks = {"x": np.setdiff1d(pruned, after["positions"]), "+": grown}
        for line in mask_grid(self.weight.shape, after["positions"], after["explored"], marks):
            self.out(line)

    def show_values(self, before, after, source):
        survivors, cols = source >= 0, self.weight.shape[1]
        self.out(f"\n  3. nnz {before['positions'].size} -> {after['positions'].size}. Survivors keep value and "
                 f"momentum (e.g. {_rc(int(after['positions'][survivors][0]), cols)}: w "
                 f"{after['values'][survivors][0]:+.4f}, momentum {after['momentum'][survivors][0]:+.4f}); grown "
                 f"ones start at exactly 0: values {after['values'][~survivors].tolist()}, "
                 f"momentum {after['momentum'][~survivors].tolist()}. (A grown weight whose unit is inactive "
                 f"gets no gradient, stays 0 and is the first to go at the next prune.)")

    def show_explored(self, before, after):
        """The explored set and R_s before and after; returns the positions that became reliable."""
        newly = np.setdiff1d(after["explored"], before["explored"])
        confirmed = np.setdiff1d(after["reliable"], before["reliable"])
        self.out(f"\n  4. explored set of {LAYER}: {before['explored'].size} -> {after['explored'].size} positions "
                 f"(+{newly.size} never seen before). R_s of {LAYER} {before['rs_layer']:.4f} -> "
                 f"{after['rs_layer']:.4f}; reliable {before['rs_reliable_layer']:.4f} -> "
                 f"{after['rs_reliable_layer']:.4f}")
        self.out(f"     whole model R_s {before['rs']:.4f} -> {after['rs']:.4f}, reliable R_s "
                 f"{before['rs_reliable']:.4f} -> {after['rs_reliable']:.4f}")
        if confirmed.size:
            self.out(f"     became reliable now (grown at the last update and survived this prune): "
                     f"{' '.join(_rc(p, self.weight.shape[1]) for p in confirmed.tolist())}")
        else:
            self.out("     grown connections count as reliably explored only once they survive the next prune")
        return confirmed


def run(growth="random", seed=SEED, out=print):
    """Build, train a little, update twice; returns the facts of both updates (list of dicts)."""
    B.seed(seed)
    model = mlp(8, (6,), 3, sparsity=0.7, init="uniform")     # fc1: 14 of 48 weights, fc2: 5 of 18
    data = make_synthetic(num_train=256, num_test=8, num_classes=3, image_shape=(2, 2, 2), seed=seed)
    x = B.to_device(normalise(data.train_x, data.mean, data.std))        # (256, 2, 2, 2)
    y = B.to_device(data.train_y)
    optimizer = SGD(model.named_parameters(), lr=0.1, momentum=0.9)
    exploration = Exploration(sparse_layers(model))
    method = "rigl" if growth == "gradient" else "set"
    updater = TopologyUpdater(model, optimizer, exploration, method=method, growth=growth,
                              update_interval=STEPS_BETWEEN_UPDATES, prune_rate=0.5,
                              total_steps=TOTAL_STEPS)
    narrator = Narrator(model, optimizer, exploration, updater, out)
    out(f"{B.describe()}; growth '{growth}', seed {seed}: {STEPS_BETWEEN_UPDATES} SGD steps between updates")
    loss_fn, updates = SoftmaxCrossEntropy(), []
    rng = np.random.default_rng(seed)
    for step in range(1, 2 * STEPS_BETWEEN_UPDATES + 1):
        batch = B.to_device(rng.choice(len(data.train_y), 32, replace=False))
        updater.prepare(step)                                 # RigL: keep this step's dense gradient
        loss = loss_fn.forward(model.forward(x[batch]), y[batch])
        model.backward(loss_fn.backward())
        optimizer.step()
        if updater.is_update_step(step):
            out(f"\n{'=' * 100}\nafter {step} SGD steps the loss is {B.scalar(loss):.4f}")
            updates.append(narrator.update(step, len(updates) + 1))
    return updates


def main(argv=None):
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--growth", choices=("random", "gradient", "unexplored"), default="random")
    parser.add_argument("--seed", type=seed, default=SEED)
    args = parser.parse_args(argv)
    try:
        B.resolve()                           # TINYITOP_BACKEND and TINYITOP_THREADS: one line if bad
        thread_count()
    except (B.BackendError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run(args.growth, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
