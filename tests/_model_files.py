"""Helpers for tests that edit saved model files."""

import json

import torch

from sklearn_ugmm._persistence import _digest


def resave_with_meta(source, target, edit):
    """Save ``source`` as ``target`` after ``edit(meta)`` changed its metadata, with a valid checksum."""
    content = torch.load(source, weights_only=True)
    meta = json.loads(content["meta"])
    edit(meta)
    content["meta"] = json.dumps(meta, sort_keys=True)
    content["sha256"] = _digest(content["meta"], content["tensors"])
    torch.save(content, target)
    return target
