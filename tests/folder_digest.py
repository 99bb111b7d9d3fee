"""The content of a folder, to check that a refused command left it byte for byte as it was."""
import hashlib
import os


def tree_digest(folder):
    """{path relative to `folder`: sha256} of every file below it (the run lock aside: it is the lock's)."""
    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name != ".lock":
                with open(os.path.join(root, name), "rb") as f:
                    digests[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return digests
