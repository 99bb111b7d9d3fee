"""Softmax cross-entropy, numerically stable, mean over the batch."""
from tinyitop import backend as B
from tinyitop import fused


class SoftmaxCrossEntropy:
    """loss = mean_n( logsumexp(z_n) - z_n[y_n] ); backward gives (softmax(z) - onehot(y)) / N."""

    def forward(self, logits, labels):
        """logits (N, K) float, labels (N,) int on the device -> 0-d loss on the device (no sync)."""
        xp = B.xp
        if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"cross-entropy expects logits (N, K) and labels (N,), got "
                             f"{tuple(logits.shape)} and {tuple(labels.shape)}")
        n = logits.shape[0]
        self.labels = labels
        if not fused.gpu():
            shifted = logits - logits.max(axis=1, keepdims=True)          # largest logit becomes 0
            log_norm = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))  # (N, 1)
            log_probs = shifted - log_norm                                 # (N, K)
            self.probs = xp.exp(log_probs)
            return -log_probs[xp.arange(n), labels].mean()
        self.probs, row_losses = fused.softmax_xent(logits, labels)       # GPU aside: the above as one kernel
        return row_losses.mean()

    def backward(self):
        """dL/dlogits = (softmax(z) - onehot(y)) / N, (N, K)."""
        n = self.probs.shape[0]
        if not fused.gpu():
            dlogits = self.probs.copy()
            dlogits[B.xp.arange(n), self.labels] -= 1
            return dlogits / n
        return fused.softmax_xent_grad(self.probs, self.labels)       # GPU aside: the above as one kernel


def accuracy_count(logits, labels):
    """Number of correct predictions as a 0-d device array (summed on the device, no sync)."""
    return (logits.argmax(axis=1) == labels).sum()
